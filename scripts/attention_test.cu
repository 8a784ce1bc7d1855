// Standalone device test and timing driver of the paged attention kernels (run_attention): random
// paged inputs from a hash the host recomputes, poisoned unused cache slots / outputs, a float64
// reference of DESIGN.md §2 on sampled rows, and cudaEvent timings. Built by attention_smoke.py.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../csrc/kernels/attention/attention.h"
#include "paddle_gqa/mask.h"

#include "device_test_util.h"

using namespace paddle_gqa;
using bf16 = __nv_bfloat16;


__host__ __device__ inline float hash_val(uint32_t seed, uint64_t i) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
  x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29; x *= 0x94D049BB133111EBull; x ^= x >> 32;
  return float(x & 0xFFFFFF) / float(0x800000) - 1.f;  // [-1, 1)
}

__global__ void fill_kernel(bf16* p, uint64_t n, uint32_t seed) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16(hash_val(seed, i));
}

// NaN into cache slots a slot's step must not read: keys [first visible block start, lo) and
// [kv_len, end of last block).
__global__ void poison_kernel(bf16* cache, int width, int hkv, int bs, const int* bt, int64_t mbps, int b, int64_t from,
                              int64_t to) {
  const int64_t j = from + blockIdx.x;
  if (j >= to) return;
  const int64_t blk = bt[b * mbps + j / bs];
  for (int e = threadIdx.x; e < hkv * width; e += blockDim.x) {
    const int h = e / width, d = e % width;
    reinterpret_cast<uint16_t*>(cache)[((blk * hkv + h) * bs + j % bs) * width + d] = 0xFFFF;
  }
}

static float bf(float x) { return __bfloat162float(__float2bfloat16(x)); }

struct Case {
  std::string name;
  int hq, hkv, d, dv, bs;
  std::vector<std::pair<int, int>> slots;  // (cache_len, n_new)
  int window = 0;
  bool causal = true;
  bool sinks = false;
  int pad_rows = 0;
  int check_rows = 1 << 30;  // rows sampled for the reference
  const char* bench = nullptr;  // "tbs" | "tflops" | nullptr
  bool set_error = false;
};

struct Result { bool ok; double max_err; double ms; };

static Result run_case(const Case& c, int num_sms) {
  const int B = int(c.slots.size());
  const int G = c.hq / c.hkv;
  std::vector<int> cu(B + 1, 0), cache(B);
  for (int b = 0; b < B; ++b) { cache[b] = c.slots[b].first; cu[b + 1] = cu[b] + c.slots[b].second; }
  const int T = cu[B];
  const int64_t rows = T + c.pad_rows;
  int64_t mbps = 0;
  for (int b = 0; b < B; ++b) mbps = std::max<int64_t>(mbps, (cache[b] + c.slots[b].second + c.bs - 1) / c.bs);
  mbps += 1;
  // Physical blocks only for blocks some query sees; the rest of each row is -1. Ids shuffled.
  std::vector<int> bt(B * mbps, -1);
  std::vector<std::pair<int, int64_t>> used;
  std::vector<std::pair<int64_t, int64_t>> vis(B);
  for (int b = 0; b < B; ++b) {
    const int n = c.slots[b].second;
    if (n == 0) continue;
    KeyRange r = slot_visible_keys(cache[b], cache[b] + n, c.causal, c.window);
    vis[b] = {r.lo, r.hi};
    for (int64_t lb = r.lo / c.bs; lb <= r.hi / c.bs; ++lb) used.push_back({b, lb});
  }
  const int extra = 3;  // unreferenced blocks, poisoned
  const int64_t num_blocks = int64_t(used.size()) + extra;
  std::vector<int> ids(used.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(1234);
  std::shuffle(ids.begin(), ids.end(), rng);
  for (size_t i = 0; i < used.size(); ++i) bt[used[i].first * mbps + used[i].second] = ids[i];

  const uint32_t sq = 11, sk = 22, sv = 33;
  const size_t q_n = size_t(rows) * c.hq * c.d, k_n = size_t(num_blocks) * c.hkv * c.bs * c.d,
               v_n = size_t(num_blocks) * c.hkv * c.bs * c.dv, o_n = size_t(rows) * c.hq * c.dv;
  bf16 *q, *k, *v, *o;
  int *d_bt, *d_cu, *d_cache;
  float* d_sinks = nullptr;
  StepError* d_err;
  CK(cudaMalloc(&q, q_n * 2)); CK(cudaMalloc(&k, k_n * 2)); CK(cudaMalloc(&v, v_n * 2)); CK(cudaMalloc(&o, o_n * 2));
  CK(cudaMalloc(&d_bt, bt.size() * 4)); CK(cudaMalloc(&d_cu, cu.size() * 4)); CK(cudaMalloc(&d_cache, cache.size() * 4));
  CK(cudaMalloc(&d_err, sizeof(StepError)));
  StepError err_h{};
  if (c.set_error) err_h.code = int32_t(StepErrorCode::kBlockIdInvalid);
  CK(cudaMemcpy(d_err, &err_h, sizeof(StepError), cudaMemcpyHostToDevice));
  fill_kernel<<<1024, 256>>>(q, q_n, sq);
  fill_kernel<<<1024, 256>>>(k, k_n, sk);
  fill_kernel<<<1024, 256>>>(v, v_n, sv);
  CK(cudaGetLastError());
  CK(cudaMemset(q + size_t(T) * c.hq * c.d, 0xFF, size_t(c.pad_rows) * c.hq * c.d * 2));  // padding rows: NaN
  CK(cudaMemset(k + size_t(used.size()) * c.hkv * c.bs * c.d, 0xFF, size_t(extra) * c.hkv * c.bs * c.d * 2));
  CK(cudaMemset(v + size_t(used.size()) * c.hkv * c.bs * c.dv, 0xFF, size_t(extra) * c.hkv * c.bs * c.dv * 2));
  CK(cudaMemcpy(d_bt, bt.data(), bt.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_cu, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_cache, cache.data(), cache.size() * 4, cudaMemcpyHostToDevice));
  for (int b = 0; b < B; ++b) {
    const int n = c.slots[b].second;
    if (n == 0) continue;
    const int64_t kv_len = cache[b] + n;
    const int64_t first = vis[b].first / c.bs * c.bs, end = (kv_len + c.bs - 1) / c.bs * c.bs;
    if (vis[b].first > first) {
      poison_kernel<<<unsigned(vis[b].first - first), 128>>>(k, c.d, c.hkv, c.bs, d_bt, mbps, b, first, vis[b].first);
      poison_kernel<<<unsigned(vis[b].first - first), 128>>>(v, c.dv, c.hkv, c.bs, d_bt, mbps, b, first, vis[b].first);
    }
    if (end > kv_len) {
      poison_kernel<<<unsigned(end - kv_len), 128>>>(k, c.d, c.hkv, c.bs, d_bt, mbps, b, kv_len, end);
      poison_kernel<<<unsigned(end - kv_len), 128>>>(v, c.dv, c.hkv, c.bs, d_bt, mbps, b, kv_len, end);
    }
  }
  CK(cudaGetLastError());
  std::vector<float> sinks(c.hq);
  for (int h = 0; h < c.hq; ++h) sinks[h] = 2.f * hash_val(44, h) + 0.5f;
  if (c.sinks) {
    CK(cudaMalloc(&d_sinks, c.hq * 4));
    CK(cudaMemcpy(d_sinks, sinks.data(), c.hq * 4, cudaMemcpyHostToDevice));
  }
  CK(cudaMemset(o, 0xFF, o_n * 2));  // poisoned output

  ProblemShape s;
  s.dtype = DType::kBFloat16; s.rows = rows; s.batch = B; s.num_q_heads = c.hq; s.num_kv_heads = c.hkv; s.group = G;
  s.head_dim = c.d; s.v_head_dim = c.dv; s.block_size = c.bs; s.num_blocks = num_blocks; s.max_blocks_per_seq = mbps;
  s.has_sinks = c.sinks; s.sliding_window = c.window; s.causal = c.causal; s.softmax_scale = 1.f / std::sqrt(float(c.d));
  cuda::AttentionInputs in{q, int64_t(c.hq) * c.d, c.d, k, v, d_bt, d_cu, d_cache, d_sinks, o, d_err};
  const size_t ws_bytes = cuda::attention_workspace_bytes(s, num_sms);
  void* ws;
  CK(cudaMalloc(&ws, std::max<size_t>(ws_bytes, 256)));
  cuda::run_attention(s, in, ws, ws_bytes, num_sms, 0);
  CK(cudaDeviceSynchronize());

  std::vector<uint16_t> out(o_n);
  CK(cudaMemcpy(out.data(), o, o_n * 2, cudaMemcpyDeviceToHost));
  auto out_at = [&](size_t i) { uint32_t u = uint32_t(out[i]) << 16; float f; std::memcpy(&f, &u, 4); return f; };
  bool ok = true;
  double max_err = 0;
  if (c.set_error) {
    for (size_t i = 0; i < o_n; ++i) ok &= out[i] == 0xFFFF;
    std::printf("%-28s error record set: output untouched %s\n", c.name.c_str(), ok ? "yes" : "NO");
    return {ok, 0, 0};
  }
  for (int64_t t = T; t < rows; ++t)
    for (int e = 0; e < c.hq * c.dv; ++e) ok &= out[size_t(t) * c.hq * c.dv + e] == 0;
  if (!ok) std::printf("  padding rows not zero\n");
  // Sampled rows: all when few, else first/last of each slot plus random ones.
  std::vector<int> check;
  if (T <= c.check_rows) { for (int t = 0; t < T; ++t) check.push_back(t); }
  else {
    for (int b = 0; b < B && int(check.size()) + 2 <= c.check_rows / 2; ++b)
      if (cu[b + 1] > cu[b]) { check.push_back(cu[b]); check.push_back(cu[b + 1] - 1); }
    std::uniform_int_distribution<int> pick(0, T - 1);
    while (int(check.size()) < c.check_rows) check.push_back(pick(rng));
  }
  const float scale = s.softmax_scale;
  std::vector<double> qd(c.d), sc, acc(c.dv);
  for (int t : check) {
    int b = int(std::upper_bound(cu.begin(), cu.end(), t) - cu.begin()) - 1;
    while (cu[b + 1] == cu[b]) ++b;
    const int64_t p = cache[b] + (t - cu[b]);
    const int64_t kv_len = cache[b] + c.slots[b].second;
    KeyRange r = visible_keys(p, kv_len, c.causal, c.window);
    for (int h = 0; h < c.hq; ++h) {
      const int kvh = h / G;
      for (int d = 0; d < c.d; ++d) qd[d] = bf(hash_val(sq, (uint64_t(t) * c.hq + h) * c.d + d));
      sc.assign(0, 0);
      double m = c.sinks ? sinks[h] : -INFINITY;
      for (int64_t j = r.lo; j <= r.hi; ++j) {
        const int64_t blk = bt[b * mbps + j / c.bs];
        const uint64_t base = uint64_t((blk * c.hkv + kvh) * c.bs + j % c.bs) * c.d;
        double dot = 0;
        for (int d = 0; d < c.d; ++d) dot += qd[d] * bf(hash_val(sk, base + d));
        sc.push_back(dot * scale);
        m = std::max(m, sc.back());
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double den = c.sinks ? std::exp(sinks[h] - m) : 0.0;
      for (int64_t j = r.lo; j <= r.hi; ++j) {
        const double w = std::exp(sc[j - r.lo] - m);
        den += w;
        const int64_t blk = bt[b * mbps + j / c.bs];
        const uint64_t base = uint64_t((blk * c.hkv + kvh) * c.bs + j % c.bs) * c.dv;
        for (int d = 0; d < c.dv; ++d) acc[d] += w * bf(hash_val(sv, base + d));
      }
      for (int d = 0; d < c.dv; ++d) {
        const double ref = den > 0 ? acc[d] / den : 0.0;
        const double got = out_at((size_t(t) * c.hq + h) * c.dv + d);
        const double err = std::fabs(got - ref);
        if (!(err <= 1e-2 + 1e-2 * std::fabs(ref))) {
          if (ok) std::printf("  mismatch row %d head %d dim %d: got %g ref %g\n", t, h, d, got, ref);
          ok = false;
        }
        if (std::isnan(got)) max_err = INFINITY; else max_err = std::max(max_err, err);
      }
    }
  }
  // The same call captured into a CUDA graph and replayed must reproduce the output bit for bit.
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t graph_exec;
  CK(cudaMemset(o, 0xFF, o_n * 2));
  CK(cudaDeviceSynchronize());
  CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cuda::run_attention(s, in, ws, ws_bytes, num_sms, stream);
  CK(cudaStreamEndCapture(stream, &graph));
  CK(cudaGraphInstantiate(&graph_exec, graph, 0));
  CK(cudaGraphLaunch(graph_exec, stream));
  CK(cudaStreamSynchronize(stream));
  {
    std::vector<uint16_t> again(o_n);
    CK(cudaMemcpy(again.data(), o, o_n * 2, cudaMemcpyDeviceToHost));
    if (again != out) {
      std::printf("  graph replay differs from the direct call\n");
      ok = false;
    }
  }
  double ms = 0, graph_ms = 0;
  if (c.bench) {
    cudaEvent_t g0, g1;
    CK(cudaEventCreate(&g0)); CK(cudaEventCreate(&g1));
    for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(graph_exec, stream));
    CK(cudaEventRecord(g0, stream));
    for (int i = 0; i < 30; ++i) CK(cudaGraphLaunch(graph_exec, stream));
    CK(cudaEventRecord(g1, stream));
    CK(cudaEventSynchronize(g1));
    float gt;
    CK(cudaEventElapsedTime(&gt, g0, g1));
    graph_ms = gt / 30;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    for (int i = 0; i < 5; ++i) cuda::run_attention(s, in, ws, ws_bytes, num_sms, 0);
    const int iters = 30;
    CK(cudaEventRecord(e0));
    for (int i = 0; i < iters; ++i) cuda::run_attention(s, in, ws, ws_bytes, num_sms, 0);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float total;
    CK(cudaEventElapsedTime(&total, e0, e1));
    ms = total / iters;
  }
  std::printf("%-28s rows %6lld checked %5zu max_err %.2e %s", c.name.c_str(), (long long)rows, check.size(), max_err,
              ok ? "ok" : "FAIL");
  if (c.bench) {
    double bytes = 0, flops = 0;
    for (int b = 0; b < B; ++b) {
      const int n = c.slots[b].second;
      for (int i = 0; i < n; ++i) {
        KeyRange r = visible_keys(cache[b] + i, cache[b] + n, c.causal, c.window);
        flops += 2.0 * c.hq * double(r.hi - r.lo + 1) * (c.d + c.dv);
      }
      if (n) bytes += double(vis[b].second - vis[b].first + 1) * c.hkv * (c.d + c.dv) * 2;
    }
    bytes += double(T) * c.hq * (c.d + c.dv) * 2;
    std::printf("  %.3f ms  %.0f GB/s  %.1f TFLOP/s | graph %.3f ms  %.0f GB/s  %.1f TFLOP/s", ms, bytes / ms / 1e6,
                flops / ms / 1e9, graph_ms, bytes / graph_ms / 1e6, flops / graph_ms / 1e9);
  }
  std::printf("\n");
  cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(d_bt); cudaFree(d_cu); cudaFree(d_cache);
  cudaFree(d_err); cudaFree(ws); if (d_sinks) cudaFree(d_sinks);
  cudaGraphExecDestroy(graph_exec); cudaGraphDestroy(graph); cudaStreamDestroy(stream);
  return {ok, max_err, ms};
}

int main(int argc, char** argv) {
  const bool bench = argc > 1 && std::string(argv[1]) == "--bench";
  int dev = 0, sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  std::vector<Case> cases;
  auto rep = [](int n, std::pair<int, int> s) { return std::vector<std::pair<int, int>>(n, s); };
  cases.push_back({"decode_g3_small", 24, 8, 128, 128, 64, rep(32, {1023, 1}), 0, true, false, 3});
  cases.push_back({"mixed_g3_sinks_bs16", 24, 8, 128, 128, 16, {{0, 300}, {1000, 77}, {5, 0}, {2000, 1}}, 0, true, true, 5});
  cases.push_back({"mixed_g3_swa100_sinks", 24, 8, 128, 128, 16, {{0, 300}, {1000, 77}, {5, 0}, {2000, 1}}, 100, true, true, 5});
  cases.push_back({"d192_g5_runtime_sinks", 20, 4, 192, 128, 32, {{100, 513}, {3000, 1}, {0, 1}}, 0, true, true, 2});
  cases.push_back({"decode_swa128_192_g8", 64, 8, 192, 128, 64, rep(4, {32767, 1}), 128, true, true, 0});
  cases.push_back({"noncausal_g3_bs128", 24, 8, 128, 128, 128, {{50, 40}, {0, 130}}, 0, false, false, 1});
  cases.push_back({"decode_split_g3_sinks", 24, 8, 128, 128, 32, {{20000, 1}}, 0, true, true, 0});
  cases.push_back({"chunk_split_g3_w700", 24, 8, 128, 128, 64, {{9000, 20}, {0, 1}}, 700, true, false, 0});
  cases.push_back({"g1_runtime_prefill", 8, 8, 128, 128, 32, {{0, 200}, {64, 64}}, 0, true, false, 0});
  cases.push_back({"g16_192_decode_w64", 64, 4, 192, 128, 16, rep(3, {500, 2}), 64, true, true, 1});
  {
    std::vector<std::pair<int, int>> mixed = {{6144, 200}, {50, 3}, {7, 0}, {100, 6}, {0, 5}};
    for (int i = 0; i < 20; ++i) mixed.push_back({3000 + 37 * i, 1});
    cases.push_back({"mixed_configs_g3_sinks", 24, 8, 128, 128, 64, mixed, 0, true, true, 7});
    cases.push_back({"mixed_configs_192_w300", 24, 8, 192, 128, 32, mixed, 300, true, false, 0});
  }
  Case err{"error_record_set", 24, 8, 128, 128, 64, {{10, 5}}, 0, true, false, 2};
  err.set_error = true;
  cases.push_back(err);
  if (bench) {
    cases.clear();
    auto add = [&](Case c, const char* kind) { c.check_rows = 6; c.bench = kind; cases.push_back(c); };
    add({"decode_g3 B32 4k", 24, 8, 128, 128, 64, rep(32, {4095, 1})}, "tbs");
    add({"decode_long B8 32k", 24, 8, 128, 128, 64, rep(8, {32767, 1})}, "tbs");
    add({"decode_192_128 B32 4k g16", 64, 4, 192, 128, 64, rep(32, {4095, 1})}, "tbs");
    add({"decode_swa B32 32k W128", 64, 8, 192, 128, 64, rep(32, {32767, 1}), 128, true, true}, "tbs");
    add({"decode_swa B32 ctx256", 64, 8, 192, 128, 64, rep(32, {255, 1}), 128, true, true}, "tbs");
    add({"prefill_g3 2x8k", 24, 8, 128, 128, 64, rep(2, {0, 8192})}, "tflops");
    add({"prefill_192_128 8k g16", 64, 4, 192, 128, 64, rep(1, {0, 8192})}, "tflops");
    add({"prefill_swa1024 2x8k", 24, 8, 128, 128, 64, rep(2, {0, 8192}), 1024}, "tflops");
    add({"prefill_swa128 192 2x8k", 64, 8, 192, 128, 64, rep(2, {0, 8192}), 128}, "tflops");
    {
      std::vector<std::pair<int, int>> mixed = rep(64, {4095, 1});
      mixed.insert(mixed.begin(), {6144, 2048});
      add({"mixed 2k chunk + 64 decodes", 24, 8, 128, 128, 64, mixed}, "tbs");
      add({"mixed part: 2k chunk", 24, 8, 128, 128, 64, {{6144, 2048}}}, "tflops");
      add({"mixed part: 64 decodes", 24, 8, 128, 128, 64, rep(64, {4095, 1})}, "tbs");
    }
    add({"small_decode B1 512", 24, 8, 128, 128, 64, rep(1, {511, 1})}, "tbs");
  }
  if (argc > 2) {  // keep only cases whose name starts with one of the comma-separated prefixes
    std::vector<Case> kept;
    const std::string list = std::string(",") + argv[2] + ",";
    for (const Case& c : cases) {
      for (size_t a = 0, z; (z = list.find(',', a + 1)) != std::string::npos; a = z) {
        const std::string pre = list.substr(a + 1, z - a - 1);
        if (!pre.empty() && c.name.compare(0, pre.size(), pre) == 0) { kept.push_back(c); break; }
      }
    }
    cases = kept;
  }
  int fails = 0;
  for (const Case& c : cases) {
    try {
      fails += !run_case(c, sms).ok;
    } catch (const std::exception& e) {
      std::printf("%-28s EXCEPTION %s\n", c.name.c_str(), e.what());
      ++fails;
    }
  }
  std::printf("%s: %d of %zu cases failed\n", bench ? "bench" : "test", fails, cases.size());
  return fails != 0;
}
