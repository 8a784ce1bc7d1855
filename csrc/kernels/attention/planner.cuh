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

struct LaunchPlan {
  bool decode = false;         // DecodeConfig, else PrefillConfig (tile_size.h)
  int block_m = 0;
  int block_n = 0;
  int max_splits = 1;
  int64_t grid_tiles = 0;      // bound on q tiles: ceil(rows*G / block_m) + B (CTAs past the real count exit)
  size_t tile_start_offset = 0;   // bytes into the workspace: int32 [B+1]
  size_t partial_o_offset = 0;    // fp32 [max_splits][rows*Hq][Dv] (only when max_splits > 1)
  size_t partial_lse_offset = 0;  // fp32 [max_splits][rows*Hq]
  size_t workspace_bytes = 0;
};

LaunchPlan make_launch_plan(const ProblemShape& shape, int num_sms);

// One CTA: tile_start[b] = sum_{c<b} ceil(n_c * G / block_m), tile_start[B] = total tiles.
void launch_tile_planner(const AttentionParams& p, cudaStream_t stream);

// The attention kernels of one (dtype, D, Dv, group) key: defined in attention_kernel.cuh and
// explicitly instantiated per key by the generated files (GROUP 0 = group read at run time).
template <typename T, int D, int DV, int GROUP>
void launch_attention(const AttentionParams& p, const LaunchPlan& plan, cudaStream_t stream);

}  // namespace paddle_gqa::cuda::attn
