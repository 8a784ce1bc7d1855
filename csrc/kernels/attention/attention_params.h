// The one flat parameter struct of the paged attention kernel family (attention, planner, merge).
#pragma once

#include <cstdint>

#include "paddle_gqa/step_rules.h"

namespace paddle_gqa::cuda::attn {

// Filled once per call by run_attention (attention_dispatch.cu). Element counts unless noted.
struct AttentionParams {
  const void* q;                // [rows][Hq][D] at the strides below, dtype T
  int64_t q_row_stride;         // elements between tokens; multiple of 8
  int64_t q_head_stride;        // elements between heads; multiple of 8
  const void* k_cache;          // [num_blocks][Hkv][block_size][D], dtype T, contiguous
  const void* v_cache;          // [num_blocks][Hkv][block_size][Dv], dtype T, contiguous
  int64_t num_blocks;           // of both caches (the Hopper kernel's tensor maps bound their copies by it)
  const int32_t* block_tables;  // [B][max_blocks_per_seq]; only blocks in a slot's visible range are read
  int64_t max_blocks_per_seq;
  const int32_t* cu_seqlens_q;  // [B+1]; T = cu_seqlens_q[B]
  const int32_t* cache_seqlens; // [B]
  const float* sinks;           // [Hq] sink logits or nullptr
  void* out;                    // [rows][Hq*Dv], dtype T
  const StepError* error;       // device record; every kernel returns at once when error->code != 0

  int32_t* tile_start;          // workspace [B+1]: first tile of each slot in this launch's map
  int32_t* prefill_tile_start;  // workspace [B+1]: the prefill map (planner output)
  int32_t* decode_tile_start;   // workspace [B+1]: the decode map (planner output)
  float* partial_o;             // workspace [max_splits][rows*Hq][Dv]: per-split O / l (split runs only)
  float* partial_lse;           // workspace [max_splits][rows*Hq]: per-split log2-sum-exp2 of scores

  int64_t rows;                 // rows of q and out (>= T)
  int batch;                    // B
  int num_q_heads;              // Hq
  int num_kv_heads;             // Hkv
  int group;                    // G = Hq / Hkv (the runtime-group kernels read it)
  int block_size_log2;          // log2(block_size); block_size is a power of two
  int sliding_window;           // W > 0: keys p - W < j <= p; 0 = none
  bool causal;
  float scale_log2;             // softmax_scale * log2(e): scores are kept in the exp2 domain
  int prefill_block_m;          // q rows per prefill tile (the planner's tile unit for prefill slots)
  int block_n;                  // keys per KV tile (both configs)
  int max_splits;               // KV splits per tile (gridDim.y); 1 = every tile writes out directly
  int pad_ctas;                 // trailing columns of the decode launch that zero the padding rows >= T
                                // instead of running a tile (when no merge runs; 0 on other launches)
  bool all_decode;              // every slot runs on decode tiles (LaunchPlan::all_decode)
  bool decode_before_wait;      // decode launch (TMA tiles) right after the step check: its tiles stream
                                // K / V before the check completes (attention_kernel.cuh, launch_attention)
  int32_t* work_queue;          // workspace int32, zeroed by build_tile_maps: the next work item of the
                                // persistent decode launches (persistent_decode_kernel reads it)
  int work_columns;             // a persistent decode launch's virtual grid width (tiles + pad_ctas)
  int32_t* split_counters;      // workspace [decode tiles][Hkv], zeroed by build_tile_maps: split CTAs of
                                // a decode tile count their arrivals and the last merges the tile's rows;
                                // nullptr (no splits): nothing to merge
#ifdef PGQA_CTA_TIMES
  // Measurement builds only (scripts/build_cuda.py -D PGQA_CTA_TIMES): per CTA of the decode
  // launches {start, end (%globaltimer ns), smid, items}, indexed by linear CTA id; from the
  // device address in PADDLE_GQA_CTA_TIMES (scripts/decode_flush_probe.py --cta-times). With
  // -D PGQA_TILE_TIMES also when each KV tile landed: word 8192 + 512 * (linear CTA id) + tile.
  unsigned long long* cta_times;
#endif
};

// Where the tile maps of a call go and how slots are tiled: filled on the host by
// attention_tile_maps (attention.h), consumed on the device by build_tile_maps (planner.cuh), either
// in the tile planner kernel or in the last CTA of the step check that precedes the attention.
struct TileMapJob {
  int32_t* prefill_tile_start;  // workspace [B+1]
  int32_t* decode_tile_start;   // workspace [B+1]
  int group;                    // G
  int prefill_block_m;          // packed rows per prefill tile
  int32_t* split_counters;      // AttentionParams::split_counters, zeroed with the maps (or nullptr)
  int32_t* work_queue;          // AttentionParams::work_queue's word, zeroed with the maps
  int num_split_counters;
  bool all_decode;              // every slot's rows in decode tiles, none in prefill tiles (runs_all_decode)
};

}  // namespace paddle_gqa::cuda::attn
