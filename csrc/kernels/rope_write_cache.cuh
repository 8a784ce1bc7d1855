// RoPE + paged-cache write (DESIGN.md §2): the params struct and its launcher.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "paddle_gqa/step_rules.h"
#include "paddle_gqa/tensor_view.h"

namespace paddle_gqa::cuda {

// Filled once by the launcher (launchers.cu). Element strides; every innermost stride is 1.
struct RopeWriteParams {
  const void* qkv;            // [rows, Hq*D + Hkv*D + Hkv*Dv]
  int64_t qkv_row_stride;
  void* key_cache;            // [num_blocks, Hkv, block_size, D]
  int64_t k_block_stride, k_head_stride, k_slot_stride;
  void* value_cache;          // [num_blocks, Hkv, block_size, Dv]
  int64_t v_block_stride, v_head_stride, v_slot_stride;
  void* q_out;                // [rows, Hq, D]: rotated queries, rows >= T zero
  int64_t q_row_stride, q_head_stride;
  const int32_t* block_tables;   // [B, max_blocks_per_seq], contiguous
  const int32_t* cu_seqlens_q;   // [B+1]
  const int32_t* cache_seqlens;  // [B]
  const float* cos;           // [max_position, rotary_dim/2]; null without RoPE
  const float* sin;           // [max_position, rotary_dim/2]; null without RoPE
  int64_t cos_row_stride, sin_row_stride;
  const StepError* error;     // this call's step check; nothing is written when it is set
  DType dtype;                // kFloat16 or kBFloat16
  int64_t rows;
  int64_t batch;
  int64_t num_blocks;
  int64_t max_blocks_per_seq;
  int64_t max_position;       // rows of the RoPE tables; 0 without RoPE
  int num_q_heads, num_kv_heads, head_dim, v_head_dim, block_size;
  int rotary_dim;             // 0 = no RoPE
  bool neox_style;
};

// One CTA per (row, chunk of the row's 16-byte vectors). Asynchronous; no-op for rows == 0.
void launch_rope_write_cache(const RopeWriteParams& p, cudaStream_t stream);

}  // namespace paddle_gqa::cuda
