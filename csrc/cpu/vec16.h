// 16 float lanes as one value, for the element-wise and transform loops of the CPU kernels
// (conv3d_winograd.cpp, squeeze_excitation.cpp): GCC vector types, loads and stores for float32
// and bfloat16, and a vectorised exp. Internal linkage (static), so that each file's
// multi-versioned (target_clones) loops inline their own copies.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

// The 64-byte vector helpers below are inline; GCC warns that passing them by value would have a
// different ABI with and without AVX-512, which cannot matter for functions that are inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

// One multi-versioned copy of a hot loop per ISA level, chosen at load time: the package is
// built for the baseline x86-64 ISA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VIDEOCONV_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VIDEOCONV_ISA_CLONES
#endif

namespace videoconv {
namespace vec16 {

constexpr int64_t kLanes = 16;

// 16 float lanes as one value: GCC's vector extension, lowered to one AVX-512, two AVX2 or four
// SSE registers per value by the clones above. Written this way (not as loops over float[16])
// the 6x6 tiles of the transforms stay in registers; the loop form spilled them to the stack
// and reloaded them lane by lane (store-forwarding stalls, ~3x slower transforms).
typedef float vf16 __attribute__((vector_size(64)));
typedef uint32_t vu16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef uint16_t vh16 __attribute__((vector_size(32)));

static inline vf16 load16(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
static inline vf16 load16(const at::BFloat16* p) {
  vh16 h;
  std::memcpy(&h, p, sizeof(h));
  const vu16 bits = __builtin_convertvector(h, vu16) << 16;
  vf16 v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
static inline void store16(vf16 v, float* p) { std::memcpy(p, &v, sizeof(v)); }
// Round to nearest even, NaN kept a quiet NaN: c10::BFloat16's conversion, as vector integer
// arithmetic (the scalar conversion does not vectorise and costs as much as the transform).
static inline void store16(vf16 v, at::BFloat16* p) {
  vu16 bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const vu16 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const vi16 nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;  // all-ones lanes where v is NaN
  const vu16 out = (rounded & ~vu16(nan)) | (vu16(nan) & 0x7FC0u);
  const vh16 h = __builtin_convertvector(out, vh16);
  std::memcpy(p, &h, sizeof(h));
}

// The first n < 16 lanes only (the last group of channels that are not a multiple of 16):
// through a 16-wide buffer, so that nothing past the tensor's end is read or written.
template <typename T>
static inline vf16 load16_first(const T* p, int64_t n) {
  T buf[kLanes] = {};
  std::memcpy(buf, p, n * sizeof(T));
  return load16(buf);
}
template <typename T>
static inline void store16_first(vf16 v, T* p, int64_t n) {
  T buf[kLanes];
  store16(v, buf);
  std::memcpy(p, buf, n * sizeof(T));
}

// exp(x) for 16 lanes: Cephes' expf (range reduction by ln 2 in two parts, a degree-5
// polynomial, the power of two built in the exponent bits), ~2 ulp for finite inputs; below
// -87.3 it gives ~1e-38 instead of a denormal or 0 and above 88.7 ~3.4e38 instead of inf
// (for silu, u / (1 + exp(-u)), both give the limit in float32). NaN in, NaN out.
// (The conv kernels' epilogues call std::exp per lane, a small part of their time; an
// element-wise pass such as a Swish is almost nothing but this exp.)
__attribute__((always_inline)) static inline vf16 exp16(vf16 x) {
  const vf16 hi = x > 88.7f ? 88.7f : x;
  x = hi < -87.3f ? -87.3f : hi;
  // n = round(x / ln 2): adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
  const vf16 n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const vf16 r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  vf16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf16 y = p * r * r + r + 1.f;
  const vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23;
  vf16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// silu(u) = u * sigmoid(u) = u / (1 + exp(-u)).
__attribute__((always_inline)) static inline vf16 silu16(vf16 u) { return u / (1.f + exp16(-u)); }

}  // namespace vec16
}  // namespace videoconv
