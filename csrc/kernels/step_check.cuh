// The device-side step check (DESIGN.md §4): runs check_slot over every slot and keeps the first
// error in a per-device record that every writing kernel of the same op call reads.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "attention/attention_params.h"
#include "paddle_gqa/step_rules.h"

namespace paddle_gqa::cuda {

// One per device, in device memory (workspace.h owns it). Between checks, first_bad_slot is
// kNoBadSlot and ctas_done is 0; the check kernel's last CTA restores both, so the record also works
// inside a CUDA graph replayed any number of times.
// Because it is one record per device, not per call, two calls whose kernels overlap on one device
// (different streams, or a graph replayed beside an eager call) share `current` and the CTA
// counter: one call's writing kernels may then see the other's result. Calls on one device must be
// serialised (one stream), as workspace.h also requires.
struct StepErrorState {
  StepError current;        // the result of the latest check; writing kernels skip all work when set
  StepError sticky;         // the first error of a check launched under graph capture, kept until
                            // an uncaptured call or check_errors() raises and clears it
  int32_t first_bad_slot;   // atomicMin target during a check
  uint32_t ctas_done;       // CTAs of the running check that have finished
};

inline constexpr int32_t kNoBadSlot = 0x7fffffff;

// True when the op call's step check failed: the writing kernel must not write anything.
__device__ __forceinline__ bool step_failed(const StepError* error) {
  return *reinterpret_cast<const volatile int32_t*>(&error->code) != 0;
}

// Checks every slot of `data` and publishes the first error (lowest slot) in state->current, also in
// state->sticky when `keep_sticky` (graph capture) and no sticky error is pending. Asynchronous.
// With `maps`, the CTA that publishes also writes the attention's tile maps (the planner's work, so
// the attention needs no planner launch); after a failed check no kernel reads them. The kernel lets programmatic dependent
// launches after it start at once (they wait for its completion before reading anything).
void launch_step_check(const StepData& data, StepErrorState* state, bool keep_sticky, cudaStream_t stream,
                       const attn::TileMapJob* maps = nullptr);

}  // namespace paddle_gqa::cuda
