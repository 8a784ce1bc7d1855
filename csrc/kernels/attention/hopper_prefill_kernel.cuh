// The Hopper (sm_90a) prefill attention kernel: the paged_attention_kernel contract (same params,
// tile map, split rule, partial-result layout, masks, sinks) with both GEMMs on warpgroup MMA
// (wgmma) from 128-byte swizzled shared-memory tiles instead of mma.sync from ldmatrix fragments.
//
// CTA (HopperPrefillTile, hopper_prefill.h): one or two consumer warpgroups own 64 packed q rows
// each (each warp owns 16 whole rows, so no cross-warp softmax merge); one producer warp issues
// bulk tensor copies (TMA, hopper_tma.cuh) of the BN-key K / V tiles into two stages, each copy
// one block's contiguous rows of one head and one 64-element panel (hopper_kv_maps.h), so the
// paged gather costs one block-table read per box. Stages are handed over with mbarriers (full:
// bytes landed; empty: every consumer warp done reading), so consumer warpgroups never wait for
// each other and drift apart: one's softmax runs while the other's GEMMs hold the tensor cores.
//   Wide tile (two consumers, 128-key tiles, one CTA per SM): the producer warp is the first of a
//     whole warpgroup, and setmaxnreg moves that warpgroup's registers (40) to the consumers (232).
//   Narrow tile (one consumer, 64-key tiles, two CTAs per SM): 160 threads, no setmaxnreg; the
//     second CTA on the SM does what the second consumer warpgroup does in the wide tile, and
//     also overlaps the first's Q load and epilogue (narrow windows: H100, W = 128, 192/128,
//     107 -> 136 TFLOP/s for the kernel alone).
// Tiles start 64-key aligned; keys of a tile outside the CTA's range are masked in S and their V
// rows zeroed before P V (their blocks may be unread or hold garbage).
//
// Per consumer warpgroup: S = Q K^T of tile it and P V of tile it - 1 are in flight together, the
// softmax of tile it overlapping P V.
// History (BENCHMARKS.md): the session-2 kernel had all 256 threads gather with cp.async and one
// CTA barrier per tile (prefill_g3 292 TFLOP/s); TMA copies with that lockstep gave 375; this
// producer / consumer split 570. Explicit pingpong turns between the consumers (named barriers)
// were tried with it and dropped (they deadlocked in the first attempt; the free-running
// warpgroups already overlap).
// Included by the generated instantiation files through attention_kernel.cuh.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "../cuda_check.h"
#include "attention_params.h"
#include "hopper_kv_maps.h"
#include "hopper_prefill.h"
#include "hopper_tma.cuh"
#include "hopper_wgmma.cuh"
#include "mma.cuh"
#include "online_softmax.cuh"
#include "paddle_gqa/errors.h"
#include "paddle_gqa/mask.h"
#include "planner.cuh"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

namespace sm90 {

// Byte offset of 16-byte chunk `ch` (of W / 8 per row) of row r in a [ROWS][W] swizzled tile.
template <int ROWS>
__device__ __forceinline__ uint32_t swizzled_chunk(int r, int ch) {
  return uint32_t((ch >> 3) * ROWS * 128 + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
}

// The tile's packed query rows (tile row r = slot row row0 + r: token (row0 + r) / G, head
// kv_head * G + (row0 + r) % G) into a swizzled [BM][D] tile; rows >= rows_here zero-filled.
template <typename T, int D, int BM, int NT, int GROUP>
__device__ __forceinline__ void load_q_tile_swizzled(uint32_t dst, const T* q, int64_t row_stride, int64_t head_stride,
                                                     int64_t tok0, int row0, int rows_here, int kv_head, int group,
                                                     int tid) {
  const int G = GROUP > 0 ? GROUP : group;
  constexpr int kChunks = D / 8;
  constexpr int kTotal = BM * kChunks;
  static_assert(kTotal % NT == 0, "whole passes");
#pragma unroll 1
  for (int idx = tid; idx < kTotal; idx += NT) {
    const int r = idx / kChunks;
    const int ch = idx % kChunks;
    const bool valid = r < rows_here;
    const T* src = q;
    if (valid) {
      const int R = row0 + r;
      src = q + (tok0 + R / G) * row_stride + (int64_t(kv_head) * G + R % G) * head_stride + ch * 8;
    }
    cp_async_16(dst + swizzled_chunk<BM>(r, ch), src, valid);
  }
}

}  // namespace sm90

// Grid (grid_tiles, max_splits, Hkv) as paged_attention_kernel; block Tile::kThreads threads,
// Tile::kCtasPerSm CTAs per SM. `maps` (make_hopper_kv_maps) describes p.k_cache and p.v_cache for
// the bulk tensor copies.
template <typename T, int D, int DV, int GROUP, class Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kCtasPerSm)
    hopper_prefill_kernel(const AttentionParams p, const __grid_constant__ HopperKvMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace sm90;
  constexpr int BM = Tile::kBlockM;
  constexpr int BN = Tile::kBlockN;
  constexpr int NB = BN / 8;   // 8-key accumulator blocks of S per thread row pair
  constexpr int NO = DV / 8;   // 8-dim accumulator blocks of O
  constexpr int PK = D / 64;   // 64-element panels of a K row
  constexpr int PV = DV / 64;  // and of a V row
  constexpr uint32_t kQBytes = BM * D * 2;
  constexpr uint32_t kKBytes = BN * D * 2;
  constexpr uint32_t kVBytes = BN * DV * 2;
  static_assert(hopper_prefill_supports(D, DV), "head dims outside the Hopper prefill tile");
  static_assert(Tile::kStages == 2, "the main loop alternates two stages (it & 1)");

  pdl_wait();  // the step check (tile maps, error record) and the kernels before this one are done
  pdl_launch_dependents();
  if (p.error->code != 0) return;
  const int tile = int(gridDim.x) - 1 - int(blockIdx.x);  // longest causal tiles first
  const int split = blockIdx.y;
  const int kvh = blockIdx.z;
  const int G = GROUP > 0 ? GROUP : p.group;
  TileSlot ts;
  if (!locate_tile(p, tile, BM, G, ts)) return;
  const auto [b, tok0, n, cache_len, kv_len, row0, rows_here, first, last] = ts;

  // The split rule counts p.block_n-key tiles (shared with the merge); this CTA's split is a key
  // range [klo, khi]. It walks BN-key tiles from kbase, klo rounded down to 64 keys, so that every
  // copy box (at most 64 rows of one block) starts at a box boundary of its block.
  const int bn = p.block_n;
  const int lo = int(first.lo), hi = int(last.hi);
  SplitTiles split_tiles;
  if (!locate_split(p, ts, split, bn, split_tiles)) return;
  const int n_splits = split_tiles.n_splits;
  const int klo = max(lo, split_tiles.kt_begin * bn);
  const int khi = min(hi, split_tiles.kt_end * bn - 1);
  const int kbase = klo & ~63;
  const int num_tiles = klo <= khi ? (khi - kbase) / BN + 1 : 0;
  // Keys every row of the tile sees and that lie in [klo, khi]: tiles inside need no mask.
  const int full_lo = max(int(last.lo), klo), full_hi = min(int(first.hi), khi);

  extern __shared__ unsigned char smem_raw[];
  constexpr int kStages = Tile::kStages;
  constexpr int kConsumers = Tile::kConsumerThreads;
  __shared__ alignas(8) uint64_t stage_bars[4 * kStages];  // K full, V full, K empty, V empty
  const uint32_t smem0 = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t q_s = smem0;
  const uint32_t k_s = q_s + kQBytes;             // [stage] K tiles
  const uint32_t v_s = k_s + kStages * kKBytes;   // [stage] V tiles
  const uint32_t k_full = smem_u32(&stage_bars[0]);  // + 8 stage, likewise the others
  const uint32_t v_full = k_full + 8 * kStages;
  const uint32_t k_empty = v_full + 8 * kStages;
  const uint32_t v_empty = k_empty + 8 * kStages;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  if (tid == 0) {
    for (int i = 0; i < kStages; ++i) {
      mbarrier_init(k_full + 8u * i, 1);
      mbarrier_init(v_full + 8u * i, 1);
      mbarrier_init(k_empty + 8u * i, kConsumers / 32);
      mbarrier_init(v_empty + 8u * i, kConsumers / 32);
    }
    fence_barrier_init();
  }
  __syncthreads();  // the only barrier over all warps

  if (warp >= kConsumers / 32) {
    if constexpr (Tile::kProducerWarpgroup) setmaxnreg_dec<Tile::kProducerRegs>();
    // Producer warp (the first of its warpgroup, if any; the others have nothing to do): K(t) and V(t)
    // into stage t % 2 once the consumers released the stage's tile t - 2, one (box, panel) copy
    // per lane and pass. Boxes wholly outside [klo, khi] are not read (their blocks may be -1);
    // their rows keep stale data, masked in S and zeroed in V.
    if (warp != kConsumers / 32 || num_tiles == 0) return;
    if (lane == 0) {
      prefetch_tensor_map(&maps.k);
      prefetch_tensor_map(&maps.v);
    }
    const int32_t* block_row = p.block_tables + int64_t(b) * p.max_blocks_per_seq;
    const int bs_log2 = p.block_size_log2;
    const int box_rows = kv_box_rows(1 << bs_log2);
    const int boxes = BN / box_rows;  // per panel of a tile
    auto issue = [&](int t, const void* map, int panels, uint32_t stage, uint32_t bar) {
      const int key0 = kbase + t * BN;
      const int box_lo = max(0, (klo - key0) / box_rows);
      const int box_hi = min(boxes - 1, (khi - key0) / box_rows);
      const int nbox = box_hi - box_lo + 1;
      if (lane == 0) mbarrier_arrive_expect_tx(bar, uint32_t(nbox * panels * box_rows * 128));
      __syncwarp();
      for (int job = lane; job < nbox * panels; job += 32) {
        const int bx = box_lo + job % nbox;
        const int pn = job / nbox;
        const int key = key0 + bx * box_rows;
        const int block = block_row[key >> bs_log2];
        const int row = ((block * p.num_kv_heads + kvh) << bs_log2) + (key & ((1 << bs_log2) - 1));
        tma_load_2d(stage + uint32_t(pn * BN * 128 + bx * box_rows * 128), map, pn * 64, row, bar);
      }
    };
    for (int t = 0; t < num_tiles; ++t) {
      const uint32_t st = uint32_t(t % kStages);
      const uint32_t parity = uint32_t(t / kStages - 1) & 1;  // the release of tile t - kStages
      if (t >= kStages) mbarrier_wait_parity(k_empty + 8 * st, parity);
      issue(t, &maps.k, PK, k_s + st * kKBytes, k_full + 8 * st);
      if (t >= kStages) mbarrier_wait_parity(v_empty + 8 * st, parity);
      issue(t, &maps.v, PV, v_s + st * kVBytes, v_full + 8 * st);
    }
    return;
  }

  if constexpr (Tile::kProducerWarpgroup) setmaxnreg_inc<Tile::kConsumerRegs>();
  const int wg = warp >> 2;
  const int g = lane >> 2;
  const int t4 = lane & 3;
  // The thread's two accumulator rows: r_i = 64 wg + 16 (warp % 4) + g + 8 i.
  int row_lo[2], row_hi[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = 64 * wg + 16 * (warp & 3) + g + 8 * i;
    row_lo[i] = 1;
    row_hi[i] = 0;
    if (r < rows_here) {
      const KeyRange kr = visible_keys(cache_len + (row0 + r) / G, kv_len, p.causal, p.sliding_window);
      row_lo[i] = max(int(kr.lo), klo);
      row_hi[i] = min(int(kr.hi), khi);
    }
  }
  // Consumer warps release a stage's K or V once their wgmma reads of it are done.
  auto release = [&](uint32_t bar) {
    __syncwarp();
    if (lane == 0) mbarrier_arrive(bar);
  };
  // Tile t's V rows of keys outside [klo, khi] become zero, so that P = 0 there gives exactly 0
  // (stale or unwritten rows may hold NaN). Only a tile reaching past the range does work; the
  // stores are made visible to wgmma (async proxy) and to the other warpgroup before P V.
  auto zero_v_outside = [&](int t, uint32_t stage) {
    const int key0 = kbase + t * BN;
    if (key0 >= klo && key0 + BN - 1 <= khi) return;  // uniform over the CTA
    for (int idx = tid; idx < PV * BN * 8; idx += kConsumers) {
      const int r = (idx >> 3) % BN;
      const int key = key0 + r;
      if (key < klo || key > khi) {
        const uint32_t addr = stage + uint32_t((idx >> 3) / BN * BN * 128 + r * 128 + (idx & 7) * 16);
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0) : "memory");
      }
    }
    fence_proxy_async_smem();
    named_barrier_sync(1, kConsumers);
  };

  load_q_tile_swizzled<T, D, BM, kConsumers, GROUP>(q_s, static_cast<const T*>(p.q), p.q_row_stride,
                                                    p.q_head_stride, tok0, row0, rows_here, kvh, p.group, tid);
  cp_async_commit();
  float o[NO][4];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float(&o_flat)[DV / 2] = *reinterpret_cast<float(*)[DV / 2]>(&o[0][0]);
  OnlineSoftmax state;
  state.init();
  float s[NB][4];
  float(&s_flat)[BN / 2] = *reinterpret_cast<float(*)[BN / 2]>(&s[0][0]);
  uint32_t pa[BN / 16][4];  // P of a tile as register A fragments, 16 keys per k step

  // This warpgroup's 64 Q rows: panel stride BM * 128 bytes.
  const uint32_t q_wg = q_s + uint32_t(wg) * 64 * 128;
  // S = Q K^T over D in k16 steps (panel kk / 4, +32 bytes per step inside a panel); one group.
  auto issue_qk = [&](uint32_t k_tile) {
    fence_registers(s_flat);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t da = smem_desc(q_wg + uint32_t(kk >> 2) * (BM * 128) + uint32_t(kk & 3) * 32, 16, 1024);
      const uint64_t db = smem_desc(k_tile + uint32_t(kk >> 2) * (BN * 128) + uint32_t(kk & 3) * 32, 16, 1024);
      wgmma_ss<T, BN>(s_flat, da, db, kk > 0 ? 1 : 0);
    }
    wgmma_commit();
  };
  // O += P V over the tile's keys (V MN-major, +2048 bytes per k16 step); one group.
  auto issue_pv = [&](uint32_t v_tile) {
    fence_registers(o_flat);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      wgmma_rs_tnsp_b<T, DV>(o_flat, pa[kk], smem_desc(v_tile + uint32_t(kk) * 2048, BN * 128, 1024));
    }
    wgmma_commit();
  };
  // Masks (only where some key of the tile is invisible to some row) and advances the softmax;
  // returns the rescale factor of O in alpha. Masking is a select, so NaN scores of unread or
  // unwritten keys never reach the softmax.
  auto softmax_step = [&](int key0, float (&alpha)[2]) {
    const bool full_tile = key0 >= full_lo && key0 + BN - 1 <= full_hi;
    if (!full_tile) {
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + nb * 8 + 2 * t4 + (e & 1);
          if (key < row_lo[e >> 1] || key > row_hi[e >> 1]) s[nb][e] = -INFINITY;
        }
      }
    }
    state.update_scores(s, p.scale_log2, alpha);
  };
  // All of P is packed before the PV issue: registers written between wgmmas would make the
  // compiler fence (serialise) each one.
  auto pack_p = [&] {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      pa[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      pa[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      pa[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
  };

  cp_async_wait<0>();  // Q
  fence_proxy_async_smem();
  named_barrier_sync(1, kConsumers);  // Q is visible to both warpgroups
  if (num_tiles > 0) {
    mbarrier_wait_parity(k_full, 0);
    issue_qk(k_s);
    wgmma_wait<0>();
    fence_registers(s_flat);
    release(k_empty);
    float alpha[2];
    softmax_step(kbase, alpha);
    pack_p();  // O is zero: no rescale
  }
  for (int it = 1; it < num_tiles; ++it) {
    const uint32_t st = uint32_t(it % kStages), pst = uint32_t((it - 1) % kStages);
    mbarrier_wait_parity(k_full + 8 * st, uint32_t(it / kStages) & 1);
    mbarrier_wait_parity(v_full + 8 * pst, uint32_t((it - 1) / kStages) & 1);
    zero_v_outside(it - 1, v_s + pst * kVBytes);
    issue_qk(k_s + st * kKBytes);
    issue_pv(v_s + pst * kVBytes);
    wgmma_wait<1>();  // S(it) is done; P V(it - 1) may still run
    fence_registers(s_flat);
    release(k_empty + 8 * st);
    float alpha[2];
    softmax_step(kbase + it * BN, alpha);
    wgmma_wait<0>();
    fence_registers(o_flat);
    release(v_empty + 8 * pst);
    OnlineSoftmax::rescale(o, alpha);
    pack_p();
  }
  if (num_tiles > 0) {  // P V of the last tile
    const int lt = num_tiles - 1;
    const uint32_t st = uint32_t(lt % kStages);
    mbarrier_wait_parity(v_full + 8 * st, uint32_t(lt / kStages) & 1);
    zero_v_outside(lt, v_s + st * kVBytes);
    issue_pv(v_s + st * kVBytes);
    wgmma_wait<0>();
    fence_registers(o_flat);
  }
  state.finish();

  // Epilogue: each thread writes its two rows' dims 8 no + 2 t4 .. + 1 directly.
  const bool direct = n_splits == 1;
  const int64_t hq = p.num_q_heads;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = 64 * wg + 16 * (warp & 3) + g + 8 * i;
    if (r >= rows_here) continue;
    const int R = row0 + r;
    const int64_t token = tok0 + R / G;
    const int64_t head = int64_t(kvh) * G + R % G;
    float m = state.m[i];
    float l = state.l[i];
    float sc = 1.f;
    if (direct && p.sinks != nullptr) {
      const float sink = p.sinks[head] * 1.4426950408889634f;  // natural-log logit into the exp2 domain
      const float mx = fmaxf(m, sink);
      sc = m == -INFINITY ? 0.f : fast_exp2(m - mx);
      l = l * sc + fast_exp2(sink - mx);
    }
    const float inv = l > 0.f ? sc / l : 0.f;
    if (direct) {
      T* dst = static_cast<T*>(p.out) + token * hq * DV + head * DV + 2 * t4;
#pragma unroll
      for (int no = 0; no < NO; ++no) {
        *reinterpret_cast<uint32_t*>(dst + no * 8) = pack2<T>(o[no][2 * i] * inv, o[no][2 * i + 1] * inv);
      }
    } else {
      const int64_t slot_row = int64_t(split) * p.rows * hq + token * hq + head;
      float* dst = p.partial_o + slot_row * DV + 2 * t4;
#pragma unroll
      for (int no = 0; no < NO; ++no) {
        *reinterpret_cast<float2*>(dst + no * 8) = make_float2(o[no][2 * i] * inv, o[no][2 * i + 1] * inv);
      }
      if (t4 == 0) p.partial_lse[slot_row] = l > 0.f ? m + __log2f(l) : -INFINITY;
    }
  }
#else
  __trap();  // launched only on sm_90 devices of an sm_90a build (runs_sm90a_code)
#endif
}


// Launches the prefill tiles of a call on Tile (tile map in p.tile_start built with
// prefill_block_m = Tile::kBlockM), as a programmatic dependent launch when `pdl` (the kernel waits
// for the kernels before it first).
template <typename T, int D, int DV, int GROUP, class Tile>
void launch_hopper_prefill_tile(const AttentionParams& p, int64_t grid_tiles, bool pdl, cudaStream_t stream) {
  constexpr int smem = hopper_prefill_smem_bytes<Tile>(D, DV);
  if (grid_tiles <= 0) return;
  auto kernel = hopper_prefill_kernel<T, D, DV, GROUP, Tile>;
  int device = 0;
  PGQA_CUDA_CHECK(cudaGetDevice(&device));
  PGQA_CHECK_ARG(device < kMaxHopperDevices, "CUDA device ", device, " is past the ", kMaxHopperDevices,
                 " devices the Hopper prefill kernel tracks");
  static std::atomic<bool> smem_raised[kMaxHopperDevices];  // the attribute is per device
  if (!smem_raised[device].load(std::memory_order_acquire)) {
    PGQA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    smem_raised[device].store(true, std::memory_order_release);
  }
  const HopperKvMaps maps = make_hopper_kv_maps<T>(p, D, DV);
  const dim3 grid(unsigned(grid_tiles), unsigned(p.max_splits), unsigned(p.num_kv_heads));
  launch_kernel("hopper_prefill_kernel", kernel, grid, dim3(Tile::kThreads), smem, stream, pdl, p, maps);
}

// The prefill tiles on the Hopper tile the plan chose (choose_hopper_tile).
template <typename T, int D, int DV, int GROUP>
void launch_hopper_prefill(const AttentionParams& p, HopperTile tile, int64_t grid_tiles, bool pdl,
                           cudaStream_t stream) {
  if constexpr (hopper_prefill_supports(D, DV)) {
    if (tile == HopperTile::kWide) {
      launch_hopper_prefill_tile<T, D, DV, GROUP, HopperWideTile>(p, grid_tiles, pdl, stream);
    } else if (tile == HopperTile::kNarrow) {
      launch_hopper_prefill_tile<T, D, DV, GROUP, HopperNarrowTile>(p, grid_tiles, pdl, stream);
    } else {
      PGQA_CHECK_ARG(false, "no Hopper prefill tile was chosen (tile ", int(tile), ")");
    }
  } else {
    PGQA_CHECK_ARG(false, "head_dim/v_head_dim ", D, "/", DV, " have no Hopper prefill kernel");
  }
}

}  // namespace paddle_gqa::cuda::attn
