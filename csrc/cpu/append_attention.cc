// CPU append_attention: rope_write_cache into a temporary q, then paged_attention, after one check.
//
// The temporary q has the dtype of qkv, so the queries are rounded exactly as rope_write_cache
// rounds q_out and the result equals rope_write_cache followed by paged_attention bit for bit.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels.h"
#include "paddle_gqa/launchers.h"
#include "step.h"

namespace paddle_gqa {
namespace cpu {

void append_attention(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const MaskInputs& mask, const TensorView& out) {
  // One check covers both halves: the blocks written and read, and positions against the tables.
  const int64_t total = check_step(shape, step, /*checks_reads=*/true);
  const int64_t q_elems = total * shape.num_q_heads * shape.head_dim;
  // [T, Hq, D] of shape.dtype, every element written before it is read (so left uninitialised);
  // float storage is aligned for every element type.
  std::unique_ptr<float[]> q(new float[(std::size_t(q_elems) * dtype_bytes(shape.dtype) + 3) / 4]);
  rope_write_rows(shape, qkv, step, rope, q.get(), total);
  attend_rows(shape, q.get(), step, mask, out.data);
  zero_rows_from(shape, out.data, shape.out_width(), total);
}

}  // namespace cpu
}  // namespace paddle_gqa
