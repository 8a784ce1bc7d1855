// Conversion of paddle::Tensor arguments into the framework-neutral views the launchers take, and
// the error translation every Paddle op kernel runs inside.
#pragma once

#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "paddle/extension.h"
#include "paddle_gqa/errors.h"
#include "paddle_gqa/op_args.h"
#include "paddle_gqa/validate.h"

#if defined(PADDLE_GQA_WITH_CUDA) && !defined(PADDLE_WITH_CUDA)
#error "PADDLE_GQA_WITH_CUDA needs PADDLE_WITH_CUDA (set by Paddle's BuildExtension with .cu sources)"
#endif

namespace paddle_gqa {
namespace paddle_binding {

// A view of `t`; `name` is the op argument, used in errors (rank above kMaxViewRank, sparse tensor).
TensorView view(const paddle::Tensor& t, const char* name);

// An absent optional is an undefined view (ndim == -1).
TensorView view(const paddle::optional<paddle::Tensor>& t, const char* name);

StepInputs step_inputs(const paddle::Tensor& key_cache, const paddle::Tensor& value_cache,
                       const paddle::Tensor& block_tables, const paddle::Tensor& cu_seqlens_q,
                       const paddle::Tensor& cache_seqlens);

// The RoPE arguments of rope_write_cache, append_attention and plan (op_args.h); absent tables
// are undefined views.
RopeInputs rope_inputs(const paddle::optional<paddle::Tensor>& rotary_cos,
                       const paddle::optional<paddle::Tensor>& rotary_sin, int rotary_dim, bool neox_style);

// The mask arguments of paged_attention, append_attention and plan (op_args.h); absent sinks are
// an undefined view.
MaskInputs mask_inputs(const paddle::optional<paddle::Tensor>& sinks, int sliding_window, bool causal,
                       float softmax_scale);

// The optional `plan` input of an op (plan.h): host-side checks against `anchor` (the op's qkv or
// q, named `anchor_name`), then its view, undefined when absent. The CPU ops compare its words
// with the call (cpu::check_plan); the CUDA ops never read them, since that would synchronize.
TensorView plan_input(const paddle::optional<paddle::Tensor>& plan, Backend backend, const TensorView& anchor,
                      const char* anchor_name);

// The backend the op runs on, from the place of its main input (`qkv` or `q`). Throws for places
// other than CPU and GPU, and for GPU tensors when this library was built without CUDA.
Backend backend_of(const paddle::Tensor& t, const char* name);

#ifdef PADDLE_GQA_WITH_CUDA
// The cudaStream_t Paddle runs `t`'s device work on.
void* stream_of(const paddle::Tensor& t);
#endif

// Hq from the shapes of qkv [rows, Hq*D + Hkv*(D+Dv)], key_cache [.., Hkv, .., D] and
// value_cache [.., .., .., Dv], for shape inference; -1 when a dim is unknown (-1) or the shapes
// disagree (the kernel's validation then raises the precise error).
int64_t infer_num_q_heads(const std::vector<int64_t>& qkv, const std::vector<int64_t>& key_cache,
                          const std::vector<int64_t>& value_cache);

// Runs `body`, turning every C++ exception into Paddle's own error type (EnforceNotMet) with the
// original message: Paddle aborts the process when any other exception leaves a custom-op kernel
// of a static graph, and surfaces EnforceNotMet in Python by its code in every execution mode
// (InvalidArgument -> ValueError, Unavailable -> RuntimeError-like, Fatal -> SystemError).
template <typename F>
auto run_op(const char* op_name, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const InvalidArgument& e) {
    PADDLE_THROW(common::errors::InvalidArgument("%s\n  [paddle_gqa.%s]", e.what(), op_name));
  } catch (const RuntimeFailure& e) {
    PADDLE_THROW(common::errors::Unavailable("%s\n  [paddle_gqa.%s: CUDA runtime failure]",
                                             e.what(), op_name));
  } catch (const common::enforce::EnforceNotMet&) {
    throw;  // Paddle's own error (e.g. out of memory in paddle::empty): already the right type
  } catch (const std::exception& e) {
    PADDLE_THROW(common::errors::Fatal("%s\n  [paddle_gqa.%s: internal error]", e.what(), op_name));
  } catch (...) {
    PADDLE_THROW(common::errors::Fatal("unknown C++ exception\n  [paddle_gqa.%s: internal error]",
                                       op_name));
  }
}

}  // namespace paddle_binding
}  // namespace paddle_gqa
