// Marks functions that both the C++ (CPU) and CUDA implementations compile.
#pragma once

#if defined(__CUDACC__)
#define PGQA_HD __host__ __device__ __forceinline__
#else
#define PGQA_HD inline
#endif
