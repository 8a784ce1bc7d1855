// Per-device state the CUDA launchers keep between calls: the step-error record, a scratch
// workspace that grows only outside graph capture, a side stream, and device attributes.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "step_check.cuh"

namespace paddle_gqa::cuda {

// Sets the current CUDA device for the guard's lifetime and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// True while `stream` is being captured into a CUDA graph (any capture status but none).
bool is_capturing(cudaStream_t stream);

// Multiprocessors of `device`, read once.
int num_sms(int device);

// The device's step-error record, allocated on first use. The first use must not be under graph
// capture (allocation is not capturable): that throws a RuntimeFailure that says so.
StepErrorState* step_error_state(int device, bool capturing);

// Second streams of the device (non-blocking; one at the highest priority, one at the default)
// with two events, on which one launch of a call runs beside the call's stream (forked and joined
// within the call). Created with the error record by step_error_state's first use (never under
// capture), which must come first.
struct SideStream {
  cudaStream_t high = nullptr;
  cudaStream_t normal = nullptr;
  cudaEvent_t fork = nullptr;
  cudaEvent_t join = nullptr;
};
SideStream side_stream(int device);

// The compute capability's major number of `device`, read once.
int compute_major(int device);

// The device's step-error record if it exists, else nullptr (check_errors needs nothing allocated).
StepErrorState* existing_step_error_state(int device);

// At least `bytes` of device scratch memory, 256-byte aligned, valid until the next call on this
// device. It grows only outside capture; under capture a too-small workspace throws RuntimeFailure
// asking for one uncaptured call of the same (or a larger) shape first. A buffer that a captured
// graph may use is never freed, so graphs stay valid when it grows later.
//
// One workspace per device: calls on one device must not run concurrently from different streams.
void* workspace(int device, size_t bytes, bool capturing);

// Rounds up to the 256-byte alignment of workspace carve-outs.
inline size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace paddle_gqa::cuda
