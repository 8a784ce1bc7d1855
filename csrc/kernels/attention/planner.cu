// Host launch planning and the device tile-map kernel of the paged attention.
#include "planner.cuh"

#include <algorithm>

#include "../cuda_check.h"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// CTAs of each config resident on one SM (shared memory / register bound at D = 128); used only
// to size the split count for about kTargetWaves waves, which keeps the last partial wave small.
constexpr int kDecodeCtasPerSm = PGQA_TUNE_DECODE_BN == 32 ? 5 : 3;
constexpr int kPrefillCtasPerSm = 2;
#ifndef PGQA_TUNE_WAVES
#define PGQA_TUNE_WAVES 4
#endif
constexpr int kTargetWaves = PGQA_TUNE_WAVES;

constexpr int kPlannerThreads = 1024;

__global__ void __launch_bounds__(kPlannerThreads) tile_planner_kernel(const AttentionParams p) {
  if (p.error->code != 0) return;
  __shared__ int64_t warp_sums[kPlannerThreads / 32];
  __shared__ int64_t carry;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  if (tid == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < p.batch; base += kPlannerThreads) {
    const int b = base + tid;
    int64_t count = 0;
    if (b < p.batch) {
      const int64_t rows = int64_t(p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b]) * p.group;
      count = rows > 0 ? (rows + p.block_m - 1) / p.block_m : 0;
    }
    int64_t incl = count;  // inclusive scan within the warp
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int64_t v = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += v;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int64_t w = warp_sums[lane];
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
    if (b < p.batch) p.tile_start[b] = int32_t(excl);
    __syncthreads();
    if (tid == kPlannerThreads - 1) carry = excl + count;
    __syncthreads();
  }
  if (tid == 0) p.tile_start[p.batch] = int32_t(carry);
}

}  // namespace

LaunchPlan make_launch_plan(const ProblemShape& shape, int num_sms) {
  LaunchPlan plan;
  const int64_t rows = shape.rows;
  const int64_t batch = shape.batch;
  const int64_t g = shape.group;
  // Few packed rows per slot: a 16-row tile holds a whole slot, warps split the keys instead.
  plan.decode = rows * g <= batch * DecodeConfig::kBlockM;
  plan.block_m = plan.decode ? DecodeConfig::kBlockM : prefill_block_m(shape.head_dim, shape.v_head_dim);
  plan.block_n = plan.decode ? DecodeConfig::kBlockN : kPrefillBlockN;
  const int64_t packed_tiles = (rows * g + plan.block_m - 1) / plan.block_m;
  plan.grid_tiles = packed_tiles + batch;
  // Tiles never cross slots, so at least min(rows, B) tiles exist when every row is a token.
  const int64_t tiles_est = std::max(packed_tiles, std::min(rows, batch));
  const int64_t ctas = std::max<int64_t>(1, tiles_est * shape.num_kv_heads);
  const int64_t target = int64_t(kTargetWaves) * std::max(1, num_sms) * (plan.decode ? kDecodeCtasPerSm : kPrefillCtasPerSm);
  plan.max_splits = ctas >= target ? 1 : int(std::min<int64_t>(kMaxSplits, (target + ctas - 1) / ctas));

  size_t off = 0;
  plan.tile_start_offset = off;
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
