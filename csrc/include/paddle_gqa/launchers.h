// Launcher entry points of both implementations. Callers validate first (validate.h) and pass the
// ProblemShape it returned; outputs are allocated by the caller with the shapes in the comments.
#pragma once

#include "paddle_gqa/op_args.h"

namespace paddle_gqa {

namespace cpu {
// Checks the step's data (step_rules.h) before any write and throws InvalidArgument on error.
// q_out: [rows, Hq, D].
void rope_write_cache(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const TensorView& q_out);
// out: [rows, Hq*Dv].
void paged_attention(const ProblemShape& shape, const TensorView& q, const StepInputs& step,
                     const MaskInputs& mask, const TensorView& out);
// out: [rows, Hq*Dv].
void append_attention(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const MaskInputs& mask, const TensorView& out);
}  // namespace cpu

namespace cuda {
// `stream` is a cudaStream_t. Device data is checked on the device before any write; outside
// graph capture the launcher reads the error record back and throws InvalidArgument; under
// capture the record stays on the device for check_errors().
void rope_write_cache(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const TensorView& q_out, void* stream);
void paged_attention(const ProblemShape& shape, const TensorView& q, const StepInputs& step,
                     const MaskInputs& mask, const TensorView& out, void* stream);
void append_attention(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const MaskInputs& mask, const TensorView& out,
                      void* stream);
// Throws InvalidArgument for an error recorded on `device_id` during graph capture, and clears it.
void check_errors(int device_id);
}  // namespace cuda

}  // namespace paddle_gqa
