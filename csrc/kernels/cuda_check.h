// Error checking for CUDA runtime calls and kernel launches: failures become RuntimeFailure.
#pragma once

#include <cuda_runtime.h>

#include "paddle_gqa/errors.h"

namespace paddle_gqa::cuda {

// Throws RuntimeFailure naming the failed call, where it was made and CUDA's own message.
inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess) {
    throw RuntimeFailure(str("CUDA error ", cudaGetErrorName(status), " (", cudaGetErrorString(status),
                             ") in ", what, " at ", file, ":", line));
  }
}

}  // namespace paddle_gqa::cuda

// Wraps one runtime call: PGQA_CUDA_CHECK(cudaMemcpyAsync(...)).
#define PGQA_CUDA_CHECK(call) ::paddle_gqa::cuda::check_cuda((call), #call, __FILE__, __LINE__)

// After a kernel launch: reports a bad launch configuration or an earlier asynchronous fault.
#define PGQA_CUDA_CHECK_LAUNCH(kernel_name) \
  ::paddle_gqa::cuda::check_cuda(cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__)
