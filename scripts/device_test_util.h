// Helpers shared by the standalone CUDA test drivers (attention_test.cu, hopper_prefill_test.cu):
// a checked-call macro that exits with the failing call named, and host-vector uploads.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                      \
  do {                                                                                             \
    cudaError_t e_ = (x);                                                                          \
    if (e_ != cudaSuccess) {                                                                       \
      std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
      std::exit(2);                                                                                \
    }                                                                                              \
  } while (0)

// A device copy of v (cudaMalloc'd; the caller frees it).
template <typename V>
V* to_device(const std::vector<V>& v) {
  V* d = nullptr;
  CK(cudaMalloc(&d, v.size() * sizeof(V)));
  CK(cudaMemcpy(d, v.data(), v.size() * sizeof(V), cudaMemcpyHostToDevice));
  return d;
}
