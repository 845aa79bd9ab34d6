// Device-side pieces shared by videoconv's direct CUDA kernels: activation, dtype conversions,
// vector accesses. No torch and no CUDA runtime dependency (only cuda_fp16.h/cuda_bf16.h), so
// the direct kernels also compile as host C++ for the CPU emulation test
// (tests/emulation/cuda_emulation.h, tests/test_cuda_emulation.py), which defines
// VIDEOCONV_EMULATION and its own versions of the two macros below.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#ifndef VIDEOCONV_EMULATION
// Dynamic shared memory of a kernel, 16-byte aligned for 128-bit accesses.
#define VIDEOCONV_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]
#define VIDEOCONV_SYNC() __syncthreads()
#endif

namespace videoconv {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// activation (codes shared with every kernel; "swish" is canonicalised to "silu" in Python)

enum Activation : int { kIdentity = 0, kRelu = 1, kSilu = 2 };

__device__ __forceinline__ float apply_activation(float u, int act) {
  if (act == kRelu) return u < 0.f ? 0.f : u;  // keeps NaN, as torch.relu does
  if (act == kSilu) return u / (1.f + __expf(-u));
  return u;
}

// ---------------------------------------------------------------------------------------------
// element types (torch builds with __CUDA_NO_HALF_CONVERSIONS__: conversions are explicit)

template <typename T>
struct Element;

template <>
struct Element<float> {
  __device__ __forceinline__ static float to_float(float x) { return x; }
  __device__ __forceinline__ static float from_float(float x) { return x; }
};

template <>
struct Element<__half> {
  __device__ __forceinline__ static float to_float(__half x) { return __half2float(x); }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct Element<__nv_bfloat16> {
  __device__ __forceinline__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) {
    return __float2bfloat16_rn(x);
  }
};

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return Element<T>::to_float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  return Element<T>::from_float(x);
}

// V consecutive elements moved as one access (V * sizeof(T) = 16 bytes gives 128-bit loads).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[V]) {
  const Vec<T, V> x = *reinterpret_cast<const Vec<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = to_float(x.v[i]);
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[V]) {
  Vec<T, V> x;
#pragma unroll
  for (int i = 0; i < V; ++i) x.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Vec<T, V>*>(p) = x;
}

// Floor division for possibly negative numerators (halo origins start above the padding).
// Use it with int in kernels: 64-bit division is a called subroutine (stack traffic).
template <typename I>
__host__ __device__ __forceinline__ I floor_div(I a, I b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

}  // namespace cuda
}  // namespace videoconv
