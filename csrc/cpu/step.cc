// The CPU step check (step_rules.h over every slot) and row -> slot lookup.
#include "step.h"

#include <cstring>

#include "paddle_gqa/errors.h"
#include "paddle_gqa/step_data.h"

namespace paddle_gqa {
namespace cpu {

int64_t check_step(const ProblemShape& shape, const StepInputs& step, bool checks_reads) {
  const StepData d = make_step_data(shape, step, checks_reads, /*checks_positions=*/true);
  const StepError empty = check_empty_step(d);
  if (empty.code != int32_t(StepErrorCode::kOk)) throw InvalidArgument(describe(empty));
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
