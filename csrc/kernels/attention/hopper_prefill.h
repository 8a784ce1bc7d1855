// Host-side facts of the Hopper (sm_90a) prefill attention kernel (hopper_prefill_kernel.cuh):
// its tile, the head dims it takes, its shared memory, and when run_attention uses it for the
// prefill slots of a step instead of the mma.sync PrefillConfig of attention_kernel.cuh.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

#include "../cuda_check.h"
#include "paddle_gqa/op_args.h"

namespace paddle_gqa::cuda::attn {

// The CTA shapes of the Hopper prefill kernel, HopperPrefillTile<W, BN>: W consumer warpgroups own
// 64 W packed q rows (64 each) and run wgmma on KV tiles of BN keys in two shared-memory stages,
// while one producer warp issues the K / V copies.
//   Wide (W = 2, BN = 128): 128 rows. The producer warp sits in a whole warpgroup so that setmaxnreg
//     can move its registers to the consumers (40 / 232: 128 x 40 + 256 x 232 <= 64K); Q and two
//     128-key stages take up to 209 KB of shared memory, so one CTA fills an SM. Best where a tile
//     sees many keys (causal, wide windows): each K / V stage feeds 128 rows.
//   Narrow (W = 1, BN = 64): 64 rows, 160 threads (one consumer warpgroup, one producer warp), at
//     most 105 KB and 65536 / 320 registers per thread, so two CTAs share an SM and one's fixed
//     costs (Q load, first copies, epilogue) overlap the other's GEMMs. Best where a tile sees few
//     keys (narrow windows): there the fixed costs, not the GEMMs, set a wide tile's time.
template <int CONSUMER_WARPGROUPS, int BLOCK_N>
struct HopperPrefillTile {
  static constexpr int kConsumerWarpgroups = CONSUMER_WARPGROUPS;
  static constexpr int kBlockM = 64 * CONSUMER_WARPGROUPS;
  static constexpr int kBlockN = BLOCK_N;
  static constexpr int kConsumerThreads = 128 * CONSUMER_WARPGROUPS;
  static constexpr bool kProducerWarpgroup = CONSUMER_WARPGROUPS == 2;  // setmaxnreg moves its registers
  static constexpr int kThreads = kConsumerThreads + (kProducerWarpgroup ? 128 : 32);
  static constexpr int kCtasPerSm = CONSUMER_WARPGROUPS == 2 ? 1 : 2;   // __launch_bounds__ minimum
  static constexpr int kProducerRegs = 40;   // setmaxnreg budgets of the wide tile
  static constexpr int kConsumerRegs = 232;
  static constexpr int kStages = 2;
  static_assert(CONSUMER_WARPGROUPS == 1 || CONSUMER_WARPGROUPS == 2, "one or two consumer warpgroups");
  static_assert(BLOCK_N == 64 || BLOCK_N == 128, "wgmma N of the S = Q K^T tile");
};
using HopperWideTile = HopperPrefillTile<2, 128>;
using HopperNarrowTile = HopperPrefillTile<1, 64>;

// Which Hopper prefill tile a call's prefill slots run (none: the mma.sync PrefillConfig).
enum class HopperTile : int { kNone = 0, kWide = 1, kNarrow = 2 };

// D: a multiple of 64 up to 192 (K-major panels of 64 elements; Q and two K / V stages fit 227 KB);
// Dv: 64 or 128 (the fp32 O accumulator, Dv / 2 registers per thread beside the BN / 2 of S).
constexpr bool hopper_prefill_supports(int d, int dv) { return d % 64 == 0 && d <= 192 && (dv == 64 || dv == 128); }

// Dynamic shared memory: Q [BM][D], kStages x (K [BN][D] + V [BN][Dv]), b16, and 1 KB so the
// tiles start on a 1024-byte boundary (the swizzle period).
template <class Tile>
constexpr int hopper_prefill_smem_bytes(int d, int dv) {
  return 2 * (Tile::kBlockM * d + Tile::kStages * Tile::kBlockN * (d + dv)) + 1024;
}
static_assert(hopper_prefill_smem_bytes<HopperWideTile>(192, 128) <= 227 * 1024, "the widest tile fits Hopper's 227 KB");
static_assert(2 * (hopper_prefill_smem_bytes<HopperNarrowTile>(192, 128) + 1024 + 64) <= 228 * 1024,
              "two narrow CTAs (and their static barriers) fit one SM's 228 KB");

// Windows narrower than this stay on the mma.sync kernel, whose 64-key tiles waste less of a
// short window. H100, 2 x 8k tokens, W = 128, 192/128: 107 TFLOP/s for the TMA / warp-specialised
// Hopper kernel alone against 101 for the mma.sync kernel in the benchmark (session 3; with the
// session-2 cp.async Hopper kernel it was 94 against 100, and the threshold was 512).
inline constexpr int kHopperMinWindow = 128;
// Windows up to this run the narrow tile (two CTAs per SM), wider ones and full causal the wide
// tile. H100, 2 x 8k tokens, the kernel alone (scripts/hopper_prefill_check.sh, session 4), wide /
// narrow TFLOP/s: W = 128 (192/128) 107 / 136, W = 256 160 / 191, W = 512 254 / 265,
// W = 1024 361 / 327, causal 566 / 401 (128/128, G = 3).
inline constexpr int kHopperNarrowMaxWindow = 512;

inline constexpr int kMaxHopperDevices = 64;

// Whether `device` runs the sm_90a code of this build (the Hopper prefill kernel, the TMA path of
// the decode tiles): the build carries it (PGQA_BUILD_SM90A, set by the build scripts when 90a is
// among the targets) and the device is compute capability 9.0, which then loads the sm_90a binary.
// Cached per device.
inline bool runs_sm90a_code(int device) {
#if defined(PGQA_BUILD_SM90A)
  static std::atomic<int> cached[kMaxHopperDevices];  // 0 unknown, 1 no, 2 yes
  if (device < 0 || device >= kMaxHopperDevices) return false;
  int v = cached[device].load(std::memory_order_acquire);
  if (v == 0) {
    int major = 0, minor = 0;
    PGQA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    PGQA_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    v = major == 9 && minor == 0 ? 2 : 1;
    cached[device].store(v, std::memory_order_release);
  }
  return v == 2;
#else
  (void)device;
  return false;
#endif
}

// The Hopper tile the prefill slots of `shape` run on the current device: none where the device
// or the head dims rule the kernel out, or the window is below kHopperMinWindow; the narrow tile
// for windows up to kHopperNarrowMaxWindow; else the wide tile.
inline HopperTile choose_hopper_tile(const ProblemShape& shape) {
  if (!hopper_prefill_supports(shape.head_dim, shape.v_head_dim)) return HopperTile::kNone;
  if (shape.sliding_window > 0 && shape.sliding_window < kHopperMinWindow) return HopperTile::kNone;
  int device = 0;
  PGQA_CUDA_CHECK(cudaGetDevice(&device));
  if (!runs_sm90a_code(device)) return HopperTile::kNone;
  if (shape.sliding_window > 0 && shape.sliding_window <= kHopperNarrowMaxWindow) return HopperTile::kNarrow;
  return HopperTile::kWide;
}

}  // namespace paddle_gqa::cuda::attn
