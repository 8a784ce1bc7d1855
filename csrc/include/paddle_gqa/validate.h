// Host-side validation of every op (DESIGN.md §4): each returns the ProblemShape or throws
// InvalidArgument naming the argument, its value and what was expected. Nothing is touched.
#pragma once

#include "paddle_gqa/op_args.h"

namespace paddle_gqa {

// Which device the op runs on; the CUDA path refuses fp32.
enum class Backend { kCPU, kCUDA };

// qkv [rows, Hq*D + Hkv*D + Hkv*Dv]; q_out [rows, Hq, D] (may be undefined when the caller
// allocates after validation).
ProblemShape validate_rope_write_cache(Backend backend, const TensorView& qkv, const StepInputs& step,
                                       const RopeInputs& rope, const TensorView& q_out);

// q [rows, Hq, D]; out [rows, Hq*Dv] (may be undefined).
ProblemShape validate_paged_attention(Backend backend, const TensorView& q, const StepInputs& step,
                                      const MaskInputs& mask, const TensorView& out);

// qkv as in rope_write_cache; out [rows, Hq*Dv] (may be undefined).
ProblemShape validate_append_attention(Backend backend, const TensorView& qkv, const StepInputs& step,
                                       const RopeInputs& rope, const MaskInputs& mask,
                                       const TensorView& out);

}  // namespace paddle_gqa
