// Gathers of the attention tiles into shared memory with 16-byte cp.async: the packed GQA query
// tile, and K / V tiles of a paged cache addressed through one slot's block-table row.
#pragma once

#include <cstdint>

#include "mma.cuh"
#include "tile_size.h"

namespace paddle_gqa::cuda::attn {

// One slot's view of a paged cache tensor [num_blocks][Hkv][block_size][W] for one kv head:
// logical key j lives in block block_row[j >> bs_log2], slot j & (block_size - 1).
template <typename T, int W>
struct PagedHead {
  const T* cache;
  const int32_t* block_row;  // block_tables + b * max_blocks_per_seq
  int kv_head;
  int num_kv_heads;
  int bs_log2;

  __device__ __forceinline__ const T* key_row(int j) const {
    const int64_t block = block_row[j >> bs_log2];
    const int64_t slot = j & ((1 << bs_log2) - 1);
    return cache + (((block * num_kv_heads + kv_head) << bs_log2) + slot) * W;
  }
};

// Copies keys [key0, key0 + ROWS) into smem rows of W + kSmemPad elements. Keys outside [lo, hi]
// are zero-filled without touching the block table or the cache (their blocks may be -1), so a
// masked key contributes exactly 0 * 0 to P V.
template <typename T, int W, int ROWS, int NT>
__device__ __forceinline__ void load_kv_tile(T* smem, const PagedHead<T, W>& head, int key0, int lo, int hi,
                                             int tid) {
  // Thread tid copies chunk tid % kChunks of rows tid / kChunks + k * kRowsPerPass: the same column
  // every pass, so nothing per-pass stays live across the caller's loop.
  constexpr int kChunks = W / 8;  // 16-byte chunks per row
  constexpr int kRowsPerPass = NT / kChunks;
  static_assert(kRowsPerPass >= 1, "a pass covers at least one row");
  const int ch = tid % kChunks;
  const int r0 = tid / kChunks;
  if (r0 >= kRowsPerPass) return;
#pragma unroll
  for (int pass = 0; pass < (ROWS + kRowsPerPass - 1) / kRowsPerPass; ++pass) {
    const int r = r0 + pass * kRowsPerPass;
    if (ROWS % kRowsPerPass != 0 && r >= ROWS) break;
    const int j = key0 + r;
    const bool valid = j >= lo && j <= hi;
    const T* src = valid ? head.key_row(j) + ch * 8 : head.cache;
    cp_async_16(smem_u32(smem + r * (W + kSmemPad) + ch * 8), src, valid);
  }
}

// Copies the tile's packed query rows: tile row r is slot row R = row0 + r, i.e. token R / G of
// the slot (global row tok0 + R / G) and query head kv_head * G + R % G. Rows >= rows_here are
// zero-filled.
template <typename T, int D, int BM, int NT, int GROUP>
__device__ __forceinline__ void load_q_tile(T* smem, const T* q, int64_t row_stride, int64_t head_stride,
                                            int64_t tok0, int row0, int rows_here, int kv_head, int group,
                                            int tid) {
  const int G = GROUP > 0 ? GROUP : group;
  constexpr int kChunks = D / 8;
  constexpr int kRowsPerPass = NT / kChunks;
  static_assert(kRowsPerPass >= 1, "a pass covers at least one row");
  const int ch = tid % kChunks;
  const int r0 = tid / kChunks;
  if (r0 >= kRowsPerPass) return;
#pragma unroll 1
  for (int r = r0; r < BM; r += kRowsPerPass) {
    const bool valid = r < rows_here;
    const T* src = q;
    if (valid) {
      const int R = row0 + r;
      const int64_t head = int64_t(kv_head) * G + R % G;
      src = q + (tok0 + R / G) * row_stride + head * head_stride + ch * 8;
    }
    cp_async_16(smem_u32(smem + r * (D + kSmemPad) + ch * 8), src, valid);
  }
}

}  // namespace paddle_gqa::cuda::attn
