// Host side of the Hopper prefill kernel's K / V copies: the two TMA tensor maps over the paged
// caches, built per call (they hold the cache pointers) and passed to the kernel as a
// __grid_constant__ argument.
//
// A cache [num_blocks][Hkv][block_size][W] is viewed as a 2-D tensor of num_blocks * Hkv *
// block_size rows of W elements: row ((block * Hkv + h) << log2(block_size)) + slot is key `slot`
// of block `block`, head h. A box is 64 elements (128 bytes, one swizzle panel) by
// kv_box_rows(block_size) rows: a 64-key aligned run of keys never crosses a block when the block
// holds >= 64 keys, and is block_size / 64 whole blocks' rows otherwise, so each box is one block's
// contiguous rows of one head. The 128-byte swizzle of the copy is the layout hopper_wgmma.cuh's
// descriptors read.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../cuda_check.h"
#include "attention_params.h"
#include "paddle_gqa/errors.h"

namespace paddle_gqa::cuda::attn {

struct HopperKvMaps {
  CUtensorMap k;  // rows of D elements
  CUtensorMap v;  // rows of Dv elements
};

// Rows of one box: keys of one block and head that a 64-key aligned run holds.
__host__ __device__ constexpr int kv_box_rows(int block_size) { return block_size < 64 ? block_size : 64; }

namespace detail {

using EncodeTiledFn = decltype(&cuTensorMapEncodeTiled);

// The driver's cuTensorMapEncodeTiled, looked up once through the runtime (the module does not link
// libcuda).
inline EncodeTiledFn encode_tiled_fn() {
  static EncodeTiledFn fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    PGQA_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &found));
#else
    PGQA_CUDA_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &ptr, cudaEnableDefault, &found));
#endif
    PGQA_CHECK_ARG(found == cudaDriverEntryPointSuccess && ptr != nullptr,
                   "the CUDA driver has no cuTensorMapEncodeTiled (the Hopper prefill kernel needs a CUDA 12 driver)");
    return reinterpret_cast<EncodeTiledFn>(ptr);
  }();
  return fn;
}

template <typename T>
void encode_kv_map(CUtensorMap* map, const void* cache, int64_t rows, int width, int block_size, const char* name) {
  static_assert(std::is_same_v<T, half> || std::is_same_v<T, __nv_bfloat16>, "b16 caches");
  const cuuint64_t dims[2] = {cuuint64_t(width), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(width) * sizeof(T)};
  const cuuint32_t box[2] = {64u, cuuint32_t(kv_box_rows(block_size))};
  const cuuint32_t elem_strides[2] = {1u, 1u};
  const CUtensorMapDataType dtype =
      std::is_same_v<T, half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult r = encode_tiled_fn()(map, dtype, 2, const_cast<void*>(cache), dims, strides, box, elem_strides,
                                       CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                       CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  PGQA_CHECK_ARG(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for ", name, " at ", cache,
                 ": ", rows, " rows of ", width, " elements, block_size ", block_size,
                 " (expected a 16-byte aligned contiguous cache)");
}

}  // namespace detail

// The tensor maps of p.k_cache / p.v_cache, [p.num_blocks][Hkv][2^block_size_log2][D or Dv].
template <typename T>
HopperKvMaps make_hopper_kv_maps(const AttentionParams& p, int d, int dv) {
  const int block_size = 1 << p.block_size_log2;
  const int64_t rows = p.num_blocks * p.num_kv_heads * block_size;
  // Box coordinates are int32.
  PGQA_CHECK_ARG(rows < (int64_t(1) << 31), "key_cache/value_cache hold ", rows,
                 " rows (num_blocks x Hkv x block_size): the Hopper prefill kernel addresses at most 2^31 - 1");
  // A call's prefill and decode launches, and the next calls of a layer loop over the same caches,
  // reuse the last maps built on this thread (the encoding is host work on the launch path).
  struct Key {
    const void* k;
    const void* v;
    int64_t rows;
    int d, dv, block_size;
    bool operator==(const Key& o) const {
      return k == o.k && v == o.v && rows == o.rows && d == o.d && dv == o.dv && block_size == o.block_size;
    }
  };
  thread_local Key last_key{};
  thread_local HopperKvMaps last_maps{};
  const Key key{p.k_cache, p.v_cache, rows, d, dv, block_size};
  if (key == last_key) return last_maps;
  HopperKvMaps maps{};
  detail::encode_kv_map<T>(&maps.k, p.k_cache, rows, d, block_size, "key_cache");
  detail::encode_kv_map<T>(&maps.v, p.v_cache, rows, dv, block_size, "value_cache");
  last_key = key;
  last_maps = maps;
  return maps;
}

}  // namespace paddle_gqa::cuda::attn
