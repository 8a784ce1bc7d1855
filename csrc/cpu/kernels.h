// The CPU ops' bodies, without the step check: the public launchers (launchers.h) check first,
// then call these; append_attention checks once and calls both.
#pragma once

#include <cstdint>

#include "paddle_gqa/op_args.h"

namespace paddle_gqa {
namespace cpu {

// For rows t < total of qkv: rotates q and k (when shape.rotary_dim > 0), writes k and v into the
// caches and the rotated q to q_out (contiguous [>= total, Hq, D], dtype of qkv). Rows >= total
// are not touched.
void rope_write_rows(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                     const RopeInputs& rope, void* q_out, int64_t total);

// For rows t < T = cu_seqlens_q[B] of q (contiguous [>= T, Hq, D]): attention over the cache into
// out (contiguous [>= T, Hq*Dv]), both of the shape's dtype. Rows >= T are not touched.
void attend_rows(const ProblemShape& shape, const void* q, const StepInputs& step, const MaskInputs& mask,
                 void* out);

}  // namespace cpu
}  // namespace paddle_gqa
