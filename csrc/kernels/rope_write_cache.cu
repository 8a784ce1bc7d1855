// The RoPE + paged-cache write kernel: rotates q and k of each token row in fp32, writes k and v
// into the token's cache slot and the rotated q into q_out, each rounded to the dtype once.
#include "rope_write_cache.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_check.h"
#include "step_check.cuh"

namespace paddle_gqa::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHalfRotary = 128;  // rotary_dim <= D <= 256

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }

// VEC consecutive elements; with VEC = 8 one 16-byte access.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* src, float (&x)[VEC]) {
  const Vec<T, VEC> raw = *reinterpret_cast<const Vec<T, VEC>*>(src);
#pragma unroll
  for (int j = 0; j < VEC; ++j) x[j] = to_float(raw.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* dst, const float (&y)[VEC]) {
  Vec<T, VEC> raw;
#pragma unroll
  for (int j = 0; j < VEC; ++j) raw.v[j] = from_float<T>(y[j]);
  *reinterpret_cast<Vec<T, VEC>*>(dst) = raw;
}

// Rotates dims d0 .. d0+VEC-1 of one head (DESIGN.md §2). `head` is the head's first element in
// the qkv row (partners outside this vector are read from it); cos/sin hold the position's
// rotary_dim/2 table entries. Each pair is a*c - b*s / b*c + a*s with every product and sum
// rounded to fp32 (no fused multiply-add), the same arithmetic as the CPU implementation.
template <typename T, int VEC>
__device__ __forceinline__ void rotate(float (&x)[VEC], const T* head, int d0, int rotary_dim, bool neox,
                                       const float* cos, const float* sin) {
  const int half = rotary_dim / 2;
  float partner[VEC];
  if (neox) {
    if (half % VEC == 0) {
      // The whole vector lies in one half, so its partners form one aligned vector too.
      if (d0 < rotary_dim) load_vec<T, VEC>(head + (d0 < half ? d0 + half : d0 - half), partner);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const int d = d0 + j;
        partner[j] = d < rotary_dim ? to_float(head[d < half ? d + half : d - half]) : 0.f;
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      // d0 is a multiple of VEC, so with an even VEC the pair (2k, 2k+1) is inside the vector.
      if constexpr (VEC % 2 == 0) {
        partner[j] = x[j ^ 1];
      } else {
        const int d = d0 + j;
        partner[j] = d < rotary_dim ? to_float(head[d ^ 1]) : 0.f;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const int d = d0 + j;
    if (d >= rotary_dim) continue;
    const bool first = neox ? d < half : (d % 2 == 0);
    const int i = neox ? (first ? d : d - half) : d / 2;
    const float xc = __fmul_rn(x[j], cos[i]);
    const float ps = __fmul_rn(partner[j], sin[i]);
    x[j] = first ? __fsub_rn(xc, ps) : __fadd_rn(xc, ps);
  }
}

// What a CTA does with its row, decided once by thread 0.
enum RowKind : int { kPaddingRow = 0, kTokenRow = 1, kSkipRow = 2 };

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) rope_write_cache_kernel(RopeWriteParams p) {
  if (step_failed(p.error)) return;
  __shared__ int s_kind;
  __shared__ int64_t s_pos, s_block, s_slot;
  __shared__ float s_cos[kMaxHalfRotary], s_sin[kMaxHalfRotary];
  const int64_t row = blockIdx.x;
  const bool rope = p.rotary_dim > 0;

  if (threadIdx.x == 0) {
    // The checks below always pass after a clean step check; they only keep every index inside
    // its tensor whatever the data.
    int kind = kSkipRow;
    const int32_t* cu = p.cu_seqlens_q;
    if (row >= cu[p.batch]) {
      kind = kPaddingRow;
    } else if (p.batch > 0) {
      // b = the last slot with cu[b] <= row (idle slots have cu[b] == cu[b+1] and are skipped).
      int64_t lo = 0, hi = p.batch - 1;
      while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (cu[mid] <= row) lo = mid; else hi = mid - 1;
      }
      const int64_t b = lo;
      const int64_t pos = int64_t(p.cache_seqlens[b]) + (row - cu[b]);
      const int64_t lb = pos / p.block_size;
      if (cu[b] <= row && pos >= 0 && lb < p.max_blocks_per_seq && (!rope || pos < p.max_position)) {
        const int32_t block = p.block_tables[b * p.max_blocks_per_seq + lb];
        if (block >= 0 && block < p.num_blocks) {
          kind = kTokenRow;
          s_pos = pos;
          s_block = block;
          s_slot = pos % p.block_size;
        }
      }
    }
    s_kind = kind;
  }
  __syncthreads();
  const int kind = s_kind;
  if (kind == kSkipRow) return;
  if (kind == kTokenRow && rope) {
    const int half = p.rotary_dim / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      s_cos[i] = p.cos[s_pos * p.cos_row_stride + i];
      s_sin[i] = p.sin[s_pos * p.sin_row_stride + i];
    }
    __syncthreads();
  }

  const int64_t q_width = int64_t(p.num_q_heads) * p.head_dim;
  const int64_t k_width = int64_t(p.num_kv_heads) * p.head_dim;
  const int64_t width = q_width + k_width + int64_t(p.num_kv_heads) * p.v_head_dim;
  const int64_t e0 = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (e0 >= width) return;

  if (kind == kPaddingRow) {
    if (e0 >= q_width) return;
    const int64_t h = e0 / p.head_dim, d0 = e0 % p.head_dim;
    float zero[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) zero[j] = 0.f;
    store_vec<T, VEC>(static_cast<T*>(p.q_out) + row * p.q_row_stride + h * p.q_head_stride + d0, zero);
    return;
  }

  const T* src_row = static_cast<const T*>(p.qkv) + row * p.qkv_row_stride;
  float x[VEC];
  load_vec<T, VEC>(src_row + e0, x);
  if (e0 < q_width) {
    const int64_t h = e0 / p.head_dim;
    const int d0 = int(e0 % p.head_dim);
    if (rope && d0 < p.rotary_dim)
      rotate<T, VEC>(x, src_row + h * p.head_dim, d0, p.rotary_dim, p.neox_style, s_cos, s_sin);
    store_vec<T, VEC>(static_cast<T*>(p.q_out) + row * p.q_row_stride + h * p.q_head_stride + d0, x);
  } else if (e0 < q_width + k_width) {
    const int64_t h = (e0 - q_width) / p.head_dim;
    const int d0 = int((e0 - q_width) % p.head_dim);
    if (rope && d0 < p.rotary_dim)
      rotate<T, VEC>(x, src_row + q_width + h * p.head_dim, d0, p.rotary_dim, p.neox_style, s_cos, s_sin);
    T* dst = static_cast<T*>(p.key_cache) + s_block * p.k_block_stride + h * p.k_head_stride +
             s_slot * p.k_slot_stride + d0;
    store_vec<T, VEC>(dst, x);
  } else {
    const int64_t h = (e0 - q_width - k_width) / p.v_head_dim;
    const int64_t d0 = (e0 - q_width - k_width) % p.v_head_dim;
    T* dst = static_cast<T*>(p.value_cache) + s_block * p.v_block_stride + h * p.v_head_stride +
             s_slot * p.v_slot_stride + d0;
    store_vec<T, VEC>(dst, x);
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename T>
void launch_typed(const RopeWriteParams& p, cudaStream_t stream) {
  const int64_t width = p.num_q_heads * int64_t(p.head_dim) + p.num_kv_heads * int64_t(p.head_dim + p.v_head_dim);
  // 16-byte accesses need every base and every stride aligned; D and Dv are multiples of 8.
  const bool vec8 = aligned16(p.qkv) && aligned16(p.q_out) && aligned16(p.key_cache) &&
                    aligned16(p.value_cache) && p.head_dim % 8 == 0 && p.v_head_dim % 8 == 0 &&
                    p.qkv_row_stride % 8 == 0 && p.q_row_stride % 8 == 0 && p.q_head_stride % 8 == 0 &&
                    p.k_block_stride % 8 == 0 && p.k_head_stride % 8 == 0 && p.k_slot_stride % 8 == 0 &&
                    p.v_block_stride % 8 == 0 && p.v_head_stride % 8 == 0 && p.v_slot_stride % 8 == 0;
  const int vec = vec8 ? 8 : 1;
  const int64_t chunks = (width / vec + kThreads - 1) / kThreads;
  PGQA_CHECK_ARG(p.rows <= 0x7fffffff && chunks <= 65535, "qkv of shape [", p.rows, ", ", width,
                 "] is too large for the rope_write_cache kernel grid");
  PGQA_CHECK_ARG(p.rotary_dim <= 2 * kMaxHalfRotary, "rotary_dim ", p.rotary_dim, " exceeds ",
                 2 * kMaxHalfRotary);
  const dim3 grid(unsigned(p.rows), unsigned(chunks));
  if (vec8) {
    rope_write_cache_kernel<T, 8><<<grid, kThreads, 0, stream>>>(p);
  } else {
    rope_write_cache_kernel<T, 1><<<grid, kThreads, 0, stream>>>(p);
  }
  PGQA_CUDA_CHECK_LAUNCH("rope_write_cache_kernel");
}

}  // namespace

void launch_rope_write_cache(const RopeWriteParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  switch (p.dtype) {
    case DType::kFloat16: launch_typed<__half>(p, stream); break;
    case DType::kBFloat16: launch_typed<__nv_bfloat16>(p, stream); break;
    default:
      throw InvalidArgument(str("rope_write_cache on CUDA takes float16 or bfloat16, got ", dtype_name(p.dtype)));
  }
}

}  // namespace paddle_gqa::cuda
