// A DLPack tensor taken from one Python argument for the length of one call, seen as a TensorView.
#pragma once

#include <cstdint>

#include <pybind11/pybind11.h>

#include "dlpack_abi.h"
#include "paddle_gqa/tensor_view.h"

namespace paddle_gqa::dlpack {

// Owns the consumed DLPack capsule's managed tensor and calls its deleter when destroyed (with the
// GIL held: a deleter may release a Python object). Move-only; default-constructed = absent input.
class BorrowedTensor {
 public:
  BorrowedTensor() = default;
  BorrowedTensor(BorrowedTensor&& other) noexcept;
  BorrowedTensor& operator=(BorrowedTensor&& other) noexcept;
  BorrowedTensor(const BorrowedTensor&) = delete;
  BorrowedTensor& operator=(const BorrowedTensor&) = delete;
  ~BorrowedTensor();

  // `obj`: None (absent; only when `optional`), an object with __dlpack__, or a DLPack capsule.
  // `stream`: the cudaStream_t the call runs on (0 = legacy default), handed to __dlpack__ so the
  // producer orders its pending work before it. `writable`: refuse a read-only tensor.
  static BorrowedTensor take(pybind11::handle obj, const char* name, std::uintptr_t stream, bool optional,
                             bool writable);

  const TensorView& view() const { return view_; }

 private:
  void release();

  DLManagedTensor* legacy_ = nullptr;
  DLManagedTensorVersioned* versioned_ = nullptr;
  TensorView view_;
};

}  // namespace paddle_gqa::dlpack
