// Paddle op plan: checks one step's data for one spec group once and returns the plan tensor the
// three ops take as their optional last input (plan.h, DESIGN.md §3-§4).
#include <vector>

#include "convert.h"
#include "paddle_gqa/launchers.h"
#include "paddle_gqa/plan.h"

namespace pb = paddle_gqa::paddle_binding;

namespace {

// Returns {plan int32 [kPlanWords]} on the place of q_or_qkv. q_or_qkv is the step's qkv
// [rows, Hq*D + Hkv*(D+Dv)] or q [rows, Hq, D]; nothing is written but the plan.
std::vector<paddle::Tensor> Plan(const paddle::Tensor& q_or_qkv, const paddle::Tensor& key_cache,
                                 const paddle::Tensor& value_cache, const paddle::Tensor& block_tables,
                                 const paddle::Tensor& cu_seqlens_q, const paddle::Tensor& cache_seqlens,
                                 const paddle::optional<paddle::Tensor>& rotary_cos,
                                 const paddle::optional<paddle::Tensor>& rotary_sin, int rotary_dim,
                                 int sliding_window, bool causal) {
  return pb::run_op("plan", [&] {
    using namespace paddle_gqa;
    const Backend backend = pb::backend_of(q_or_qkv, "q_or_qkv");
    const TensorView first_v = pb::view(q_or_qkv, "q_or_qkv");
    const StepInputs step =
        pb::step_inputs(key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens);
    // A plan takes no neox_style (rotation does not change which data the step reads), no sinks
    // and no softmax_scale.
    const RopeInputs rope = pb::rope_inputs(rotary_cos, rotary_sin, rotary_dim, /*neox_style=*/true);
    const MaskInputs mask = pb::mask_inputs(paddle::none, sliding_window, causal, /*softmax_scale=*/0.f);

    const ProblemShape shape = validate_plan(backend, first_v, step, rope, mask, TensorView{});
    paddle::Tensor plan = paddle::empty({kPlanWords}, paddle::DataType::INT32, q_or_qkv.place());
    const TensorView plan_v = pb::view(plan, "plan");
    if (backend == Backend::kCPU) {
      paddle_gqa::cpu::plan_step(shape, step, plan_v);
    } else {
      // Backend::kCUDA: a build without CUDA never gets here (backend_of refuses GPU tensors).
#ifdef PADDLE_GQA_WITH_CUDA
      paddle_gqa::cuda::plan_step(shape, step, plan_v, pb::stream_of(q_or_qkv));
#endif
    }
    return std::vector<paddle::Tensor>{plan};
  });
}

std::vector<std::vector<int64_t>> PlanInferShape(
    const std::vector<int64_t>& /*q_or_qkv*/, const std::vector<int64_t>& /*key_cache*/,
    const std::vector<int64_t>& /*value_cache*/, const std::vector<int64_t>& /*block_tables*/,
    const std::vector<int64_t>& /*cu_seqlens_q*/, const std::vector<int64_t>& /*cache_seqlens*/,
    const paddle::optional<std::vector<int64_t>>& /*rotary_cos*/,
    const paddle::optional<std::vector<int64_t>>& /*rotary_sin*/) {
  return {{paddle_gqa::kPlanWords}};
}

std::vector<paddle::DataType> PlanInferDtype(
    const paddle::DataType& /*q_or_qkv*/, const paddle::DataType& /*key_cache*/,
    const paddle::DataType& /*value_cache*/, const paddle::DataType& /*block_tables*/,
    const paddle::DataType& /*cu_seqlens_q*/, const paddle::DataType& /*cache_seqlens*/,
    const paddle::optional<paddle::DataType>& /*rotary_cos*/,
    const paddle::optional<paddle::DataType>& /*rotary_sin*/) {
  return {paddle::DataType::INT32};
}

}  // namespace

PD_BUILD_OP(plan)
    .Inputs({"q_or_qkv", "key_cache", "value_cache", "block_tables", "cu_seqlens_q", "cache_seqlens",
             paddle::Optional("rotary_cos"), paddle::Optional("rotary_sin")})
    .Outputs({"plan"})
    .Attrs({"rotary_dim: int", "sliding_window: int", "causal: bool"})
    .SetKernelFn(PD_KERNEL(Plan))
    .SetInferShapeFn(PD_INFER_SHAPE(PlanInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(PlanInferDtype));
