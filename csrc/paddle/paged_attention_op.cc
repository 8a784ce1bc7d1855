// Paddle op paged_attention: attention of queries over a paged cache that already holds the
// step's new tokens (DESIGN.md §3).
#include <vector>

#include "convert.h"
#include "paddle_gqa/launchers.h"

namespace pb = paddle_gqa::paddle_binding;

namespace {

// Returns {out [rows, Hq*Dv]}. The caches are inputs only; they are listed as in-place outputs
// so that graph passes order this op after the rope_write_cache that filled them.
// `plan` (optional, plan.h): checked on the host (and its words on CPU); on CUDA the op then defers
// invalid step data to the sticky record instead of synchronizing.
std::vector<paddle::Tensor> PagedAttention(const paddle::Tensor& q, paddle::Tensor& key_cache,
                                           paddle::Tensor& value_cache,
                                           const paddle::Tensor& block_tables,
                                           const paddle::Tensor& cu_seqlens_q,
                                           const paddle::Tensor& cache_seqlens,
                                           const paddle::optional<paddle::Tensor>& sinks,
                                           const paddle::optional<paddle::Tensor>& plan,
                                           int sliding_window, bool causal, float softmax_scale) {
  return pb::run_op("paged_attention", [&] {
    using namespace paddle_gqa;
    const Backend backend = pb::backend_of(q, "q");
    const TensorView q_v = pb::view(q, "q");
    const StepInputs step =
        pb::step_inputs(key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens);
    const MaskInputs mask = pb::mask_inputs(sinks, sliding_window, causal, softmax_scale);

    const ProblemShape shape = validate_paged_attention(backend, q_v, step, mask, TensorView{});
    const TensorView plan_v = pb::plan_input(plan, backend, q_v, "q");
    paddle::Tensor out = paddle::empty({shape.rows, shape.out_width()}, q.dtype(), q.place());
    const TensorView out_v = pb::view(out, "out");
    if (backend == Backend::kCPU) {
      if (plan_v.defined()) paddle_gqa::cpu::check_plan(shape, plan_v, /*mask=*/true, /*rope=*/false);
      paddle_gqa::cpu::paged_attention(shape, q_v, step, mask, out_v);
    } else {
      // Backend::kCUDA: a build without CUDA never gets here (backend_of refuses GPU tensors).
#ifdef PADDLE_GQA_WITH_CUDA
      paddle_gqa::cuda::paged_attention(shape, q_v, step, mask, out_v, pb::stream_of(q),
                                        /*defer_errors=*/plan_v.defined());
#endif
    }
    return std::vector<paddle::Tensor>{out};
  });
}

std::vector<std::vector<int64_t>> PagedAttentionInferShape(
    const std::vector<int64_t>& q, const std::vector<int64_t>& /*key_cache*/,
    const std::vector<int64_t>& value_cache, const std::vector<int64_t>& /*block_tables*/,
    const std::vector<int64_t>& /*cu_seqlens_q*/, const std::vector<int64_t>& /*cache_seqlens*/,
    const paddle::optional<std::vector<int64_t>>& /*sinks*/,
    const paddle::optional<std::vector<int64_t>>& /*plan*/) {
  const int64_t rows = q.empty() ? -1 : q[0];
  const int64_t hq = q.size() == 3 ? q[1] : -1;
  const int64_t dv = value_cache.size() == 4 ? value_cache[3] : -1;
  return {{rows, hq > 0 && dv > 0 ? hq * dv : -1}};
}

std::vector<paddle::DataType> PagedAttentionInferDtype(
    const paddle::DataType& q, const paddle::DataType& /*key_cache*/,
    const paddle::DataType& /*value_cache*/, const paddle::DataType& /*block_tables*/,
    const paddle::DataType& /*cu_seqlens_q*/, const paddle::DataType& /*cache_seqlens*/,
    const paddle::optional<paddle::DataType>& /*sinks*/,
    const paddle::optional<paddle::DataType>& /*plan*/) {
  return {q};
}

}  // namespace

PD_BUILD_OP(paged_attention)
    .Inputs({"q", "key_cache", "value_cache", "block_tables", "cu_seqlens_q", "cache_seqlens",
             paddle::Optional("sinks"), paddle::Optional("plan")})
    .Outputs({"out", "key_cache_out", "value_cache_out"})
    .SetInplaceMap({{"key_cache", "key_cache_out"}, {"value_cache", "value_cache_out"}})
    .Attrs({"sliding_window: int", "causal: bool", "softmax_scale: float"})
    .SetKernelFn(PD_KERNEL(PagedAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(PagedAttentionInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(PagedAttentionInferDtype));
