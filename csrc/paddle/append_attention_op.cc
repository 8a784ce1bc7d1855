// Paddle op append_attention: RoPE + paged-cache write + attention in one call (DESIGN.md §3).
#include <vector>

#include "convert.h"
#include "paddle_gqa/launchers.h"

namespace pb = paddle_gqa::paddle_binding;

namespace {

// Returns {out [rows, Hq*Dv]}; key_cache and value_cache are written in place.
// `plan` (optional, plan.h): checked on the host (and its words on CPU); on CUDA the op then defers
// invalid step data to the sticky record instead of synchronizing.
std::vector<paddle::Tensor> AppendAttention(const paddle::Tensor& qkv, paddle::Tensor& key_cache,
                                            paddle::Tensor& value_cache,
                                            const paddle::Tensor& block_tables,
                                            const paddle::Tensor& cu_seqlens_q,
                                            const paddle::Tensor& cache_seqlens,
                                            const paddle::optional<paddle::Tensor>& rotary_cos,
                                            const paddle::optional<paddle::Tensor>& rotary_sin,
                                            const paddle::optional<paddle::Tensor>& sinks,
                                            const paddle::optional<paddle::Tensor>& plan,
                                            int rotary_dim, bool neox_style, int sliding_window,
                                            bool causal, float softmax_scale) {
  return pb::run_op("append_attention", [&] {
    using namespace paddle_gqa;
    const Backend backend = pb::backend_of(qkv, "qkv");
    const TensorView qkv_v = pb::view(qkv, "qkv");
    const StepInputs step =
        pb::step_inputs(key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens);
    const RopeInputs rope = pb::rope_inputs(rotary_cos, rotary_sin, rotary_dim, neox_style);
    const MaskInputs mask = pb::mask_inputs(sinks, sliding_window, causal, softmax_scale);

    const ProblemShape shape =
        validate_append_attention(backend, qkv_v, step, rope, mask, TensorView{});
    const TensorView plan_v = pb::plan_input(plan, backend, qkv_v, "qkv");
    paddle::Tensor out = paddle::empty({shape.rows, shape.out_width()}, qkv.dtype(), qkv.place());
    const TensorView out_v = pb::view(out, "out");
    if (backend == Backend::kCPU) {
      if (plan_v.defined()) paddle_gqa::cpu::check_plan(shape, plan_v, /*mask=*/true, /*rope=*/true);
      paddle_gqa::cpu::append_attention(shape, qkv_v, step, rope, mask, out_v);
    } else {
      // Backend::kCUDA: a build without CUDA never gets here (backend_of refuses GPU tensors).
#ifdef PADDLE_GQA_WITH_CUDA
      paddle_gqa::cuda::append_attention(shape, qkv_v, step, rope, mask, out_v, pb::stream_of(qkv),
                                         /*defer_errors=*/plan_v.defined());
#endif
    }
    return std::vector<paddle::Tensor>{out};
  });
}

std::vector<std::vector<int64_t>> AppendAttentionInferShape(
    const std::vector<int64_t>& qkv, const std::vector<int64_t>& key_cache,
    const std::vector<int64_t>& value_cache, const std::vector<int64_t>& /*block_tables*/,
    const std::vector<int64_t>& /*cu_seqlens_q*/, const std::vector<int64_t>& /*cache_seqlens*/,
    const paddle::optional<std::vector<int64_t>>& /*rotary_cos*/,
    const paddle::optional<std::vector<int64_t>>& /*rotary_sin*/,
    const paddle::optional<std::vector<int64_t>>& /*sinks*/,
    const paddle::optional<std::vector<int64_t>>& /*plan*/) {
  const int64_t rows = qkv.empty() ? -1 : qkv[0];
  const int64_t hq = pb::infer_num_q_heads(qkv, key_cache, value_cache);
  const int64_t dv = value_cache.size() == 4 ? value_cache[3] : -1;
  return {{rows, hq > 0 && dv > 0 ? hq * dv : -1}};
}

std::vector<paddle::DataType> AppendAttentionInferDtype(
    const paddle::DataType& qkv, const paddle::DataType& /*key_cache*/,
    const paddle::DataType& /*value_cache*/, const paddle::DataType& /*block_tables*/,
    const paddle::DataType& /*cu_seqlens_q*/, const paddle::DataType& /*cache_seqlens*/,
    const paddle::optional<paddle::DataType>& /*rotary_cos*/,
    const paddle::optional<paddle::DataType>& /*rotary_sin*/,
    const paddle::optional<paddle::DataType>& /*sinks*/,
    const paddle::optional<paddle::DataType>& /*plan*/) {
  return {qkv};
}

}  // namespace

PD_BUILD_OP(append_attention)
    .Inputs({"qkv", "key_cache", "value_cache", "block_tables", "cu_seqlens_q", "cache_seqlens",
             paddle::Optional("rotary_cos"), paddle::Optional("rotary_sin"),
             paddle::Optional("sinks"), paddle::Optional("plan")})
    .Outputs({"out", "key_cache_out", "value_cache_out"})
    .SetInplaceMap({{"key_cache", "key_cache_out"}, {"value_cache", "value_cache_out"}})
    .Attrs({"rotary_dim: int", "neox_style: bool", "sliding_window: int", "causal: bool",
            "softmax_scale: float"})
    .SetKernelFn(PD_KERNEL(AppendAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(AppendAttentionInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(AppendAttentionInferDtype));
