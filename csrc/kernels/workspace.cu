// Per-device state of the CUDA launchers (workspace.h): error record, workspace, SM count.
#include "workspace.h"

#include <memory>
#include <mutex>
#include <vector>

#include "cuda_check.h"

namespace paddle_gqa::cuda {
namespace {

struct DeviceState {
  int num_sms = 0;
  int major = 0;
  StepErrorState* error = nullptr;
  SideStream side;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool workspace_captured = false;  // a graph captured with this buffer may still replay
  std::vector<void*> retired;       // outgrown buffers that captured graphs may still use
};

// Device states live for the whole process (graphs captured with their buffers may outlive
// any owner we could name), so they are never freed.
std::mutex g_mutex;
std::vector<std::unique_ptr<DeviceState>> g_states;

DeviceState& state_locked(int device) {
  PGQA_CHECK_ARG(device >= 0, "CUDA device ", device, " is invalid: expected a device index >= 0");
  if (size_t(device) >= g_states.size()) g_states.resize(size_t(device) + 1);
  if (!g_states[size_t(device)]) g_states[size_t(device)] = std::make_unique<DeviceState>();
  return *g_states[size_t(device)];
}

}  // namespace

DeviceGuard::DeviceGuard(int device) {
  PGQA_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) PGQA_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
}

bool is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  PGQA_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

int num_sms(int device) {
  std::lock_guard<std::mutex> lock(g_mutex);
  DeviceState& s = state_locked(device);
  if (s.num_sms == 0) PGQA_CUDA_CHECK(cudaDeviceGetAttribute(&s.num_sms, cudaDevAttrMultiProcessorCount, device));
  return s.num_sms;
}

StepErrorState* step_error_state(int device, bool capturing) {
  std::lock_guard<std::mutex> lock(g_mutex);
  DeviceState& s = state_locked(device);
  if (s.error == nullptr) {
    if (capturing) {
      throw RuntimeFailure(str("paddle_gqa: the first CUDA call on device ", device,
                               " is being captured into a CUDA graph, but its error record must be "
                               "allocated first: run one call outside capture before capturing"));
    }
    StepErrorState init{};
    init.first_bad_slot = kNoBadSlot;
    init.ctas_done = 0;
    void* ptr = nullptr;
    PGQA_CUDA_CHECK(cudaMalloc(&ptr, sizeof(StepErrorState)));
    PGQA_CUDA_CHECK(cudaMemcpy(ptr, &init, sizeof(StepErrorState), cudaMemcpyHostToDevice));
    s.error = static_cast<StepErrorState*>(ptr);
    int least = 0, greatest = 0;
    PGQA_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    PGQA_CUDA_CHECK(cudaStreamCreateWithPriority(&s.side.high, cudaStreamNonBlocking, greatest));
    PGQA_CUDA_CHECK(cudaStreamCreateWithPriority(&s.side.normal, cudaStreamNonBlocking, least));
    PGQA_CUDA_CHECK(cudaEventCreateWithFlags(&s.side.fork, cudaEventDisableTiming));
    PGQA_CUDA_CHECK(cudaEventCreateWithFlags(&s.side.join, cudaEventDisableTiming));
  }
  return s.error;
}

SideStream side_stream(int device) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const DeviceState& s = state_locked(device);
  if (s.side.high == nullptr) {
    throw RuntimeFailure(str("paddle_gqa: the side stream of CUDA device ", device,
                             " is created with the error record: call step_error_state first"));
  }
  return s.side;
}

int compute_major(int device) {
  std::lock_guard<std::mutex> lock(g_mutex);
  DeviceState& s = state_locked(device);
  if (s.major == 0) PGQA_CUDA_CHECK(cudaDeviceGetAttribute(&s.major, cudaDevAttrComputeCapabilityMajor, device));
  return s.major;
}

StepErrorState* existing_step_error_state(int device) {
  std::lock_guard<std::mutex> lock(g_mutex);
  return state_locked(device).error;
}

void* workspace(int device, size_t bytes, bool capturing) {
  std::lock_guard<std::mutex> lock(g_mutex);
  DeviceState& s = state_locked(device);
  bytes = align_up(bytes < 256 ? 256 : bytes);
  if (bytes > s.workspace_bytes) {
    if (capturing) {
      throw RuntimeFailure(str("paddle_gqa: this call needs ", bytes, " bytes of CUDA workspace on device ",
                               device, " but only ", s.workspace_bytes,
                               " are allocated, and memory cannot be allocated during CUDA graph capture: run "
                               "one call with the same (or a larger) shape outside capture first"));
    }
    if (s.workspace != nullptr) {
      if (s.workspace_captured) {
        s.retired.push_back(s.workspace);
      } else {
        // cudaFree waits for the device, so kernels still reading the old buffer finish first.
        PGQA_CUDA_CHECK(cudaFree(s.workspace));
      }
    }
    s.workspace = nullptr;
    s.workspace_bytes = 0;
    s.workspace_captured = false;
    // Grow by at least half again, so a slowly growing batch does not reallocate every step.
    const size_t grown = align_up(bytes + bytes / 2);
    void* ptr = nullptr;
    PGQA_CUDA_CHECK(cudaMalloc(&ptr, grown));
    s.workspace = ptr;
    s.workspace_bytes = grown;
  }
  if (capturing) s.workspace_captured = true;
  return s.workspace;
}

}  // namespace paddle_gqa::cuda
