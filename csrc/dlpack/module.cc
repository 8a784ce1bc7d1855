// pybind11 module paddle_gqa_cuda: the three ops, plan and check_errors on any DLPack tensors (torch,
// cupy, paddle) on one CUDA device, with no framework imported (DESIGN.md §1, §3).
#include <cstdint>
#include <vector>

#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "borrowed_tensor.h"
#include "paddle_gqa/errors.h"
#include "paddle_gqa/launchers.h"
#include "paddle_gqa/plan.h"
#include "paddle_gqa/validate.h"

namespace py = pybind11;

namespace paddle_gqa::dlpack {
namespace {

// The arguments of one call, borrowed until the launch has returned (capsule deleters run when
// this is destroyed, with the GIL held).
struct Borrowed {
  std::uintptr_t stream;
  std::vector<BorrowedTensor> held;

  const TensorView& take(py::handle obj, const char* name, bool optional = false, bool writable = false) {
    held.push_back(BorrowedTensor::take(obj, name, stream, optional, writable));
    return held.back().view();
  }
  // Copies of the views: `held` may reallocate while later arguments are taken.
  StepInputs step(py::handle key_cache, py::handle value_cache, py::handle block_tables,
                  py::handle cu_seqlens_q, py::handle cache_seqlens) {
    StepInputs s;
    s.key_cache = take(key_cache, "key_cache", false, true);
    s.value_cache = take(value_cache, "value_cache", false, true);
    s.block_tables = take(block_tables, "block_tables");
    s.cu_seqlens_q = take(cu_seqlens_q, "cu_seqlens_q");
    s.cache_seqlens = take(cache_seqlens, "cache_seqlens");
    return s;
  }
};

// The launch stream must belong to the tensors' device (validation already put them on one).
void check_stream_device(std::uintptr_t stream, const TensorView& first, const char* first_name) {
  if (first.device != DeviceKind::kCUDA) return;  // validation has refused it already
#if CUDART_VERSION >= 12080
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(reinterpret_cast<cudaStream_t>(stream), &capture) == cudaSuccess &&
      capture != cudaStreamCaptureStatusNone) {
    // cudaStreamGetDevice is refused during capture (and would invalidate it); a stream of another
    // device then fails at the first launch with CUDA's own error instead.
    return;
  }
  int device = -1;
  const cudaError_t status = cudaStreamGetDevice(reinterpret_cast<cudaStream_t>(stream), &device);
  if (status != cudaSuccess) {
    cudaGetLastError();
    throw InvalidArgument(str("stream = ", stream, " is not a valid CUDA stream (", cudaGetErrorString(status),
                              "): pass the integer handle of a cudaStream_t, or 0 for the default stream"));
  }
  if (stream == 0 || stream == reinterpret_cast<std::uintptr_t>(cudaStreamPerThread)) {
    // The default streams belong to whichever device is current: the launcher makes the
    // tensors' device current, so they are right by construction.
    return;
  }
  PGQA_CHECK_ARG(device == first.device_id, "stream = ", stream, " belongs to CUDA:", device, " but ", first_name,
                 " is on CUDA:", first.device_id, ": pass a stream of the tensors' device");
#else
  // cudaStreamGetDevice exists from CUDA 12.8; older runtimes cannot tell a stream's device.
  (void)stream;
  (void)first_name;
#endif
}

RopeInputs rope_inputs(Borrowed& b, py::handle cos, py::handle sin, int rotary_dim, bool neox_style) {
  RopeInputs r;
  r.cos = b.take(cos, "rotary_cos", true);
  r.sin = b.take(sin, "rotary_sin", true);
  r.rotary_dim = rotary_dim;
  r.neox_style = neox_style;
  return r;
}

MaskInputs mask_inputs(Borrowed& b, py::handle sinks, int sliding_window, bool causal, double softmax_scale) {
  MaskInputs m;
  m.sinks = b.take(sinks, "sinks", true);
  m.sliding_window = sliding_window;
  m.causal = causal;
  m.softmax_scale = float(softmax_scale);
  return m;
}

// The optional plan (plan.h) of an op call: host-side checks only; its words are not read (that
// would synchronize). Returns whether one was given, i.e. whether the op defers its errors.
bool take_plan(Borrowed& b, py::handle plan, const TensorView& anchor, const char* anchor_name) {
  const TensorView plan_v = b.take(plan, "plan", true);
  validate_plan_input(Backend::kCUDA, plan_v, anchor, anchor_name);
  return plan_v.defined();
}

void append_attention(py::handle out, py::handle qkv, py::handle key_cache, py::handle value_cache,
                      py::handle block_tables, py::handle cu_seqlens_q, py::handle cache_seqlens,
                      py::handle rotary_cos, py::handle rotary_sin, py::handle sinks, int rotary_dim,
                      bool neox_style, int sliding_window, bool causal, double softmax_scale,
                      std::uintptr_t stream, py::handle plan) {
  Borrowed b{stream, {}};
  b.held.reserve(11);
  const TensorView out_v = b.take(out, "out", false, true);
  const TensorView qkv_v = b.take(qkv, "qkv");
  const StepInputs step = b.step(key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens);
  const RopeInputs rope = rope_inputs(b, rotary_cos, rotary_sin, rotary_dim, neox_style);
  const MaskInputs mask = mask_inputs(b, sinks, sliding_window, causal, softmax_scale);
  const ProblemShape shape = validate_append_attention(Backend::kCUDA, qkv_v, step, rope, mask, out_v);
  const bool defer = take_plan(b, plan, qkv_v, "qkv");
  check_stream_device(stream, qkv_v, "qkv");
  py::gil_scoped_release no_gil;
  cuda::append_attention(shape, qkv_v, step, rope, mask, out_v, reinterpret_cast<void*>(stream), defer);
}

void rope_write_cache(py::handle q_out, py::handle qkv, py::handle key_cache, py::handle value_cache,
                      py::handle block_tables, py::handle cu_seqlens_q, py::handle cache_seqlens,
                      py::handle rotary_cos, py::handle rotary_sin, int rotary_dim, bool neox_style,
                      std::uintptr_t stream, py::handle plan) {
  Borrowed b{stream, {}};
  b.held.reserve(10);
  const TensorView q_out_v = b.take(q_out, "q_out", false, true);
  const TensorView qkv_v = b.take(qkv, "qkv");
  const StepInputs step = b.step(key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens);
  const RopeInputs rope = rope_inputs(b, rotary_cos, rotary_sin, rotary_dim, neox_style);
  const ProblemShape shape = validate_rope_write_cache(Backend::kCUDA, qkv_v, step, rope, q_out_v);
  const bool defer = take_plan(b, plan, qkv_v, "qkv");
  check_stream_device(stream, qkv_v, "qkv");
  py::gil_scoped_release no_gil;
  cuda::rope_write_cache(shape, qkv_v, step, rope, q_out_v, reinterpret_cast<void*>(stream), defer);
}

void paged_attention(py::handle out, py::handle q, py::handle key_cache, py::handle value_cache,
                     py::handle block_tables, py::handle cu_seqlens_q, py::handle cache_seqlens, py::handle sinks,
                     int sliding_window, bool causal, double softmax_scale, std::uintptr_t stream,
                     py::handle plan) {
  Borrowed b{stream, {}};
  b.held.reserve(9);
  const TensorView out_v = b.take(out, "out", false, true);
  const TensorView q_v = b.take(q, "q");
  const StepInputs step = b.step(key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens);
  const MaskInputs mask = mask_inputs(b, sinks, sliding_window, causal, softmax_scale);
  const ProblemShape shape = validate_paged_attention(Backend::kCUDA, q_v, step, mask, out_v);
  const bool defer = take_plan(b, plan, q_v, "q");
  check_stream_device(stream, q_v, "q");
  py::gil_scoped_release no_gil;
  cuda::paged_attention(shape, q_v, step, mask, out_v, reinterpret_cast<void*>(stream), defer);
}

void plan(py::handle plan_out, py::handle q_or_qkv, py::handle key_cache, py::handle value_cache,
          py::handle block_tables, py::handle cu_seqlens_q, py::handle cache_seqlens, py::handle rotary_cos,
          py::handle rotary_sin, int rotary_dim, int sliding_window, bool causal, std::uintptr_t stream) {
  Borrowed b{stream, {}};
  b.held.reserve(9);
  const TensorView plan_v = b.take(plan_out, "plan_out", false, true);
  const TensorView first_v = b.take(q_or_qkv, "q_or_qkv");
  const StepInputs step = b.step(key_cache, value_cache, block_tables, cu_seqlens_q, cache_seqlens);
  const RopeInputs rope = rope_inputs(b, rotary_cos, rotary_sin, rotary_dim, /*neox_style=*/true);
  MaskInputs mask;
  mask.sliding_window = sliding_window;
  mask.causal = causal;
  const ProblemShape shape = validate_plan(Backend::kCUDA, first_v, step, rope, mask, plan_v);
  check_stream_device(stream, first_v, first_v.ndim == 3 ? "q" : "qkv");
  py::gil_scoped_release no_gil;
  cuda::plan_step(shape, step, plan_v, reinterpret_cast<void*>(stream));
}

void check_errors(int device_id) {
  py::gil_scoped_release no_gil;
  cuda::check_errors(device_id);
}

}  // namespace
}  // namespace paddle_gqa::dlpack

PYBIND11_MODULE(paddle_gqa_cuda, m) {
  namespace d = paddle_gqa::dlpack;
  m.doc() = "paddle_gqa CUDA ops on DLPack tensors: append_attention, rope_write_cache, paged_attention, "
            "plan, check_errors. Each op writes into a preallocated first argument and launches on `stream` "
            "(a cudaStream_t as an integer; 0 = the default stream). Bad input raises ValueError.";
  m.attr("PLAN_WORDS") = paddle_gqa::kPlanWords;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const paddle_gqa::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const paddle_gqa::RuntimeFailure& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  m.def("append_attention", &d::append_attention, py::arg("out"), py::arg("qkv"), py::arg("key_cache"),
        py::arg("value_cache"), py::arg("block_tables"), py::arg("cu_seqlens_q"), py::arg("cache_seqlens"),
        py::arg("rotary_cos") = py::none(), py::arg("rotary_sin") = py::none(), py::arg("sinks") = py::none(),
        py::kw_only(), py::arg("rotary_dim") = 0, py::arg("neox_style") = true, py::arg("sliding_window") = 0,
        py::arg("causal") = true, py::arg("softmax_scale") = 0.0, py::arg("stream") = 0,
        py::arg("plan") = py::none(),
        "RoPE + cache write + attention; out [rows, Hq*Dv] is written, the caches in place. With `plan` "
        "(from plan()) the call does not synchronize: invalid step data is deferred to check_errors().");
  m.def("rope_write_cache", &d::rope_write_cache, py::arg("q_out"), py::arg("qkv"), py::arg("key_cache"),
        py::arg("value_cache"), py::arg("block_tables"), py::arg("cu_seqlens_q"), py::arg("cache_seqlens"),
        py::arg("rotary_cos") = py::none(), py::arg("rotary_sin") = py::none(), py::kw_only(),
        py::arg("rotary_dim") = 0, py::arg("neox_style") = true, py::arg("stream") = 0,
        py::arg("plan") = py::none(),
        "RoPE + cache write; q_out [rows, Hq, D] receives the rotated queries (rows >= T zero). With `plan` "
        "the call does not synchronize.");
  m.def("paged_attention", &d::paged_attention, py::arg("out"), py::arg("q"), py::arg("key_cache"),
        py::arg("value_cache"), py::arg("block_tables"), py::arg("cu_seqlens_q"), py::arg("cache_seqlens"),
        py::arg("sinks") = py::none(), py::kw_only(), py::arg("sliding_window") = 0, py::arg("causal") = true,
        py::arg("softmax_scale") = 0.0, py::arg("stream") = 0, py::arg("plan") = py::none(),
        "Attention of q [rows, Hq, D] over the paged cache (which already holds the new tokens). With `plan` "
        "the call does not synchronize.");
  m.def("plan", &d::plan, py::arg("plan_out"), py::arg("q_or_qkv"), py::arg("key_cache"), py::arg("value_cache"),
        py::arg("block_tables"), py::arg("cu_seqlens_q"), py::arg("cache_seqlens"),
        py::arg("rotary_cos") = py::none(), py::arg("rotary_sin") = py::none(), py::kw_only(),
        py::arg("rotary_dim") = 0, py::arg("sliding_window") = 0, py::arg("causal") = true, py::arg("stream") = 0,
        "Checks one step's data for one spec group once (the step's one read-back; raises ValueError naming "
        "the argument) and writes the plan into plan_out, int32 [PLAN_WORDS] on the step's device, which the "
        "ops take as `plan=` so that they do not synchronize.");
  m.def("check_errors", &d::check_errors, py::arg("device_id") = 0,
        "Raises ValueError for invalid step data recorded on the device by a call captured in a CUDA graph "
        "or given a plan, and clears it. Synchronizes the device: call it outside graph capture.");
}
