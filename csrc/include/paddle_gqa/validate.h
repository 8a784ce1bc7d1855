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

// The `plan` op (plan.h): q_or_qkv is qkv [rows, Hq*D + Hkv*D + Hkv*Dv] (rank 2) or q [rows, Hq, D]
// (rank 3); rope as for the ops (tables optional); mask without sinks (its window and causal are
// the plan's). plan_out int32 [kPlanWords] (may be undefined when the caller allocates after).
ProblemShape validate_plan(Backend backend, const TensorView& q_or_qkv, const StepInputs& step,
                           const RopeInputs& rope, const MaskInputs& mask, const TensorView& plan_out);

// The optional `plan` input of an op: int32 [kPlanWords], contiguous, on the device of `anchor` (the
// op's qkv or q, named `anchor_name`). Does nothing when `plan` is undefined. Reads no data: the
// CPU ops compare the words with the call (cpu::check_plan).
void validate_plan_input(Backend backend, const TensorView& plan, const TensorView& anchor,
                         const char* anchor_name);

}  // namespace paddle_gqa
