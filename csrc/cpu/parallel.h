// A small std::thread parallel_for for the CPU ops.
//
// Not OpenMP: Paddle ships its own OpenMP runtime and a second one in the same process conflicts.
// Threads are started per call; the ops are coarse (one item = a chunk of rows of one kv head), so
// that costs little next to the work, and nothing persists between calls.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace paddle_gqa {
namespace cpu {

// CPUs this process may run on (the affinity mask, which containers narrow), at least 1.
inline int available_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? int(hw) : 1;
}

// Workers parallel_for(n, ...) will use; callers size per-worker scratch with it.
inline int parallel_workers(int64_t n) {
  return int(std::max<int64_t>(1, std::min<int64_t>(n, available_cpus())));
}

// Calls fn(i, worker) for every i in [0, n) exactly once, with 0 <= worker < parallel_workers(n)
// and no two concurrent calls sharing a worker. Items are handed out one at a time from a shared
// counter, so uneven items (causal rows late in a sequence) balance. The first exception thrown
// by fn stops further items and is rethrown here after every thread has joined.
template <typename Fn>
void parallel_for(int64_t n, Fn&& fn) {
  const int workers = parallel_workers(n);
  if (workers <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](int worker) {
    try {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i, worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) {
    try {
      threads.emplace_back(run, w);
    } catch (...) {
      break;  // could not start a thread: the ones running (and this one) do all the items
    }
  }
  run(0);
  for (std::thread& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace paddle_gqa
