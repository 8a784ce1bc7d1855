// The one exception type for bad input, and a message builder that names the argument.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace paddle_gqa {

// Raised for every invalid input, host-side or device-side. Bindings turn it into a Python
// ValueError (DLPack) or Paddle's error (Paddle ops); the message is the contract, not the type.
class InvalidArgument : public std::invalid_argument {
 public:
  explicit InvalidArgument(const std::string& what) : std::invalid_argument(what) {}
};

// Raised for CUDA runtime failures (launch errors, out of memory).
class RuntimeFailure : public std::runtime_error {
 public:
  explicit RuntimeFailure(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Concatenates its arguments into one message: str("block_size ", 24, " has no kernel").
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

}  // namespace paddle_gqa

// Throws InvalidArgument with the concatenated message when `cond` is false.
#define PGQA_CHECK_ARG(cond, ...)                                       \
  do {                                                                  \
    if (!(cond)) throw ::paddle_gqa::InvalidArgument(::paddle_gqa::str(__VA_ARGS__)); \
  } while (0)
