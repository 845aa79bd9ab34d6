// Host-side helpers of videoconv's CUDA launchers that only need ATen (no CUDA runtime): the
// layout contract, operand preparation, dtype mapping. Shared with the CPU emulation test.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "conv_plan.h"
#include "device_common.cuh"

namespace videoconv {
namespace cuda {

inline int parse_activation(const std::string& name) {
  if (name == "relu") return kRelu;
  if (name == "silu" || name == "swish") return kSilu;
  if (name == "identity") return kIdentity;
  TORCH_CHECK(false, "videoconv CUDA kernels: unknown activation '", name,
              "' (expected relu, silu or identity)");
  return kIdentity;
}

inline cuda_plan::DType plan_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return cuda_plan::DType::kFloat16;
    case at::kBFloat16: return cuda_plan::DType::kBFloat16;
    case at::kFloat: return cuda_plan::DType::kFloat32;
    case at::kDouble: return cuda_plan::DType::kFloat64;
    default: return cuda_plan::DType::kUnknown;
  }
}

inline std::vector<int64_t> sizes_of(const at::Tensor& t) { return t.sizes().vec(); }

// The memory format of an operator's output for `input` (videoconv.backends.output_memory_format):
// channels_last_3d when the input is channels_last_3d and not also plain contiguous.
inline at::MemoryFormat output_memory_format(const at::Tensor& input) {
  if (input.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (input.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

// The kernels read and write NDHWC memory (channels_last_3d). An NCDHW input costs one copy in
// and one copy of the output back; the backend documents it.
inline at::Tensor ndhwc(const at::Tensor& t) {
  return t.contiguous(at::MemoryFormat::ChannelsLast3d);
}

// 128-bit accesses (vector loads, cp.async) need 16-byte aligned base pointers; a view with an
// odd storage offset is copied into a fresh allocation instead.
inline at::Tensor aligned(const at::Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0) return t;
  return t.clone(t.suggest_memory_format());
}

inline at::Tensor aligned_ndhwc(const at::Tensor& t) { return aligned(ndhwc(t)); }

inline at::Tensor empty_ndhwc(const at::Tensor& like, at::IntArrayRef size) {
  return at::empty(size, like.options().memory_format(at::MemoryFormat::ChannelsLast3d));
}

// Returns `y` (NDHWC) in the layout the caller expects for `input`.
inline at::Tensor to_output_layout(const at::Tensor& y, const at::Tensor& input) {
  return y.contiguous(output_memory_format(input));
}

inline void check_cuda_tensor(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.is_cuda(), "videoconv CUDA kernel: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == input.device(), "videoconv CUDA kernel: ", name,
              " is on ", t.device(), ", the input on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "videoconv CUDA kernel: ", name, " has dtype ",
              t.scalar_type(), ", the input ", input.scalar_type());
}

// Per-channel scale/shift as contiguous float32 (the epilogue computes in float32).
inline at::Tensor channel_vector(const at::Tensor& v, int64_t channels, const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == channels, "videoconv CUDA kernel: ", name,
              " must have one value per output channel (", channels, "), got size ", v.sizes());
  return v.to(at::kFloat).contiguous();
}

inline std::vector<int64_t> to_vec(at::IntArrayRef a) { return a.vec(); }

// Calls f(T{}) with the direct kernels' element type (__half, __nv_bfloat16, float) for a torch
// dtype; any other dtype is an error naming `what`.
template <typename F>
void dispatch_dtype(at::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case at::kHalf: f(__half()); break;
    case at::kBFloat16: f(__nv_bfloat16()); break;
    case at::kFloat: f(float()); break;
    default: TORCH_CHECK(false, what, ": unsupported dtype ", t, " (float16, bfloat16, float32)");
  }
}

}  // namespace cuda
}  // namespace videoconv
