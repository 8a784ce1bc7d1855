// The inputs of the three ops (DESIGN.md §2-§3) as views, and the problem shape derived from them.
#pragma once

#include <cstdint>

#include "paddle_gqa/tensor_view.h"

namespace paddle_gqa {

// The paged cache and the step's batch layout; shared by all three ops.
struct StepInputs {
  TensorView key_cache;     // [num_blocks, Hkv, block_size, D], dtype of qkv, written in place
  TensorView value_cache;   // [num_blocks, Hkv, block_size, Dv], dtype of qkv, written in place
  TensorView block_tables;  // int32 [B, max_blocks_per_seq]; -1 = no block
  TensorView cu_seqlens_q;  // int32 [B+1]; prefix sums of new tokens, from 0; T = cu_seqlens_q[B]
  TensorView cache_seqlens; // int32 [B]; tokens already cached before this step
};

// RoPE. Absent tables (cos/sin undefined) mean no rotation.
struct RopeInputs {
  TensorView cos;           // fp32 [max_position, rotary_dim/2], optional
  TensorView sin;           // fp32 [max_position, rotary_dim/2], optional
  int rotary_dim = 0;       // 0 with tables = D; resolved into ProblemShape::rotary_dim
  bool neox_style = true;   // true: pair k with k+rotary_dim/2; false: pair 2k with 2k+1
};

// Which keys a query sees, and how scores are scaled.
struct MaskInputs {
  TensorView sinks;         // fp32 [Hq], optional; adds e^{sink_h - m} to the denominator only
  int sliding_window = 0;   // W > 0: keys j with p - W < j <= p (requires causal)
  bool causal = true;
  float softmax_scale = 0.f;  // 0 = 1/sqrt(D); resolved into ProblemShape::softmax_scale
};

// Everything host-side that the launchers need, derived once by validation from the shapes.
// Device-resident facts (T, per-slot lengths) are not here: they live in cu_seqlens_q etc.
struct ProblemShape {
  DType dtype = DType::kOther;  // of qkv / q, caches and outputs
  int64_t rows = 0;             // rows of qkv (or q); >= T; rows past T are ignored, output zero
  int64_t batch = 0;            // B
  int num_q_heads = 0;          // Hq
  int num_kv_heads = 0;         // Hkv
  int group = 0;                // G = Hq / Hkv
  int head_dim = 0;             // D (query/key)
  int v_head_dim = 0;           // Dv
  int block_size = 0;
  int64_t num_blocks = 0;
  int64_t max_blocks_per_seq = 0;
  int rotary_dim = 0;           // 0 = no RoPE, else even, <= D
  int64_t max_position = 0;     // rows of the RoPE tables; 0 without RoPE
  bool has_sinks = false;
  int sliding_window = 0;
  bool causal = true;
  float softmax_scale = 0.f;    // resolved: never 0

  int64_t qkv_width() const { return int64_t(num_q_heads) * head_dim + int64_t(num_kv_heads) * (head_dim + v_head_dim); }
  int64_t out_width() const { return int64_t(num_q_heads) * v_head_dim; }
};

}  // namespace paddle_gqa
