// CPU paged_attention: each new token's query heads attend over the paged cache (DESIGN.md §2).
//
// Work item = a chunk of consecutive rows of one slot x one kv head, i.e. the chunk's rows times
// the G query heads that share that kv head. The item walks the blocks of the chunk's visible key
// range once, converts each block's K (transposed) and V to fp32, and updates every query's
// online-softmax state from it, so a block is converted once per ~kQueriesPerItem queries.
// Each query only ever uses the keys visible_keys() gives it, and its state is updated block by
// block in key order, so its result does not depend on the chunking or the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"
#include "numeric.h"
#include "paddle_gqa/errors.h"
#include "paddle_gqa/launchers.h"
#include "paddle_gqa/mask.h"
#include "parallel.h"
#include "step.h"

namespace paddle_gqa {
namespace cpu {
namespace {

// Queries (rows x G) per work item: enough to amortise converting each block.
constexpr int kQueriesPerItem = 64;

// Consecutive rows [row0, row1) of slot b.
struct RowChunk {
  int64_t slot;
  int64_t row0;
  int64_t row1;
};

// Per-worker buffers, sized once per call.
struct Scratch {
  std::vector<float> q;         // [Qn, D] queries of the item, fp32
  std::vector<float> acc;       // [Qn, Dv] unnormalised outputs, relative to m
  std::vector<float> m;         // [Qn] running max score
  std::vector<float> l;         // [Qn] running sum of e^{s - m}
  std::vector<KeyRange> range;  // [Qn] visible keys
  std::vector<float> kt;        // [D, bs] keys of one block, transposed so scores vectorise over keys
  std::vector<float> v;         // [bs, Dv] values of one block
  std::vector<float> s;         // [bs] scores of one query against one block
};

template <typename T>
struct Attention {
  const ProblemShape& sh;
  const T* q;          // [rows, Hq, D]
  const T* kc;         // [num_blocks, Hkv, bs, D]
  const T* vc;         // [num_blocks, Hkv, bs, Dv]
  const int32_t* bt;   // [B, max_blocks_per_seq]
  const int32_t* cu;   // [B+1]
  const int32_t* cached;  // [B]
  const float* sinks;  // [Hq] or null
  T* out;              // [rows, Hq*Dv]

  // Folds keys [a, z] of one block (fp32 in sc.kt / sc.v) into query qi's softmax state.
  void update(Scratch& sc, int qi, int a, int z) const {
    const int d = sh.head_dim, dv = sh.v_head_dim, bs = sh.block_size;
    const float* __restrict qv = sc.q.data() + int64_t(qi) * d;
    const float* __restrict kt = sc.kt.data();
    const float* __restrict vv = sc.v.data();
    float* __restrict s = sc.s.data();
    float* __restrict acc = sc.acc.data() + int64_t(qi) * dv;
    for (int j = a; j <= z; ++j) s[j] = 0.f;
    for (int k = 0; k < d; ++k) {
      const float qk = qv[k];
      const float* __restrict krow = kt + int64_t(k) * bs;
      for (int j = a; j <= z; ++j) s[j] += qk * krow[j];
    }
    float block_max = -std::numeric_limits<float>::infinity();
    for (int j = a; j <= z; ++j) {
      s[j] *= sh.softmax_scale;
      block_max = std::max(block_max, s[j]);
    }
    const float m_new = std::max(sc.m[qi], block_max);
    if (m_new == -std::numeric_limits<float>::infinity()) return;  // every score -inf: adds nothing
    const float correction = std::exp(sc.m[qi] - m_new);  // 0 on the first block (m = -inf)
    if (correction != 1.f) {
      sc.l[qi] *= correction;
      for (int e = 0; e < dv; ++e) acc[e] *= correction;
    }
    float l = sc.l[qi];
    for (int j = a; j <= z; ++j) {
      const float p = std::exp(s[j] - m_new);
      l += p;
      const float* __restrict vrow = vv + int64_t(j) * dv;
      for (int e = 0; e < dv; ++e) acc[e] += p * vrow[e];
    }
    sc.l[qi] = l;
    sc.m[qi] = m_new;
  }

  // Writes query qi (row t, head h): acc / (l + [sinks] e^{sink - m}), rescaled to the max over
  // the scores and the sink; zeros when it saw no key.
  void finish(const Scratch& sc, int qi, int64_t t, int h) const {
    const int dv = sh.v_head_dim;
    T* dst = out + (t * sh.num_q_heads + h) * int64_t(dv);
    const float* acc = sc.acc.data() + int64_t(qi) * dv;
    const float l = sc.l[qi], m = sc.m[qi];
    if (!(l > 0.f)) {
      for (int e = 0; e < dv; ++e) dst[e] = from_float<T>(0.f);
      return;
    }
    float scale = 1.f, denom = l;
    if (sinks != nullptr) {
      const float sink = sinks[h];
      const float m_all = std::max(m, sink);
      scale = std::exp(m - m_all);
      denom = l * scale + std::exp(sink - m_all);
    }
    for (int e = 0; e < dv; ++e) dst[e] = from_float<T>(acc[e] * scale / denom);
  }

  void run_item(const RowChunk& chunk, int hk, Scratch& sc) const {
    const int g_size = sh.group, d = sh.head_dim, dv = sh.v_head_dim, bs = sh.block_size;
    const int64_t b = chunk.slot;
    const int64_t cache_len = cached[b];
    const int64_t kv_len = cache_len + (int64_t(cu[b + 1]) - cu[b]);
    const int n_queries = int(chunk.row1 - chunk.row0) * g_size;
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = -1;
    for (int qi = 0; qi < n_queries; ++qi) {
      const int64_t t = chunk.row0 + qi / g_size;
      const int h = hk * g_size + qi % g_size;
      const KeyRange r = visible_keys(cache_len + (t - cu[b]), kv_len, sh.causal, sh.sliding_window);
      sc.range[qi] = r;
      if (!r.empty()) {
        lo = std::min(lo, r.lo);
        hi = std::max(hi, r.hi);
      }
      const T* src = q + (t * sh.num_q_heads + h) * int64_t(d);
      float* dst = sc.q.data() + int64_t(qi) * d;
      for (int k = 0; k < d; ++k) dst[k] = to_float(src[k]);
      sc.m[qi] = -std::numeric_limits<float>::infinity();
      sc.l[qi] = 0.f;
    }
    std::fill(sc.acc.begin(), sc.acc.begin() + int64_t(n_queries) * dv, 0.f);

    // Only blocks inside the union of the visible ranges are read (others may be -1), and within
    // a block only keys some query sees (the rest may be unwritten).
    const int64_t last_block = hi >= 0 ? hi / bs : -1;  // hi < 0: no query sees any key
    for (int64_t lb = hi >= 0 ? lo / bs : 0; lb <= last_block; ++lb) {
      const int64_t base = lb * bs;
      const int j0 = int(std::max(lo, base) - base);
      const int j1 = int(std::min(hi, base + bs - 1) - base);
      const int64_t block = bt[b * sh.max_blocks_per_seq + lb];
      const T* kb = kc + (block * sh.num_kv_heads + hk) * bs * int64_t(d);
      const T* vb = vc + (block * sh.num_kv_heads + hk) * bs * int64_t(dv);
      for (int j = j0; j <= j1; ++j)
        for (int k = 0; k < d; ++k) sc.kt[int64_t(k) * bs + j] = to_float(kb[int64_t(j) * d + k]);
      for (int j = j0; j <= j1; ++j)
        for (int e = 0; e < dv; ++e) sc.v[int64_t(j) * dv + e] = to_float(vb[int64_t(j) * dv + e]);
      for (int qi = 0; qi < n_queries; ++qi) {
        const KeyRange& r = sc.range[qi];
        const int64_t a = std::max(r.lo, base), z = std::min(r.hi, base + bs - 1);
        if (a <= z) update(sc, qi, int(a - base), int(z - base));
      }
    }
    for (int qi = 0; qi < n_queries; ++qi)
      finish(sc, qi, chunk.row0 + qi / g_size, hk * g_size + qi % g_size);
  }
};

template <typename T>
void attend_rows_typed(const ProblemShape& sh, const T* q, const StepInputs& step, const MaskInputs& mask,
                       T* out) {
  Attention<T> att{sh,
                   q,
                   step.key_cache.ptr<const T>(),
                   step.value_cache.ptr<const T>(),
                   step.block_tables.ptr<const int32_t>(),
                   step.cu_seqlens_q.ptr<const int32_t>(),
                   step.cache_seqlens.ptr<const int32_t>(),
                   sh.has_sinks ? mask.sinks.ptr<const float>() : nullptr,
                   out};
  const int64_t rows_per_chunk = std::max(1, kQueriesPerItem / sh.group);
  std::vector<RowChunk> chunks;
  for (int64_t b = 0; b < sh.batch; ++b)
    for (int64_t r = att.cu[b]; r < att.cu[b + 1]; r += rows_per_chunk)
      chunks.push_back(RowChunk{b, r, std::min<int64_t>(r + rows_per_chunk, att.cu[b + 1])});

  const int64_t n_items = int64_t(chunks.size()) * sh.num_kv_heads;
  const int max_queries = int(rows_per_chunk) * sh.group;
  std::vector<Scratch> scratch(size_t(parallel_workers(n_items)));
  for (Scratch& sc : scratch) {
    sc.q.resize(size_t(max_queries) * sh.head_dim);
    sc.acc.resize(size_t(max_queries) * sh.v_head_dim);
    sc.m.resize(size_t(max_queries));
    sc.l.resize(size_t(max_queries));
    sc.range.resize(size_t(max_queries));
    sc.kt.resize(size_t(sh.head_dim) * sh.block_size);
    sc.v.resize(size_t(sh.block_size) * sh.v_head_dim);
    sc.s.resize(size_t(sh.block_size));
  }
  // Items are handed out last chunk first: under causal masking later rows see more keys, and
  // starting the long items early keeps the threads' finish times even.
  parallel_for(n_items, [&](int64_t item, int worker) {
    const int64_t rev = n_items - 1 - item;
    att.run_item(chunks[size_t(rev / sh.num_kv_heads)], int(rev % sh.num_kv_heads), scratch[size_t(worker)]);
  });
}

}  // namespace

void attend_rows(const ProblemShape& shape, const void* q, const StepInputs& step, const MaskInputs& mask,
                 void* out) {
  switch (shape.dtype) {
    case DType::kFloat32:
      return attend_rows_typed(shape, static_cast<const float*>(q), step, mask, static_cast<float*>(out));
    case DType::kFloat16:
      return attend_rows_typed(shape, static_cast<const Half*>(q), step, mask, static_cast<Half*>(out));
    case DType::kBFloat16:
      return attend_rows_typed(shape, static_cast<const BFloat16*>(q), step, mask, static_cast<BFloat16*>(out));
    default:
      throw InvalidArgument(str("q: dtype ", dtype_name(shape.dtype), " has no CPU implementation"));
  }
}

void paged_attention(const ProblemShape& shape, const TensorView& q, const StepInputs& step,
                     const MaskInputs& mask, const TensorView& out) {
  const int64_t total = check_step(shape, step, /*checks_reads=*/true);
  attend_rows(shape, q.data, step, mask, out.data);
  zero_rows_from(shape, out.data, shape.out_width(), total);
}

}  // namespace cpu
}  // namespace paddle_gqa
