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
// K / V tiles stream through kStages shared-memory stages (kStages - 1 tiles in flight).
template <int BLOCK_M, int BLOCK_N, int WARPS_M, int WARPS_N, int M_ATOMS, int STAGES>
struct TileConfig {
  static constexpr int kBlockM = BLOCK_M;
  static constexpr int kBlockN = BLOCK_N;
  static constexpr int kWarpsM = WARPS_M;
  static constexpr int kWarpsN = WARPS_N;
  static constexpr int kMAtoms = M_ATOMS;
  static constexpr int kStages = STAGES;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kWarpKeys = BLOCK_N / WARPS_N;  // keys per warp per KV tile
  static_assert(BLOCK_M == 16 * M_ATOMS * WARPS_M, "warps x atoms x 16 rows cover the q tile");
  static_assert(kWarpKeys % 16 == 0, "each warp owns whole k16 steps of keys");
  static_assert(STAGES >= 2, "at least double buffering");
};

// Many rows per slot (prefill, chunked prefill): 8 warps, 64-key tiles, two stages. Two 16-row
// atoms per warp halve the shared-memory reads per MMA (256-row tiles) while the fp32 O
// accumulator (16 x Dv floats per atom) fits in registers, i.e. for Dv <= 128; wider V takes one
// atom per warp (128-row tiles). One CTA per SM (registers).
inline constexpr int kPrefillWarps = 8;
inline constexpr int kPrefillBlockN = 64;
constexpr int prefill_atoms(int dv) { return dv > 128 ? 1 : 2; }
constexpr int prefill_block_m(int dv) { return 16 * kPrefillWarps * prefill_atoms(dv); }
template <int D, int DV>
using PrefillConfig = TileConfig<prefill_block_m(DV), kPrefillBlockN, kPrefillWarps, 1, prefill_atoms(DV), 2>;

// Few rows per slot (decode): 16 rows, 4 warps splitting each 64-key tile (16 keys each). Three
// stages keep two tiles in flight while two CTAs share an SM (D + Dv <= 256); wider heads keep
// two stages, with which two CTAs still fit for 192/128 (90 KB each) but only one for 256/256
// (140 KB); resident_ctas_per_sm (planner.cu) derives the count from smem_bytes either way.
inline constexpr int kDecodeBlockM = 16;
inline constexpr int kDecodeBlockN = 64;
inline constexpr int kDecodeWarpsN = 4;
constexpr int decode_stages(int d, int dv) { return d + dv <= 256 ? 3 : 2; }
template <int D, int DV>
using DecodeConfig = TileConfig<kDecodeBlockM, kDecodeBlockN, 1, kDecodeWarpsN, 1, decode_stages(D, DV)>;

static_assert(kDecodeBlockN == kPrefillBlockN, "the split rule and the merge assume one KV tile size");

// Whether slot b (n_new packed rows per head group) runs under DecodeConfig: its rows fit one tile.
PGQA_HD bool is_decode_slot(int64_t n_new, int group) { return n_new > 0 && n_new * group <= kDecodeBlockM; }

// Whether a step runs every slot on decode tiles (LaunchPlan::all_decode), from host-known facts: at
// most one row per slot (rows <= B; most decode steps) and G <= kDecodeBlockM (a token's G rows fit
// one tile). A slot that still holds more rows than one tile (it can, when other slots are idle)
// then takes ceil(n G / kDecodeBlockM) decode tiles, which each read the slot's keys: at most
// rows G / kDecodeBlockM + B tiles in all, against B for the decode slots alone, and no prefill
// launch (one kernel fewer per call).
PGQA_HD bool runs_all_decode(int64_t rows, int64_t batch, int group) {
  return rows <= batch && group <= kDecodeBlockM;
}

// Decode tiles of a slot with n_new tokens: one for a decode slot; under all_decode, its n_new * G
// rows in kDecodeBlockM-row tiles. Zero for an idle slot.
PGQA_HD int decode_tiles_of_slot(int64_t n_new, int group, bool all_decode) {
  if (n_new <= 0) return 0;
  if (all_decode) return int((n_new * group + kDecodeBlockM - 1) / kDecodeBlockM);
  return is_decode_slot(n_new, group) ? 1 : 0;
}

// Padding (elements) after each shared-memory row of Q, K and V: rows of D+8 b16 elements shift
// consecutive rows by 4 banks, so ldmatrix and 16-byte cp.async stores are conflict-free.
inline constexpr int kSmemPad = 8;
// Padding (floats) of the fp32 epilogue rows: conflict-free float2 stores of accumulators.
inline constexpr int kEpiloguePad = 8;

// Dynamic shared memory of a config: the b16 Q tile and kStages K and V tiles in the main loop,
// overlaid afterwards by the fp32 epilogue (O rows plus (m, l) per row, per key group).
constexpr int smem_bytes(int block_m, int block_n, int warps_n, int stages, int d, int dv) {
  const int main_loop = 2 * (block_m * (d + kSmemPad) + stages * block_n * (d + kSmemPad + dv + kSmemPad));
  const int epilogue = 4 * warps_n * block_m * (dv + kEpiloguePad + 2);
  return main_loop > epilogue ? main_loop : epilogue;
}
template <class Cfg, int D, int DV>
constexpr int attention_smem_bytes() {
  return smem_bytes(Cfg::kBlockM, Cfg::kBlockN, Cfg::kWarpsN, Cfg::kStages, D, DV);
}

// The same two sizes for head dims known only at run time: the planner's occupancy estimate and the
// host's shared-memory check before any launch.
constexpr int prefill_smem_bytes(int d, int dv) {
  return smem_bytes(prefill_block_m(dv), kPrefillBlockN, 1, 2, d, dv);
}
constexpr int decode_smem_bytes(int d, int dv) {
  return smem_bytes(kDecodeBlockM, kDecodeBlockN, kDecodeWarpsN, decode_stages(d, dv), d, dv);
}
// The decode tiles of a persistent decode launch (launch_attention: beside a mixed batch's prefill,
// Hopper only), one CTA per SM: 8 warps over 128-key tiles, as many stages as about 220 KB hold (3
// for 128/128, 2 for 192/128; none for heads whose two stages exceed it, e.g. 256/256, which keep the
// plain decode grid). A decode CTA's rate is bound by its warps' latency chains, not by its bytes
// in flight (H100: 30-40 GB/s for the 4-warp tile with 3, 4 or 6 stages alike, even from L2;
// BENCHMARKS.md sessions 5-6), so the few CTAs that run beside the prefill get twice the warps.
inline constexpr int kPersistentDecodeBlockN = 2 * kDecodeBlockN;
inline constexpr int kPersistentDecodeWarpsN = 2 * kDecodeWarpsN;
inline constexpr int kPersistentDecodeSmemBudget = 220 * 1024;
constexpr int persistent_decode_stages(int d, int dv) {  // < 2: no persistent decode tile
  const int stage = 2 * kPersistentDecodeBlockN * (d + dv + 2 * kSmemPad);  // padded K and V rows
  return (kPersistentDecodeSmemBudget - 2 * kDecodeBlockM * (d + kSmemPad)) / stage;
}
template <int D, int DV>
using PersistentDecodeConfig = TileConfig<kDecodeBlockM, kPersistentDecodeBlockN, 1, kPersistentDecodeWarpsN, 1,
                                          persistent_decode_stages(D, DV)>;

static_assert(persistent_decode_stages(128, 128) == 3 && persistent_decode_stages(192, 128) == 2 &&
                  persistent_decode_stages(256, 256) < 2 &&
                  attention_smem_bytes<PersistentDecodeConfig<128, 128>, 128, 128>() <= kPersistentDecodeSmemBudget &&
                  attention_smem_bytes<PersistentDecodeConfig<192, 128>, 192, 128>() <= kPersistentDecodeSmemBudget,
              "persistent decode stages fill the budget");
static_assert(prefill_smem_bytes(192, 128) == attention_smem_bytes<PrefillConfig<192, 128>, 192, 128>() &&
                  prefill_smem_bytes(256, 256) == attention_smem_bytes<PrefillConfig<256, 256>, 256, 256>() &&
                  decode_smem_bytes(128, 128) == attention_smem_bytes<DecodeConfig<128, 128>, 128, 128>() &&
                  decode_smem_bytes(256, 256) == attention_smem_bytes<DecodeConfig<256, 256>, 256, 256>(),
              "the run-time sizes must match the configs the kernels launch with");

// A split covers at least this many KV tiles. One: a step with few CTAs (B = 1, short context)
// is latency-bound, and a CTA per KV tile finishes soonest (H100, B = 1, ctx 512: 4 tiles per split
// gave 2 splits and a 10.5 us attention launch); max_splits, from the wave count, still caps the
// splits of every step that has enough CTAs without them.
inline constexpr int kMinTilesPerSplit = 1;

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
