// Consuming DLPack capsules (the DLPack Python protocol) into TensorViews.
#include "borrowed_tensor.h"

#include <string>
#include <utility>

#include "paddle_gqa/errors.h"

namespace py = pybind11;

namespace paddle_gqa::dlpack {
namespace {

DType dtype_of(const DLDataType& t) {
  if (t.lanes != 1) return DType::kOther;
  if (t.code == kDLFloat && t.bits == 32) return DType::kFloat32;
  if (t.code == kDLFloat && t.bits == 16) return DType::kFloat16;
  if (t.code == kDLBfloat && t.bits == 16) return DType::kBFloat16;
  if (t.code == kDLInt && t.bits == 32) return DType::kInt32;
  return DType::kOther;
}

DeviceKind device_of(const DLDevice& d) {
  if (d.device_type == kDLCPU) return DeviceKind::kCPU;
  if (d.device_type == kDLCUDA) return DeviceKind::kCUDA;
  return DeviceKind::kOther;  // pinned host, managed and other devices have no kernel
}

TensorView view_of(const DLTensor& t, const char* name) {
  PGQA_CHECK_ARG(t.ndim >= 0 && t.ndim <= kMaxViewRank, name, ": rank ", t.ndim,
                 " is not supported: expected a tensor of rank <= ", kMaxViewRank);
  TensorView v;
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.dtype = dtype_of(t.dtype);
  v.device = device_of(t.device);
  v.device_id = t.device.device_id;
  v.ndim = t.ndim;
  int64_t compact = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    v.shape[i] = t.shape[i];
    v.strides[i] = t.strides != nullptr ? t.strides[i] : compact;
    compact *= t.shape[i];
  }
  return v;
}

// The DLPack stream argument for a call on `stream`: 1 names the legacy default stream (0 is
// ambiguous in the protocol); per-thread default (2) and real streams pass through.
py::object dlpack_stream_arg(std::uintptr_t stream) { return py::int_(stream == 0 ? 1 : stream); }

// Asks a producer for a capsule, ordered on `stream` when the tensor lives on a CUDA device.
py::object capsule_from(py::handle obj, const char* name, std::uintptr_t stream) {
  if (!py::hasattr(obj, "__dlpack__")) {
    throw InvalidArgument(str(name, ": got an object of type ", std::string(py::str(py::type::of(obj).attr("__name__"))),
                              ", expected a DLPack tensor (an object with __dlpack__, e.g. a torch, cupy or "
                              "paddle tensor) or a DLPack capsule"));
  }
  py::object stream_arg = py::none();
  if (py::hasattr(obj, "__dlpack_device__")) {
    py::tuple dev = obj.attr("__dlpack_device__")();
    if (py::int_(dev[0]).cast<int>() == kDLCUDA) stream_arg = dlpack_stream_arg(stream);
  }
  try {
    return obj.attr("__dlpack__")(py::arg("stream") = stream_arg,
                                  py::arg("max_version") = py::make_tuple(kSupportedMajor, 0));
  } catch (py::error_already_set& e) {
    // Producers older than DLPack 1.0 take no max_version.
    if (!e.matches(PyExc_TypeError)) throw;
  }
  return obj.attr("__dlpack__")(py::arg("stream") = stream_arg);
}

}  // namespace

BorrowedTensor::BorrowedTensor(BorrowedTensor&& other) noexcept
    : legacy_(std::exchange(other.legacy_, nullptr)),
      versioned_(std::exchange(other.versioned_, nullptr)),
      view_(other.view_) {}

BorrowedTensor& BorrowedTensor::operator=(BorrowedTensor&& other) noexcept {
  if (this != &other) {
    release();
    legacy_ = std::exchange(other.legacy_, nullptr);
    versioned_ = std::exchange(other.versioned_, nullptr);
    view_ = other.view_;
  }
  return *this;
}

BorrowedTensor::~BorrowedTensor() { release(); }

void BorrowedTensor::release() {
  if (legacy_ != nullptr && legacy_->deleter != nullptr) legacy_->deleter(legacy_);
  if (versioned_ != nullptr && versioned_->deleter != nullptr) versioned_->deleter(versioned_);
  legacy_ = nullptr;
  versioned_ = nullptr;
}

BorrowedTensor BorrowedTensor::take(py::handle obj, const char* name, std::uintptr_t stream, bool optional,
                                    bool writable) {
  BorrowedTensor out;
  if (obj.is_none()) {
    PGQA_CHECK_ARG(optional, name, ": is required but was None");
    return out;
  }
  py::object capsule = PyCapsule_CheckExact(obj.ptr()) ? py::reinterpret_borrow<py::object>(obj)
                                                       : capsule_from(obj, name, stream);
  PyObject* cap = capsule.ptr();
  PGQA_CHECK_ARG(PyCapsule_CheckExact(cap), name, ": __dlpack__ did not return a PyCapsule");
  const char* cap_name = PyCapsule_GetName(cap);
  const std::string cap_str = cap_name ? cap_name : "";
  // Consuming a capsule renames it to used_*, after which its destructor no longer frees the
  // tensor: this object then owns it and calls the deleter after the launch.
  if (cap_str == kVersionedCapsuleName) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, kVersionedCapsuleName));
    if (m == nullptr) throw py::error_already_set();
    PGQA_CHECK_ARG(m->version.major == kSupportedMajor, name, ": DLPack version ", m->version.major, ".",
                   m->version.minor, " is not supported: expected major version ", kSupportedMajor);
    if (PyCapsule_SetName(cap, kUsedVersionedCapsuleName) != 0) throw py::error_already_set();
    out.versioned_ = m;
    PGQA_CHECK_ARG(!writable || (m->flags & kFlagReadOnly) == 0, name,
                   ": is a read-only DLPack tensor, but this op writes into it: pass a writable tensor");
    out.view_ = view_of(m->dl_tensor, name);
  } else if (cap_str == kCapsuleName) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, kCapsuleName));
    if (m == nullptr) throw py::error_already_set();
    if (PyCapsule_SetName(cap, kUsedCapsuleName) != 0) throw py::error_already_set();
    out.legacy_ = m;
    out.view_ = view_of(m->dl_tensor, name);
  } else {
    throw InvalidArgument(str(name, ": a PyCapsule named '", cap_str,
                              "', expected an unconsumed DLPack capsule ('dltensor' or 'dltensor_versioned'); "
                              "a capsule can be consumed only once"));
  }
  return out;
}

}  // namespace paddle_gqa::dlpack
