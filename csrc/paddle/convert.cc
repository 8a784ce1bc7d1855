// paddle::Tensor -> TensorView conversion shared by the three Paddle ops.
#include "convert.h"

#include <sstream>
#include <vector>

namespace paddle_gqa {
namespace paddle_binding {
namespace {

DType dtype_of(paddle::DataType t) {
  switch (t) {
    case paddle::DataType::FLOAT32: return DType::kFloat32;
    case paddle::DataType::FLOAT16: return DType::kFloat16;
    case paddle::DataType::BFLOAT16: return DType::kBFloat16;
    case paddle::DataType::INT32: return DType::kInt32;
    default: return DType::kOther;
  }
}

std::string shape_text(const std::vector<int64_t>& dims) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < dims.size(); ++i) os << (i ? ", " : "") << dims[i];
  os << "]";
  return os.str();
}

}  // namespace

TensorView view(const paddle::Tensor& t, const char* name) {
  PGQA_CHECK_ARG(t.defined(), name, " is undefined; expected a tensor");
  PGQA_CHECK_ARG(t.is_dense_tensor(), name, " is not a dense tensor; expected a dense tensor");
  const std::vector<int64_t> dims = t.shape();
  PGQA_CHECK_ARG(dims.size() <= static_cast<size_t>(kMaxViewRank), name, " has shape ",
                 shape_text(dims), " (rank ", dims.size(), "); expected rank at most ",
                 kMaxViewRank);
  TensorView v;
  v.ndim = static_cast<int>(dims.size());
  v.dtype = dtype_of(t.dtype());
  for (int i = 0; i < v.ndim; ++i) v.shape[i] = dims[i];

  // Paddle keeps strides for every dense tensor; compute the contiguous ones if none are set.
  const auto strides = t.strides();
  if (strides.size() == v.ndim) {
    for (int i = 0; i < v.ndim; ++i) v.strides[i] = strides[i];
  } else {
    int64_t s = 1;
    for (int i = v.ndim - 1; i >= 0; --i) {
      v.strides[i] = s;
      s *= dims[i];
    }
  }

  if (t.is_cpu()) {
    v.device = DeviceKind::kCPU;
  } else if (t.is_gpu()) {
    v.device = DeviceKind::kCUDA;
    v.device_id = t.place().GetDeviceId();
  } else {
    v.device = DeviceKind::kOther;
  }
  // An empty tensor may have no allocation; data() would throw for it.
  v.data = t.numel() > 0 ? const_cast<void*>(t.data()) : nullptr;
  return v;
}

TensorView view(const paddle::optional<paddle::Tensor>& t, const char* name) {
  if (!t || !t->defined()) return TensorView{};
  return view(*t, name);
}

StepInputs step_inputs(const paddle::Tensor& key_cache, const paddle::Tensor& value_cache,
                       const paddle::Tensor& block_tables, const paddle::Tensor& cu_seqlens_q,
                       const paddle::Tensor& cache_seqlens) {
  StepInputs s;
  s.key_cache = view(key_cache, "key_cache");
  s.value_cache = view(value_cache, "value_cache");
  s.block_tables = view(block_tables, "block_tables");
  s.cu_seqlens_q = view(cu_seqlens_q, "cu_seqlens_q");
  s.cache_seqlens = view(cache_seqlens, "cache_seqlens");
  return s;
}

RopeInputs rope_inputs(const paddle::optional<paddle::Tensor>& rotary_cos,
                       const paddle::optional<paddle::Tensor>& rotary_sin, int rotary_dim, bool neox_style) {
  RopeInputs r;
  r.cos = view(rotary_cos, "rotary_cos");
  r.sin = view(rotary_sin, "rotary_sin");
  r.rotary_dim = rotary_dim;
  r.neox_style = neox_style;
  return r;
}

MaskInputs mask_inputs(const paddle::optional<paddle::Tensor>& sinks, int sliding_window, bool causal,
                       float softmax_scale) {
  MaskInputs m;
  m.sinks = view(sinks, "sinks");
  m.sliding_window = sliding_window;
  m.causal = causal;
  m.softmax_scale = softmax_scale;
  return m;
}

TensorView plan_input(const paddle::optional<paddle::Tensor>& plan, Backend backend, const TensorView& anchor,
                      const char* anchor_name) {
  const TensorView v = view(plan, "plan");
  validate_plan_input(backend, v, anchor, anchor_name);
  return v;
}

Backend backend_of(const paddle::Tensor& t, const char* name) {
  if (t.is_cpu()) return Backend::kCPU;
  if (t.is_gpu()) {
#ifdef PADDLE_GQA_WITH_CUDA
    return Backend::kCUDA;
#else
    throw InvalidArgument(str(name, " is on ", t.place().DebugString(),
                              " but paddle_gqa was built without CUDA; rebuild with "
                              "PADDLE_GQA_WITH_CUDA=1 (pip install --no-build-isolation .)"));
#endif
  }
  throw InvalidArgument(str(name, " is on ", t.place().DebugString(),
                            "; expected a CPU or GPU (CUDA) tensor"));
}

int64_t infer_num_q_heads(const std::vector<int64_t>& qkv, const std::vector<int64_t>& key_cache,
                          const std::vector<int64_t>& value_cache) {
  if (qkv.size() != 2 || key_cache.size() != 4 || value_cache.size() != 4) return -1;
  const int64_t width = qkv[1], hkv = key_cache[1], d = key_cache[3], dv = value_cache[3];
  if (width < 0 || hkv <= 0 || d <= 0 || dv <= 0) return -1;
  const int64_t q_width = width - hkv * (d + dv);
  if (q_width <= 0 || q_width % d != 0) return -1;
  return q_width / d;
}

#ifdef PADDLE_GQA_WITH_CUDA
void* stream_of(const paddle::Tensor& t) { return reinterpret_cast<void*>(t.stream()); }
#endif

}  // namespace paddle_binding
}  // namespace paddle_gqa
