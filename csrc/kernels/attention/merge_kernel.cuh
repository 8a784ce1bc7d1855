// The split-KV merge, which also zeroes the padding rows >= T: one CTA per output row.
//
// Split s of a row left O_s = (its O / its l) and lse_s = m_s + log2(l_s) (exp2 domain). With
// M = max(max_s lse_s, sink) and w_s = 2^(lse_s - M):
//   out = sum_s w_s O_s / (sum_s w_s + 2^(sink - M)),
// the sink term (absent without sinks) entering the denominator once. Rows of slots that used
// one split were written by the attention kernel and are left alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention_params.h"
#include "mma.cuh"
#include "online_softmax.cuh"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

inline constexpr int kMergeThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kMergeThreads) merge_splits_kernel(const AttentionParams p, int dv) {
  if (p.error->code != 0) return;
  const int64_t row = blockIdx.x;
  const int64_t hq = p.num_q_heads;
  const int64_t width = hq * dv;  // multiple of 8
  T* out = static_cast<T*>(p.out) + row * width;
  if (row >= p.cu_seqlens_q[p.batch]) {
    for (int64_t e = int64_t(threadIdx.x) * 4; e < width; e += kMergeThreads * 4) {
      *reinterpret_cast<uint2*>(out + e) = make_uint2(0u, 0u);
    }
    return;
  }
  int b = 0;  // the last slot starting at or before this row (an idle slot ends where it starts)
  for (int lo = 0, hi = p.batch - 1; lo <= hi;) {
    const int mid = (lo + hi) >> 1;
    if (p.cu_seqlens_q[mid] <= row) { b = mid; lo = mid + 1; } else { hi = mid - 1; }
  }
  const int n = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
  const int n_splits = slot_num_splits(p.cache_seqlens[b], n, p.causal, p.sliding_window, p.block_n, p.max_splits);
  if (n_splits == 1) return;
  const int64_t split_stride = p.rows * hq;
  for (int64_t e = int64_t(threadIdx.x) * 4; e < width; e += kMergeThreads * 4) {
    const int64_t head = e / dv;
    const int64_t d = e % dv;
    const int64_t base = row * hq + head;
    float mx = p.sinks != nullptr ? p.sinks[head] * 1.4426950408889634f : -INFINITY;
    const float sink = mx;
    for (int s = 0; s < n_splits; ++s) mx = fmaxf(mx, p.partial_lse[s * split_stride + base]);
    float l = 0.f;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (mx != -INFINITY) {
      for (int s = 0; s < n_splits; ++s) {
        const float w = fast_exp2(p.partial_lse[s * split_stride + base] - mx);
        const float4 v = *reinterpret_cast<const float4*>(p.partial_o + (s * split_stride + base) * dv + d);
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
    *reinterpret_cast<uint2*>(out + e) = packed;
  }
}

}  // namespace paddle_gqa::cuda::attn
