// Entry point of the CUDA paged attention (DESIGN.md §2 semantics) used by the cuda:: launchers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention_params.h"
#include "paddle_gqa/op_args.h"
#include "paddle_gqa/step_rules.h"

namespace paddle_gqa::cuda {

struct AttentionInputs {
  const void* q; int64_t q_row_stride; int64_t q_head_stride;  // elements; q[t][h][d], dtype of the shape
  const void* k_cache; const void* v_cache;                     // [N,Hkv,bs,D], [N,Hkv,bs,Dv], contiguous
  const int32_t* block_tables; const int32_t* cu_seqlens_q; const int32_t* cache_seqlens;
  const float* sinks;                                           // [Hq] or nullptr
  void* out;                                                    // [rows, Hq*Dv], dtype of the shape
  const StepError* error;                                       // device record; all kernels do nothing when error->code != 0 (output untouched)
};

// Bytes of device scratch run_attention needs for this shape on a device with num_sms SMs (tile
// map, split partials, LSE). Host-only arithmetic on the shape (no device data).
size_t attention_workspace_bytes(const ProblemShape& shape, int num_sms);

// Throws InvalidArgument naming the dtype and head dims when this build has no attention kernel
// for the shape, or when `device` cannot give the tiles the step may use the shared memory they
// need (the prefill tiles of 192/128 and 256/256 need Hopper's 227 KB); the launchers call it
// before anything is written.
void require_attention_kernel(const ProblemShape& shape, int device);

// Where the tile maps of run_attention's call go in `workspace` (same shape, workspace and num_sms),
// so that a kernel enqueued before it (the step check's last CTA) writes them and run_attention
// need not launch its planner kernel (AttentionLaunchOptions::tile_maps_written).
attn::TileMapJob attention_tile_maps(const ProblemShape& shape, void* workspace, int num_sms);

// How run_attention launches beyond the defaults (its own planner kernel, plain launches, one stream).
struct AttentionLaunchOptions {
  bool tile_maps_written = false;  // a kernel enqueued before wrote attention_tile_maps' maps
  bool pdl = false;                // programmatic dependent launches (sm_90): each kernel's launch
                                   // overlaps the tail of the one before it on the stream
  bool early_decode = false;       // q and the caches are final when the step check before this call
                                   // starts (no kernel between them writes either): the decode tiles
                                   // of a decode batch may read them before the check completes (pdl)
  int beside_prefill_ctas = -1;    // with side: persistent decode CTAs beside the prefill launch
                                   // (-1: run_attention's default, 0: a plain decode grid instead)
  cudaStream_t side = nullptr;     // a second stream, with two events, on which the prefill launch
  cudaEvent_t fork = nullptr;      // of a batch that may mix prefill and decode slots runs beside the
  cudaEvent_t join = nullptr;      // decode launch (forked and joined within the call)
};

// Plans (on the device: tile map, per-slot split counts) and runs the attention; no host sync, no
// allocation; graph-capturable. q strides must be multiples of 8 elements, all pointers 16-byte
// aligned, workspace at least attention_workspace_bytes(shape, num_sms) bytes, 256-byte aligned.
// Launches: the planner (unless options.tile_maps_written), the prefill and decode tiles (each
// only when the host cannot rule its slots out), the split merge only when splits may exist.
void run_attention(const ProblemShape& shape, const AttentionInputs& in, void* workspace,
                   size_t workspace_bytes, int num_sms, cudaStream_t stream,
                   const AttentionLaunchOptions& options = AttentionLaunchOptions{});

}  // namespace paddle_gqa::cuda
