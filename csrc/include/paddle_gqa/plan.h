// The plan tensor (DESIGN.md §3): int32 [kPlanWords], made by the `plan` op once per step and spec
// group, and taken by the three ops as their optional last input.
//
// Making a plan checks the step's device data once (step_rules.h, with reads and RoPE positions)
// and, on CUDA, reads the result back once: the step's one synchronizing point. An op given a plan
// still checks the data on the device before any write (memory safety does not depend on the
// plan), but it defers what it finds to the sticky record (check_errors, the next plan, the next
// uncaptured call without a plan) instead of reading it back, so it never synchronizes.
//
// Layout (one int32 word each):
//   [0] kPlanMagicValue       marks a plan tensor of this layout
//   [1] batch                 B of the step
//   [2] rows                  rows of qkv / q
//   [3] block_size            of the caches
//   [4] sliding_window        as passed to plan (0 = none)
//   [5] causal                1 or 0
//   [6] has_rope              1 when positions were checked against RoPE tables
//   [7] error code            the StepErrorCode of the plan's check: 0 whenever plan returned
//                             outside graph capture (it raises otherwise); under capture, the code
//                             each replay found
#pragma once

#include <cstdint>

#include "paddle_gqa/op_args.h"

namespace paddle_gqa {

inline constexpr int kPlanWords = 8;
inline constexpr int32_t kPlanMagicValue = 0x50475131;  // "PGQ1"

enum PlanWord : int {
  kPlanMagic = 0,
  kPlanBatch = 1,
  kPlanRows = 2,
  kPlanBlockSize = 3,
  kPlanSlidingWindow = 4,
  kPlanCausal = 5,
  kPlanHasRope = 6,
  kPlanErrorCode = 7,
};

// The words of a plan for `shape` (validate_plan's result), the error word 0.
struct PlanWords {
  int32_t w[kPlanWords];
};

inline PlanWords make_plan_words(const ProblemShape& shape) {
  PlanWords p{};
  p.w[kPlanMagic] = kPlanMagicValue;
  p.w[kPlanBatch] = int32_t(shape.batch);
  p.w[kPlanRows] = int32_t(shape.rows);
  p.w[kPlanBlockSize] = shape.block_size;
  p.w[kPlanSlidingWindow] = shape.sliding_window;
  p.w[kPlanCausal] = shape.causal ? 1 : 0;
  p.w[kPlanHasRope] = shape.max_position > 0 ? 1 : 0;
  p.w[kPlanErrorCode] = 0;
  return p;
}

}  // namespace paddle_gqa
