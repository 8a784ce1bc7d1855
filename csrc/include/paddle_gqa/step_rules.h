// Validity of the step's device-resident data (DESIGN.md §4), one slot at a time.
//
// The CPU path runs check_slot over every slot before writing anything and throws on the first
// error; the CUDA path runs it in a kernel, records the first error in a device StepError and
// every writing kernel skips its work when that record is set. describe() turns a record into
// the message both paths raise.
#pragma once

#include <cstdint>
#include <string>

#include "paddle_gqa/host_device.h"
#include "paddle_gqa/mask.h"

namespace paddle_gqa {

enum class StepErrorCode : int32_t {
  kOk = 0,
  kCuSeqlensStart,       // cu_seqlens_q[0] != 0
  kCuSeqlensDecreasing,  // cu_seqlens_q[b+1] < cu_seqlens_q[b]
  kCuSeqlensOverrun,     // cu_seqlens_q[B] > rows of qkv / q
  kCacheSeqlenNegative,  // cache_seqlens[b] < 0
  kPositionPastRope,     // kv_len - 1 >= max_position of the RoPE tables
  kBlockTableOverrun,    // kv_len > max_blocks_per_seq * block_size
  kBlockIdInvalid,       // a block the step reads or writes is -1 or >= num_blocks
};

// The first error found. `slot` is b; `index` the entry (cu_seqlens_q index, logical block);
// `value` the offending value; `bound` what it was compared with.
struct StepError {
  int32_t code = 0;
  int32_t slot = -1;
  int64_t index = -1;
  int64_t value = 0;
  int64_t bound = 0;
};

// What one slot of the step needs to be checked; all pointers address the step's int32 arrays.
struct StepData {
  const int32_t* block_tables;   // [B, max_blocks_per_seq]
  const int32_t* cu_seqlens_q;   // [B+1]
  const int32_t* cache_seqlens;  // [B]
  int64_t batch;
  int64_t rows;                  // rows of qkv / q
  int64_t max_blocks_per_seq;
  int64_t num_blocks;
  int block_size;
  int64_t max_position;          // 0 = no RoPE (positions unchecked)
  bool causal;
  int sliding_window;
  bool checks_reads;             // false for rope_write_cache (it only writes)
};

PGQA_HD StepError make_step_error(StepErrorCode c, int32_t slot, int64_t index, int64_t value, int64_t bound) {
  StepError e;
  e.code = static_cast<int32_t>(c);
  e.slot = slot;
  e.index = index;
  e.value = value;
  e.bound = bound;
  return e;
}

// Checks slot b. Blocks checked: those holding positions cache_len .. kv_len-1 (written) and,
// when checks_reads, those holding keys any new query can see (read). Idle slots check only
// their lengths.
PGQA_HD StepError check_slot(const StepData& s, int64_t b) {
  const int32_t* cu = s.cu_seqlens_q;
  if (b == 0 && cu[0] != 0) return make_step_error(StepErrorCode::kCuSeqlensStart, 0, 0, cu[0], 0);
  if (cu[b + 1] < cu[b]) return make_step_error(StepErrorCode::kCuSeqlensDecreasing, int32_t(b), b + 1, cu[b + 1], cu[b]);
  if (b == s.batch - 1 && cu[s.batch] > s.rows)
    return make_step_error(StepErrorCode::kCuSeqlensOverrun, int32_t(b), s.batch, cu[s.batch], s.rows);
  const int64_t cache_len = s.cache_seqlens[b];
  if (cache_len < 0) return make_step_error(StepErrorCode::kCacheSeqlenNegative, int32_t(b), b, cache_len, 0);
  const int64_t n = int64_t(cu[b + 1]) - cu[b];
  if (n == 0) return StepError{};
  const int64_t kv_len = cache_len + n;
  if (s.max_position > 0 && kv_len - 1 >= s.max_position)
    return make_step_error(StepErrorCode::kPositionPastRope, int32_t(b), b, kv_len - 1, s.max_position);
  if (kv_len > s.max_blocks_per_seq * s.block_size)
    return make_step_error(StepErrorCode::kBlockTableOverrun, int32_t(b), b, kv_len, s.max_blocks_per_seq * s.block_size);
  int64_t first_pos = cache_len;
  if (s.checks_reads) {
    KeyRange r = slot_visible_keys(cache_len, kv_len, s.causal, s.sliding_window);
    if (r.lo < first_pos) first_pos = r.lo;
  }
  const int32_t* row = s.block_tables + b * s.max_blocks_per_seq;
  for (int64_t lb = first_pos / s.block_size; lb <= (kv_len - 1) / s.block_size; ++lb) {
    const int32_t id = row[lb];
    if (id < 0 || id >= s.num_blocks)
      return make_step_error(StepErrorCode::kBlockIdInvalid, int32_t(b), lb, id, s.num_blocks);
  }
  return StepError{};
}

// A step of zero slots has no slot for check_slot to run on, but cu_seqlens_q[0] must still be 0.
PGQA_HD StepError check_empty_step(const StepData& s) {
  if (s.batch == 0 && s.cu_seqlens_q[0] != 0)
    return make_step_error(StepErrorCode::kCuSeqlensStart, 0, 0, s.cu_seqlens_q[0], 0);
  return StepError{};
}

// "block_tables[2][5] = -1 is not a valid block id for a block this step reads or writes
//  (expected 0 <= id < 512)". Defined in csrc/common/step_error.cc.
std::string describe(const StepError& e);

}  // namespace paddle_gqa
