// The one definition of which keys a query sees (DESIGN.md §2), used by every implementation.
//
// A query at position p of a slot with kv_len keys sees keys j in [lo, hi]:
//   causal:          hi = p;            non-causal: hi = kv_len - 1
//   window W > 0:    lo = max(0, p - W + 1)   (W keys including itself; requires causal)
//   otherwise        lo = 0
// An empty range (lo > hi) means the query sees nothing and its output is zero.
#pragma once

#include <cstdint>

#include "paddle_gqa/host_device.h"

namespace paddle_gqa {

struct KeyRange {
  int64_t lo;  // first visible key, inclusive
  int64_t hi;  // last visible key, inclusive
  PGQA_HD bool empty() const { return lo > hi; }
};

PGQA_HD KeyRange visible_keys(int64_t p, int64_t kv_len, bool causal, int sliding_window) {
  int64_t hi = causal ? (p < kv_len - 1 ? p : kv_len - 1) : kv_len - 1;
  int64_t lo = 0;
  if (sliding_window > 0) {
    int64_t w_lo = p - sliding_window + 1;
    lo = w_lo > 0 ? w_lo : 0;
  }
  return KeyRange{lo, hi};
}

// Keys any of a slot's new queries (positions cache_len .. kv_len-1) can see: the union of
// visible_keys over those positions. Blocks outside it are never read and may be -1.
PGQA_HD KeyRange slot_visible_keys(int64_t cache_len, int64_t kv_len, bool causal, int sliding_window) {
  KeyRange first = visible_keys(cache_len, kv_len, causal, sliding_window);
  return KeyRange{first.lo, kv_len - 1};
}

}  // namespace paddle_gqa
