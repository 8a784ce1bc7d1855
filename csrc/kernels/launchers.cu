// The CUDA launchers of launchers.h: step check -> RoPE/cache write -> attention, on the caller's
// stream, with the device-side error record read back once per call outside graph capture, or
// once per step by plan_step when the ops are given its plan (plan.h). Before attention the step
// check also writes the tile maps (no planner launch); on sm_90 the attention kernels are
// programmatic dependent launches, and a batch that may mix prefill and decode slots runs its two
// attention launches side by side on the device's side stream (workspace.h).
#include "paddle_gqa/launchers.h"

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "attention/attention.h"
#include "cuda_check.h"
#include "paddle_gqa/errors.h"
#include "paddle_gqa/plan.h"
#include "paddle_gqa/step_data.h"
#include "rope_write_cache.cuh"
#include "step_check.cuh"
#include "workspace.h"

namespace paddle_gqa::cuda {
namespace {

RopeWriteParams make_rope_params(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                                 const RopeInputs& rope, void* q_out, const StepError* error) {
  const int64_t hq = shape.num_q_heads, hkv = shape.num_kv_heads, d = shape.head_dim, dv = shape.v_head_dim;
  const int64_t bs = shape.block_size;
  RopeWriteParams p{};
  p.qkv = qkv.data;
  p.qkv_row_stride = shape.qkv_width();
  p.key_cache = step.key_cache.data;
  p.k_head_stride = bs * d;
  p.k_block_stride = hkv * bs * d;
  p.k_slot_stride = d;
  p.value_cache = step.value_cache.data;
  p.v_head_stride = bs * dv;
  p.v_block_stride = hkv * bs * dv;
  p.v_slot_stride = dv;
  p.q_out = q_out;
  p.q_head_stride = d;
  p.q_row_stride = hq * d;
  p.block_tables = step.block_tables.ptr<const int32_t>();
  p.cu_seqlens_q = step.cu_seqlens_q.ptr<const int32_t>();
  p.cache_seqlens = step.cache_seqlens.ptr<const int32_t>();
  if (shape.rotary_dim > 0) {
    p.cos = rope.cos.ptr<const float>();
    p.sin = rope.sin.ptr<const float>();
    p.cos_row_stride = shape.rotary_dim / 2;
    p.sin_row_stride = shape.rotary_dim / 2;
  }
  p.error = error;
  p.dtype = shape.dtype;
  p.rows = shape.rows;
  p.batch = shape.batch;
  p.num_blocks = shape.num_blocks;
  p.max_blocks_per_seq = shape.max_blocks_per_seq;
  p.max_position = shape.max_position;
  p.num_q_heads = shape.num_q_heads;
  p.num_kv_heads = shape.num_kv_heads;
  p.head_dim = shape.head_dim;
  p.v_head_dim = shape.v_head_dim;
  p.block_size = shape.block_size;
  p.rotary_dim = shape.rotary_dim;
  p.neox_style = rope.neox_style;
  return p;
}

AttentionInputs make_attention_inputs(const ProblemShape& shape, const void* q, int64_t q_row_stride,
                                      int64_t q_head_stride, const StepInputs& step, const MaskInputs& mask,
                                      const TensorView& out, const StepError* error) {
  AttentionInputs in{};
  in.q = q;
  in.q_row_stride = q_row_stride;
  in.q_head_stride = q_head_stride;
  in.k_cache = step.key_cache.data;
  in.v_cache = step.value_cache.data;
  in.block_tables = step.block_tables.ptr<const int32_t>();
  in.cu_seqlens_q = step.cu_seqlens_q.ptr<const int32_t>();
  in.cache_seqlens = step.cache_seqlens.ptr<const int32_t>();
  in.sinks = shape.has_sinks ? mask.sinks.ptr<const float>() : nullptr;
  in.out = out.data;
  in.error = error;
  return in;
}

void require_output(const TensorView& t, const char* name) {
  PGQA_CHECK_ARG(t.defined(), name, ": the CUDA launcher writes into a preallocated ", name,
                 ", but none was given");
}

// Ends an op or plan call. Outside capture: one small read-back of the record; a pending error from
// an earlier captured or plan-given call is raised (and cleared) first, then this call's own. Under
// capture the record stays on the device for check_errors() or the next uncaptured call.
void finish_call(StepErrorState* state, bool capturing, cudaStream_t stream) {
  if (capturing) return;
  StepError host[2];  // current, sticky: adjacent in StepErrorState
  static_assert(offsetof(StepErrorState, sticky) == offsetof(StepErrorState, current) + sizeof(StepError),
                "current and sticky must be adjacent so one copy reads both");
  PGQA_CUDA_CHECK(cudaMemcpyAsync(host, &state->current, sizeof(host), cudaMemcpyDeviceToHost, stream));
  PGQA_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (host[1].code != 0) {
    PGQA_CUDA_CHECK(cudaMemsetAsync(&state->sticky, 0, sizeof(StepError), stream));
    PGQA_CUDA_CHECK(cudaStreamSynchronize(stream));
    throw InvalidArgument(str("invalid step data in an earlier call captured in a CUDA graph or given a plan "
                              "(nothing was written by it): ", describe(host[1])));
  }
  if (host[0].code != 0) throw InvalidArgument(describe(host[0]));
}

struct CallContext {
  cudaStream_t stream;
  int device;
  bool capturing;
  bool defer;  // errors go to the sticky record, nothing is read back: capture or a plan was given
  StepErrorState* state;
};

CallContext begin_call(const TensorView& first, void* stream_ptr, bool defer_errors) {
  CallContext c;
  c.stream = static_cast<cudaStream_t>(stream_ptr);
  c.device = first.device_id;
  c.capturing = is_capturing(c.stream);
  c.defer = c.capturing || defer_errors;
  c.state = step_error_state(c.device, c.capturing);
  return c;
}

void end_call(const CallContext& c) {
  if (!c.defer) finish_call(c.state, c.capturing, c.stream);
}

// Launch knobs for measurements, read per call: PADDLE_GQA_PDL=0 turns programmatic dependent
// launches off, PADDLE_GQA_CONCURRENT=0 keeps a mixed batch's two attention launches on one stream,
// PADDLE_GQA_SIDE_PRIORITY=0 runs the side launch at the default stream priority instead of the
// highest, PADDLE_GQA_EARLY_DECODE=0 keeps paged_attention's decode tiles waiting for the step check
// before they read K / V, PADDLE_GQA_BESIDE_PREFILL_CTAS=N runs N persistent decode CTAs beside a
// mixed batch's prefill launch (0: a plain decode grid beside it). Outside CUDA graphs (which ignore
// stream priorities) the highest priority places the side launch's CTAs before the call stream's.
bool knob_on(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// The attention's launch options of a call whose step check wrote the tile maps; `inputs_final`:
// no kernel between that check and the attention writes q or the caches (PADDLE_GQA_EARLY_DECODE=0
// turns the early decode launch off).
AttentionLaunchOptions attention_options(const CallContext& c, bool inputs_final) {
  AttentionLaunchOptions o;
  o.tile_maps_written = true;
  o.pdl = compute_major(c.device) >= 9 && knob_on("PADDLE_GQA_PDL");
  o.early_decode = inputs_final && knob_on("PADDLE_GQA_EARLY_DECODE");
  if (const char* v = std::getenv("PADDLE_GQA_BESIDE_PREFILL_CTAS")) o.beside_prefill_ctas = std::atoi(v);
  if (knob_on("PADDLE_GQA_CONCURRENT")) {
    const SideStream side = side_stream(c.device);
    o.side = knob_on("PADDLE_GQA_SIDE_PRIORITY") ? side.high : side.normal;
    o.fork = side.fork;
    o.join = side.join;
  }
  return o;
}

// One thread writes the plan's words, the error word from the check that ran just before it on
// the same stream (so a captured plan records what each replay found).
__global__ void write_plan_kernel(PlanWords words, int32_t* plan, const StepError* error) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  for (int i = 0; i < kPlanWords; ++i) plan[i] = words.w[i];
  plan[kPlanErrorCode] = error->code;
}

}  // namespace

void rope_write_cache(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const TensorView& q_out, void* stream, bool defer_errors) {
  require_output(q_out, "q_out");
  DeviceGuard guard(qkv.device_id);
  const CallContext c = begin_call(qkv, stream, defer_errors);
  launch_step_check(make_step_data(shape, step, /*checks_reads=*/false, /*checks_positions=*/true), c.state, c.defer,
                    c.stream);
  launch_rope_write_cache(make_rope_params(shape, qkv, step, rope, q_out.data, &c.state->current), c.stream);
  end_call(c);
}

void paged_attention(const ProblemShape& shape, const TensorView& q, const StepInputs& step,
                     const MaskInputs& mask, const TensorView& out, void* stream, bool defer_errors) {
  require_output(out, "out");
  require_attention_kernel(shape, q.device_id);
  DeviceGuard guard(q.device_id);
  const CallContext c = begin_call(q, stream, defer_errors);
  const int sms = num_sms(c.device);
  const size_t attn_bytes = attention_workspace_bytes(shape, sms);
  void* ws = workspace(c.device, attn_bytes, c.capturing);
  const attn::TileMapJob maps = attention_tile_maps(shape, ws, sms);
  launch_step_check(make_step_data(shape, step, /*checks_reads=*/true, /*checks_positions=*/false), c.state, c.defer,
                    c.stream, shape.rows > 0 ? &maps : nullptr);
  const int64_t d = shape.head_dim;
  const AttentionInputs in = make_attention_inputs(shape, q.data, int64_t(shape.num_q_heads) * d, d, step, mask,
                                                   out, &c.state->current);
  if (shape.rows > 0) run_attention(shape, in, ws, attn_bytes, sms, c.stream, attention_options(c, true));
  end_call(c);
}

void append_attention(const ProblemShape& shape, const TensorView& qkv, const StepInputs& step,
                      const RopeInputs& rope, const MaskInputs& mask, const TensorView& out, void* stream,
                      bool defer_errors) {
  require_output(out, "out");
  require_attention_kernel(shape, qkv.device_id);
  DeviceGuard guard(qkv.device_id);
  const CallContext c = begin_call(qkv, stream, defer_errors);
  const int sms = num_sms(c.device);
  // Workspace: the rotated queries [rows, Hq, D], then the attention kernel's scratch.
  const int64_t q_row = int64_t(shape.num_q_heads) * shape.head_dim;
  const size_t q_bytes = align_up(size_t(shape.rows) * size_t(q_row) * size_t(dtype_bytes(shape.dtype)));
  const size_t attn_bytes = attention_workspace_bytes(shape, sms);
  char* ws = static_cast<char*>(workspace(c.device, q_bytes + attn_bytes, c.capturing));
  const attn::TileMapJob maps = attention_tile_maps(shape, ws + q_bytes, sms);
  launch_step_check(make_step_data(shape, step, /*checks_reads=*/true, /*checks_positions=*/true), c.state, c.defer,
                    c.stream, shape.rows > 0 ? &maps : nullptr);
  launch_rope_write_cache(make_rope_params(shape, qkv, step, rope, ws, &c.state->current), c.stream);
  const AttentionInputs in = make_attention_inputs(shape, ws, q_row, shape.head_dim, step, mask, out,
                                                   &c.state->current);
  if (shape.rows > 0) {
    // The RoPE/cache write between the check and the attention writes the step's keys and q.
    run_attention(shape, in, ws + q_bytes, attn_bytes, sms, c.stream, attention_options(c, false));
  }
  end_call(c);
}

void plan_step(const ProblemShape& shape, const StepInputs& step, const TensorView& plan_out, void* stream) {
  require_output(plan_out, "plan_out");
  DeviceGuard guard(plan_out.device_id);
  const CallContext c = begin_call(plan_out, stream, /*defer_errors=*/false);
  // Reads and positions: the widest check any op of the step runs (rope_write_cache checks less).
  launch_step_check(make_step_data(shape, step, /*checks_reads=*/true, /*checks_positions=*/true), c.state, c.defer,
                    c.stream);
  write_plan_kernel<<<1, 32, 0, c.stream>>>(make_plan_words(shape), plan_out.ptr<int32_t>(), &c.state->current);
  PGQA_CUDA_CHECK_LAUNCH("write_plan_kernel");
  end_call(c);
}

void check_errors(int device_id) {
  StepErrorState* state = existing_step_error_state(device_id);
  if (state == nullptr) return;  // no call has run on this device
  DeviceGuard guard(device_id);
  StepError sticky;
  // A synchronous point by design: wait for every captured replay that may set the record.
  PGQA_CUDA_CHECK(cudaDeviceSynchronize());
  PGQA_CUDA_CHECK(cudaMemcpy(&sticky, &state->sticky, sizeof(StepError), cudaMemcpyDeviceToHost));
  if (sticky.code == 0) return;
  PGQA_CUDA_CHECK(cudaMemset(&state->sticky, 0, sizeof(StepError)));
  throw InvalidArgument(str("invalid step data in a call captured in a CUDA graph or given a plan (nothing was "
                            "written by it): ", describe(sticky)));
}

}  // namespace paddle_gqa::cuda
