// Online softmax state of the two query rows a thread holds in an mma.m16n8 accumulator.
//
// Scores live in the exp2 domain: s = softmax_scale * log2(e) * <q, k>; the kernel hands in the raw
// dot products x and the factor c = softmax_scale * log2(e) > 0, and s = c x is formed inside one
// FFMA per element (max commutes with the positive scale). After a set K of keys,
//   m = max_{j in K} s_j,   l = sum_{j in K} 2^(s_j - m),   O = sum_{j in K} 2^(s_j - m) v_j.
// Adding keys K' gives m' = max(m, max_{K'} s), and with alpha = 2^(m - m'):
//   l' = alpha l + sum_{K'} 2^(s_j - m'),   O' = alpha O + sum_{K'} 2^(s_j - m') v_j.
// While a row has seen only masked keys, m = -inf; the update then subtracts 0 instead of m', so
// no inf - inf appears and masked keys contribute 2^-inf = 0. The row's result is O / l, and its
// log2-sum-exp2 is m + log2(l); the sink term 2^(sink - m) joins l once, at the very end.
#pragma once

#include <cstdint>

namespace paddle_gqa::cuda::attn {

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Row i of the thread (0: accumulator row g, 1: row g + 8) occupies elements 2i, 2i+1 of every
// 16x8 accumulator block. l is thread-local (4 threads of a quad share a row) until finish().
struct OnlineSoftmax {
  float m[2];
  float l[2];

  __device__ __forceinline__ void init() {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
  }

  // x: this tile's raw dot products (masked = -inf), replaced by their unnormalised
  // probabilities 2^(c x - m'); o: the output accumulator, rescaled to the new maximum.
  template <int NB, int NO>
  __device__ __forceinline__ void update(float (&s)[NB][4], float (&o)[NO][4], float c) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float alpha = update_row(i, s, c);
#pragma unroll
      for (int no = 0; no < NO; ++no) {
        o[no][2 * i] *= alpha;
        o[no][2 * i + 1] *= alpha;
      }
    }
  }

  // update with a lazy rescale (decode tiles): m stays the maximum O and l are scaled to until some
  // row of the warp meets a score more than kLazyRescaleLog2 above it, so most tiles skip the
  // 2 x NO multiplies of O. In between, probabilities 2^(s - m) stay <= 2^kLazyRescaleLog2 (finite
  // in fp32 and in the b16 P operand, whose relative precision does not depend on the scale); the
  // result O / l and the log2-sum-exp2 m + log2(l) hold for any m the terms share. Warp-uniform:
  // every thread of the warp calls it.
  static constexpr float kLazyRescaleLog2 = 8.f;
  template <int NB, int NO>
  __device__ __forceinline__ void update_lazy(float (&s)[NB][4], float (&o)[NO][4], float c) {
    const float xmax[2] = {row_max(0, s) * c, row_max(1, s) * c};
    // -inf > -inf + k is false: a row that has met only masked keys never asks for a rescale.
    const bool grows = xmax[0] > m[0] + kLazyRescaleLog2 || xmax[1] > m[1] + kLazyRescaleLog2;
    if (__any_sync(0xffffffffu, grows)) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float mx = fmaxf(m[i], xmax[i]);
        const float alpha = fast_exp2(m[i] - (mx == -INFINITY ? 0.f : mx));
        m[i] = mx;
        l[i] *= alpha;
#pragma unroll
        for (int no = 0; no < NO; ++no) {
          o[no][2 * i] *= alpha;
          o[no][2 * i + 1] *= alpha;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) l[i] += exp2_row(i, s, c, m[i] == -INFINITY ? 0.f : m[i]);
  }

  // The score half of update: m, l and s advance; the factor o must be multiplied by is returned
  // in alpha (a kernel whose o is still being accumulated asynchronously applies it later, rescale).
  template <int NB>
  __device__ __forceinline__ void update_scores(float (&s)[NB][4], float c, float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < 2; ++i) alpha[i] = update_row(i, s, c);
  }

  // Row i's step of update_scores; returns its alpha.
  template <int NB>
  __device__ __forceinline__ float update_row(int i, float (&s)[NB][4], float c) {
    const float mx = fmaxf(m[i], row_max(i, s) * c);
    const float base = mx == -INFINITY ? 0.f : mx;
    const float alpha = fast_exp2(m[i] - base);
    m[i] = mx;
    l[i] = l[i] * alpha + exp2_row(i, s, c, base);
    return alpha;
  }

  // Row i's largest raw score over the quad's four threads (-inf when all are masked).
  template <int NB>
  __device__ __forceinline__ static float row_max(int i, const float (&s)[NB][4]) {
    float x = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) x = fmaxf(x, fmaxf(s[nb][2 * i], s[nb][2 * i + 1]));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  }

  // Replaces row i's raw scores x by 2^(c x - base) and returns the thread's sum of them.
  template <int NB>
  __device__ __forceinline__ static float exp2_row(int i, float (&s)[NB][4], float c, float base) {
    float sum = 0.f;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      s[nb][2 * i] = fast_exp2(fmaf(s[nb][2 * i], c, -base));
      s[nb][2 * i + 1] = fast_exp2(fmaf(s[nb][2 * i + 1], c, -base));
      sum += s[nb][2 * i] + s[nb][2 * i + 1];
    }
    return sum;
  }

  template <int NO>
  __device__ __forceinline__ static void rescale(float (&o)[NO][4], const float (&alpha)[2]) {
#pragma unroll
    for (int no = 0; no < NO; ++no) {
      o[no][0] *= alpha[0];
      o[no][1] *= alpha[0];
      o[no][2] *= alpha[1];
      o[no][3] *= alpha[1];
    }
  }

  // Sums l over the quad so every thread of a row holds the row's full l.
  __device__ __forceinline__ void finish() {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
  }
};

}  // namespace paddle_gqa::cuda::attn
