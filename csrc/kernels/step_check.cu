// The step-check kernel: one warp per slot runs the rules of step_rules.h and the last CTA publishes
// the error of the lowest failing slot and (when asked) writes the tile maps.
#include "step_check.cuh"

#include "attention/planner.cuh"
#include "cuda_check.h"

namespace paddle_gqa::cuda {
namespace {

// One warp per slot, 32 per CTA: a batch of up to 32 slots (most decode steps) is checked by one
// CTA, which publishes without the global atomics of the last-CTA hand-off (H100, B = 32: a 4-CTA
// check took 4.6 us, a 1-CTA check of B = 1 2.9 us).
constexpr int kWarpsPerCta = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// A warp's quick test that slot b passes check_slot. It evaluates the same conditions as
// check_slot, with the block-id scan spread over the 32 lanes, so it is true exactly when
// check_slot(s, b) returns no error; the exact record is then computed by check_slot itself. All
// lanes read the same scalars, so every branch before the ballot is warp-uniform.
__device__ bool slot_passes(const StepData& s, int64_t b, int lane) {
  // The slot's three scalars are loaded before any test: one round trip to memory rather than two
  // (after an L2 flush each miss waits behind the flush's write-backs; H100: the check of decode_swa
  // took 12.5 instead of 12.8 us).
  const int32_t* cu = s.cu_seqlens_q;
  const int32_t begin = cu[b], end = cu[b + 1];
  const int64_t cache_len = s.cache_seqlens[b];
  if (b == 0 && begin != 0) return false;
  if (end < begin) return false;
  if (b == s.batch - 1 && end > s.rows) return false;
  if (cache_len < 0) return false;
  const int64_t n = int64_t(end) - begin;
  if (n == 0) return true;
  const int64_t kv_len = cache_len + n;
  if (s.max_position > 0 && kv_len - 1 >= s.max_position) return false;
  if (kv_len > s.max_blocks_per_seq * s.block_size) return false;
  int64_t first_pos = cache_len;
  if (s.checks_reads) {
    const KeyRange r = slot_visible_keys(cache_len, kv_len, s.causal, s.sliding_window);
    if (r.lo < first_pos) first_pos = r.lo;
  }
  const int32_t* row = s.block_tables + b * s.max_blocks_per_seq;
  bool bad = false;
  for (int64_t lb = first_pos / s.block_size + lane; lb <= (kv_len - 1) / s.block_size; lb += 32) {
    const int32_t id = row[lb];
    bad |= id < 0 || id >= s.num_blocks;
  }
  return !__any_sync(kFullMask, bad);
}

__global__ void __launch_bounds__(kWarpsPerCta * 32)
step_check_kernel(StepData s, StepErrorState* state, bool keep_sticky, attn::TileMapJob maps, bool write_maps) {
  attn::pdl_launch_dependents();
  __shared__ int32_t cta_first_bad;  // the CTA's lowest failing slot
  __shared__ bool is_last;
  if (threadIdx.x == 0) cta_first_bad = kNoBadSlot;
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t b = int64_t(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (b < s.batch && !slot_passes(s, b, lane) && lane == 0) {
    if (check_slot(s, b).code != 0) atomicMin(&cta_first_bad, int32_t(b));
  }
  __syncthreads();

  // Publication by the CTA that finishes last, which sees every other CTA's atomicMin. A grid of
  // one CTA (B <= kWarpsPerCta) is its own last CTA and needs no global atomics.
  int32_t first = kNoBadSlot;
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) {
      is_last = true;
      first = cta_first_bad;
    } else {
      if (cta_first_bad != kNoBadSlot) atomicMin(&state->first_bad_slot, cta_first_bad);
      __threadfence();
      is_last = atomicAdd(&state->ctas_done, 1u) == gridDim.x - 1;
      if (is_last) {
        __threadfence();
        first = atomicAdd(&state->first_bad_slot, 0);
        state->first_bad_slot = kNoBadSlot;
        state->ctas_done = 0;
      }
    }
  }
  __syncthreads();
  if (!is_last) return;
  if (threadIdx.x == 0) {
    const StepError e = first == kNoBadSlot ? check_empty_step(s) : check_slot(s, first);
    state->current = e;
    if (keep_sticky && e.code != 0 && state->sticky.code == 0) state->sticky = e;
  }
  // The maps are scratch that no kernel reads once the check failed (they all return on the error
  // record first), so they are written either way, by the whole CTA while thread 0 publishes.
  if (write_maps) attn::build_tile_maps<kWarpsPerCta * 32>(maps, s.cu_seqlens_q, int(s.batch));
}

}  // namespace

void launch_step_check(const StepData& data, StepErrorState* state, bool keep_sticky, cudaStream_t stream,
                       const attn::TileMapJob* maps) {
  // At least one CTA, so a step with B = 0 still publishes a cleared record.
  const int64_t ctas = data.batch > 0 ? (data.batch + kWarpsPerCta - 1) / kWarpsPerCta : 1;
  PGQA_CHECK_ARG(ctas <= 0x7fffffff, "batch ", data.batch, " is too large for the step check");
  step_check_kernel<<<unsigned(ctas), kWarpsPerCta * 32, 0, stream>>>(data, state, keep_sticky,
                                                                      maps != nullptr ? *maps : attn::TileMapJob{},
                                                                      maps != nullptr);
  PGQA_CUDA_CHECK_LAUNCH("step_check_kernel");
}

}  // namespace paddle_gqa::cuda
