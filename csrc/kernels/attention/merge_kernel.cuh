// The split-KV merge, which also zeroes the padding rows >= T: grid (rows, chunks of one row), and
// the padding-row zeroing that a launch's leading CTAs run when no merge is launched.
//
// Split s of a row left O_s = (its O / its l) and lse_s = m_s + log2(l_s) (exp2 domain). With
// M = max(max_s lse_s, sink) and w_s = 2^(lse_s - M):
//   out = sum_s w_s O_s / (sum_s w_s + 2^(sink - M)),
// the sink term (absent without sinks) entering the denominator once. Rows of slots that used
// one split were written by the attention kernel and are left alone, and so are the rows of
// decode slots when the decode tiles merged their own splits (p.split_counters).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention_params.h"
#include "mma.cuh"
#include "online_softmax.cuh"
#include "planner.cuh"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

inline constexpr int kMergeThreads = 128;
inline constexpr int kMergeChunk = kMergeThreads * 4;  // elements of an output row per merge CTA

// CTAs (x) of the merge grid's second dimension for rows of Hq * Dv elements.
inline int64_t merge_chunks(int64_t width) { return (width + kMergeChunk - 1) / kMergeChunk; }

// Elements (b16) of the padding rows one zeroing CTA clears, when the padding is all the rows.
inline constexpr int64_t kZeroElemsPerCta = 64 * 1024;

// Zeroes out's rows [T, rows) (T = cu_seqlens_q[B]): CTA `cta` of `ctas` clears one contiguous
// share in 16-byte stores. Rows are Hq * Dv elements, a multiple of 8, so every share starts
// 16-byte aligned. Called only after the step check passed.
template <typename T>
__device__ void zero_padding_rows(const AttentionParams& p, int dv, int64_t cta, int64_t ctas) {
  const int64_t width = int64_t(p.num_q_heads) * dv;
  const int64_t begin = int64_t(p.cu_seqlens_q[p.batch]) * width;
  const int64_t units = (p.rows * width - begin) / 8;  // 16-byte units of padding
  if (units <= 0) return;
  const int64_t per = (units + ctas - 1) / ctas;
  const int64_t u_end = min(units, (cta + 1) * per);
  uint4* dst = reinterpret_cast<uint4*>(static_cast<T*>(p.out) + begin);
  for (int64_t u = cta * per + threadIdx.x; u < u_end; u += blockDim.x) dst[u] = make_uint4(0u, 0u, 0u, 0u);
}

// Merges elements [d, d + 4) of head `head` of token row `row` over the row's n_splits partial
// results and writes them to out. The partials are read past L1 (__ldcg): the CTA that merges in
// the attention epilogue did not write most of them, and L1 is not coherent across SMs.
template <typename T>
__device__ __forceinline__ void merge_four(const AttentionParams& p, int64_t row, int64_t head, int64_t d,
                                           int n_splits, int dv) {
  const int64_t hq = p.num_q_heads;
  const int64_t split_stride = p.rows * hq;
  const int64_t base = row * hq + head;
  float mx = p.sinks != nullptr ? p.sinks[head] * 1.4426950408889634f : -INFINITY;
  const float sink = mx;
  for (int s = 0; s < n_splits; ++s) mx = fmaxf(mx, __ldcg(p.partial_lse + s * split_stride + base));
  float l = 0.f;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if (mx != -INFINITY) {
    for (int s = 0; s < n_splits; ++s) {
      const float w = fast_exp2(__ldcg(p.partial_lse + s * split_stride + base) - mx);
      const float4 v = __ldcg(reinterpret_cast<const float4*>(p.partial_o + (s * split_stride + base) * dv + d));
      l += w;
      acc[0] += w * v.x;
      acc[1] += w * v.y;
      acc[2] += w * v.z;
      acc[3] += w * v.w;
    }
    l += fast_exp2(sink - mx);
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  uint2 packed;
  packed.x = pack2<T>(acc[0] * inv, acc[1] * inv);
  packed.y = pack2<T>(acc[2] * inv, acc[3] * inv);
  *reinterpret_cast<uint2*>(static_cast<T*>(p.out) + base * dv + d) = packed;
}

// Grid (rows, merge_chunks(Hq * Dv)); CTA (row, c) merges elements [c * kMergeChunk, ...) of its row,
// 4 consecutive dims of one head per thread.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads) merge_splits_kernel(const AttentionParams p, int dv) {
  pdl_wait();
  if (p.error->code != 0) return;
  const int64_t row = blockIdx.x;
  const int64_t hq = p.num_q_heads;
  const int64_t width = hq * dv;  // multiple of 8
  const int64_t e = int64_t(blockIdx.y) * kMergeChunk + int64_t(threadIdx.x) * 4;
  if (e >= width) return;
  T* out = static_cast<T*>(p.out) + row * width;
  if (row >= p.cu_seqlens_q[p.batch]) {
    *reinterpret_cast<uint2*>(out + e) = make_uint2(0u, 0u);
    return;
  }
  const int b = last_slot_starting_at_or_before(p.cu_seqlens_q, p.batch, row);  // the row's slot
  const int n = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
  if (p.split_counters != nullptr && is_decode_slot(n, p.group)) return;  // merged by its decode tile
  const int n_splits = slot_num_splits(p.cache_seqlens[b], n, p.causal, p.sliding_window, p.block_n, p.max_splits);
  if (n_splits == 1) return;
  merge_four<T>(p, row, e / dv, e % dv, n_splits, dv);
}

}  // namespace paddle_gqa::cuda::attn
