// The paged attention kernel: FlashAttention-2-style forward over a paged KV cache with GQA rows
// packed into the M tile, causal / sliding-window masks on boundary tiles only, sinks, and KV
// splits whose partial results merge_kernel.cuh combines. K / V tiles are gathered by 16-byte
// cp.async, except in sm_90a code of the decode config (kDecodeTmaKv), where TMA bulk copies fill
// swizzled stages. Included by the generated
// instantiation files (csrc/kernels/generated/attention_*.cu), one (dtype, D, Dv, G) each.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../cuda_check.h"
#include "attention_params.h"
#include "hopper_prefill_kernel.cuh"
#include "merge_kernel.cuh"
#include "mma.cuh"
#include "online_softmax.cuh"
#include "paged_kv.cuh"
#include "paddle_gqa/generated/supported.h"
#include "paddle_gqa/mask.h"
#include "planner.cuh"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr int kMaxDevices = 64;

// Whether a config's K / V tiles arrive by TMA bulk copies when the kernel runs as sm_90a code:
// the decode config with head dims of whole 64-element swizzle panels. On H100 the 16-byte cp.async
// gather held the decode kernel to ~80% of DRAM bandwidth (ncu, BENCHMARKS.md session 3).
template <class Cfg, int D, int DV>
inline constexpr bool kDecodeTmaKv = Cfg::kBlockM == kDecodeBlockM && D % 64 == 0 && DV % 64 == 0;

// The smallest block size the build takes: issue_tile's 32-block id window holds a tile's blocks
// (64 / box_rows of them, an aligned group) only while that group has at most 32 blocks.
constexpr int min_supported_block_size() {
  int m = kSupportedBlockSizes[0];
  for (int bs : kSupportedBlockSizes) m = bs < m ? bs : m;
  return m;
}
static_assert(min_supported_block_size() >= 2, "a decode tile's blocks must fit warp 0's 32-block id window");

// The CTA's index in x-fastest order: the order in which the hardware hands out a grid's CTAs.
__device__ __forceinline__ unsigned linear_cta_id() {
  return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
}

#if defined(PGQA_TILE_TIMES) && !defined(PGQA_CTA_TIMES)
#error "PGQA_TILE_TIMES records into the PGQA_CTA_TIMES buffer: build with both"
#endif
#ifdef PGQA_CTA_TIMES
__device__ __forceinline__ unsigned long long global_timer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// Thread 0 of a decode CTA records {start, now, smid, items} at its linear id (measurement builds).
__device__ __forceinline__ void record_cta_time(const AttentionParams& p, unsigned long long start, int items) {
  if (p.cta_times == nullptr || threadIdx.x != 0) return;
  unsigned long long* r = p.cta_times + 4 * int64_t(linear_cta_id());
  r[0] = start;
  r[1] = global_timer_ns();
#ifndef PGQA_CTA_ISSUE
  unsigned smid;  // with PGQA_CTA_ISSUE word 2 holds when warp 0 began issuing the first K / V copies
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  r[2] = smid;
#endif
#ifndef PGQA_CTA_RAMP
  r[3] = unsigned(items);  // with PGQA_CTA_RAMP: when the CTA's first K / V tile landed
#endif
}
// Thread 0 stores the time now into word `word` of the CTA's record (PGQA_CTA_ISSUE: 2, RAMP: 3).
__device__ __forceinline__ void mark_cta_time(const AttentionParams& p, int word) {
  if (p.cta_times == nullptr || threadIdx.x != 0) return;
  p.cta_times[4 * int64_t(linear_cta_id()) + word] = global_timer_ns();
}
#endif

// One work item of the attention launch: column `column` of `columns` (decode launches: q tile
// `column` of the tile map, then p.pad_ctas trailing columns that zero padding rows instead; prefill
// launches: q tile columns - 1 - column), split `split` of that tile's KV tiles, kv head `kvh`.
// Called by every thread of the CTA; `early`: see paged_attention_kernel. `phase_bits` holds the
// parity of each TMA stage barrier's next phase (bit st), carried from item to item by a persistent
// CTA; full0 is the shared address of the S stage barriers (8 bytes each), initialised by the
// kernel. `maps` (make_hopper_kv_maps) is read only by sm_90a code of a kDecodeTmaKv config.
template <typename T, int D, int DV, int GROUP, class Cfg>
__device__ __forceinline__ void attention_work_item(const AttentionParams p, const HopperKvMaps& maps, int column,
                                                    int columns, int split, int kvh, bool early, uint32_t full0,
                                                    uint32_t& phase_bits) {
  constexpr int BM = Cfg::kBlockM;
  constexpr int BN = Cfg::kBlockN;
  constexpr int WN = Cfg::kWarpsN;
  constexpr int NT = Cfg::kThreads;
  constexpr int KW = Cfg::kWarpKeys;
  constexpr int MA = Cfg::kMAtoms;
  constexpr int S = Cfg::kStages;
  constexpr int QS = D + kSmemPad;   // smem row pitch of Q and K (elements)
  constexpr int VS = DV + kSmemPad;  // smem row pitch of V
  constexpr int NB = KW / 8;         // score accumulator blocks per warp (8 keys each)
  constexpr int NO = DV / 8;         // output accumulator blocks per warp (8 dims each)
  constexpr int OS = DV + kEpiloguePad;
  static_assert(D % 16 == 0 && DV % 16 == 0, "head dims are multiples of 16");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // K / V stages are [BN][D] (and [BN][Dv]) 128-byte swizzled panels filled by TMA: no padding, so
  // ldmatrix addresses apply the swizzle (chunk c of row r at r * 128 + ((c ^ r % 8) * 16)).
  constexpr bool kTma = kDecodeTmaKv<Cfg, D, DV>;
#else
  constexpr bool kTma = false;
#endif
  const auto step_passed = [&p]() {  // waits for the step check; false when it found an error
    pdl_wait();
    return p.error->code == 0;
  };
  // Zeroing columns, when no merge runs after this launch (decode launches only: launch_attention).
  if (BM == kDecodeBlockM && column >= columns - p.pad_ctas) {
    if (early && !step_passed()) return;
    const int64_t cols = p.pad_ctas;
    zero_padding_rows<T>(p, DV, column - (columns - cols) + cols * (split + int64_t(p.max_splits) * kvh),
                         cols * p.max_splits * p.num_kv_heads);
    return;
  }
  // Prefill tiles reversed so that the last tiles of a slot (under causal masks the longest) start
  // first and the CTAs past the real tile count are the first to exit. Decode tiles in order: the
  // CTAs past the real count (and the zeroing columns) come last in the decode kernel's dispatch
  // order, where early tiles that must wait for the step check before they exit hold no SM the
  // real tiles need.
  const int tile = BM == kDecodeBlockM ? column : columns - 1 - column;
  const int G = GROUP > 0 ? GROUP : p.group;
  // Warp 0's block ids (TMA decode tiles): a window of 32 logical blocks, lane j holding block
  // id_base + j of the slot's block-table row, and the next 32 loaded a window ahead, so that issuing
  // a tile waits for no block-id load (H100: -0.8 us on decode_g3, -1.4 on decode_long). Decode tile
  // b < B is slot b's first, and a slot's split 0 usually starts at block 0 (no sliding window): its
  // first two windows load beside the slot's scalars, one round trip before the first copies; a
  // wrong guess is reloaded at the first issue (-0.4 us more).
  [[maybe_unused]] int id_base = -64, id_cur = -1, id_next = -1;
  [[maybe_unused]] const auto id_load = [&p](const int32_t* row, int base) {
    const int lb = base + (int(threadIdx.x) & 31);
    return lb < p.max_blocks_per_seq ? row[lb] : -1;
  };
  if (kTma && threadIdx.x < 32 && column < p.batch && split == 0) {
    const int32_t* row = p.block_tables + int64_t(column) * p.max_blocks_per_seq;
    id_base = 0;
    id_cur = id_load(row, 0);
    id_next = id_load(row, 32);
  }
  TileSlot ts;
  bool located;
  if constexpr (BM == kDecodeBlockM) {
    located = locate_decode_tile<NT>(p, tile, G, early, ts);
  } else {
    located = locate_tile(p, tile, BM, G, ts);
  }
  SplitTiles split_tiles;
  if (!located || !locate_split(p, ts, split, BN, split_tiles)) {
    if (early) pdl_wait();
    return;
  }
  const auto [b, tok0, n, cache_len, kv_len, row0, rows_here, first, last] = ts;
  const auto [n_splits, kt_begin, kt_end] = split_tiles;

  // Keys any row of the tile sees, [lo, hi], and keys every row sees, [full_lo, full_hi].
  const int lo = int(first.lo), hi = int(last.hi);
  const int full_lo = int(last.lo), full_hi = int(first.hi);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm = warp / WN;
  const int wn = warp % WN;
  const int g = lane >> 2;
  const int t4 = lane & 3;
  const int warp_row0 = wm * 16 * MA;  // first tile row of the warp's atoms

  // Visible range of the thread's accumulator rows (atom a, half i: row warp_row0 + 16a + g + 8i);
  // empty for padding rows.
  int row_lo[MA][2], row_hi[MA][2];
#pragma unroll
  for (int a = 0; a < MA; ++a) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = warp_row0 + 16 * a + g + 8 * i;
      row_lo[a][i] = 1;
      row_hi[a][i] = 0;
      if (r < rows_here) {
        const KeyRange kr = visible_keys(cache_len + (row0 + r) / G, kv_len, p.causal, p.sliding_window);
        row_lo[a][i] = int(kr.lo);
        row_hi[a][i] = int(kr.hi);
      }
    }
  }

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* q_s = reinterpret_cast<T*>(smem_raw);  // [BM][QS]
  T* k_s = q_s + BM * QS;                   // [S][BN][QS]
  T* v_s = k_s + S * BN * QS;               // [S][BN][VS]
  // The TMA layout: Q as above, then K stages and V stages of swizzled panels from the next
  // 1024-byte boundary (the swizzle period); it fits the padded layout's bytes (static_assert).
  constexpr uint32_t kTmaKBytes = BN * D * 2, kTmaVBytes = BN * DV * 2;
  static_assert(!kTma || 1024 + BM * QS * 2 + S * (kTmaKBytes + kTmaVBytes) <= attention_smem_bytes<Cfg, D, DV>(),
                "the TMA stages fit the shared memory the config launches with");
  // opaque (TMA configs only: the asm is never dead code): kept in registers across the KV loop
  const auto tma_address = [](uint32_t x) { return kTma ? opaque_u32(x) : x; };
  const uint32_t k_tma = tma_address((smem_u32(q_s + BM * QS) + 1023u) & ~1023u);  // [S] K panels
  const uint32_t v_tma = tma_address(k_tma + S * kTmaKBytes);                      // [S] V panels
  full0 = tma_address(full0);

  const int32_t* block_row = p.block_tables + int64_t(b) * p.max_blocks_per_seq;
  const PagedHead<T, D> k_head{static_cast<const T*>(p.k_cache), block_row, kvh, p.num_kv_heads, p.block_size_log2};
  const PagedHead<T, DV> v_head{static_cast<const T*>(p.v_cache), block_row, kvh, p.num_kv_heads, p.block_size_log2};

  // TMA: warp 0 arms stage st's barrier with the bytes of tile kt's boxes that meet [lo, hi] (at
  // most 64 rows of one block and head by 64 elements each; boxes wholly outside are not read,
  // their blocks may be -1) and copies them, one (box, panel) per lane and pass.
  [[maybe_unused]] auto issue_tile = [&](int kt, int st) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if constexpr (kTma) {
      // Shifts, not divisions: box_rows = kv_box_rows(block size) is a power of two, and
      // key0 <= hi (the tile meets [lo, hi]), so the floors below equal the truncating quotients.
      const int bs_log2 = p.block_size_log2;
      const int box_rows = kv_box_rows(1 << bs_log2);
      const int box_log2 = 31 - __clz(box_rows);
      const int key0 = kt * BN;
      const int box_lo = max(0, (lo - key0) >> box_log2);
      const int box_hi = min(BN / box_rows - 1, (hi - key0) >> box_log2);
      const int nbox = box_hi - box_lo + 1;
      const uint32_t bar = full0 + 8u * st;
      if (lane == 0) sm90::mbarrier_arrive_expect_tx(bar, uint32_t(nbox * (D / 64 + DV / 64) * box_rows * 128));
      __syncwarp();
      // The tile's blocks are one aligned group of 64 / box_rows blocks (at most 32:
      // min_supported_block_size), or part of one block: one window holds them.
      const int lb0 = (key0 + box_lo * box_rows) >> bs_log2;
      if (lb0 < id_base || lb0 >= id_base + 32) {
        if (id_base >= 0 && lb0 >= id_base + 32 && lb0 < id_base + 64) {
          id_base += 32;
          id_cur = id_next;
        } else {
          id_base = lb0 & ~31;
          id_cur = id_load(block_row, id_base);
        }
        id_next = id_load(block_row, id_base + 32);
      }
      for (int j0 = 0; j0 < nbox * (D / 64 + DV / 64); j0 += 32) {  // every lane reaches the shuffle
        const int job = j0 + lane;
        const int bx = nbox == 1 ? box_lo : box_lo + job % nbox;  // one box per panel: blocks >= 64 keys
        const int pn = nbox == 1 ? job : job / nbox;               // K panels, then V panels
        const bool is_v = pn >= D / 64;
        const int key = key0 + bx * box_rows;
        const int block = __shfl_sync(0xffffffffu, id_cur, ((key >> bs_log2) - id_base) & 31);
        if (job >= nbox * (D / 64 + DV / 64)) continue;
        // Unsigned: an early tile may meet an unvalidated block id; the wrapped row is still a
        // coordinate the tensor map bounds-checks (a copy outside the cache reads zeros).
        const int row = int(((unsigned(block) * unsigned(p.num_kv_heads) + unsigned(kvh)) << bs_log2) +
                            unsigned(key & ((1 << bs_log2) - 1)));
        const uint32_t dst = is_v ? v_tma + st * kTmaVBytes + (pn - D / 64) * (BN * 128)
                                  : k_tma + st * kTmaKBytes + pn * (BN * 128);
        sm90::tma_load_2d(dst + uint32_t(bx * box_rows * 128), is_v ? static_cast<const void*>(&maps.v)
                                                                     : static_cast<const void*>(&maps.k),
                          (is_v ? pn - D / 64 : pn) * 64, row, bar);
      }
    }
#endif
  };

  load_q_tile<T, D, BM, NT, GROUP>(q_s, static_cast<const T*>(p.q), p.q_row_stride, p.q_head_stride, tok0, row0,
                                   rows_here, kvh, p.group, tid);
  if constexpr (kTma) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (warp == 0) {
#ifdef PGQA_CTA_ISSUE
      mark_cta_time(p, 2);
#endif
      for (int st = 0; st < S - 1; ++st)
        if (kt_begin + st < kt_end) issue_tile(kt_begin + st, st);
    }
    cp_async_commit();
    cp_async_wait<0>();  // Q
    __syncthreads();     // Q and the initialised barriers are visible to every warp
#endif
  } else {
    // Prologue: tiles kt_begin .. kt_begin + S - 2 into stages 0 .. S - 2, one cp.async group each
    // (the first also holds Q). Groups are committed even when empty so that group i is tile i.
#pragma unroll
    for (int st = 0; st < S - 1; ++st) {
      if (kt_begin + st < kt_end) {
        load_kv_tile<T, D, BN, NT>(k_s + st * BN * QS, k_head, (kt_begin + st) * BN, lo, hi, tid);
        load_kv_tile<T, DV, BN, NT>(v_s + st * BN * VS, v_head, (kt_begin + st) * BN, lo, hi, tid);
      }
      cp_async_commit();
    }
  }

  float o[MA][NO][4];
#pragma unroll
  for (int a = 0; a < MA; ++a)
#pragma unroll
    for (int i = 0; i < NO; ++i) o[a][i][0] = o[a][i][1] = o[a][i][2] = o[a][i][3] = 0.f;
  OnlineSoftmax state[MA];
#pragma unroll
  for (int a = 0; a < MA; ++a) state[a].init();

  // Per-lane ldmatrix offsets (elements) within the warp's 16-row / 16-key slices.
  const int q_off = (warp_row0 + (lane & 15)) * QS + (lane >> 4) * 8;
  const int k_off = (wn * KW + ((lane >> 4) << 3) + (lane & 7)) * QS + ((lane >> 3) & 1) * 8;
  const int v_off = (wn * KW + (lane & 7) + ((lane >> 3) & 1) * 8) * VS + (lane >> 4) * 8;
  // The same lanes' rows and 16-byte chunks in the swizzled TMA stages: row r = base + 16 step,
  // chunk c = lane part + 2 step', so r % 8 = lane % 8 and c never carries into the panel index.
  const int k_row = wn * KW + ((lane >> 4) << 3) + (lane & 7), k_chunk = (lane >> 3) & 1;
  const int v_row = wn * KW + (lane & 7) + ((lane >> 3) & 1) * 8, v_chunk = lane >> 4;
  const int swz = lane & 7;

  // Decode tiles are latency-bound per CTA (one warp per scheduler issuing a chain of a few
  // hundred instructions per KV tile; BENCHMARKS.md sessions 6-7), so they trade registers for a
  // shorter chain: Q's fragments stay in registers for the whole loop (D + Dv <= 256; two CTAs per
  // SM still fit, __launch_bounds__), S accumulates over two independent MMA chains (even and odd
  // k16 steps), O is rescaled lazily, and full tiles run a copy of the math without the mask.
  constexpr bool kDecodeTile = BM == kDecodeBlockM && MA == 1;
  constexpr bool kQInRegs = kDecodeTile && D + DV <= 256;
  constexpr int kChains = kDecodeTile ? 2 : 1;
  constexpr bool kLazyRescale = kDecodeTile;
  uint32_t q_frag[kQInRegs ? D / 16 : 1][4];

  // After Q has landed: before the loop on the TMA path (the prologue's barrier), in the first
  // tile otherwise (its cp.async group holds Q).
  const auto load_q_frag = [&]() {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(q_frag[kk], smem_u32(q_s + q_off + kk * 16));
  };
  if constexpr (kQInRegs && kTma) load_q_frag();
  // One KV tile's math on stage `stage`: S = Q K^T, the mask where `masked`, the online softmax and
  // O += P V. `masked` is a bool, or a std::bool_constant where decode tiles compile a second copy
  // of the math for boundary tiles, so that the full tiles carry no mask code.
  const int first_kt = kt_begin;  // a plain copy: C++17 lambdas cannot capture structured bindings
  const auto tile_math = [&](const int kt, const int stage, const auto masked) {
    // S = Q K^T for the warp's 16 MA rows x KW keys, over kChains independent accumulators.
    if constexpr (kQInRegs && !kTma) {
      if (kt == first_kt) load_q_frag();
    }
    [[maybe_unused]] const T* k_stage = k_s + stage * BN * QS;  // the cp.async stages
    float s[MA][NB][4];
    float s_odd[MA][NB][4];  // the odd k16 steps' chain (kChains == 2; otherwise unused)
#pragma unroll
    for (int a = 0; a < MA; ++a)
#pragma unroll
      for (int i = 0; i < NB; ++i) s[a][i][0] = s[a][i][1] = s[a][i][2] = s[a][i][3] = 0.f;
    if constexpr (kChains > 1) {
#pragma unroll
      for (int i = 0; i < NB; ++i) s_odd[0][i][0] = s_odd[0][i][1] = s_odd[0][i][2] = s_odd[0][i][3] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[MA][4];
      if constexpr (kQInRegs) {
#pragma unroll
        for (int j = 0; j < 4; ++j) qa[0][j] = q_frag[kk][j];
      } else {
#pragma unroll
        for (int a = 0; a < MA; ++a) ldmatrix_x4(qa[a], smem_u32(q_s + q_off + a * 16 * QS + kk * 16));
      }
      float(&acc)[MA][NB][4] = (kChains > 1 && kk % 2 == 1) ? s_odd : s;
#pragma unroll
      for (int nb2 = 0; nb2 < NB / 2; ++nb2) {
        uint32_t bk[4];
        if constexpr (kTma) {
          const int c = k_chunk + 2 * (kk & 3);
          ldmatrix_x4(bk, k_tma + stage * kTmaKBytes + (kk >> 2) * (BN * 128) + (k_row + 16 * nb2) * 128 +
                              ((c ^ swz) << 4));
        } else {
          ldmatrix_x4(bk, smem_u32(k_stage + k_off + nb2 * 16 * QS + kk * 16));
        }
#pragma unroll
        for (int a = 0; a < MA; ++a) {
          mma_16816<T>(acc[a][2 * nb2], qa[a], bk[0], bk[1]);
          mma_16816<T>(acc[a][2 * nb2 + 1], qa[a], bk[2], bk[3]);
        }
      }
    }
    if constexpr (kChains > 1) {
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[0][i][e] += s_odd[0][i][e];
    }

    // Mask only where the tile is not visible to every row; the update scales into the exp2 domain.
    const int key_base = kt * BN + wn * KW + 2 * t4;
#pragma unroll
    for (int a = 0; a < MA; ++a) {
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (masked) {
            const int key = key_base + nb * 8 + (e & 1);
            if (key < row_lo[a][e >> 1] || key > row_hi[a][e >> 1]) s[a][nb][e] = -INFINITY;
          }
        }
      }
      if constexpr (kLazyRescale) {
        state[a].update_lazy(s[a], o[a], p.scale_log2);
      } else {
        state[a].update(s[a], o[a], p.scale_log2);
      }
    }

    // O += P V, P taken straight from the score accumulators as A fragments.
    [[maybe_unused]] const T* v_stage = v_s + stage * BN * VS;
#pragma unroll
    for (int kk = 0; kk < KW / 16; ++kk) {
      uint32_t pa[MA][4];
#pragma unroll
      for (int a = 0; a < MA; ++a) {
        pa[a][0] = pack2<T>(s[a][2 * kk][0], s[a][2 * kk][1]);
        pa[a][1] = pack2<T>(s[a][2 * kk][2], s[a][2 * kk][3]);
        pa[a][2] = pack2<T>(s[a][2 * kk + 1][0], s[a][2 * kk + 1][1]);
        pa[a][3] = pack2<T>(s[a][2 * kk + 1][2], s[a][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dn2 = 0; dn2 < NO / 2; ++dn2) {
        uint32_t bv[4];
        if constexpr (kTma) {
          const int c = v_chunk + 2 * (dn2 & 3);
          ldmatrix_x4_trans(bv, v_tma + stage * kTmaVBytes + (dn2 >> 2) * (BN * 128) + (v_row + 16 * kk) * 128 +
                                    ((c ^ swz) << 4));
        } else {
          ldmatrix_x4_trans(bv, smem_u32(v_stage + v_off + kk * 16 * VS + dn2 * 16));
        }
#pragma unroll
        for (int a = 0; a < MA; ++a) {
          mma_16816<T>(o[a][2 * dn2], pa[a], bv[0], bv[1]);
          mma_16816<T>(o[a][2 * dn2 + 1], pa[a], bv[2], bv[3]);
        }
      }
    }
  };

  // kt's stage, (kt - kt_begin) % S: decode tiles count it (no division by S = 3 per tile); the
  // prefill config keeps the modulo, with which ptxas fits it without spills.
  int stage_count = 0;
  for (int kt = kt_begin; kt < kt_end; ++kt, stage_count = stage_count == S - 1 ? 0 : stage_count + 1) {
    const int stage = kDecodeTile ? stage_count : (kt - kt_begin) % S;
    if constexpr (kTma) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
      // Refill the stage tile kt - 1 used (freed by the barrier at the end of the last iteration).
      if (warp == 0 && kt + S - 1 < kt_end) issue_tile(kt + S - 1, stage == 0 ? S - 1 : stage - 1);
      sm90::mbarrier_wait_parity(full0 + 8u * stage, (phase_bits >> stage) & 1u);
      phase_bits ^= 1u << stage;
#ifdef PGQA_CTA_RAMP
      if (kt == kt_begin) mark_cta_time(p, 3);
#endif
#ifdef PGQA_TILE_TIMES
      // Measurement builds: when each KV tile landed, after the CTA records (attention_params.h).
      constexpr int kCtaRecordWords = 8192, kTileTimesPerCta = 512;
      if (p.cta_times != nullptr && threadIdx.x == 0 && kt - kt_begin < kTileTimesPerCta)
        p.cta_times[kCtaRecordWords + kTileTimesPerCta * int64_t(linear_cta_id()) + (kt - kt_begin)] =
            global_timer_ns();
#endif
      if (kt * BN < lo || kt * BN + BN - 1 > hi) {
        // Keys of the tile outside [lo, hi] were not read or are not this step's: the warp zeroes
        // its own V rows there (P = 0 must meet finite V), then orders the stores before the
        // stage's next bulk copy.
        const uint32_t v_stage = v_tma + stage * kTmaVBytes;
        for (int idx = lane; idx < KW * (DV / 64) * 8; idx += 32) {
          const int r = wn * KW + idx / ((DV / 64) * 8);
          const int rest = idx % ((DV / 64) * 8);
          const int key = kt * BN + r;
          if (key < lo || key > hi) {
            const uint32_t addr = v_stage + uint32_t((rest >> 3) * (BN * 128) + r * 128 + (rest & 7) * 16);
            asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0) : "memory");
          }
        }
        sm90::fence_proxy_async_smem();
        __syncwarp();
      }
#endif
    } else {
      if (kt + S - 1 < kt_end) {  // refill the stage tile kt - 1 used (freed by the barrier below)
        const int st = stage == 0 ? S - 1 : stage - 1;
        load_kv_tile<T, D, BN, NT>(k_s + st * BN * QS, k_head, (kt + S - 1) * BN, lo, hi, tid);
        load_kv_tile<T, DV, BN, NT>(v_s + st * BN * VS, v_head, (kt + S - 1) * BN, lo, hi, tid);
      }
      cp_async_commit();
      cp_async_wait<S - 1>();  // tile kt has landed; the S - 1 after it may still be in flight
      __syncthreads();
    }

    const bool full_tile = kt * BN >= full_lo && kt * BN + BN - 1 <= full_hi;  // every row sees every key
    if constexpr (kDecodeTile) {
      if (full_tile) {
        tile_math(kt, stage, std::false_type{});
      } else {
        tile_math(kt, stage, std::true_type{});
      }
    } else {
      tile_math(kt, stage, !full_tile);
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }
#pragma unroll
  for (int a = 0; a < MA; ++a) state[a].finish();
  cp_async_wait<0>();
  __syncthreads();
  if (early && !step_passed()) return;  // nothing written on invalid step data

  // Epilogue: each warp's (m, l, O) to shared memory, then all threads combine the kWarpsN key
  // groups per row and write 4 consecutive dims each (coalesced).
  float* e_o = reinterpret_cast<float*>(smem_raw);  // [WN][BM][OS]
  float* e_m = e_o + WN * BM * OS;                  // [WN][BM]
  float* e_l = e_m + WN * BM;                       // [WN][BM]
#pragma unroll
  for (int a = 0; a < MA; ++a) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = warp_row0 + 16 * a + g + 8 * i;
      if (r >= rows_here) continue;  // padding rows: never combined below
      float* dst = e_o + (wn * BM + r) * OS + 2 * t4;
#pragma unroll
      for (int no = 0; no < NO; ++no) {
        *reinterpret_cast<float2*>(dst + no * 8) = make_float2(o[a][no][2 * i], o[a][no][2 * i + 1]);
      }
      if (t4 == 0) {
        e_m[wn * BM + r] = state[a].m[i];
        e_l[wn * BM + r] = state[a].l[i];
      }
    }
  }
  __syncthreads();

  const bool direct = n_splits == 1;
  const int64_t hq = p.num_q_heads;
#pragma unroll 1
  for (int idx = tid; idx < BM * (DV / 4); idx += NT) {
    const int r = idx / (DV / 4);
    const int c = (idx % (DV / 4)) * 4;
    if (r >= rows_here) continue;
    const int R = row0 + r;
    const int64_t token = tok0 + R / G;
    const int64_t head = int64_t(kvh) * G + R % G;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < WN; ++w) mx = fmaxf(mx, e_m[w * BM + r]);
    const float sink = (direct && p.sinks != nullptr) ? p.sinks[head] * kLog2e : -INFINITY;
    mx = fmaxf(mx, sink);
    float l = 0.f;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < WN; ++w) {
        const float sc = fast_exp2(e_m[w * BM + r] - mx);
        l += e_l[w * BM + r] * sc;
        const float4 v = *reinterpret_cast<const float4*>(e_o + (w * BM + r) * OS + c);
        acc[0] += v.x * sc;
        acc[1] += v.y * sc;
        acc[2] += v.z * sc;
        acc[3] += v.w * sc;
      }
      l += fast_exp2(sink - mx);  // 0 without sinks
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (direct) {
      T* dst = static_cast<T*>(p.out) + token * hq * DV + head * DV + c;
      uint2 packed;
      packed.x = pack2<T>(acc[0] * inv, acc[1] * inv);
      packed.y = pack2<T>(acc[2] * inv, acc[3] * inv);
      *reinterpret_cast<uint2*>(dst) = packed;
    } else {
      const int64_t slot_row = int64_t(split) * p.rows * hq + token * hq + head;
      *reinterpret_cast<float4*>(p.partial_o + slot_row * DV + c) =
          make_float4(acc[0] * inv, acc[1] * inv, acc[2] * inv, acc[3] * inv);
      if (c == 0) p.partial_lse[slot_row] = l > 0.f ? mx + __log2f(l) : -INFINITY;
    }
  }

  // A decode tile merges its own splits (no merge launch for decode tiles): the split CTA that
  // arrives last on the tile's counter (zeroed by the step check) merges the tile's rows, after a
  // fence that publishes every CTA's partials before its arrival counts.
  if constexpr (BM == kDecodeBlockM) {
    if (!direct) {
      __shared__ bool merges_here;
      __threadfence();
      __syncthreads();
      if (tid == 0) {
        merges_here = atomicAdd(p.split_counters + int64_t(tile) * p.num_kv_heads + kvh, 1) == n_splits - 1;
      }
      __syncthreads();
      if (!merges_here) return;
      __threadfence();
      for (int idx = tid; idx < rows_here * (DV / 4); idx += NT) {
        const int R = row0 + idx / (DV / 4);
        merge_four<T>(p, tok0 + R / G, int64_t(kvh) * G + R % G, (idx % (DV / 4)) * 4, n_splits, DV);
      }
    }
  }
}

// The S stage barriers of a TMA decode config, initialised by thread 0 for every item of the CTA:
// warp 0 (thread 0 among it) arms and issues the stages, and the other warps wait on them only after
// an item's first __syncthreads. Returns their shared address (8 bytes each).
template <class Cfg, int D, int DV>
__device__ __forceinline__ uint32_t init_stage_barriers() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr bool kTma = kDecodeTmaKv<Cfg, D, DV>;
#else
  constexpr bool kTma = false;
#endif
  __shared__ alignas(8) uint64_t stage_full[kTma ? Cfg::kStages : 1];
  const uint32_t full0 = smem_u32(&stage_full[0]);
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kTma) {
    if (threadIdx.x == 0) {
      for (int st = 0; st < Cfg::kStages; ++st) sm90::mbarrier_init(full0 + 8u * st, 1);
      sm90::fence_barrier_init();
    }
    __syncwarp();
  }
#endif
  return full0;
}

// Grid (columns, max_splits, Hkv); block Cfg::kThreads. CTA (x, s, kvh) runs work item (x, s, kvh),
// but decode configs renumber the CTAs (below).
// Decode configs declare their two CTAs per SM: ptxas then budgets up to 255 registers, where it
// otherwise capped some of them at 128 and spilled (192/128; sm_90a build: 0 spills in 537 entries).
template <typename T, int D, int DV, int GROUP, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kBlockM == kDecodeBlockM ? 2 : 1)
    paged_attention_kernel(const AttentionParams p, const __grid_constant__ HopperKvMaps maps) {
  // Early tiles (decode_before_wait, TMA decode tiles only): the tile finds its slot from
  // cu_seqlens (locate_decode_tile, clamped) and streams K / V while the step check still runs, as
  // TMA copies are bounds-checked by the tensor maps whatever block ids they meet; it waits for the
  // check only before its first write, and every CTA waits before it exits, so that the launches
  // after this one (waiting on this grid) still come after the check. Otherwise the CTA waits first.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  const bool early = kDecodeTmaKv<Cfg, D, DV> && p.decode_before_wait;
#else
  const bool early = false;
#endif
#ifdef PGQA_CTA_TIMES
  const unsigned long long cta_start = global_timer_ns();
#endif
  // Decode launches dispatch kv head fastest, then split, then column (CTAs go out in linear blockIdx
  // order): the CTAs of one slot's heads run side by side on the same blocks (H100, decode_long:
  // -1 us of 365), and the columns past the slots' tiles come last (attention_work_item).
  int column = blockIdx.x, split = blockIdx.y, kvh = blockIdx.z;
  if constexpr (Cfg::kBlockM == kDecodeBlockM) {
    const unsigned lin = linear_cta_id();
    kvh = int(lin % gridDim.z);
    const unsigned rest = lin / gridDim.z;
    split = int(rest % gridDim.y);
    column = int(rest / gridDim.y);
  }
  if (!early) {
    pdl_wait();  // the step check (tile maps, error record) and any kernel before this one are done
    pdl_launch_dependents();
    if (p.error->code != 0) return;
  } else {
    pdl_launch_dependents();
    // Tile b < B is slot b's first (locate_decode_tile): while its three scalars load, warp 1 pulls
    // the slot's block-table row into L2 (up to 32 lines, 1024 blocks), so that the first copies'
    // block ids, at whichever split's first tile, are not a second DRAM round trip. (H100, decode_g3:
    // the first copies went out 2.0 us after a CTA's start when the slot came from a scan of
    // cu_seqlens.)
    const int lane = int(threadIdx.x) & 31;
    if (threadIdx.x >> 5 == 1 && column < p.batch && 32 * lane < p.max_blocks_per_seq)
      l2_prefetch(p.block_tables + int64_t(column) * p.max_blocks_per_seq + 32 * lane);
  }
  uint32_t phase_bits = 0;
  attention_work_item<T, D, DV, GROUP, Cfg>(p, maps, column, gridDim.x, split, kvh, early,
                                            init_stage_barriers<Cfg, D, DV>(), phase_bits);
#ifdef PGQA_CTA_TIMES
  if constexpr (Cfg::kBlockM == kDecodeBlockM) record_cta_time(p, cta_start, 1);
#endif
}

// A persistent decode launch: any grid of Cfg::kThreads-thread CTAs (decode config) that claim the
// work items of the virtual grid (p.work_columns, max_splits, Hkv) from p.work_queue (zeroed by the
// step check) one at a time, column fastest, until none is left. Several launches may drain one
// queue: launch_attention runs a few such CTAs beside a mixed batch's prefill launch and more after it.
template <typename T, int D, int DV, int GROUP, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)  // one CTA per SM: ptxas need not fit two (192/128 spilled)
    persistent_decode_kernel(const AttentionParams p, const __grid_constant__ HopperKvMaps maps) {
  static_assert(Cfg::kBlockM == kDecodeBlockM, "decode tiles only");
#ifdef PGQA_CTA_TIMES
  const unsigned long long cta_start = global_timer_ns();
  int items_done = 0;
#endif
  pdl_wait();
  pdl_launch_dependents();
  if (p.error->code != 0) return;
  const uint32_t full0 = init_stage_barriers<Cfg, D, DV>();
  uint32_t phase_bits = 0;
  __shared__ int claimed;
  const int columns = p.work_columns;
  const int64_t items = int64_t(columns) * p.max_splits * p.num_kv_heads;
  for (;;) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    // The last item's generic shared-memory writes (epilogue, V zeroing) come before the next
    // item's bulk copies into the same bytes.
    if constexpr (kDecodeTmaKv<Cfg, D, DV>) sm90::fence_proxy_async_smem();
#endif
    if (threadIdx.x == 0) claimed = atomicAdd(p.work_queue, 1);
    __syncthreads();  // also: every thread is done with the last item's shared memory
    const int64_t item = claimed;
    __syncthreads();  // `claimed` is read before thread 0 claims again
    if (item >= items) {
#ifdef PGQA_CTA_TIMES
      record_cta_time(p, cta_start, items_done);
#endif
      return;
    }
#ifdef PGQA_CTA_TIMES
    ++items_done;
#endif
    const int column = int(item % columns);
    const int split = int(item / columns % p.max_splits);
    const int kvh = int(item / (int64_t(columns) * p.max_splits));
    attention_work_item<T, D, DV, GROUP, Cfg>(p, maps, column, columns, split, kvh, false, full0, phase_bits);
  }
}

// Allows Kernel `smem` bytes of dynamic shared memory on `device`, on the device's first launch of
// it (the attribute is per device; a host call, capture-safe).
template <auto Kernel>
void raise_dynamic_smem(int device, int smem) {
  static std::atomic<bool> raised[kMaxDevices];
  if (device < kMaxDevices && raised[device].load(std::memory_order_acquire)) return;
  PGQA_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  if (device < kMaxDevices) raised[device].store(true, std::memory_order_release);
}

// One launch of config Cfg: grid (grid_tiles + p.pad_ctas, max_splits, Hkv), the zeroing columns last.
template <typename T, int D, int DV, int GROUP, class Cfg>
void launch_config(const AttentionParams& p, int64_t grid_tiles, bool pdl, cudaStream_t stream) {
  constexpr int smem = attention_smem_bytes<Cfg, D, DV>();
  static_assert(smem <= 227 * 1024, "attention tile exceeds Hopper's 227 KB of shared memory per block");
  const int64_t columns = grid_tiles + p.pad_ctas;
  if (columns <= 0) return;
  int device = 0;
  PGQA_CUDA_CHECK(cudaGetDevice(&device));
  raise_dynamic_smem<paged_attention_kernel<T, D, DV, GROUP, Cfg>>(device, smem);
  // The tensor maps only where the kernel runs its sm_90a TMA path (an sm_90a build on an sm_90
  // device; runs_sm90a_code); elsewhere it never reads them.
  HopperKvMaps maps{};
  if constexpr (kDecodeTmaKv<Cfg, D, DV>) {
    if (runs_sm90a_code(device)) maps = make_hopper_kv_maps<T>(p, D, DV);
  }
  const dim3 grid(unsigned(columns), unsigned(p.max_splits), unsigned(p.num_kv_heads));
  launch_kernel("paged_attention_kernel", paged_attention_kernel<T, D, DV, GROUP, Cfg>, grid,
                dim3(Cfg::kThreads), smem, stream, pdl, p, maps);
}

// A persistent decode launch of `ctas` CTAs (PersistentDecodeConfig, sm_90a TMA code only) over the
// decode tile map's grid_tiles columns (plus p.pad_ctas zeroing columns): they claim the items from
// p.work_queue, which other such launches of the call may share, over `maps` (make_hopper_kv_maps of
// the call). Plain launch (no PDL).
template <typename T, int D, int DV, int GROUP>
void launch_persistent_decode(const AttentionParams& params, const HopperKvMaps& maps, int64_t grid_tiles, int ctas,
                              cudaStream_t stream) {
  using Cfg = PersistentDecodeConfig<D, DV>;
  constexpr int smem = attention_smem_bytes<Cfg, D, DV>();
  static_assert(smem <= 227 * 1024, "attention tile exceeds Hopper's 227 KB of shared memory per block");
  const int64_t columns = grid_tiles + params.pad_ctas;
  if (columns <= 0 || ctas <= 0) return;
  AttentionParams p = params;
  p.work_columns = int(columns);
  int device = 0;
  PGQA_CUDA_CHECK(cudaGetDevice(&device));
  raise_dynamic_smem<persistent_decode_kernel<T, D, DV, GROUP, Cfg>>(device, smem);
  const int64_t items = columns * p.max_splits * p.num_kv_heads;
  launch_kernel("persistent_decode_kernel", persistent_decode_kernel<T, D, DV, GROUP, Cfg>,
                dim3(unsigned(std::min<int64_t>(ctas, items))), dim3(Cfg::kThreads), smem, stream, false, p, maps);
}

// The prefill tiles: the Hopper kernel where the plan chose it (sm_90a build on an sm_90 device,
// head dims it takes), else the mma.sync PrefillConfig.
template <typename T, int D, int DV, int GROUP>
void launch_prefill(const AttentionParams& p, const LaunchPlan& plan, bool pdl, cudaStream_t stream) {
  if (plan.hopper_tile != HopperTile::kNone) {
    launch_hopper_prefill<T, D, DV, GROUP>(p, plan.hopper_tile, plan.prefill_grid_tiles, pdl, stream);
  } else {
    launch_config<T, D, DV, GROUP, PrefillConfig<D, DV>>(p, plan.prefill_grid_tiles, pdl, stream);
  }
}

// Runs both configs, each over its own tile map (the step check or the planner wrote the maps
// before; the merge, when splits exist, runs after). The decode launch zeroes the padding rows when
// plan.pad_ctas > 0. Four orders:
// - plan.side, Hopper TMA decode tiles that have a PersistentDecodeConfig, plan.beside_prefill_ctas
//   > 0: decode beside the prefill. A few persistent decode CTAs go on the side stream, whose higher
//   priority places them before any prefill CTA, and stream K / V on their SMs (a wide prefill CTA
//   cannot share an SM with one: registers) while the prefill launch on the call stream takes the
//   other SMs; a second persistent decode launch after the prefill, one CTA per SM, drains the rest.
// - plan.side otherwise: the prefill launch on the side stream, the plain decode grid on the call
//   stream, whose CTAs fill the SMs the prefill's last wave leaves idle.
// - plan.decode_early with TMA decode tiles: the decode launch first, streaming K / V beside the
//   step check (decode_before_wait); the prefill launch, nearly empty in a decode batch, after it
//   (none under plan.all_decode: prefill_grid_tiles is 0, and launch_prefill launches nothing).
// - else the prefill launch first (its long tiles start first), then the decode launch.
template <typename T, int D, int DV, int GROUP>
void launch_attention(const AttentionParams& p, const LaunchPlan& plan, cudaStream_t stream) {
  AttentionParams prefill = p;
  prefill.tile_start = p.prefill_tile_start;
  prefill.pad_ctas = 0;
  AttentionParams decode = p;
  decode.tile_start = p.decode_tile_start;
  decode.pad_ctas = plan.pad_ctas;
  int device = 0;
  PGQA_CUDA_CHECK(cudaGetDevice(&device));
  constexpr bool kTmaDecode = kDecodeTmaKv<DecodeConfig<D, DV>, D, DV>;
  constexpr bool kPersistentDecode = kTmaDecode && persistent_decode_stages(D, DV) >= 2;
  const bool tma_decode = kTmaDecode && runs_sm90a_code(device);
  if (plan.side != nullptr) {
    PGQA_CUDA_CHECK(cudaEventRecord(plan.fork, stream));
    PGQA_CUDA_CHECK(cudaStreamWaitEvent(plan.side, plan.fork, 0));
    if constexpr (kPersistentDecode) {
      if (tma_decode && plan.beside_prefill_ctas > 0) {
        const HopperKvMaps maps = make_hopper_kv_maps<T>(decode, D, DV);  // one encoding for both launches
        launch_persistent_decode<T, D, DV, GROUP>(decode, maps, plan.decode_grid_tiles, plan.beside_prefill_ctas,
                                                  plan.side);
        PGQA_CUDA_CHECK(cudaEventRecord(plan.join, plan.side));
        launch_prefill<T, D, DV, GROUP>(prefill, plan, false, stream);
        launch_persistent_decode<T, D, DV, GROUP>(decode, maps, plan.decode_grid_tiles, plan.after_prefill_ctas,
                                                  stream);
        PGQA_CUDA_CHECK(cudaStreamWaitEvent(stream, plan.join, 0));
        return;
      }
    }
    launch_prefill<T, D, DV, GROUP>(prefill, plan, false, plan.side);
    launch_config<T, D, DV, GROUP, DecodeConfig<D, DV>>(decode, plan.decode_grid_tiles, false, stream);
    PGQA_CUDA_CHECK(cudaEventRecord(plan.join, plan.side));
    PGQA_CUDA_CHECK(cudaStreamWaitEvent(stream, plan.join, 0));
    return;
  }
  if (plan.decode_early && tma_decode) {
    decode.decode_before_wait = true;
    launch_config<T, D, DV, GROUP, DecodeConfig<D, DV>>(decode, plan.decode_grid_tiles, plan.pdl, stream);
    launch_prefill<T, D, DV, GROUP>(prefill, plan, plan.pdl, stream);
    return;
  }
  launch_prefill<T, D, DV, GROUP>(prefill, plan, plan.pdl, stream);
  launch_config<T, D, DV, GROUP, DecodeConfig<D, DV>>(decode, plan.decode_grid_tiles, plan.pdl, stream);
}

}  // namespace paddle_gqa::cuda::attn
