// Plain C entry points of the op library, called through ctypes by paddle_gqa/_load.py: how it was
// built, and the check for device-side input errors recorded during CUDA graph capture or by ops
// given a plan.
#include <cstring>
#include <exception>

#include "paddle_gqa/errors.h"
#include "paddle_gqa/launchers.h"

namespace {

void copy_message(const char* what, char* message, int capacity) {
  if (message == nullptr || capacity <= 0) return;
  std::strncpy(message, what, static_cast<size_t>(capacity) - 1);
  message[capacity - 1] = '\0';
}

}  // namespace

extern "C" {

// 1 when the CUDA kernels are compiled in.
__attribute__((visibility("default"))) int paddle_gqa_built_with_cuda() {
#ifdef PADDLE_GQA_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

// Raises (as a return code plus message) the first input error the CUDA kernels recorded on
// `device_id` while a graph was being captured or in an op given a plan, and clears it. 0: none; 1: invalid argument
// (message filled); 2: CUDA runtime failure (message filled). Always 0 without CUDA.
__attribute__((visibility("default"))) int paddle_gqa_check_errors(int device_id, char* message,
                                                                   int capacity) {
#ifdef PADDLE_GQA_WITH_CUDA
  try {
    paddle_gqa::cuda::check_errors(device_id);
  } catch (const paddle_gqa::InvalidArgument& e) {
    copy_message(e.what(), message, capacity);
    return 1;
  } catch (const std::exception& e) {
    copy_message(e.what(), message, capacity);
    return 2;
  }
#else
  (void)device_id;
  copy_message("", message, capacity);
#endif
  return 0;
}

}  // extern "C"
