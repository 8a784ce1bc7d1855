// The DLPack C ABI structs this module consumes (DLPack 1.x spec: dlpack.h, "DLTensor" and the
// managed variants), declared here from the spec so the build needs no DLPack header.
#pragma once

#include <cstdint>

namespace paddle_gqa::dlpack {

// DLDeviceType values this module distinguishes; any other value is some other device.
enum : int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };

// DLDataTypeCode values this module maps.
enum : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4 };

struct DLDevice {
  int32_t device_type;  // DLDeviceType (a C enum: int-sized)
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;    // DLDataTypeCode
  uint8_t bits;
  uint16_t lanes;  // 1 for scalar elements
};

struct DLTensor {
  void* data;             // base pointer; the first element is at data + byte_offset
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;         // [ndim]
  int64_t* strides;       // [ndim] in elements, or null for a compact row-major tensor
  uint64_t byte_offset;
};

// Capsule name "dltensor" (legacy, unversioned).
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

// Capsule name "dltensor_versioned" (DLPack >= 1.0). Its layout is fixed within a major version.
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;         // kFlagReadOnly | kFlagIsCopied
  DLTensor dl_tensor;
};

inline constexpr uint64_t kFlagReadOnly = 1u << 0;
inline constexpr uint32_t kSupportedMajor = 1;

inline constexpr const char* kCapsuleName = "dltensor";
inline constexpr const char* kUsedCapsuleName = "used_dltensor";
inline constexpr const char* kVersionedCapsuleName = "dltensor_versioned";
inline constexpr const char* kUsedVersionedCapsuleName = "used_dltensor_versioned";

}  // namespace paddle_gqa::dlpack
