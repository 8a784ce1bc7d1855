// Standalone check and timing of the Hopper prefill kernel (csrc/kernels/attention/
// hopper_prefill_kernel.cuh) without the planner or the bindings: random paged inputs (shuffled
// block ids), the tile map built on the host, outputs poisoned with NaN, a float64 reference of
// DESIGN.md §2 (the mask rule of mask.h, sinks, splits merged on the host), cudaEvent medians.
// Build and run: bash scripts/hopper_prefill_check.sh (sm_90a); `--no-timed` skips the large cases.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "attention/hopper_prefill_kernel.cuh"

#include "device_test_util.h"

using namespace paddle_gqa;
using namespace paddle_gqa::cuda::attn;


static std::string g_only;  // --only=NAME: run just the cases whose name starts with NAME

template <typename T> float to_f(T x);
template <> float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> float to_f(half x) { return __half2float(x); }
template <typename T> T from_f(float x);
template <> __nv_bfloat16 from_f(float x) { return __float2bfloat16(x); }
template <> half from_f(float x) { return __float2half(x); }

struct Case {
  std::string name;
  int hq, hkv, d, dv;
  std::vector<std::pair<int, int>> slots;  // (cache_len, n_new)
  int window = 0;
  bool sinks = false;
  int max_splits = 1;
  bool fp16 = false;
  bool timed = false;      // time it and report TFLOP/s
  int check_rows = 0;      // 0: every row; else this many random rows per slot
  int bs = 64;             // block_size
};

template <typename T, int D, int DV, int GROUP, class Tile>  // GROUP 0: the runtime-group kernel
static bool run_tile(const Case& c, uint32_t seed) {
  const int G = c.hq / c.hkv;
  if (GROUP != 0 && GROUP != G) { std::printf("%s: group %d != template %d\n", c.name.c_str(), G, GROUP); return false; }
  if (!g_only.empty() && c.name.rfind(g_only, 0) != 0) return true;
  const int bs = c.bs;
  int bs_log2 = 0;
  while ((1 << bs_log2) < bs) ++bs_log2;
  const int B = int(c.slots.size());
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<int> cu{0}, cache_lens;
  int max_blocks = 0, used_blocks = 0;
  for (auto [cl, n] : c.slots) {
    cu.push_back(cu.back() + n);
    cache_lens.push_back(cl);
    const int nb = (cl + n + bs - 1) / bs;
    max_blocks = std::max(max_blocks, nb);
    used_blocks += nb;
  }
  const int rows = cu.back();
  const int num_blocks = used_blocks + 8;
  std::vector<int> perm(num_blocks);
  for (int i = 0; i < num_blocks; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int> bt(size_t(B) * max_blocks, -1);
  std::vector<char> owned(size_t(num_blocks) * bs, 0);  // cache rows that hold a key of the step
  for (int b = 0, k = 0; b < B; ++b) {
    const int kv_len = c.slots[b].first + c.slots[b].second;
    for (int j = 0; j < (kv_len + bs - 1) / bs; ++j) bt[size_t(b) * max_blocks + j] = perm[k++];
    for (int j = 0; j < kv_len; ++j) owned[size_t(bt[size_t(b) * max_blocks + j / bs]) * bs + j % bs] = 1;
  }
  // Blocks wholly before a slot's first visible key are never read: -1, as an engine that frees
  // them would leave it.
  for (int b = 0; b < B; ++b) {
    const int cl = c.slots[b].first, n = c.slots[b].second;
    if (n == 0) continue;
    const KeyRange vis = slot_visible_keys(cl, cl + n, true, c.window);
    for (int j = 0; j < int(vis.lo) / bs; ++j) bt[size_t(b) * max_blocks + j] = -1;
  }

  std::vector<T> q(size_t(rows) * c.hq * D), kc(size_t(num_blocks) * c.hkv * bs * D), vc(size_t(num_blocks) * c.hkv * bs * DV);
  for (auto& x : q) x = from_f<T>(nd(rng));
  for (auto& x : kc) x = from_f<T>(nd(rng));
  for (auto& x : vc) x = from_f<T>(nd(rng));
  // Rows no key of the step owns (past each slot's kv_len, spare blocks) hold NaN: the kernel
  // must neither read them into an output nor let them reach P V.
  {
    const T nan = from_f<T>(NAN);
    for (int blk = 0; blk < num_blocks; ++blk)
      for (int h = 0; h < c.hkv; ++h)
        for (int r = 0; r < bs; ++r) {
          if (owned[size_t(blk) * bs + r]) continue;
          for (int e = 0; e < D; ++e) kc[((size_t(blk) * c.hkv + h) * bs + r) * D + e] = nan;
          for (int e = 0; e < DV; ++e) vc[((size_t(blk) * c.hkv + h) * bs + r) * DV + e] = nan;
        }
  }
  std::vector<float> sinks(c.hq);
  for (auto& x : sinks) x = nd(rng) + 1.f;

  // Tile map: ceil(n G / BM) tiles per slot.
  constexpr int BM = Tile::kBlockM;
  std::vector<int> tile_start{0};
  for (int b = 0; b < B; ++b) tile_start.push_back(tile_start.back() + (c.slots[b].second * G + BM - 1) / BM);

  T* dq = to_device(q);
  T* dk = to_device(kc);
  T* dv = to_device(vc);
  int* dbt = to_device(bt);
  int* dcu = to_device(cu);
  int* dcl = to_device(cache_lens);
  int* dts = to_device(tile_start);
  float* dsinks = to_device(sinks);
  T* dout;
  float *dpo = nullptr, *dplse = nullptr;
  StepError* derr;
  CK(cudaMalloc(&dout, size_t(rows) * c.hq * DV * sizeof(T)));
  CK(cudaMalloc(&derr, sizeof(StepError)));
  CK(cudaMemset(derr, 0, sizeof(StepError)));
  if (c.max_splits > 1) {
    CK(cudaMalloc(&dpo, size_t(c.max_splits) * rows * c.hq * DV * sizeof(float)));
    CK(cudaMalloc(&dplse, size_t(c.max_splits) * rows * c.hq * sizeof(float)));
    CK(cudaMemset(dpo, 0xFF, size_t(c.max_splits) * rows * c.hq * DV * sizeof(float)));
  }
  CK(cudaMemset(dout, 0xFF, size_t(rows) * c.hq * DV * sizeof(T)));  // NaN poison

  AttentionParams p{};
  p.q = dq;
  p.q_row_stride = int64_t(c.hq) * D;
  p.q_head_stride = D;
  p.k_cache = dk;
  p.v_cache = dv;
  p.num_blocks = num_blocks;
  p.block_tables = dbt;
  p.max_blocks_per_seq = max_blocks;
  p.cu_seqlens_q = dcu;
  p.cache_seqlens = dcl;
  p.sinks = c.sinks ? dsinks : nullptr;
  p.out = dout;
  p.error = derr;
  p.tile_start = dts;
  p.partial_o = dpo;
  p.partial_lse = dplse;
  p.rows = rows;
  p.batch = B;
  p.num_q_heads = c.hq;
  p.num_kv_heads = c.hkv;
  p.group = G;
  p.block_size_log2 = bs_log2;
  p.sliding_window = c.window;
  p.causal = true;
  const double scale = 1.0 / std::sqrt(double(D));
  p.scale_log2 = float(scale * 1.4426950408889634);
  p.prefill_block_m = BM;
  p.block_n = 64;
  p.max_splits = c.max_splits;

  auto kernel = hopper_prefill_kernel<T, D, DV, GROUP, Tile>;
  const int smem = hopper_prefill_smem_bytes<Tile>(D, DV);
  const int threads = Tile::kThreads;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(unsigned(tile_start.back()), unsigned(c.max_splits), unsigned(c.hkv));
  const HopperKvMaps maps = make_hopper_kv_maps<T>(p, D, DV);
  kernel<<<grid, threads, smem>>>(p, maps);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());

  std::vector<T> out(size_t(rows) * c.hq * DV);
  CK(cudaMemcpy(out.data(), dout, out.size() * sizeof(T), cudaMemcpyDeviceToHost));
  std::vector<float> po, plse;
  if (c.max_splits > 1) {
    po.resize(size_t(c.max_splits) * rows * c.hq * DV);
    plse.resize(size_t(c.max_splits) * rows * c.hq);
    CK(cudaMemcpy(po.data(), dpo, po.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(plse.data(), dplse, plse.size() * 4, cudaMemcpyDeviceToHost));
  }

  // float64 reference on the checked rows; relative Frobenius error over them.
  double err2 = 0, ref2 = 0;
  long unwritten = 0;
  for (int b = 0; b < B; ++b) {
    const int cl = c.slots[b].first, n = c.slots[b].second, kv_len = cl + n;
    std::vector<int> toks;
    if (c.check_rows == 0 || c.check_rows >= n) {
      for (int t = 0; t < n; ++t) toks.push_back(t);
    } else {
      toks.push_back(0);
      toks.push_back(n - 1);
      for (int i = 2; i < c.check_rows; ++i) toks.push_back(int(rng() % n));
    }
    for (int t : toks) {
      const KeyRange r = visible_keys(cl + t, kv_len, true, c.window);
      for (int h = 0; h < c.hq; ++h) {
        const int kvh = h / G;
        const size_t qrow = (size_t(cu[b] + t) * c.hq + h) * D;
        std::vector<double> sc;
        double mx = -INFINITY;
        for (int64_t j = r.lo; j <= r.hi; ++j) {
          const size_t krow = ((size_t(bt[size_t(b) * max_blocks + j / bs]) * c.hkv + kvh) * bs + j % bs) * D;
          double dot = 0;
          for (int e = 0; e < D; ++e) dot += double(to_f(q[qrow + e])) * double(to_f(kc[krow + e]));
          sc.push_back(dot * scale);
          mx = std::max(mx, dot * scale);
        }
        double den = 0;
        if (c.sinks) mx = std::max(mx, double(sinks[h]));
        for (double& s : sc) { s = std::exp(s - mx); den += s; }
        if (c.sinks) den += std::exp(double(sinks[h]) - mx);
        std::vector<double> ref(DV, 0.0);
        for (int64_t j = r.lo; j <= r.hi; ++j) {
          const size_t vrow = ((size_t(bt[size_t(b) * max_blocks + j / bs]) * c.hkv + kvh) * bs + j % bs) * DV;
          for (int e = 0; e < DV; ++e) ref[e] += sc[j - r.lo] * double(to_f(vc[vrow + e]));
        }
        const size_t orow = (size_t(cu[b] + t) * c.hq + h) * DV;
        const int ns = slot_num_splits(cl, n, true, c.window, 64, c.max_splits);
        for (int e = 0; e < DV; ++e) {
          const double want = den > 0 ? ref[e] / den : 0.0;
          double got;
          if (ns == 1) {
            got = to_f(out[orow + e]);
          } else {  // host merge of the partials (no sinks in split cases)
            double m = -INFINITY, num = 0, dsum = 0;
            for (int s = 0; s < ns; ++s) m = std::max(m, double(plse[size_t(s) * rows * c.hq + orow / DV]));
            for (int s = 0; s < ns; ++s) {
              const double lse = plse[size_t(s) * rows * c.hq + orow / DV];
              const double w = lse == -INFINITY ? 0.0 : std::exp2(lse - m);
              num += w * po[size_t(s) * rows * c.hq * DV + orow + e];
              dsum += w;
            }
            got = num / dsum;
          }
          if (!std::isfinite(got)) ++unwritten;
          err2 += (got - want) * (got - want);
          ref2 += want * want;
        }
      }
    }
  }
  const double rel = std::sqrt(err2 / std::max(ref2, 1e-30));
  const bool ok = unwritten == 0 && rel < 1e-2;
  std::printf("%-34s %-6s %s rel_err %.2e unwritten %ld", c.name.c_str(), Tile::kConsumerWarpgroups == 2 ? "wide" : "narrow",
              ok ? "ok  " : "FAIL", rel, unwritten);

  if (c.timed) {
    double pairs = 0;
    for (auto [cl, n] : c.slots)
      for (int t = 0; t < n; ++t) {
        const KeyRange r = visible_keys(cl + t, cl + n, true, c.window);
        pairs += double(r.hi - r.lo + 1);
      }
    const double flop = 2.0 * c.hq * pairs * (D + DV);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int i = 0; i < 25; ++i) {
      CK(cudaEventRecord(e0));
      const HopperKvMaps maps = make_hopper_kv_maps<T>(p, D, DV);
      kernel<<<grid, threads, smem>>>(p, maps);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float t;
      CK(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 5) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const float med = ms[ms.size() / 2];
    std::printf("  %.3f ms  %.1f TFLOP/s", med, flop / (med * 1e-3) / 1e12);
  }
  std::printf("\n");
  for (void* x : {(void*)dq, (void*)dk, (void*)dv, (void*)dout, (void*)dbt, (void*)dcu, (void*)dcl, (void*)dts,
                  (void*)dsinks, (void*)derr})
    CK(cudaFree(x));
  if (dpo) CK(cudaFree(dpo));
  if (dplse) CK(cudaFree(dplse));
  return ok;
}

// Each case on both tiles of the kernel.
template <typename T, int D, int DV, int GROUP>
static bool run(const Case& c, uint32_t seed) {
  const bool wide = run_tile<T, D, DV, GROUP, HopperWideTile>(c, seed);
  const bool narrow = run_tile<T, D, DV, GROUP, HopperNarrowTile>(c, seed);
  return wide && narrow;
}

int main(int argc, char** argv) {
  bool timed = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-timed") timed = false;
    if (a.rfind("--only=", 0) == 0) g_only = a.substr(7);
  }
  int fails = 0;
  auto slots_pre = [](int b, int n) { return std::vector<std::pair<int, int>>(b, {0, n}); };
  std::vector<std::pair<int, int>> mixed{{0, 200}, {100, 77}, {300, 1}, {0, 0}, {37, 130}};
  // Correctness (every row).
  fails += !run<__nv_bfloat16, 128, 128, 3>({"g3 128/128 mixed slots", 24, 8, 128, 128, mixed}, 1);
  fails += !run<half, 128, 128, 3>({"g3 128/128 fp16", 24, 8, 128, 128, mixed, 0, false, 1, true}, 2);
  fails += !run<__nv_bfloat16, 128, 128, 3>({"g3 window 100 + sinks", 24, 8, 128, 128, mixed, 100, true}, 3);
  fails += !run<__nv_bfloat16, 128, 128, 3>({"g3 splits 4", 24, 8, 128, 128, mixed, 0, false, 4}, 4);
  fails += !run<__nv_bfloat16, 128, 128, 0>({"runtime group 5", 40, 8, 128, 128, mixed}, 13);
  fails += !run<__nv_bfloat16, 192, 128, 16>({"g16 192/128", 64, 4, 192, 128, {{50, 300}, {0, 9}}}, 5);
  fails += !run<__nv_bfloat16, 192, 128, 8>({"g8 192/128 window 129 sinks", 64, 8, 192, 128, {{500, 260}}, 129, true}, 6);
  fails += !run<__nv_bfloat16, 128, 64, 4>({"g4 128/64", 32, 8, 128, 64, mixed}, 7);
  fails += !run<__nv_bfloat16, 64, 64, 1>({"g1 64/64", 8, 8, 64, 64, mixed}, 8);
  // Block sizes other than 64 (a copy box is min(block_size, 64) rows); windows with unread blocks.
  std::vector<std::pair<int, int>> long_slots{{900, 300}, {0, 1000}, {50, 3}, {1200, 130}};
  fails += !run<__nv_bfloat16, 128, 128, 3>({"g3 bs16 window 700 splits 3", 24, 8, 128, 128, long_slots, 700, false, 3, false, false, 0, 16}, 14);
  fails += !run<__nv_bfloat16, 128, 128, 3>({"g3 bs128 window 600 + sinks", 24, 8, 128, 128, long_slots, 600, true, 1, false, false, 0, 128}, 15);
  fails += !run<__nv_bfloat16, 192, 128, 16>({"g16 192/128 bs32 splits 2", 64, 4, 192, 128, long_slots, 0, false, 2, false, false, 0, 32}, 16);
  // Timed, sampled rows.
  if (!timed) {
    std::printf("%s: %d failed\n", fails ? "FAILED" : "PASSED", fails);
    return fails ? 1 : 0;
  }
  fails += !run<__nv_bfloat16, 128, 128, 3>({"prefill_g3 2x8k", 24, 8, 128, 128, slots_pre(2, 8192), 0, false, 1, false, true, 6}, 9);
  fails += !run<__nv_bfloat16, 192, 128, 16>({"prefill_192_128 8k", 64, 4, 192, 128, slots_pre(1, 8192), 0, false, 1, false, true, 6}, 10);
  fails += !run<__nv_bfloat16, 128, 128, 3>({"prefill_swa1024 2x8k", 24, 8, 128, 128, slots_pre(2, 8192), 1024, false, 1, false, true, 6}, 11);
  fails += !run<__nv_bfloat16, 192, 128, 8>({"prefill_swa128 2x8k", 64, 8, 192, 128, slots_pre(2, 8192), 128, true, 1, false, true, 6}, 12);
  fails += !run<__nv_bfloat16, 128, 128, 3>({"prefill_swa256 2x8k", 24, 8, 128, 128, slots_pre(2, 8192), 256, false, 1, false, true, 6}, 17);
  fails += !run<__nv_bfloat16, 128, 128, 3>({"prefill_swa512 2x8k", 24, 8, 128, 128, slots_pre(2, 8192), 512, false, 1, false, true, 6}, 18);
  fails += !run<__nv_bfloat16, 128, 128, 3>({"mixed chunk 2k over 6k", 24, 8, 128, 128, {{6144, 2048}}, 0, false, 1, false, true, 6}, 19);
  std::printf("%s: %d failed\n", fails ? "FAILED" : "PASSED", fails);
  return fails ? 1 : 0;
}
