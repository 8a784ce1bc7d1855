// The read ceiling of a paged decode step: kernels that only stream a decode batch's K / V blocks
// into shared memory (no attention math), under different schedules, so that the time of our
// decode launch and of SDPA-cuDNN can be set against the fastest way to read the same bytes.
// A measurement tool for scripts/paged_read_ceiling.py (built there with nvcc -shared, called by
// ctypes), not part of the package.
//
// Layout read (DESIGN.md §2): K cache [num_blocks, Hkv, bs, D], V cache [num_blocks, Hkv, bs, Dv],
// block_tables [B, max_blocks] int32; slot b's kv head h reads blocks block_tables[b][0, nblk).
// One (block, head) slice of K is bs·D·2 contiguous bytes (16 KB at bs 64, D 128): each is fetched
// by one 1-D bulk copy (cp.async.bulk), K and V of one block into one pipeline stage.
//
// Work: a "pair" is (slot, kv head), pairs ordered kv head fastest (as the decode kernel's CTAs).
//   static  — one fixed piece per CTA: a split of a pair's blocks, CTAs in the decode kernel's order
//             (kv head fastest, then split, then slot); a one-wave grid on the bench's shapes.
//   dynamic — a persistent grid claims pieces of `chunk` blocks from a global counter, all pairs'
//             first pieces first; the pipeline runs on across pieces (no ramp per piece).
//   hybrid  — the static grid's CTAs stream all but the last `tail` blocks of their split, then
//             claim the tails' pieces of `chunk` blocks from a counter, from the back of the grid.
//
// Each CTA: warp 0 produces (lane 0 claims pieces and issues copies), warps 1..3 consume (read one
// 16-byte word per thread per stage, so that the stage is really waited on), then release the stage.
// Two knobs make the stream look like the decode kernel's, to price each of its habits:
//   copy  — 0: one 1-D bulk copy per K / V slice; 1: the decode kernel's TMA copies, 2-D boxes of 64
//           elements (128 B, swizzled) by 64 rows over the cache viewed as rows of D (hopper_kv_maps.h):
//           D / 64 + Dv / 64 boxes per block, one per lane.
//   spin  — clock cycles each consumer warp spins per tile after its data landed and before it
//           releases the stage (the tile's math; ~0.35 µs measured in session 7).
//   gap   — dynamic / hybrid pieces without the pipeline across pieces (gap >= 0): before a claimed
//           piece's first copy the producer waits until every issued tile was consumed, then spins
//           `gap` cycles (a work item's epilogue and start in a kernel that runs items one after
//           the other); gap < 0: the pipeline runs on across pieces.
#include <cstdint>
#include <exception>
#include <cuda.h>
#include <cuda_runtime.h>

#include "kernels/attention/hopper_kv_maps.h"  // encode_kv_map
#include "kernels/attention/hopper_tma.cuh"
#include "kernels/attention/mma.cuh"  // smem_u32
#include "kernels/attention/planner.cuh"  // launch_kernel

namespace {

constexpr int kThreads = 128;
constexpr int kConsumerWarps = kThreads / 32 - 1;
constexpr int kNoStop = 0x7fffffff;

using paddle_gqa::cuda::attn::smem_u32;
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // the device pass for sm_90a; the host pass sees the kernel empty
namespace sm90 = paddle_gqa::cuda::attn::sm90;  // the decode kernel's mbarrier and TMA helpers
// One 1-D bulk copy of `bytes` (a multiple of 16) from global memory, completing on `bar`.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
#endif

struct ReadParams {
  const uint8_t* k;
  const uint8_t* v;
  const int32_t* block_tables;
  int batch, hkv, nblk, max_blocks;
  int k_bytes, v_bytes;  // one (block, head) slice of K and of V
  int mode;              // 0 static, 1 dynamic, 2 hybrid
  int splits;            // static / hybrid: splits per pair
  int chunk;             // dynamic / hybrid: blocks per claimed piece (<= 32)
  int tail;              // hybrid: blocks per split left to the claimed pieces
  int copy;              // 0: 1-D bulk copies, 1: 2-D TMA boxes (needs d, dv multiples of 64, bs 64)
  int spin;              // clock cycles of "math" per tile and consumer warp
  int gap;               // < 0: pieces pipelined; else drain + this many cycles between pieces
  int d, dv, bs;         // head dims (elements) and block size
  int* counter;          // dynamic / hybrid: [claims, CTAs done], zero between launches (the launch's
                         // last CTA zeroes them again, so that no memset sits in a timed call)
  unsigned long long* sink;
};

// A piece: blocks [blk0, blk0 + n) of pair `pair`.
struct Piece {
  int pair, blk0, n;
};

__device__ __forceinline__ void split_range(const ReadParams& p, int split, int& b0, int& b1) {
  b0 = int(int64_t(split) * p.nblk / p.splits);
  b1 = int(int64_t(split + 1) * p.nblk / p.splits);
}

// The hybrid's claimable pieces: split s (of the grid's splits · pairs) contributes the last `tail`
// blocks of its range in pieces of `chunk`; piece q is taken from the back of the grid's order, so
// that the CTAs that finish first take the pieces of the CTAs that went out last.
__device__ __forceinline__ int hybrid_tail_blocks(const ReadParams& p, int b0, int b1) {
  return min(p.tail, b1 - b0);
}

template <int S>
__global__ void __launch_bounds__(kThreads)
    paged_read_kernel(const ReadParams p, const __grid_constant__ CUtensorMap kmap, const __grid_constant__ CUtensorMap vmap) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // 1024-byte aligned stages (the 128-byte swizzle's period); the launch adds 1 KB of slack.
  uint8_t* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  __shared__ __align__(8) uint64_t full[S], empty[S];
  __shared__ int stop_at;
  const int stage_bytes = p.k_bytes + p.v_bytes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      sm90::mbarrier_init(smem_u32(&full[s]), 1);
      sm90::mbarrier_init(smem_u32(&empty[s]), kConsumerWarps);
    }
    stop_at = kNoStop;
    sm90::fence_barrier_init();
  }
  __syncthreads();
  const int pairs = p.batch * p.hkv;

  if (warp == 0) {
    int seq = 0;  // tiles issued so far
    auto issue_piece = [&](const Piece& pc) {
      const int b = pc.pair / p.hkv, h = pc.pair % p.hkv;
      const int32_t* row = p.block_tables + int64_t(b) * p.max_blocks;
      for (int j0 = 0; j0 < pc.n; j0 += 32) {
        const int id_l = j0 + lane < pc.n ? row[pc.blk0 + j0 + lane] : 0;
        for (int j = j0; j < min(pc.n, j0 + 32); ++j) {
          const int id = __shfl_sync(0xffffffffu, id_l, j - j0);
          const int st = seq % S;
          if (seq >= S) sm90::mbarrier_wait_parity(smem_u32(&empty[st]), ((seq / S) - 1) & 1);
          const int64_t slice = int64_t(id) * p.hkv + h;
          const uint32_t bar = smem_u32(&full[st]);
          const uint32_t dst = smem_u32(smem + st * stage_bytes);
          if (p.copy == 0) {
            if (lane == 0) {
              sm90::mbarrier_arrive_expect_tx(bar, stage_bytes);
              bulk_copy(dst, p.k + slice * p.k_bytes, p.k_bytes, bar);
              bulk_copy(dst + p.k_bytes, p.v + slice * p.v_bytes, p.v_bytes, bar);
            }
          } else {
            // Panels of 64 columns by bs rows: K's d / 64, then V's dv / 64, one per lane.
            if (lane == 0) sm90::mbarrier_arrive_expect_tx(bar, stage_bytes);
            __syncwarp();
            const int kp = p.d / 64, np = kp + p.dv / 64;
            if (lane < np) {
              const bool is_v = lane >= kp;
              const int pn = is_v ? lane - kp : lane;
              const int row = int(slice * p.bs);
              sm90::tma_load_2d(dst + (is_v ? p.k_bytes : 0) + pn * p.bs * 128, is_v ? static_cast<const void*>(&vmap) : &kmap,
                          pn * 64, row, bar);
            }
          }
          ++seq;
        }
      }
    };
    // A claimed piece without the pipeline across pieces: every issued tile consumed, then `gap`.
    auto drain = [&]() {
      if (p.gap < 0) return;
      for (int t = max(0, seq - S); t < seq; ++t) sm90::mbarrier_wait_parity(smem_u32(&empty[t % S]), (t / S) & 1);
      const long long t0 = clock64();
      while (clock64() - t0 < p.gap) {
      }
    };
    auto claim = [&]() {
      int q = 0;
      if (lane == 0) q = atomicAdd(p.counter, 1);
      return __shfl_sync(0xffffffffu, q, 0);
    };
    if (p.mode == 0 || p.mode == 2) {
      // The decode kernel's CTA order: kv head fastest, then split, then slot.
      const int lin = blockIdx.x;
      const int h = lin % p.hkv, rest = lin / p.hkv;
      const int split = rest % p.splits, b = rest / p.splits;
      int b0, b1;
      split_range(p, split, b0, b1);
      const int tail = p.mode == 2 ? hybrid_tail_blocks(p, b0, b1) : 0;
      issue_piece(Piece{b * p.hkv + h, b0, b1 - b0 - tail});
      if (p.mode == 2) {
        const int pieces_per_split = (p.tail + p.chunk - 1) / p.chunk;
        const int total = int(gridDim.x) * pieces_per_split;
        for (int q = claim(); q < total; q = claim()) {
          // From the back of the grid: CTA (gridDim.x - 1 - q % grid)'s piece q / grid.
          const int owner = int(gridDim.x) - 1 - q % int(gridDim.x);
          const int piece = q / int(gridDim.x);
          const int oh = owner % p.hkv, orest = owner / p.hkv;
          const int osplit = orest % p.splits, ob = orest / p.splits;
          int o0, o1;
          split_range(p, osplit, o0, o1);
          const int ot = hybrid_tail_blocks(p, o0, o1);
          const int first = o1 - ot + piece * p.chunk;
          if (first >= o1) continue;
          drain();
          issue_piece(Piece{ob * p.hkv + oh, first, min(p.chunk, o1 - first)});
        }
      }
    } else {
      const int per_pair = (p.nblk + p.chunk - 1) / p.chunk;
      const int total = pairs * per_pair;
      for (int q = claim(); q < total; q = claim()) {
        const int pair = q % pairs, c = q / pairs;  // every pair's first pieces first
        const int first = c * p.chunk;
        if (seq > 0) drain();
        issue_piece(Piece{pair, first, min(p.chunk, p.nblk - first)});
      }
    }
    if (p.mode != 0 && lane == 0 && atomicAdd(p.counter + 1, 1) == int(gridDim.x) - 1) {
      p.counter[0] = 0;  // every CTA has made its last claim
      p.counter[1] = 0;
    }
    // The stop mark: a plain arrive on the next stage's full barrier once it is free.
    const int st = seq % S;
    if (seq >= S) sm90::mbarrier_wait_parity(smem_u32(&empty[st]), ((seq / S) - 1) & 1);
    if (lane == 0) {
      stop_at = seq;
      sm90::mbarrier_arrive(smem_u32(&full[st]));
    }
  } else {
    uint32_t acc = 0;
    const int t = threadIdx.x - 32;
    for (int i = 0;; ++i) {
      const int st = i % S;
      sm90::mbarrier_wait_parity(smem_u32(&full[st]), (i / S) & 1);
      if (i == *static_cast<volatile int*>(&stop_at)) break;
      const uint4 w = reinterpret_cast<const uint4*>(smem + st * stage_bytes)[t];
      acc ^= w.x ^ w.y ^ w.z ^ w.w;
      if (p.spin > 0) {
        const long long t0 = clock64();
        while (clock64() - t0 < p.spin) acc += 1;
        acc -= uint32_t(p.spin);  // (an approximate undo; only the dependence matters)
      }
      __syncwarp();
      if (lane == 0) sm90::mbarrier_arrive(smem_u32(&empty[st]));
    }
    if (acc == 0x9e3779b9u) p.sink[blockIdx.x] = acc;  // keeps the reads; (almost) never true
  }
#endif
}

// A stand-in for the step check (`pre` launches): one 1024-thread CTA that lets the next launch
// start at once (programmatic dependent launch) and then reads the block table, one warp per slot.
__global__ void __launch_bounds__(1024) pre_kernel(const ReadParams p) {
  asm volatile("griddepcontrol.launch_dependents;" :::);
  const int b = threadIdx.x / 32, lane = threadIdx.x % 32;
  int bad = 0;
  if (b < p.batch)
    for (int j = lane; j < p.nblk; j += 32) bad |= p.block_tables[int64_t(b) * p.max_blocks + j] < 0;
  if (__any_sync(0xffffffffu, bad) && lane == 0) p.sink[0] = 1;
}

template <int S>
int launch(const ReadParams& p, int64_t num_blocks, int grid, bool pre, cudaStream_t stream) {
  CUtensorMap kmap{}, vmap{};
  if (p.copy == 1) {  // the decode kernel's maps (hopper_kv_maps.h)
    const int64_t rows = num_blocks * p.hkv * p.bs;
    try {
      paddle_gqa::cuda::attn::detail::encode_kv_map<__nv_bfloat16>(&kmap, p.k, rows, p.d, p.bs, "key_cache");
      paddle_gqa::cuda::attn::detail::encode_kv_map<__nv_bfloat16>(&vmap, p.v, rows, p.dv, p.bs, "value_cache");
    } catch (const std::exception&) {
      return int(cudaErrorInvalidValue);
    }
  }
  const int smem = S * (p.k_bytes + p.v_bytes) + 1024;
  cudaError_t e = cudaFuncSetAttribute(paged_read_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return int(e);
  if (!pre) {
    paged_read_kernel<S><<<grid, kThreads, smem, stream>>>(p, kmap, vmap);
    return int(cudaGetLastError());
  }
  pre_kernel<<<1, 1024, 0, stream>>>(p);
  try {
    paddle_gqa::cuda::attn::launch_kernel("paged_read_kernel", paged_read_kernel<S>, dim3(grid), dim3(kThreads), smem,
                                          stream, /*pdl=*/true, p, kmap, vmap);
  } catch (const std::exception&) {
    return int(cudaErrorLaunchFailure);
  }
  return 0;
}

}  // namespace

// The grid: static / hybrid: pairs · splits CTAs; dynamic: `grid` CTAs. Returns a cudaError_t.
extern "C" int paged_read(const void* k, const void* v, const int32_t* block_tables, int batch, int hkv, int nblk,
                          int max_blocks, int num_blocks, int d, int dv, int bs, int mode, int splits, int chunk,
                          int tail, int grid, int stages, int copy, int spin, int gap, int pre, int* counter,
                          unsigned long long* sink, void* stream) {
  const int k_bytes = bs * d * 2, v_bytes = bs * dv * 2;
  ReadParams p{static_cast<const uint8_t*>(k), static_cast<const uint8_t*>(v), block_tables, batch, hkv, nblk,
               max_blocks, k_bytes, v_bytes, mode, splits, chunk, tail, copy, spin, gap, d, dv, bs, counter, sink};
  if (mode != 1) grid = batch * hkv * splits;
  if (chunk < 1 || chunk > 32 || (k_bytes % 16) || (v_bytes % 16)) return int(cudaErrorInvalidValue);
  if (copy == 1 && (d % 64 || dv % 64 || bs != 64 || d / 64 + dv / 64 > 32)) return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  switch (stages) {
    case 2: return launch<2>(p, num_blocks, grid, pre != 0, s);
    case 3: return launch<3>(p, num_blocks, grid, pre != 0, s);
    case 4: return launch<4>(p, num_blocks, grid, pre != 0, s);
    case 6: return launch<6>(p, num_blocks, grid, pre != 0, s);
    default: return int(cudaErrorInvalidValue);
  }
}
