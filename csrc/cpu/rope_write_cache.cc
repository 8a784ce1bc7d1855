// CPU rope_write_cache: RoPE on q and k of each new token, k and v into the paged cache.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "numeric.h"
#include "paddle_gqa/errors.h"
#include "paddle_gqa/launchers.h"
#include "parallel.h"
#include "step.h"

namespace paddle_gqa {
namespace cpu {
namespace {

// Rows per work item: enough to amortise the hand-out, few enough to balance.
constexpr int64_t kRowsPerItem = 16;

// Copies one head of `width` elements from src to dst and, when cos is given, rotates its first
// `rot` dims in fp32 with the row's angles cos/sin[0 .. rot/2) and rounds them to T. Dims past
// rot are copied bit for bit.
template <typename T>
void rope_head(const T* src, T* dst, int width, int rot, const float* cos, const float* sin, bool neox) {
  std::memcpy(dst, src, sizeof(T) * size_t(width));
  if (cos == nullptr) return;
  const int half = rot / 2;
  for (int k = 0; k < half; ++k) {
    // neox (HF rotate_half) pairs k with k + rot/2; GPT-J pairs 2k with 2k+1.
    const int i1 = neox ? k : 2 * k;
    const int i2 = neox ? k + half : 2 * k + 1;
    const float x1 = to_float(src[i1]);
    const float x2 = to_float(src[i2]);
    const float c = cos[k], s = sin[k];
    dst[i1] = from_float<T>(x1 * c - x2 * s);
    dst[i2] = from_float<T>(x2 * c + x1 * s);
  }
}

template <typename T>
void rope_rows_typed(const ProblemShape& sh, const TensorView& qkv_view, const StepInputs& step,
                     const RopeInputs& rope, T* q_out, int64_t total) {
  const T* qkv = qkv_view.ptr<const T>();
  T* kc = step.key_cache.ptr<T>();
  T* vc = step.value_cache.ptr<T>();
  const int32_t* bt = step.block_tables.ptr<const int32_t>();
  const int32_t* cu = step.cu_seqlens_q.ptr<const int32_t>();
  const int32_t* cached = step.cache_seqlens.ptr<const int32_t>();
  const float* cos_table = sh.rotary_dim > 0 ? rope.cos.ptr<const float>() : nullptr;
  const float* sin_table = sh.rotary_dim > 0 ? rope.sin.ptr<const float>() : nullptr;
  const int hq = sh.num_q_heads, hkv = sh.num_kv_heads, d = sh.head_dim, dv = sh.v_head_dim;
  const int bs = sh.block_size, rot = sh.rotary_dim, half = rot / 2;
  const int64_t width = sh.qkv_width();
  const std::vector<int32_t> slot = slot_of_rows(sh, step, total);

  parallel_for((total + kRowsPerItem - 1) / kRowsPerItem, [&](int64_t item, int) {
    const int64_t end = std::min(total, (item + 1) * kRowsPerItem);
    for (int64_t t = item * kRowsPerItem; t < end; ++t) {
      const int64_t b = slot[size_t(t)];
      const int64_t p = int64_t(cached[b]) + (t - cu[b]);  // position of the token
      const int64_t block = bt[b * sh.max_blocks_per_seq + p / bs];
      const int64_t in_block = p % bs;
      const float* c = cos_table ? cos_table + p * half : nullptr;
      const float* s = sin_table ? sin_table + p * half : nullptr;
      const T* row = qkv + t * width;  // [Hq*D | Hkv*D | Hkv*Dv]
      for (int h = 0; h < hq; ++h)
        rope_head(row + int64_t(h) * d, q_out + (t * hq + h) * int64_t(d), d, rot, c, s, rope.neox_style);
      const T* k_src = row + int64_t(hq) * d;
      const T* v_src = k_src + int64_t(hkv) * d;
      for (int h = 0; h < hkv; ++h) {
        const int64_t cache_row = (block * hkv + h) * bs + in_block;  // [num_blocks, Hkv, bs, *]
        rope_head(k_src + int64_t(h) * d, kc + cache_row * d, d, rot, c, s, rope.neox_style);
        std::memcpy(vc + cache_row * dv, v_src + int64_t(h) * dv, sizeof(T) * size_t(dv));
      }
    }
  });
}

}  // namespace

void rope_write_rows(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                     const RopeInputs& rope, void* q_out, int64_t total) {
  switch (shape.dtype) {
    case DType::kFloat32:
      return rope_rows_typed(shape, qkv, step, rope, static_cast<float*>(q_out), total);
    case DType::kFloat16:
      return rope_rows_typed(shape, qkv, step, rope, static_cast<Half*>(q_out), total);
    case DType::kBFloat16:
      return rope_rows_typed(shape, qkv, step, rope, static_cast<BFloat16*>(q_out), total);
    default:
      throw InvalidArgument(str("qkv: dtype ", dtype_name(shape.dtype), " has no CPU implementation"));
  }
}

void rope_write_cache(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const TensorView& q_out) {
  const int64_t total = check_step(shape, step, /*checks_reads=*/false);
  rope_write_rows(shape, qkv, step, rope, q_out.data, total);
  zero_rows_from(shape, q_out.data, int64_t(shape.num_q_heads) * shape.head_dim, total);
}

}  // namespace cpu
}  // namespace paddle_gqa
