// Host-side validation of the three ops (DESIGN.md §4): checks every host-visible fact of the
// inputs and derives the ProblemShape; reads no tensor data, so it runs before anything is touched.
#include "paddle_gqa/validate.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "paddle_gqa/errors.h"
#include "paddle_gqa/generated/supported.h"
#include "paddle_gqa/plan.h"

namespace paddle_gqa {
namespace {

std::string shape_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

std::string strides_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.strides[i]);
  return s + "]";
}

std::string device_str(DeviceKind kind, int id) {
  switch (kind) {
    case DeviceKind::kCPU: return "CPU";
    case DeviceKind::kCUDA: return "CUDA:" + std::to_string(id);
    default: return "an unsupported device";
  }
}

// Where every tensor of one call must live: the CPU, or the CUDA device of the first input.
struct Placement {
  Backend backend;
  DeviceKind kind;
  int device_id;
  const char* anchor;  // the input that fixed device_id ("qkv" or "q")
};

void require_defined(const TensorView& t, const char* name) {
  PGQA_CHECK_ARG(t.defined(), name, ": is required but was not given (None)");
}

void check_dtype(const TensorView& t, const char* name, DType expected, const char* why) {
  PGQA_CHECK_ARG(t.dtype == expected, name, ": dtype ", dtype_name(t.dtype), ", expected ",
                 dtype_name(expected), " (", why, ")");
}

// Rank, device, contiguity and data pointer of one defined tensor; `layout` names its dims.
void check_tensor(const Placement& pl, const TensorView& t, const char* name, int rank, const char* layout) {
  PGQA_CHECK_ARG(t.ndim == rank, name, ": rank ", t.ndim, " (shape ", shape_str(t), "), expected rank ",
                 rank, ": ", layout);
  if (pl.kind == DeviceKind::kCPU) {
    PGQA_CHECK_ARG(t.device == DeviceKind::kCPU, name, ": is on ", device_str(t.device, t.device_id),
                   ", but the CPU implementation runs this op: expected every tensor on CPU");
  } else {
    PGQA_CHECK_ARG(t.device == DeviceKind::kCUDA, name, ": is on ", device_str(t.device, t.device_id),
                   ", but the CUDA implementation runs this op: expected every tensor on one CUDA device");
    PGQA_CHECK_ARG(t.device_id == pl.device_id, name, ": is on ", device_str(t.device, t.device_id),
                   " but ", pl.anchor, " is on ", device_str(pl.kind, pl.device_id),
                   ": expected every tensor on one device");
  }
  for (int i = 0; i < t.ndim; ++i)
    PGQA_CHECK_ARG(t.shape[i] >= 0, name, ": shape ", shape_str(t), " has a negative dim");
  // An empty tensor addresses nothing, and frameworks give it arbitrary strides.
  PGQA_CHECK_ARG(t.numel() == 0 || t.is_contiguous(), name, ": shape ", shape_str(t), " with strides ", strides_str(t),
                 " is not contiguous: expected a contiguous row-major tensor (call .contiguous() first)");
  PGQA_CHECK_ARG(t.numel() == 0 || t.data != nullptr, name, ": shape ", shape_str(t),
                 " has no data (null pointer)");
}

// The element type of qkv / q, which the caches and outputs share.
DType check_element_dtype(Backend backend, const TensorView& t, const char* name) {
  const DType d = t.dtype;
  if (backend == Backend::kCUDA) {
    PGQA_CHECK_ARG(d != DType::kFloat32, name,
                   ": dtype float32 is not supported by the CUDA kernels: expected float16 or bfloat16 "
                   "(float32 runs on CPU only; cast the inputs and caches with .astype('bfloat16'))");
    PGQA_CHECK_ARG(d == DType::kFloat16 || d == DType::kBFloat16, name, ": dtype ", dtype_name(d),
                   ", expected float16 or bfloat16");
  } else {
    PGQA_CHECK_ARG(d == DType::kFloat16 || d == DType::kBFloat16 || d == DType::kFloat32, name, ": dtype ",
                   dtype_name(d), ", expected float16, bfloat16 or float32");
  }
  return d;
}

Placement place(Backend backend, const TensorView& first, const char* name) {
  const DeviceKind kind = backend == Backend::kCPU ? DeviceKind::kCPU : DeviceKind::kCUDA;
  const int id = backend == Backend::kCUDA && first.device == DeviceKind::kCUDA ? first.device_id : 0;
  return Placement{backend, kind, id, name};
}

// The first input (qkv or q): presence, element dtype, rank, device. Returns where the rest goes.
Placement check_first(Backend backend, const TensorView& t, const char* name, int rank, const char* layout,
                      ProblemShape& shape) {
  require_defined(t, name);
  shape.dtype = check_element_dtype(backend, t, name);
  Placement pl = place(backend, t, name);
  check_tensor(pl, t, name, rank, layout);
  shape.rows = t.shape[0];
  return pl;
}

bool supported_head_dims(int64_t d, int64_t dv) {
  for (const HeadDimPair& p : kSupportedHeadDims)
    if (p.qk == d && p.v == dv) return true;
  return false;
}

bool supported_block_size(int64_t bs) {
  for (int s : kSupportedBlockSizes)
    if (s == bs) return true;
  return false;
}

// Caches and the step's int32 arrays: Hkv, D, Dv, block_size, num_blocks, B, max_blocks_per_seq.
void check_step(const Placement& pl, const StepInputs& s, ProblemShape& shape) {
  const char* elem_why = "the caches hold the dtype of qkv / q";
  const TensorView& k = s.key_cache;
  const TensorView& v = s.value_cache;
  require_defined(k, "key_cache");
  require_defined(v, "value_cache");
  check_dtype(k, "key_cache", shape.dtype, elem_why);
  check_dtype(v, "value_cache", shape.dtype, elem_why);
  check_tensor(pl, k, "key_cache", 4, "[num_blocks, Hkv, block_size, D]");
  check_tensor(pl, v, "value_cache", 4, "[num_blocks, Hkv, block_size, Dv]");
  PGQA_CHECK_ARG(k.shape[0] == v.shape[0] && k.shape[1] == v.shape[1] && k.shape[2] == v.shape[2],
                 "value_cache: shape ", shape_str(v), " does not match key_cache shape ", shape_str(k),
                 " in [num_blocks, Hkv, block_size]: expected [", k.shape[0], ", ", k.shape[1], ", ",
                 k.shape[2], ", Dv]");
  PGQA_CHECK_ARG(k.shape[1] >= 1, "key_cache: shape ", shape_str(k), " has ", k.shape[1],
                 " kv heads: expected Hkv >= 1");
  PGQA_CHECK_ARG(supported_head_dims(k.shape[3], v.shape[3]), "key_cache / value_cache: head dims D = ",
                 k.shape[3], ", Dv = ", v.shape[3], " (shapes ", shape_str(k), ", ", shape_str(v),
                 ") have no kernel; supported D/Dv: ", kSupportedHeadDimsText);
  PGQA_CHECK_ARG(supported_block_size(k.shape[2]), "key_cache: shape ", shape_str(k), " has block_size ",
                 k.shape[2], ", which has no kernel; supported block sizes: ", kSupportedBlockSizesText);
  shape.num_blocks = k.shape[0];
  shape.num_kv_heads = int(k.shape[1]);
  shape.block_size = int(k.shape[2]);
  shape.head_dim = int(k.shape[3]);
  shape.v_head_dim = int(v.shape[3]);

  const char* int_why = "step metadata is int32";
  const TensorView& bt = s.block_tables;
  const TensorView& cu = s.cu_seqlens_q;
  const TensorView& cl = s.cache_seqlens;
  require_defined(bt, "block_tables");
  require_defined(cu, "cu_seqlens_q");
  require_defined(cl, "cache_seqlens");
  check_dtype(bt, "block_tables", DType::kInt32, int_why);
  check_dtype(cu, "cu_seqlens_q", DType::kInt32, int_why);
  check_dtype(cl, "cache_seqlens", DType::kInt32, int_why);
  check_tensor(pl, bt, "block_tables", 2, "[B, max_blocks_per_seq]");
  check_tensor(pl, cu, "cu_seqlens_q", 1, "[B+1]");
  check_tensor(pl, cl, "cache_seqlens", 1, "[B]");
  const int64_t batch = bt.shape[0];
  PGQA_CHECK_ARG(bt.shape[1] >= 1, "block_tables: shape ", shape_str(bt),
                 " has max_blocks_per_seq 0: expected at least one block per slot");
  PGQA_CHECK_ARG(cu.shape[0] == batch + 1, "cu_seqlens_q: shape ", shape_str(cu), ", expected [B+1] = [",
                 batch + 1, "] for B = ", batch, " slots (block_tables ", shape_str(bt), ")");
  PGQA_CHECK_ARG(cl.shape[0] == batch, "cache_seqlens: shape ", shape_str(cl), ", expected [B] = [", batch,
                 "] (block_tables ", shape_str(bt), ")");
  shape.batch = batch;
  shape.max_blocks_per_seq = bt.shape[1];
}

// qkv [rows, Hq*D + Hkv*D + Hkv*Dv]: derives Hq from the width.
void derive_heads_from_qkv(const TensorView& qkv, ProblemShape& shape) {
  const int64_t hkv = shape.num_kv_heads, d = shape.head_dim, dv = shape.v_head_dim;
  const int64_t kv_width = hkv * (d + dv);
  const int64_t width = qkv.shape[1];
  const int64_t q_width = width - kv_width;
  PGQA_CHECK_ARG(q_width > 0 && q_width % d == 0 && (q_width / d) % hkv == 0, "qkv: shape ", shape_str(qkv),
                 " has width ", width, ", which is not Hq*D + Hkv*D + Hkv*Dv with Hkv = ", hkv, ", D = ", d,
                 ", Dv = ", dv, " (from the caches) and Hq a positive multiple of Hkv: expected ", kv_width,
                 " + ", d, "*Hq, e.g. ", kv_width + d * hkv, " for Hq = ", hkv, " or ", kv_width + 2 * d * hkv,
                 " for Hq = ", 2 * hkv);
  shape.num_q_heads = int(q_width / d);
  shape.group = shape.num_q_heads / shape.num_kv_heads;
}

// q [rows, Hq, D].
void derive_heads_from_q(const TensorView& q, ProblemShape& shape) {
  PGQA_CHECK_ARG(q.shape[2] == shape.head_dim, "q: shape ", shape_str(q), " has head dim ", q.shape[2],
                 ", expected D = ", shape.head_dim, " (from key_cache)");
  PGQA_CHECK_ARG(q.shape[1] >= 1 && q.shape[1] % shape.num_kv_heads == 0, "q: shape ", shape_str(q), " has ",
                 q.shape[1], " query heads, expected a positive multiple of Hkv = ", shape.num_kv_heads,
                 " (from key_cache)");
  shape.num_q_heads = int(q.shape[1]);
  shape.group = shape.num_q_heads / shape.num_kv_heads;
}

// cos/sin [max_position, rotary_dim/2] and rotary_dim: resolves rotary_dim and max_position.
void check_rope(const Placement& pl, const RopeInputs& r, ProblemShape& shape) {
  const bool has_cos = r.cos.defined(), has_sin = r.sin.defined();
  PGQA_CHECK_ARG(has_cos == has_sin, has_cos ? "rotary_sin" : "rotary_cos", ": not given but ",
                 has_cos ? "rotary_cos" : "rotary_sin", " is: pass both RoPE tables or neither");
  PGQA_CHECK_ARG(r.rotary_dim >= 0, "rotary_dim = ", r.rotary_dim,
                 " is negative: expected 0 (= D when tables are given) or an even value in 2..D");
  if (!has_cos) {
    PGQA_CHECK_ARG(r.rotary_dim == 0, "rotary_dim = ", r.rotary_dim,
                   " but no RoPE tables were given: pass rotary_cos and rotary_sin, or rotary_dim = 0 for no "
                   "rotation");
    shape.rotary_dim = 0;
    shape.max_position = 0;
    return;
  }
  const int rot = r.rotary_dim == 0 ? shape.head_dim : r.rotary_dim;
  PGQA_CHECK_ARG(rot % 2 == 0, "rotary_dim = ", rot, " is odd: expected an even value (dims rotate in pairs)");
  PGQA_CHECK_ARG(rot <= shape.head_dim, "rotary_dim = ", rot, " exceeds the head dim D = ", shape.head_dim,
                 " (from key_cache): expected rotary_dim <= ", shape.head_dim);
  const char* why = "RoPE tables are float32";
  check_dtype(r.cos, "rotary_cos", DType::kFloat32, why);
  check_dtype(r.sin, "rotary_sin", DType::kFloat32, why);
  check_tensor(pl, r.cos, "rotary_cos", 2, "[max_position, rotary_dim/2]");
  check_tensor(pl, r.sin, "rotary_sin", 2, "[max_position, rotary_dim/2]");
  PGQA_CHECK_ARG(r.sin.shape[0] == r.cos.shape[0] && r.sin.shape[1] == r.cos.shape[1], "rotary_sin: shape ",
                 shape_str(r.sin), " differs from rotary_cos shape ", shape_str(r.cos),
                 ": expected both [max_position, rotary_dim/2]");
  PGQA_CHECK_ARG(r.cos.shape[1] == rot / 2, "rotary_cos: shape ", shape_str(r.cos), " has width ",
                 r.cos.shape[1], ", expected rotary_dim/2 = ", rot / 2, " (rotary_dim = ", rot,
                 r.rotary_dim == 0 ? ", from D since rotary_dim = 0" : "", ")");
  PGQA_CHECK_ARG(r.cos.shape[0] >= 1, "rotary_cos: shape ", shape_str(r.cos),
                 " has no rows: expected max_position >= 1");
  shape.rotary_dim = rot;
  shape.max_position = r.cos.shape[0];
}

// sinks, window, causal, softmax_scale; needs num_q_heads.
void check_mask(const Placement& pl, const MaskInputs& m, ProblemShape& shape) {
  PGQA_CHECK_ARG(m.sliding_window >= 0, "sliding_window = ", m.sliding_window,
                 " is negative: expected 0 (no window) or W > 0 (W keys including the query's own)");
  PGQA_CHECK_ARG(m.sliding_window == 0 || m.causal, "sliding_window = ", m.sliding_window,
                 " requires causal=True (got causal=False): the window is defined back from the query's position");
  PGQA_CHECK_ARG(std::isfinite(m.softmax_scale) && m.softmax_scale >= 0.f, "softmax_scale = ", m.softmax_scale,
                 ": expected a finite value >= 0 (0 means 1/sqrt(D))");
  if (m.sinks.defined()) {
    check_dtype(m.sinks, "sinks", DType::kFloat32, "sink logits are float32");
    check_tensor(pl, m.sinks, "sinks", 1, "[Hq]");
    PGQA_CHECK_ARG(m.sinks.shape[0] == shape.num_q_heads, "sinks: shape ", shape_str(m.sinks),
                   ", expected [Hq] = [", shape.num_q_heads, "]");
  }
  shape.has_sinks = m.sinks.defined();
  shape.sliding_window = m.sliding_window;
  shape.causal = m.causal;
  shape.softmax_scale = m.softmax_scale;
}

void resolve_scale(ProblemShape& shape) {
  if (shape.softmax_scale == 0.f) shape.softmax_scale = float(1.0 / std::sqrt(double(shape.head_dim)));
}

// An output the caller preallocated: dtype of the inputs, shape [d0, d1(, d2)].
void check_output(const Placement& pl, const TensorView& t, const char* name, const ProblemShape& shape,
                  int rank, const int64_t* dims, const char* layout) {
  if (!t.defined()) return;
  check_dtype(t, name, shape.dtype, "outputs have the dtype of the inputs");
  check_tensor(pl, t, name, rank, layout);
  bool same = true;
  for (int i = 0; i < rank; ++i) same = same && t.shape[i] == dims[i];
  std::string want = "[";
  for (int i = 0; i < rank; ++i) want += (i ? ", " : "") + std::to_string(dims[i]);
  PGQA_CHECK_ARG(same, name, ": shape ", shape_str(t), ", expected ", want, "] = ", layout);
}

void check_q_out(const Placement& pl, const TensorView& q_out, const ProblemShape& shape) {
  const int64_t dims[3] = {shape.rows, shape.num_q_heads, shape.head_dim};
  check_output(pl, q_out, "q_out", shape, 3, dims, "[rows, Hq, D]");
}

void check_out(const Placement& pl, const TensorView& out, const ProblemShape& shape) {
  const int64_t dims[2] = {shape.rows, shape.out_width()};
  check_output(pl, out, "out", shape, 2, dims, "[rows, Hq*Dv]");
}

constexpr const char* kQkvLayout = "[rows, Hq*D + Hkv*D + Hkv*Dv]";
constexpr const char* kQLayout = "[rows, Hq, D]";

// The first input and the step, in the order every op checks them: qkv (rank 2) first, since it
// fixes the dtype and device the caches must share, then the caches and step arrays (Hkv, D, Dv,
// block_size), then Hq from the qkv width, which needs Hkv, D and Dv.
Placement check_qkv_and_step(Backend backend, const TensorView& qkv, const StepInputs& step, ProblemShape& shape) {
  const Placement pl = check_first(backend, qkv, "qkv", 2, kQkvLayout, shape);
  check_step(pl, step, shape);
  derive_heads_from_qkv(qkv, shape);
  return pl;
}

// As check_qkv_and_step for q [rows, Hq, D] (rank 3).
Placement check_q_and_step(Backend backend, const TensorView& q, const StepInputs& step, ProblemShape& shape) {
  const Placement pl = check_first(backend, q, "q", 3, kQLayout, shape);
  check_step(pl, step, shape);
  derive_heads_from_q(q, shape);
  return pl;
}

// The CUDA attention kernels move 16-byte vectors of q, the caches and out (q's row and head
// strides, Hq*D and D elements, are multiples of 8 for every supported D): a view that starts off a
// 16-byte boundary is refused here, before any kernel writes anything.
void check_attention_alignment(const Placement& pl, const TensorView* q, const StepInputs& step,
                               const TensorView& out) {
  if (pl.backend != Backend::kCUDA) return;
  const std::pair<const TensorView*, const char*> tensors[] = {
      {q, "q"}, {&step.key_cache, "key_cache"}, {&step.value_cache, "value_cache"}, {&out, "out"}};
  for (const auto& [t, name] : tensors) {
    if (t == nullptr || !t->defined() || t->numel() == 0) continue;
    PGQA_CHECK_ARG((reinterpret_cast<uintptr_t>(t->data) & 15u) == 0, name, ": data pointer ", t->data,
                   " is not 16-byte aligned: the CUDA attention kernels load 16-byte vectors (pass a tensor "
                   "that starts on a 16-byte boundary, e.g. a fresh .contiguous() copy)");
  }
}

// A plan tensor (given or preallocated): int32 [kPlanWords] on the call's device.
void check_plan_tensor(const Placement& pl, const TensorView& t, const char* name) {
  check_dtype(t, name, DType::kInt32, "a plan is int32 words (plan.h); pass the tensor the plan op returned");
  const std::string layout = str("[", kPlanWords, "] int32 words made by the plan op");
  check_tensor(pl, t, name, 1, layout.c_str());
  PGQA_CHECK_ARG(t.shape[0] == kPlanWords, name, ": shape ", shape_str(t), ", expected [", kPlanWords,
                 "] (int32 words made by the plan op)");
}

}  // namespace

ProblemShape validate_rope_write_cache(Backend backend, const TensorView& qkv, const StepInputs& step,
                                       const RopeInputs& rope, const TensorView& q_out) {
  ProblemShape shape;
  const Placement pl = check_qkv_and_step(backend, qkv, step, shape);
  check_rope(pl, rope, shape);
  resolve_scale(shape);
  check_q_out(pl, q_out, shape);
  return shape;
}

ProblemShape validate_paged_attention(Backend backend, const TensorView& q, const StepInputs& step,
                                      const MaskInputs& mask, const TensorView& out) {
  ProblemShape shape;
  const Placement pl = check_q_and_step(backend, q, step, shape);
  check_mask(pl, mask, shape);
  resolve_scale(shape);
  check_out(pl, out, shape);
  check_attention_alignment(pl, &q, step, out);
  return shape;
}

ProblemShape validate_append_attention(Backend backend, const TensorView& qkv, const StepInputs& step,
                                       const RopeInputs& rope, const MaskInputs& mask,
                                       const TensorView& out) {
  ProblemShape shape;
  const Placement pl = check_qkv_and_step(backend, qkv, step, shape);
  check_rope(pl, rope, shape);
  check_mask(pl, mask, shape);
  resolve_scale(shape);
  check_out(pl, out, shape);
  check_attention_alignment(pl, nullptr, step, out);
  return shape;
}

ProblemShape validate_plan(Backend backend, const TensorView& q_or_qkv, const StepInputs& step,
                           const RopeInputs& rope, const MaskInputs& mask, const TensorView& plan_out) {
  require_defined(q_or_qkv, "q_or_qkv");
  PGQA_CHECK_ARG(q_or_qkv.ndim == 2 || q_or_qkv.ndim == 3, "q_or_qkv: rank ", q_or_qkv.ndim, " (shape ",
                 shape_str(q_or_qkv), "), expected the step's qkv ", kQkvLayout,
                 " (rank 2) or q ", kQLayout, " (rank 3)");
  PGQA_CHECK_ARG(!mask.sinks.defined(), "sinks: a plan does not take sinks (they do not change which data the "
                 "step reads): pass them to the op");
  const bool is_q = q_or_qkv.ndim == 3;
  ProblemShape shape;
  const Placement pl = is_q ? check_q_and_step(backend, q_or_qkv, step, shape)
                            : check_qkv_and_step(backend, q_or_qkv, step, shape);
  check_rope(pl, rope, shape);
  check_mask(pl, mask, shape);
  resolve_scale(shape);
  // The plan's words are int32 (plan.h).
  PGQA_CHECK_ARG(shape.rows <= INT32_MAX, is_q ? "q" : "qkv", ": shape ", shape_str(q_or_qkv), " has ",
                 shape.rows, " rows, more than a plan's int32 words hold (", INT32_MAX, ")");
  PGQA_CHECK_ARG(shape.batch <= INT32_MAX, "block_tables: shape ", shape_str(step.block_tables), " has ",
                 shape.batch, " slots, more than a plan's int32 words hold (", INT32_MAX, ")");
  if (plan_out.defined()) check_plan_tensor(pl, plan_out, "plan_out");
  return shape;
}

void validate_plan_input(Backend backend, const TensorView& plan, const TensorView& anchor,
                         const char* anchor_name) {
  if (!plan.defined()) return;
  check_plan_tensor(place(backend, anchor, anchor_name), plan, "plan");
}

}  // namespace paddle_gqa
