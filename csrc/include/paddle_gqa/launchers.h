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
// The plan op (plan.h): checks the step's data (reads, and positions when shape.max_position > 0),
// throwing InvalidArgument on error, then writes the words into plan_out (int32 [kPlanWords]).
// `shape` comes from validate_plan.
void plan_step(const ProblemShape& shape, const StepInputs& step, const TensorView& plan_out);
// Throws InvalidArgument naming `plan` when its words (plan.h) do not describe the call of `shape`:
// magic, batch, rows and block_size always, sliding_window and causal when `mask` (the op takes
// them), has_rope when `rope` (the op takes RoPE tables); also when its error word is set. The CPU
// ops check the step's data themselves either way.
void check_plan(const ProblemShape& shape, const TensorView& plan, bool mask, bool rope);
}  // namespace cpu

namespace cuda {
// `stream` is a cudaStream_t. Device data is checked on the device before any write; outside
// graph capture the launcher reads the error record back and throws InvalidArgument; under
// capture the record stays on the device for check_errors(). `defer_errors` (the op was given a
// plan, plan.h): no read-back and no synchronization even outside capture; an error found goes to
// the sticky record as under capture, raised by check_errors(), the next plan_step or the next
// call without defer_errors.
void rope_write_cache(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const TensorView& q_out, void* stream,
                      bool defer_errors = false);
void paged_attention(const ProblemShape& shape, const TensorView& q, const StepInputs& step,
                     const MaskInputs& mask, const TensorView& out, void* stream,
                     bool defer_errors = false);
void append_attention(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const MaskInputs& mask, const TensorView& out,
                      void* stream, bool defer_errors = false);
// The plan op (plan.h): the step check (reads, and positions when shape.max_position > 0) on the
// device, the words written into plan_out (int32 [kPlanWords] on the step's device), then ONE
// read-back outside capture: throws InvalidArgument for a deferred error of an earlier call first,
// then for this step's. Under capture the record is deferred as for the ops.
void plan_step(const ProblemShape& shape, const StepInputs& step, const TensorView& plan_out, void* stream);
// Throws InvalidArgument for an error recorded on `device_id` by a call made during graph capture
// or given a plan (the sticky record), and clears it. Synchronizes the device.
void check_errors(int device_id);
}  // namespace cuda

}  // namespace paddle_gqa
