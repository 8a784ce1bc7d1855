// Host-side facts of the Hopper (sm_90a) prefill attention kernel (hopper_prefill_kernel.cuh):
// its tile, the head dims it takes, its shared memory, and when run_attention uses it for the
// prefill slots of a step instead of the mma.sync PrefillConfig of attention_kernel.cuh.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

#include "../cuda_check.h"
#include "paddle_gqa/op_args.h"

namespace paddle_gqa::cuda::attn {

// CTA: two consumer warpgroups (128 packed q rows, 64 each) and a producer warpgroup whose first
// warp issues the K / V copies (a whole warpgroup, so that registers can move to the consumers:
// setmaxnreg works per warpgroup); KV tiles of 128 keys, two shared-memory stages.
struct HopperPrefillTile {
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 128;
  static constexpr int kConsumerThreads = 256;
  static constexpr int kThreads = kConsumerThreads + 128;
  static constexpr int kProducerRegs = 40;   // setmaxnreg budgets: 128 x 40 + 256 x 232 <= 64K
  static constexpr int kConsumerRegs = 232;
  static constexpr int kStages = 2;
};

// D: a multiple of 64 up to 192 (K-major panels of 64 elements; Q and two K / V stages fit 227 KB);
// Dv: 64 or 128 (the fp32 O accumulator, Dv / 2 registers per thread beside the 64 of S).
constexpr bool hopper_prefill_supports(int d, int dv) { return d % 64 == 0 && d <= 192 && (dv == 64 || dv == 128); }

// Dynamic shared memory: Q [128][D], kStages x (K [128][D] + V [128][Dv]), b16, and 1 KB so the
// tiles start on a 1024-byte boundary (the swizzle period).
constexpr int hopper_prefill_smem_bytes(int d, int dv) {
  return 2 * (HopperPrefillTile::kBlockM * d + HopperPrefillTile::kStages * HopperPrefillTile::kBlockN * (d + dv)) +
         1024;
}
static_assert(hopper_prefill_smem_bytes(192, 128) <= 227 * 1024, "the widest tile fits Hopper's 227 KB");

// Windows narrower than this stay on the mma.sync kernel, whose 64-key tiles waste less of a
// short window. H100, 2 x 8k tokens, W = 128, 192/128: 107 TFLOP/s for the TMA / warp-specialised
// Hopper kernel alone against 101 for the mma.sync kernel in the benchmark (session 3; with the
// session-2 cp.async Hopper kernel it was 94 against 100, and the threshold was 512).
inline constexpr int kHopperMinWindow = 128;

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

// The prefill tiles of `shape` on the current device run the Hopper kernel.
inline bool use_hopper_prefill(const ProblemShape& shape) {
  if (!hopper_prefill_supports(shape.head_dim, shape.v_head_dim)) return false;
  if (shape.sliding_window > 0 && shape.sliding_window < kHopperMinWindow) return false;
  int device = 0;
  PGQA_CUDA_CHECK(cudaGetDevice(&device));
  return runs_sm90a_code(device);
}

}  // namespace paddle_gqa::cuda::attn
