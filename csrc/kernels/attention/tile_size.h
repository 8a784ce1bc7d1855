// Tile shapes of the attention kernels and the split rule, shared by the host planner, the
// kernels and the merge so that they cannot disagree.
#pragma once

#include <cstdint>

#include "paddle_gqa/host_device.h"
#include "paddle_gqa/mask.h"

namespace paddle_gqa::cuda::attn {

// A CTA owns kBlockM packed query rows ((token, head-in-group) pairs, row r -> token r / G, head
// r % G) of one slot and one kv head. Its warps form a kWarpsM x kWarpsN grid: warp (wm, wn) owns
// rows [16 wm, 16 wm + 16) and keys [wn kBlockN / kWarpsN, ...) of every KV tile; the kWarpsN
// partial softmax states are merged in shared memory at the end.
template <int BLOCK_M, int BLOCK_N, int WARPS_M, int WARPS_N>
struct TileConfig {
  static constexpr int kBlockM = BLOCK_M;
  static constexpr int kBlockN = BLOCK_N;
  static constexpr int kWarpsM = WARPS_M;
  static constexpr int kWarpsN = WARPS_N;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kWarpKeys = BLOCK_N / WARPS_N;  // keys per warp per KV tile
  static_assert(BLOCK_M == 16 * WARPS_M, "each warp owns 16 query rows");
  static_assert(kWarpKeys % 16 == 0, "each warp owns whole k16 steps of keys");
};

// Many rows per slot (prefill, chunked prefill): 8 warps over 128 rows, one 64-key tile each.
using PrefillConfig = TileConfig<128, 64, 8, 1>;
// Few rows per slot (decode): 16 rows, 4 warps splitting each 64-key tile (16 keys each).
using DecodeConfig = TileConfig<16, 64, 1, 4>;

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
