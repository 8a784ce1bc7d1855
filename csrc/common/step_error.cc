// describe(StepError): the message both implementations raise for invalid step data (step_rules.h).
#include <string>

#include "paddle_gqa/errors.h"
#include "paddle_gqa/step_rules.h"

namespace paddle_gqa {

std::string describe(const StepError& e) {
  switch (static_cast<StepErrorCode>(e.code)) {
    case StepErrorCode::kOk:
      return "no error";
    case StepErrorCode::kCuSeqlensStart:
      return str("cu_seqlens_q[0] = ", e.value, ": expected 0 (prefix sums of new tokens start at 0)");
    case StepErrorCode::kCuSeqlensDecreasing:
      return str("cu_seqlens_q[", e.index, "] = ", e.value, " is less than cu_seqlens_q[", e.index - 1,
                 "] = ", e.bound, ": expected non-decreasing prefix sums");
    case StepErrorCode::kCuSeqlensOverrun:
      return str("cu_seqlens_q[", e.index, "] = ", e.value, " (new tokens of the step) exceeds the ", e.bound,
                 " rows of qkv / q: expected cu_seqlens_q[B] <= rows");
    case StepErrorCode::kCacheSeqlenNegative:
      return str("cache_seqlens[", e.index, "] = ", e.value, " is negative: expected >= 0");
    case StepErrorCode::kPositionPastRope:
      return str("position ", e.value, " of slot ", e.slot, " is past the RoPE tables (max_position ", e.bound,
                 "): expected cache_seqlens[", e.slot, "] + new tokens <= ", e.bound,
                 "; build rotary_cos / rotary_sin with more rows");
    case StepErrorCode::kBlockTableOverrun:
      return str("cache_seqlens[", e.slot, "] + new tokens = ", e.value, " exceeds block_tables capacity ",
                 e.bound, " tokens (max_blocks_per_seq x block_size): give the slot more blocks");
    case StepErrorCode::kBlockIdInvalid:
      return str("block_tables[", e.slot, "][", e.index, "] = ", e.value,
                 " is not a valid block id for a block this step reads or writes (expected 0 <= id < ",
                 e.bound, ")");
  }
  return str("invalid step data (unknown error code ", e.code, ", slot ", e.slot, ", index ", e.index,
             ", value ", e.value, ", bound ", e.bound, ")");
}

}  // namespace paddle_gqa
