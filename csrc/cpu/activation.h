// The activations of the CPU kernels' epilogues, as the op schemas spell them.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

namespace videoconv {

enum Activation : int { kIdentity = 0, kRelu = 1, kSilu = 2 };

// "relu" / "silu" / "identity" (the Python side has already mapped aliases such as "swish");
// anything else is an error naming the op.
inline int activation_code(c10::string_view activation, const char* op) {
  if (activation == "relu") return kRelu;
  if (activation == "silu") return kSilu;
  TORCH_CHECK(activation == "identity", op, ": unknown activation '", std::string(activation),
              "'");
  return kIdentity;
}

}  // namespace videoconv
