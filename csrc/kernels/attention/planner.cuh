// The launch plan of one attention call: host-side choices from host-known facts only (config,
// max splits, grid bound, workspace layout), and the device-side tile planner that fills the tile
// map from cu_seqlens_q without a host sync.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention_params.h"
#include "hopper_prefill.h"
#include "paddle_gqa/op_args.h"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

// Upper bound on KV splits per tile (gridDim.y).
inline constexpr int kMaxSplits = 32;

// Each slot runs under one of two configs (tile_size.h): a slot whose packed rows fit one decode
// tile (n_b * G <= kDecodeBlockM) under DecodeConfig, every other slot under PrefillConfig. The
// planner builds one tile map per config, and one launch per config covers its slots, so a mixed
// batch (chunked prefill + decodes) runs each part with its own tiling.
struct LaunchPlan {
  HopperTile hopper_tile = HopperTile::kNone;  // prefill tiles run hopper_prefill_kernel on this tile
                                               // (choose_hopper_tile), else PrefillConfig
  int prefill_block_m = 0;        // q rows per prefill tile
  int max_splits = 1;             // KV splits per tile (gridDim.y of both launches)
  int64_t prefill_grid_tiles = 0; // bound on prefill tiles (CTAs past the real count exit)
  int64_t decode_grid_tiles = 0;  // bound on decode tiles: B (tile b < B is slot b's first) when G <=
                                  // kDecodeBlockM, plus under all_decode rows G / kDecodeBlockM further
                                  // tiles (locate_decode_tile)
  bool all_decode = false;        // runs_all_decode: every slot on decode tiles, no prefill launch
  size_t prefill_tile_start_offset = 0;  // bytes into the workspace: int32 [B+1]
  size_t decode_tile_start_offset = 0;   // int32 [B+1]
  size_t partial_o_offset = 0;    // fp32 [max_splits][rows*Hq][Dv] (only when max_splits > 1)
  size_t partial_lse_offset = 0;  // fp32 [max_splits][rows*Hq]
  size_t split_counters_offset = 0;  // int32 [decode_grid_tiles][Hkv] (only when max_splits > 1)
  size_t work_queue_offset = 0;   // int32: the persistent decode launches' work queue
  int64_t num_split_counters = 0;
  size_t workspace_bytes = 0;

  // How run_attention launches (host-side only; the kernels never read these).
  int pad_ctas = 0;               // zeroing columns of the decode launch (AttentionParams::pad_ctas)
  bool pdl = false;               // programmatic dependent launches: the next kernel's launch overlaps
                                  // this one's tail; every kernel so launched calls pdl_wait() before it
                                  // reads what earlier kernels wrote
  bool decode_like = false;       // at most kDecodeBlockM packed rows per slot on average
  bool decode_early = false;      // the decode launch may go first, right after the step check, with
                                  // decode_before_wait (launch_attention decides: TMA tiles only)
  int beside_prefill_ctas = 0;    // with side: persistent decode CTAs that run beside the prefill launch
                                  // (0: the decode launch is a plain grid; launch_attention)
  int after_prefill_ctas = 0;     // then the persistent decode CTAs launched after the prefill
  cudaStream_t side = nullptr;    // non-null: the prefill launch runs on this stream, forked after the
                                  // step check by `fork` and joined back by `join`, concurrently with
                                  // the decode launch on the call's stream
  cudaEvent_t fork = nullptr;
  cudaEvent_t join = nullptr;
};

LaunchPlan make_launch_plan(const ProblemShape& shape, int num_sms);

// The tile maps' places in a workspace laid out by `plan`, and the tiling they describe.
TileMapJob tile_map_job(const LaunchPlan& plan, int group, void* workspace);

// One CTA: prefix sums of tiles per slot for both maps: prefill_tile_start[b] sums
// ceil(n_c * G / prefill_block_m) over prefill slots c < b, decode_tile_start[b] sums the decode
// tiles of slots c < b past each slot's first; entry B holds the totals.
void launch_tile_planner(const AttentionParams& p, const TileMapJob& job, cudaStream_t stream);

// The attention kernels of one (dtype, D, Dv, group) key: defined in attention_kernel.cuh and
// explicitly instantiated per key by the generated files (GROUP 0 = group read at run time).
template <typename T, int D, int DV, int GROUP>
void launch_attention(const AttentionParams& p, const LaunchPlan& plan, cudaStream_t stream);

}  // namespace paddle_gqa::cuda::attn

#ifdef __CUDACC__
#include <utility>

#include "../cuda_check.h"

namespace paddle_gqa::cuda::attn {

// Programmatic dependent launch (sm_90): a kernel launched with programmatic stream serialization
// may start while the kernel ahead of it on the stream still runs. pdl_wait() blocks until that
// kernel has completed and its writes are visible, so it comes before any read of what earlier
// kernels wrote (and, since each kernel waits for the one before, that covers all of them).
// pdl_launch_dependents() lets the next such kernel start launching. Both are no-ops otherwise.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when
// `pdl` (the kernel must then call pdl_wait() before reading what earlier kernels wrote).
template <typename... Params, typename... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = pdl ? 1 : 0;
  check_cuda(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), name, __FILE__, __LINE__);
}

// The q tile `tile` of a launch's tile map (p.tile_start, tiles of bm packed rows): its slot b (the
// last slot whose first tile is <= tile; idle slots own no tile) and where its rows lie. False
// for a CTA past the map's last tile (the grid is a bound on the tile count).
struct TileSlot {
  int b;
  int64_t tok0;   // the slot's first token row
  int n;          // the slot's new tokens
  int cache_len;  // keys cached before the step
  int kv_len;     // cache_len + n
  int row0;       // first packed row (token * G + head) of the tile
  int rows_here;  // packed rows of the tile, <= bm
  // Keys the tile's first and last rows see: visible_keys is monotone in the position, so
  // [first.lo, last.hi] holds every key some row sees and [last.lo, first.hi] the keys all rows see.
  KeyRange first, last;
};
// t.first / t.last from t's cache_len, kv_len, row0 and rows_here.
__device__ __forceinline__ void set_tile_key_ranges(const AttentionParams& p, int group, TileSlot& t) {
  t.first = visible_keys(t.cache_len + t.row0 / group, t.kv_len, p.causal, p.sliding_window);
  t.last = visible_keys(t.cache_len + (t.row0 + t.rows_here - 1) / group, t.kv_len, p.causal, p.sliding_window);
}
// The last slot b < batch whose start[b] <= x, for non-decreasing start[0..batch) (prefix sums per
// slot: cu_seqlens_q, a tile map); 0 when none. Slots that own nothing share the next one's start,
// so on x < start[batch] the result is the slot that owns x.
__device__ __forceinline__ int last_slot_starting_at_or_before(const int32_t* start, int batch, int64_t x) {
  int b = 0;
  for (int lo = 0, hi = batch - 1; lo <= hi;) {
    const int mid = (lo + hi) >> 1;
    if (start[mid] <= x) { b = mid; lo = mid + 1; } else { hi = mid - 1; }
  }
  return b;
}

__device__ __forceinline__ bool locate_tile(const AttentionParams& p, int tile, int bm, int group, TileSlot& t) {
  const int* tile_start = p.tile_start;
  if (tile >= tile_start[p.batch]) return false;
  const int b = last_slot_starting_at_or_before(tile_start, p.batch, tile);
  t.b = b;
  t.tok0 = p.cu_seqlens_q[b];
  t.n = p.cu_seqlens_q[b + 1] - int(t.tok0);
  t.cache_len = p.cache_seqlens[b];
  t.kv_len = t.cache_len + t.n;
  t.row0 = (tile - tile_start[b]) * bm;
  t.rows_here = min(bm, t.n * group - t.row0);
  set_tile_key_ranges(p, group, t);
  return true;
}

// Asks for the 128-byte line holding `ptr` to be brought into L2 (no register result, no fault).
__device__ __forceinline__ void l2_prefetch(const void* ptr) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(ptr));
}

// locate_tile for the decode launch (DecodeConfig). Tile t < B is slot t's first decode tile (none
// when slot t is idle or, outside all_decode, a prefill slot), so that a CTA finds its slot without
// reading any other slot's length. Tiles t >= B are the further tiles of slots that need several
// (all_decode only): extra tile e = t - B belongs to the slot c with decode_tile_start[c] <= e <
// decode_tile_start[c + 1] (the map counts each slot's tiles past its first), or, for an `early`
// tile, to the slot that a scan of cu_seqlens over kThreads slots per pass finds by the same rule.
// Every thread of the CTA calls it with the same tile. Early tiles run before the step check has
// validated the data (AttentionParams::decode_before_wait), so their result is clamped into the
// bounds every valid step meets (no-ops then): the slot's token rows within [0, rows) and cache_len
// within [0, max_blocks_per_seq * block_size - n], which bounds the key range, the block-table
// columns it reads and so the main loop. Invalid data then yields some in-bounds tile whose result
// the kernel discards after the wait (the error record is set).
template <int kThreads>
__device__ bool locate_decode_tile(const AttentionParams& p, int tile, int group, bool early, TileSlot& t) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps");
  const int* cu = p.cu_seqlens_q;
  int b = tile, first_extra = 0;  // the slot; for an extra tile, the slot's first extra tile
  if (tile >= p.batch && !early) {
    const int e = tile - p.batch;
    const int* start = p.tile_start;
    if (e >= start[p.batch]) return false;
    b = last_slot_starting_at_or_before(start, p.batch, e);
    first_extra = start[b];
  } else if (tile >= p.batch) {
    constexpr int kWarps = kThreads / 32;
    __shared__ int warp_tiles[kWarps];
    __shared__ int2 found;  // (slot, its first extra tile); slot -1: none
    const int e = tile - p.batch;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) found = make_int2(-1, 0);
    int rank0 = 0;  // extra tiles of the slots before this pass
    for (int base = 0; base < p.batch && rank0 <= e; base += kThreads) {
      const int c = base + int(threadIdx.x);
      // n clamped to rows (no-op on valid data) so that invalid lengths cannot overflow the count.
      const int count =
          c < p.batch ? max(0, decode_tiles_of_slot(min(int64_t(cu[c + 1]) - cu[c], p.rows), group, p.all_decode) - 1)
                      : 0;
      int incl = count;  // inclusive scan within the warp
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += v;
      }
      if (lane == 31) warp_tiles[warp] = incl;
      __syncthreads();  // also publishes `found` on the first pass
      int first = rank0 + incl - count, pass_total = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        first += w < warp ? warp_tiles[w] : 0;
        pass_total += warp_tiles[w];
      }
      if (count > 0 && first <= e && e < first + count) found = make_int2(c, first);
      rank0 += pass_total;
      __syncthreads();  // `found` is final for the pass; warp_tiles may be rewritten
    }
    if (found.x < 0) return false;
    b = found.x;
    first_extra = found.y;
  }
  // The slot's three scalars are loaded before any test: one round trip to memory.
  const int32_t begin = cu[b], end = cu[b + 1];
  const int32_t cached = p.cache_seqlens[b];
  const int64_t n = int64_t(end) - begin;
  const int k = tile < p.batch ? 0 : tile - p.batch - first_extra + 1;  // the tile's index in its slot
  if (k >= decode_tiles_of_slot(min(n, p.rows), group, p.all_decode)) return false;  // idle or prefill slot
  t.b = b;
  t.n = int(n);
  if (early) {
    const int64_t capacity = p.max_blocks_per_seq << p.block_size_log2;
    if (capacity < n || p.rows < n) return false;  // invalid data only: no in-bounds tile exists
    t.tok0 = max(int64_t(0), min(int64_t(begin), p.rows - n));
    t.cache_len = int(max(int64_t(0), min(int64_t(cached), capacity - n)));
  } else {
    t.tok0 = begin;
    t.cache_len = cached;
  }
  t.kv_len = t.cache_len + t.n;
  t.row0 = k * kDecodeBlockM;
  t.rows_here = min(kDecodeBlockM, t.n * group - t.row0);
  set_tile_key_ranges(p, group, t);
  return true;
}

// The KV tiles (bn keys each, numbered from key 0) that split `split` of tile slot t covers,
// [kt_begin, kt_end), and the slot's split count (slot_num_splits, as the merge counts them).
// Balanced: the n_splits ranges over the tiles of the keys any row of t sees differ by at most one
// tile. False when the slot has no split `split` (the CTA has nothing to do).
struct SplitTiles {
  int n_splits, kt_begin, kt_end;
};
__device__ __forceinline__ bool locate_split(const AttentionParams& p, const TileSlot& t, int split, int bn,
                                             SplitTiles& s) {
  const int lo = int(t.first.lo), hi = int(t.last.hi);
  const int kt_first = lo <= hi ? lo / bn : 0;
  const int kt_total = lo <= hi ? hi / bn - kt_first + 1 : 0;
  s.n_splits = slot_num_splits(t.cache_len, t.n, p.causal, p.sliding_window, bn, p.max_splits);
  if (split >= s.n_splits) return false;
  s.kt_begin = kt_first + int(int64_t(split) * kt_total / s.n_splits);
  s.kt_end = kt_first + int(int64_t(split + 1) * kt_total / s.n_splits);
  return true;
}

// Writes both tile maps of `job` from cu_seqlens_q [B+1], and zeroes its split counters, with one
// CTA of kThreads threads (all of them call it): prefill_tile_start[b] sums ceil(n_c * G / prefill_block_m) over the prefill slots
// c < b, decode_tile_start[b] sums the decode tiles of slots c < b past each slot's first
// (decode_tiles_of_slot - 1: nonzero under all_decode only; locate_decode_tile); entry B holds the
// totals. One pass scans both counts, kThreads slots at a time.
template <int kThreads>
__device__ void build_tile_maps(const TileMapJob& job, const int32_t* cu, int batch) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, at most 32");
  constexpr int kWarps = kThreads / 32;
  __shared__ int2 warp_sums[kWarps];  // (prefill, decode) per warp, then each warp's exclusive prefix
  __shared__ int2 carry;              // totals of the chunks before this one
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  if (tid == 0) carry = make_int2(0, 0);
  __syncthreads();
  for (int base = 0; base < batch; base += kThreads) {
    const int b = base + tid;
    int count_p = 0, count_d = 0;
    if (b < batch) {
      const int64_t n = int64_t(cu[b + 1]) - cu[b];
      const int decode_tiles = decode_tiles_of_slot(n, job.group, job.all_decode);
      count_d = max(0, decode_tiles - 1);  // tiles past the slot's first (locate_decode_tile)
      if (decode_tiles == 0 && n > 0) {
        count_p = int((n * job.group + job.prefill_block_m - 1) / job.prefill_block_m);
      }
    }
    int incl_p = count_p, incl_d = count_d;  // inclusive scans within the warp
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int vp = __shfl_up_sync(0xffffffffu, incl_p, off);
      const int vd = __shfl_up_sync(0xffffffffu, incl_d, off);
      if (lane >= off) { incl_p += vp; incl_d += vd; }
    }
    if (lane == 31) warp_sums[warp] = make_int2(incl_p, incl_d);
    __syncthreads();
    if (warp == 0) {
      const int2 w = lane < kWarps ? warp_sums[lane] : make_int2(0, 0);
      int wp = w.x, wd = w.y;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int vp = __shfl_up_sync(0xffffffffu, wp, off);
        const int vd = __shfl_up_sync(0xffffffffu, wd, off);
        if (lane >= off) { wp += vp; wd += vd; }
      }
      if (lane < kWarps) warp_sums[lane] = make_int2(wp - w.x, wd - w.y);
    }
    __syncthreads();
    const int excl_p = carry.x + warp_sums[warp].x + incl_p - count_p;
    const int excl_d = carry.y + warp_sums[warp].y + incl_d - count_d;
    if (b < batch) {
      job.prefill_tile_start[b] = excl_p;
      job.decode_tile_start[b] = excl_d;
    }
    __syncthreads();
    if (tid == kThreads - 1) carry = make_int2(excl_p + count_p, excl_d + count_d);
    __syncthreads();
  }
  if (tid == 0) {
    job.prefill_tile_start[batch] = carry.x;
    job.decode_tile_start[batch] = carry.y;
  }
  for (int i = tid; i < job.num_split_counters; i += kThreads) job.split_counters[i] = 0;
  if (tid == 0) *job.work_queue = 0;
}

}  // namespace paddle_gqa::cuda::attn
#endif  // __CUDACC__
