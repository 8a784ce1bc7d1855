// A framework-neutral view of one tensor: what both bindings (Paddle, DLPack) convert into.
#pragma once

#include <cstdint>

namespace paddle_gqa {

enum class DType : int { kFloat32, kFloat16, kBFloat16, kInt32, kOther };
enum class DeviceKind : int { kCPU, kCUDA, kOther };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    default: return "unsupported dtype";
  }
}

inline int dtype_bytes(DType t) {
  switch (t) {
    case DType::kFloat32: case DType::kInt32: return 4;
    case DType::kFloat16: case DType::kBFloat16: return 2;
    default: return 0;
  }
}

inline constexpr int kMaxViewRank = 4;

// A borrowed tensor. `ndim == -1` marks an absent optional input. Strides are in elements.
// The view owns nothing: the binding keeps the tensor (or DLPack capsule) alive while it is used.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kOther;
  DeviceKind device = DeviceKind::kOther;
  int device_id = 0;
  int ndim = -1;
  int64_t shape[kMaxViewRank] = {0, 0, 0, 0};
  int64_t strides[kMaxViewRank] = {0, 0, 0, 0};

  bool defined() const { return ndim >= 0; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  bool is_contiguous() const {
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
};

}  // namespace paddle_gqa
