// CPU plan op (plan.h): the step check at once, then the plan words; and the check that a plan
// given to an op describes that call.
#include <cstdint>

#include "paddle_gqa/errors.h"
#include "paddle_gqa/launchers.h"
#include "paddle_gqa/plan.h"
#include "step.h"

namespace paddle_gqa {
namespace cpu {

void plan_step(const ProblemShape& shape, const StepInputs& step, const TensorView& plan_out) {
  PGQA_CHECK_ARG(plan_out.defined(), "plan_out: the plan is written into a preallocated int32 [", kPlanWords,
                 "] tensor, but none was given");
  // Throws before anything is written; positions are checked when shape.max_position > 0.
  check_step(shape, step, /*checks_reads=*/true);
  const PlanWords words = make_plan_words(shape);
  int32_t* out = plan_out.ptr<int32_t>();
  for (int i = 0; i < kPlanWords; ++i) out[i] = words.w[i];
}

namespace {

void check_word(const int32_t* plan, int index, int64_t expected, const char* what) {
  PGQA_CHECK_ARG(plan[index] == expected, "plan: word ", index, " (", what, ") is ", plan[index],
                 " but this call has ", expected,
                 ": the plan was made for another step or spec group; make one with plan(...) for these inputs");
}

}  // namespace

void check_plan(const ProblemShape& shape, const TensorView& plan, bool mask, bool rope) {
  const int32_t* w = plan.ptr<const int32_t>();
  PGQA_CHECK_ARG(w[kPlanMagic] == kPlanMagicValue, "plan: word 0 is ", w[kPlanMagic], ", expected ",
                 kPlanMagicValue, ": not a tensor made by the plan op");
  PGQA_CHECK_ARG(w[kPlanErrorCode] == 0, "plan: word ", int(kPlanErrorCode), " (error code) is ",
                 w[kPlanErrorCode], ": the plan's step check failed; fix the step's data and make a new plan");
  check_word(w, kPlanBatch, shape.batch, "batch B");
  check_word(w, kPlanRows, shape.rows, "rows of qkv / q");
  check_word(w, kPlanBlockSize, shape.block_size, "block_size");
  if (mask) {
    check_word(w, kPlanSlidingWindow, shape.sliding_window, "sliding_window");
    check_word(w, kPlanCausal, shape.causal ? 1 : 0, "causal");
  }
  if (rope) check_word(w, kPlanHasRope, shape.max_position > 0 ? 1 : 0, "RoPE tables given");
}

}  // namespace cpu
}  // namespace paddle_gqa
