// Builds the StepData that step_rules.h checks from a validated ProblemShape and the step's views
// (host-only; shared by the CPU ops and the CUDA launchers so both check the same facts).
#pragma once

#include "paddle_gqa/op_args.h"
#include "paddle_gqa/step_rules.h"

namespace paddle_gqa {

// checks_reads: also the blocks of keys any new query sees (attention ops and the plan);
// checks_positions: also RoPE positions against the tables (ops that rotate, and the plan).
inline StepData make_step_data(const ProblemShape& shape, const StepInputs& step, bool checks_reads,
                               bool checks_positions) {
  StepData d;
  d.block_tables = step.block_tables.ptr<const int32_t>();
  d.cu_seqlens_q = step.cu_seqlens_q.ptr<const int32_t>();
  d.cache_seqlens = step.cache_seqlens.ptr<const int32_t>();
  d.batch = shape.batch;
  d.rows = shape.rows;
  d.max_blocks_per_seq = shape.max_blocks_per_seq;
  d.num_blocks = shape.num_blocks;
  d.block_size = shape.block_size;
  d.max_position = checks_positions ? shape.max_position : 0;
  d.causal = shape.causal;
  d.sliding_window = shape.sliding_window;
  d.checks_reads = checks_reads;
  return d;
}

}  // namespace paddle_gqa
