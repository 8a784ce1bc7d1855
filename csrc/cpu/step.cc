// The CPU step check (step_rules.h over every slot) and row -> slot lookup.
#include "step.h"

#include <cstring>

#include "paddle_gqa/errors.h"
#include "paddle_gqa/step_rules.h"

namespace paddle_gqa {
namespace cpu {

int64_t check_step(const ProblemShape& shape, const StepInputs& step, bool checks_reads) {
  StepData d;
  d.block_tables = step.block_tables.ptr<const int32_t>();
  d.cu_seqlens_q = step.cu_seqlens_q.ptr<const int32_t>();
  d.cache_seqlens = step.cache_seqlens.ptr<const int32_t>();
  d.batch = shape.batch;
  d.rows = shape.rows;
  d.max_blocks_per_seq = shape.max_blocks_per_seq;
  d.num_blocks = shape.num_blocks;
  d.block_size = shape.block_size;
  d.max_position = shape.max_position;
  d.causal = shape.causal;
  d.sliding_window = shape.sliding_window;
  d.checks_reads = checks_reads;
  // check_slot checks cu_seqlens_q[0] with slot 0; a step of zero slots has only that entry.
  if (shape.batch == 0 && d.cu_seqlens_q[0] != 0)
    throw InvalidArgument(describe(make_step_error(StepErrorCode::kCuSeqlensStart, 0, 0, d.cu_seqlens_q[0], 0)));
  for (int64_t b = 0; b < shape.batch; ++b) {
    const StepError e = check_slot(d, b);
    if (e.code != int32_t(StepErrorCode::kOk)) throw InvalidArgument(describe(e));
  }
  return d.cu_seqlens_q[shape.batch];
}

std::vector<int32_t> slot_of_rows(const ProblemShape& shape, const StepInputs& step, int64_t total) {
  const int32_t* cu = step.cu_seqlens_q.ptr<const int32_t>();
  std::vector<int32_t> slot(size_t(total), 0);
  for (int64_t b = 0; b < shape.batch; ++b)
    for (int64_t t = cu[b]; t < cu[b + 1]; ++t) slot[size_t(t)] = int32_t(b);
  return slot;
}

void zero_rows_from(const ProblemShape& shape, void* data, int64_t row_elems, int64_t from) {
  if (from >= shape.rows) return;
  const int64_t row_bytes = row_elems * dtype_bytes(shape.dtype);
  std::memset(static_cast<char*>(data) + from * row_bytes, 0, size_t((shape.rows - from) * row_bytes));
}

}  // namespace cpu
}  // namespace paddle_gqa
