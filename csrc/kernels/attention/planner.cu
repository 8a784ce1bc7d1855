// Host launch planning and the device tile-map kernel of the paged attention.
#include "planner.cuh"

#include <algorithm>
#include <cmath>

#include "../cuda_check.h"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Shared memory per SM on Hopper, and what the runtime reserves per resident CTA.
constexpr int kSmemPerSm = 228 * 1024;
constexpr int kSmemReservedPerCta = 1024;

// CTAs of one config resident on one SM: bounded by shared memory, and by registers (prefill
// kernels use up to 255 per thread; decode kernels about 128 for Dv <= 128).
int resident_ctas_per_sm(bool decode, const ProblemShape& shape) {
  const int d = shape.head_dim, dv = shape.v_head_dim;
  int smem, threads, regs;
  if (decode) {
    smem = decode_smem_bytes(d, dv);
    threads = 32 * kDecodeWarpsN;
    regs = dv <= 128 ? 128 : 256;
  } else {
    smem = prefill_smem_bytes(d, dv);
    threads = 32 * kPrefillWarps;
    regs = 256;
  }
  const int by_smem = kSmemPerSm / (smem + kSmemReservedPerCta);
  const int by_regs = 65536 / (threads * regs);
  return std::max(1, std::min(by_smem, by_regs));
}

// KV splits per tile: the smallest count whose CTAs fill whole waves of the GPU to at least 90%
// (a partial last wave leaves SMs idle), else the best fill up to kMaxSplits. Enough CTAs for
// two waves without splitting means no split.
int choose_max_splits(int64_t ctas, int64_t resident) {
  if (ctas >= 2 * resident) return 1;
  int best = 1;
  double best_fill = 0;
  for (int s = 1; s <= kMaxSplits; ++s) {
    const double waves = double(ctas) * s / double(resident);
    if (waves < 0.9) continue;
    const double fill = waves / std::ceil(waves);
    if (fill >= 0.9) return s;
    if (fill > best_fill) { best_fill = fill; best = s; }
  }
  return best_fill > 0 ? best : kMaxSplits;
}

constexpr int kPlannerThreads = 1024;

// Exclusive prefix sums of count(b) over the B slots into out[0..B] (out[B] = total), by one
// CTA of kPlannerThreads threads in chunks of kPlannerThreads slots.
template <class Count>
__device__ void block_prefix_sums(int batch, Count count_of, int32_t* out) {
  __shared__ int64_t warp_sums[kPlannerThreads / 32];
  __shared__ int64_t carry;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  if (tid == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < batch; base += kPlannerThreads) {
    const int b = base + tid;
    const int64_t count = b < batch ? count_of(b) : 0;
    int64_t incl = count;  // inclusive scan within the warp
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int64_t v = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += v;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      const int64_t w = warp_sums[lane];
      int64_t winc = w;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int64_t v = __shfl_up_sync(0xffffffffu, winc, off);
        if (lane >= off) winc += v;
      }
      warp_sums[lane] = winc - w;  // exclusive prefix of each warp
    }
    __syncthreads();
    const int64_t excl = carry + warp_sums[warp] + incl - count;
    if (b < batch) out[b] = int32_t(excl);
    __syncthreads();
    if (tid == kPlannerThreads - 1) carry = excl + count;
    __syncthreads();
  }
  if (tid == 0) out[batch] = int32_t(carry);
  __syncthreads();
}

__global__ void __launch_bounds__(kPlannerThreads) tile_planner_kernel(const AttentionParams p) {
  if (p.error->code != 0) return;
  const int* cu = p.cu_seqlens_q;
  const int g = p.group;
  const int bm = p.prefill_block_m;
  block_prefix_sums(p.batch, [=](int b) -> int64_t {
    const int64_t n = cu[b + 1] - cu[b];
    return n > 0 && !is_decode_slot(n, g) ? (n * g + bm - 1) / bm : 0;
  }, p.prefill_tile_start);
  block_prefix_sums(p.batch, [=](int b) -> int64_t {
    return is_decode_slot(cu[b + 1] - cu[b], g) ? 1 : 0;
  }, p.decode_tile_start);
}

}  // namespace

LaunchPlan make_launch_plan(const ProblemShape& shape, int num_sms) {
  LaunchPlan plan;
  const int64_t rows = shape.rows;
  const int64_t batch = shape.batch;
  const int64_t g = shape.group;
  plan.prefill_block_m = prefill_block_m(shape.v_head_dim);
  // A decode slot holds at least one row; a prefill slot more than kDecodeBlockM / G rows.
  const int64_t max_decode_slots = std::min(rows, batch);
  const int64_t max_prefill_slots = std::min(batch, rows * g / (kDecodeBlockM + 1));
  plan.decode_grid_tiles = max_decode_slots;
  plan.prefill_grid_tiles = (rows * g + plan.prefill_block_m - 1) / plan.prefill_block_m + max_prefill_slots;
  // Splits from the dominant kind of the batch: rows that fit a decode tile per slot on average
  // mean decode slots. At least min(rows, B) tiles exist when every row is a token.
  const bool decode_like = rows * g <= batch * kDecodeBlockM;
  const int64_t tiles_est = decode_like ? max_decode_slots
                                        : std::max((rows * g + plan.prefill_block_m - 1) / plan.prefill_block_m,
                                                   max_prefill_slots);
  const int64_t ctas = std::max<int64_t>(1, tiles_est * shape.num_kv_heads);
  plan.max_splits = choose_max_splits(ctas, int64_t(std::max(1, num_sms)) * resident_ctas_per_sm(decode_like, shape));

  size_t off = 0;
  plan.prefill_tile_start_offset = off;
  off = align_up(off + sizeof(int32_t) * size_t(batch + 1));
  plan.decode_tile_start_offset = off;
  off = align_up(off + sizeof(int32_t) * size_t(batch + 1));
  if (plan.max_splits > 1) {
    const size_t heads = size_t(rows) * size_t(shape.num_q_heads);
    plan.partial_o_offset = off;
    off = align_up(off + sizeof(float) * size_t(plan.max_splits) * heads * size_t(shape.v_head_dim));
    plan.partial_lse_offset = off;
    off = align_up(off + sizeof(float) * size_t(plan.max_splits) * heads);
  }
  plan.workspace_bytes = off;
  return plan;
}

void launch_tile_planner(const AttentionParams& p, cudaStream_t stream) {
  tile_planner_kernel<<<1, kPlannerThreads, 0, stream>>>(p);
  PGQA_CUDA_CHECK_LAUNCH("tile_planner_kernel");
}

}  // namespace paddle_gqa::cuda::attn
