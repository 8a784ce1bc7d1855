// Tile shapes of the attention kernels and the split rule, shared by the host planner, the
// kernels and the merge so that they cannot disagree.
#pragma once

#include <cstdint>

#include "paddle_gqa/host_device.h"
#include "paddle_gqa/mask.h"

namespace paddle_gqa::cuda::attn {

// A CTA owns kBlockM packed query rows ((token, head-in-group) pairs, row r -> token r / G, head
// r % G) of one slot and one kv head. Its warps form a kWarpsM x kWarpsN grid: warp (wm, wn) owns
// kMAtoms 16-row MMA atoms, rows [16 kMAtoms wm, 16 kMAtoms (wm + 1)), and keys
// [wn kBlockN / kWarpsN, ...) of every KV tile. A warp reuses each K / V fragment it loads for
// all its atoms; the kWarpsN partial softmax states are merged in shared memory at the end.
template <int BLOCK_M, int BLOCK_N, int WARPS_M, int WARPS_N, int M_ATOMS>
struct TileConfig {
  static constexpr int kBlockM = BLOCK_M;
  static constexpr int kBlockN = BLOCK_N;
  static constexpr int kWarpsM = WARPS_M;
  static constexpr int kWarpsN = WARPS_N;
  static constexpr int kMAtoms = M_ATOMS;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kWarpKeys = BLOCK_N / WARPS_N;  // keys per warp per KV tile
  static_assert(BLOCK_M == 16 * M_ATOMS * WARPS_M, "warps x atoms x 16 rows cover the q tile");
  static_assert(kWarpKeys % 16 == 0, "each warp owns whole k16 steps of keys");
};

// Many rows per slot (prefill, chunked prefill), 64-key tiles. Two 16-row atoms per warp halve the
// shared-memory reads per MMA; the fp32 O accumulator (16 x Dv per atom) must fit in registers:
//   D, Dv <= 128:  128 rows, 4 warps x 2 atoms (two CTAs per SM)
//   D > 128, Dv <= 128 (192/128): 256 rows, 8 warps x 2 atoms (one CTA per SM; Q is large)
//   Dv > 128:      128 rows, 8 warps x 1 atom
#ifndef PGQA_TUNE_P192
#define PGQA_TUNE_P192 0
#endif
#ifndef PGQA_TUNE_DECODE_BN
#define PGQA_TUNE_DECODE_BN 64
#endif
constexpr int prefill_warps(int d, int dv) { return dv > 128 || d > 128 ? 8 : 4; }
constexpr int prefill_atoms(int d, int dv) { return dv > 128 || (PGQA_TUNE_P192 && d > 128) ? 1 : 2; }
constexpr int prefill_block_m(int d, int dv) { return 16 * prefill_warps(d, dv) * prefill_atoms(d, dv); }
inline constexpr int kPrefillBlockN = 64;
template <int D, int DV>
using PrefillConfig = TileConfig<prefill_block_m(D, DV), kPrefillBlockN, prefill_warps(D, DV), 1, prefill_atoms(D, DV)>;
// Few rows per slot (decode): 16 rows, 4 warps splitting each 64-key tile (16 keys each).
using DecodeConfig = TileConfig<16, PGQA_TUNE_DECODE_BN, 1, PGQA_TUNE_DECODE_BN / 16, 1>;

// Padding (elements) after each shared-memory row of Q, K and V: rows of D+8 b16 elements shift
// consecutive rows by 4 banks, so ldmatrix and 16-byte cp.async stores are conflict-free.
inline constexpr int kSmemPad = 8;
// Padding (floats) of the fp32 epilogue rows: conflict-free float2 stores of accumulators.
inline constexpr int kEpiloguePad = 8;

template <class Cfg, int D, int DV>
constexpr int attention_smem_bytes() {
  // b16 Q tile + two stages of K and V tiles.
  constexpr int main_loop = 2 * (Cfg::kBlockM * (D + kSmemPad) +
                                 2 * Cfg::kBlockN * (D + kSmemPad) + 2 * Cfg::kBlockN * (DV + kSmemPad));
  // fp32 O rows plus (m, l) per row, for each of the kWarpsN key groups; overlays the above.
  constexpr int epilogue = 4 * Cfg::kWarpsN * Cfg::kBlockM * (DV + kEpiloguePad + 2);
  return main_loop > epilogue ? main_loop : epilogue;
}

// A split covers at least this many KV tiles, so a partial result is worth its merge.
inline constexpr int kMinTilesPerSplit = 4;

// Number of KV splits slot b's tiles use: from the keys any of its queries sees (device data),
// capped by the host-chosen max_splits. The attention kernel and the merge both call this.
PGQA_HD int slot_num_splits(int64_t cache_len, int64_t n_new, bool causal, int sliding_window,
                            int block_n, int max_splits) {
  if (n_new <= 0 || max_splits <= 1) return 1;
  const KeyRange r = slot_visible_keys(cache_len, cache_len + n_new, causal, sliding_window);
  if (r.empty()) return 1;
  const int64_t tiles = r.hi / block_n - r.lo / block_n + 1;
  const int64_t want = (tiles + kMinTilesPerSplit - 1) / kMinTilesPerSplit;
  return int(want < 1 ? 1 : (want > max_splits ? max_splits : want));
}

}  // namespace paddle_gqa::cuda::attn
