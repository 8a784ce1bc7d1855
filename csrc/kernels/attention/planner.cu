// Host launch planning and the device tile-map kernel of the paged attention.
#include "planner.cuh"

#include <algorithm>
#include <cmath>

#include "../cuda_check.h"
#include "hopper_prefill.h"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Shared memory per SM on Hopper, and what the runtime reserves per resident CTA.
constexpr int kSmemPerSm = 228 * 1024;
constexpr int kSmemReservedPerCta = 1024;

// CTAs of one config resident on one SM: bounded by shared memory, and by registers (mma.sync
// prefill kernels use up to 255 per thread; decode kernels about 128 for Dv <= 128; the Hopper
// tiles are built for Tile::kCtasPerSm).
int resident_ctas_per_sm(bool decode, HopperTile hopper_tile, const ProblemShape& shape) {
  const int d = shape.head_dim, dv = shape.v_head_dim;
  int smem, by_regs;
  if (decode) {
    smem = decode_smem_bytes(d, dv);
    by_regs = 65536 / (32 * kDecodeWarpsN * (dv <= 128 ? 128 : 256));
  } else if (hopper_tile == HopperTile::kWide) {
    smem = hopper_prefill_smem_bytes<HopperWideTile>(d, dv);
    by_regs = HopperWideTile::kCtasPerSm;
  } else if (hopper_tile == HopperTile::kNarrow) {
    smem = hopper_prefill_smem_bytes<HopperNarrowTile>(d, dv);
    by_regs = HopperNarrowTile::kCtasPerSm;
  } else {
    smem = prefill_smem_bytes(d, dv);
    by_regs = 65536 / (32 * kPrefillWarps * 256);
  }
  const int by_smem = kSmemPerSm / (smem + kSmemReservedPerCta);
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

__global__ void __launch_bounds__(kPlannerThreads) tile_planner_kernel(const AttentionParams p, const TileMapJob job) {
  if (p.error->code != 0) return;
  build_tile_maps<kPlannerThreads>(job, p.cu_seqlens_q, p.batch);
}

}  // namespace

LaunchPlan make_launch_plan(const ProblemShape& shape, int num_sms) {
  LaunchPlan plan;
  const int64_t rows = shape.rows;
  const int64_t batch = shape.batch;
  const int64_t g = shape.group;
  // Prefill tiles run a Hopper tile where the device, the head dims and the window allow.
  plan.hopper_tile = choose_hopper_tile(shape);
  plan.prefill_block_m = plan.hopper_tile == HopperTile::kWide     ? HopperWideTile::kBlockM
                         : plan.hopper_tile == HopperTile::kNarrow ? HopperNarrowTile::kBlockM
                                                                   : prefill_block_m(shape.v_head_dim);
  // A decode slot holds at least one row; a prefill slot more than kDecodeBlockM / G rows.
  const int64_t max_decode_slots = std::min(rows, batch);
  const int64_t max_prefill_slots = std::min(batch, rows * g / (kDecodeBlockM + 1));
  // Decode tile b < B is slot b's first (none when G > kDecodeBlockM: no decode slot exists). At
  // most one row per slot: every slot on decode tiles (runs_all_decode), whose tiles past each
  // slot's first number sum(ceil(n G / kDecodeBlockM) - 1) < T G / kDecodeBlockM <= rows G / kDecodeBlockM.
  plan.all_decode = runs_all_decode(rows, batch, int(g));
  plan.decode_grid_tiles = (g <= kDecodeBlockM ? batch : 0) + (plan.all_decode ? rows * g / kDecodeBlockM : 0);
  // No prefill slot can exist when even all rows in one slot fit a decode tile, and none runs on
  // prefill tiles under all_decode: no prefill launch.
  plan.prefill_grid_tiles = max_prefill_slots == 0 || plan.all_decode
                                ? 0
                                : (rows * g + plan.prefill_block_m - 1) / plan.prefill_block_m + max_prefill_slots;
  // Splits from the dominant kind of the batch: rows that fit a decode tile per slot on average
  // mean decode slots. At least min(rows, B) tiles exist when every row is a token.
  const bool decode_like = rows * g <= batch * kDecodeBlockM;
  plan.decode_like = decode_like;
  const int64_t tiles_est = decode_like ? max_decode_slots
                                        : std::max((rows * g + plan.prefill_block_m - 1) / plan.prefill_block_m,
                                                   max_prefill_slots);
  const int64_t ctas = std::max<int64_t>(1, tiles_est * shape.num_kv_heads);
  plan.max_splits = choose_max_splits(ctas, int64_t(std::max(1, num_sms)) * resident_ctas_per_sm(decode_like, plan.hopper_tile, shape));

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
    plan.split_counters_offset = off;
    plan.num_split_counters = plan.decode_grid_tiles * shape.num_kv_heads;
    off = align_up(off + sizeof(int32_t) * size_t(plan.num_split_counters));
  }
  plan.work_queue_offset = off;
  off = align_up(off + sizeof(int32_t));
  plan.workspace_bytes = off;
  return plan;
}

TileMapJob tile_map_job(const LaunchPlan& plan, int group, void* workspace) {
  auto* ws = static_cast<unsigned char*>(workspace);
  TileMapJob job;
  job.prefill_tile_start = reinterpret_cast<int32_t*>(ws + plan.prefill_tile_start_offset);
  job.decode_tile_start = reinterpret_cast<int32_t*>(ws + plan.decode_tile_start_offset);
  job.group = group;
  job.prefill_block_m = plan.prefill_block_m;
  job.split_counters =
      plan.num_split_counters > 0 ? reinterpret_cast<int32_t*>(ws + plan.split_counters_offset) : nullptr;
  job.num_split_counters = int(plan.num_split_counters);
  job.work_queue = reinterpret_cast<int32_t*>(ws + plan.work_queue_offset);
  job.all_decode = plan.all_decode;
  return job;
}

void launch_tile_planner(const AttentionParams& p, const TileMapJob& job, cudaStream_t stream) {
  tile_planner_kernel<<<1, kPlannerThreads, 0, stream>>>(p, job);
  PGQA_CUDA_CHECK_LAUNCH("tile_planner_kernel");
}

}  // namespace paddle_gqa::cuda::attn
