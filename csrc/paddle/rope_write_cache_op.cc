// Paddle op rope_write_cache: RoPE + paged-cache write; returns the rotated queries (DESIGN.md §3).
#include <vector>

#include "convert.h"
#include "paddle_gqa/launchers.h"

namespace pb = paddle_gqa::paddle_binding;

namespace {

// Returns {q [rows, Hq, D]}; key_cache and value_cache are written in place.
// `plan` (optional, plan.h): checked on the host (and its words on CPU); on CUDA the op then defers
// invalid step data to the sticky record instead of synchronizing.
std::vector<paddle::Tensor> RopeWriteCache(const paddle::Tensor& qkv, paddle::Tensor& key_cache,
                                           paddle::Tensor& value_cache,
                                           const paddle::Tensor& block_tables,
                                           const paddle::Tensor& cu_seqlens_q,
                                           const paddle::Tensor& cache_seqlens,
                                           const paddle::optional<paddle::Tensor>& rotary_cos,
                                           const paddle::optional<paddle::Tensor>& rotary_sin,
                                           const paddle::optional<paddle::Tensor>& plan,
                                           int rotary_dim, bool neox_style) {
  return pb::run_op("rope_write_cache", [&] {
    using namespace paddle_gqa;
    const Backend backend = pb::backend_of(qkv, "qkv");
    const TensorView qkv_v = pb::view(qkv, "qkv");
    const StepInputs step =
        pb::step_inputs(key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens);
    const RopeInputs rope = pb::rope_inputs(rotary_cos, rotary_sin, rotary_dim, neox_style);

    const ProblemShape shape = validate_rope_write_cache(backend, qkv_v, step, rope, TensorView{});
    const TensorView plan_v = pb::plan_input(plan, backend, qkv_v, "qkv");
    paddle::Tensor q = paddle::empty({shape.rows, int64_t(shape.num_q_heads), int64_t(shape.head_dim)},
                                     qkv.dtype(), qkv.place());
    const TensorView q_v = pb::view(q, "q");
    if (backend == Backend::kCPU) {
      if (plan_v.defined()) paddle_gqa::cpu::check_plan(shape, plan_v, /*mask=*/false, /*rope=*/true);
      paddle_gqa::cpu::rope_write_cache(shape, qkv_v, step, rope, q_v);
    } else {
      // Backend::kCUDA: a build without CUDA never gets here (backend_of refuses GPU tensors).
#ifdef PADDLE_GQA_WITH_CUDA
      paddle_gqa::cuda::rope_write_cache(shape, qkv_v, step, rope, q_v, pb::stream_of(qkv),
                                         /*defer_errors=*/plan_v.defined());
#endif
    }
    return std::vector<paddle::Tensor>{q};
  });
}

std::vector<std::vector<int64_t>> RopeWriteCacheInferShape(
    const std::vector<int64_t>& qkv, const std::vector<int64_t>& key_cache,
    const std::vector<int64_t>& value_cache, const std::vector<int64_t>& /*block_tables*/,
    const std::vector<int64_t>& /*cu_seqlens_q*/, const std::vector<int64_t>& /*cache_seqlens*/,
    const paddle::optional<std::vector<int64_t>>& /*rotary_cos*/,
    const paddle::optional<std::vector<int64_t>>& /*rotary_sin*/,
    const paddle::optional<std::vector<int64_t>>& /*plan*/) {
  const int64_t rows = qkv.empty() ? -1 : qkv[0];
  const int64_t d = key_cache.size() == 4 ? key_cache[3] : -1;
  return {{rows, pb::infer_num_q_heads(qkv, key_cache, value_cache), d}};
}

std::vector<paddle::DataType> RopeWriteCacheInferDtype(
    const paddle::DataType& qkv, const paddle::DataType& /*key_cache*/,
    const paddle::DataType& /*value_cache*/, const paddle::DataType& /*block_tables*/,
    const paddle::DataType& /*cu_seqlens_q*/, const paddle::DataType& /*cache_seqlens*/,
    const paddle::optional<paddle::DataType>& /*rotary_cos*/,
    const paddle::optional<paddle::DataType>& /*rotary_sin*/,
    const paddle::optional<paddle::DataType>& /*plan*/) {
  return {qkv};
}

}  // namespace

PD_BUILD_OP(rope_write_cache)
    .Inputs({"qkv", "key_cache", "value_cache", "block_tables", "cu_seqlens_q", "cache_seqlens",
             paddle::Optional("rotary_cos"), paddle::Optional("rotary_sin"), paddle::Optional("plan")})
    .Outputs({"q", "key_cache_out", "value_cache_out"})
    .SetInplaceMap({{"key_cache", "key_cache_out"}, {"value_cache", "value_cache_out"}})
    .Attrs({"rotary_dim: int", "neox_style: bool"})
    .SetKernelFn(PD_KERNEL(RopeWriteCache))
    .SetInferShapeFn(PD_INFER_SHAPE(RopeWriteCacheInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(RopeWriteCacheInferDtype));
