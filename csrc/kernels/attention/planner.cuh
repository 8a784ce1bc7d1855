// The launch plan of one attention call: host-side choices from host-known facts only (config,
// max splits, grid bound, workspace layout), and the device-side tile planner that fills the tile
// map from cu_seqlens_q without a host sync.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention_params.h"
#include "paddle_gqa/op_args.h"

namespace paddle_gqa::cuda::attn {

// Upper bound on KV splits per tile (gridDim.y).
inline constexpr int kMaxSplits = 32;

// Each slot runs under one of two configs (tile_size.h): a slot whose packed rows fit one decode
// tile (n_b * G <= kDecodeBlockM) under DecodeConfig, every other slot under PrefillConfig. The
// planner builds one tile map per config, and one launch per config covers its slots, so a mixed
// batch (chunked prefill + decodes) runs each part with its own tiling.
struct LaunchPlan {
  int prefill_block_m = 0;        // q rows per prefill tile
  int max_splits = 1;             // KV splits per tile (gridDim.y of both launches)
  int64_t prefill_grid_tiles = 0; // bound on prefill tiles (CTAs past the real count exit)
  int64_t decode_grid_tiles = 0;  // bound on decode tiles: one per decode slot <= min(B, rows)
  size_t prefill_tile_start_offset = 0;  // bytes into the workspace: int32 [B+1]
  size_t decode_tile_start_offset = 0;   // int32 [B+1]
  size_t partial_o_offset = 0;    // fp32 [max_splits][rows*Hq][Dv] (only when max_splits > 1)
  size_t partial_lse_offset = 0;  // fp32 [max_splits][rows*Hq]
  size_t workspace_bytes = 0;
};

LaunchPlan make_launch_plan(const ProblemShape& shape, int num_sms);

// One CTA: prefix sums of tiles per slot for both maps: prefill_tile_start[b] sums
// ceil(n_c * G / prefill_block_m) over prefill slots c < b, decode_tile_start[b] counts the decode
// slots c < b; entry B holds the totals.
void launch_tile_planner(const AttentionParams& p, cudaStream_t stream);

// The attention kernels of one (dtype, D, Dv, group) key: defined in attention_kernel.cuh and
// explicitly instantiated per key by the generated files (GROUP 0 = group read at run time).
template <typename T, int D, int DV, int GROUP>
void launch_attention(const AttentionParams& p, const LaunchPlan& plan, cudaStream_t stream);

}  // namespace paddle_gqa::cuda::attn
