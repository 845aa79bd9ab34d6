// 16 (or 8) float lanes as one value, for the element-wise and transform loops of the CPU
// kernels (conv3d_winograd.cpp, squeeze_excitation.cpp, the AVX2 epilogue of
// conv3d_pointwise.cpp): GCC vector types, loads and stores for
// float32 and bfloat16, relu, and a vectorised exp. Internal linkage (static), so that each file's
// multi-versioned (target_clones) loops inline their own copies; forced_lanes is the exception,
// one flag for the whole library.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <cstring>

// The 64-byte vector helpers below are inline; GCC warns that passing them by value would have a
// different ABI with and without AVX-512, which cannot matter for functions that are inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

// One multi-versioned copy of a hot loop per ISA level, chosen at load time: the package is
// built for the baseline x86-64 ISA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VIDEOCONV_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define VIDEOCONV_X86_GCC 1
#else
#define VIDEOCONV_ISA_CLONES
#define VIDEOCONV_X86_GCC 0
#endif

namespace videoconv {
namespace vec16 {

constexpr int64_t kLanes = 16;

// 16 float lanes as one value: GCC's vector extension, lowered to one AVX-512, two AVX2 or four
// SSE registers per value by the clones above. Written this way (not as loops over float[16])
// the 6x6 tiles of the transforms stay in registers; the loop form spilled them to the stack
// and reloaded them lane by lane (store-forwarding stalls, ~3x slower transforms).
typedef float vf16 __attribute__((vector_size(64)));
// 8 float lanes: one AVX2 register (see "Vector width" below).
typedef float vf8 __attribute__((vector_size(32)));

// Vector width. GCC lowers a 16-lane value in the AVX2 clone to two ymm registers, and most
// arithmetic on it to two instructions, but not everything: a select (x > c ? c : x) becomes a
// scalar compare and blend per lane, and a 64-byte store or memcpy a spill of both halves and
// four 16-byte copies from the stack (store-forwarding stalls). In the AVX2 clone that made the
// Swish of squeeze_excitation.cpp ~3x slower than ATen's on Zen 3. So:
// - the loops that select (activations, exp) are templates on the vector type, instantiated for
//   vf16 and vf8 in every clone and chosen once per call by wide_vectors(): vf16 where 16 float
//   lanes are one register (AVX-512), vf8 elsewhere. Both compute the same values lane by lane.
// - vf16 stores are written as two 8-lane halves: two vmovups in the AVX2 clone; the AVX-512
//   clone pays one lane shuffle per store (Zen 4 splits a 64-byte store in two anyway).
// - bit casts are vector casts, not std::memcpy.
//
// forced_lanes: 0 (the CPU decides), 8 or 16; set by videoconv::_cpu_vector_lanes
// (squeeze_excitation.cpp) so that the tests run both widths on any CPU. 8 also makes an AVX-512
// CPU run the AVX2 variant of the 1x1x1 kernel (conv3d_pointwise.cpp, pointwise_variant()).
inline std::atomic<int> forced_lanes{0};

static inline bool wide_vectors() {
  const int forced = forced_lanes.load(std::memory_order_relaxed);
  if (forced != 0) return forced == 16;
#if VIDEOCONV_X86_GCC
  static const bool wide = __builtin_cpu_supports("avx512f");
  return wide;
#else
  return false;
#endif
}

// Whether the CPU has AVX-512 F/BW/VL/DQ and AVX512-BF16: what the intrinsic kernels compiled for
// that target need (the 1x1x1 kernel in conv3d_pointwise.cpp, scale_act's loops in
// squeeze_excitation.cpp). One copy per translation unit (static), each evaluated once.
static inline bool cpu_has_avx512_bf16() {
#if VIDEOCONV_X86_GCC
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return has;
#else
  return false;
#endif
}

// Per width: its lane count, the integer vectors of the same width, and the types that view
// memory at any element-aligned address (unaligned vmovups) and may alias the tensors' float /
// bfloat16 data. Width<vf16> and Width<vf8>.
template <int64_t N>
struct LaneTypes {
  static constexpr int64_t lanes = N;
  typedef uint32_t bits __attribute__((vector_size(4 * N)));
  typedef int32_t signed_bits __attribute__((vector_size(4 * N)));
  typedef uint16_t bf16_bits __attribute__((vector_size(2 * N)));
  typedef float mem __attribute__((vector_size(4 * N), aligned(4), may_alias));
  typedef uint16_t bf16_mem __attribute__((vector_size(2 * N), aligned(2), may_alias));
};
template <typename V>
struct Width : LaneTypes<sizeof(V) / sizeof(float)> {};

template <typename V>
__attribute__((always_inline)) static inline V load(const float* p) {
  return *reinterpret_cast<const typename Width<V>::mem*>(p);
}
template <typename V>
__attribute__((always_inline)) static inline V load(const at::BFloat16* p) {
  using W = Width<V>;
  const typename W::bf16_bits h = *reinterpret_cast<const typename W::bf16_mem*>(p);
  return reinterpret_cast<V>(__builtin_convertvector(h, typename W::bits) << 16);
}
__attribute__((always_inline)) static inline void store(vf8 v, float* p) {
  *reinterpret_cast<Width<vf8>::mem*>(p) = v;
}
__attribute__((always_inline)) static inline void store(vf16 v, float* p) {
  store(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), p);
  store(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), p + 8);
}
// Round to nearest even, NaN kept a quiet NaN: c10::BFloat16's conversion, as vector integer
// arithmetic (the scalar conversion does not vectorise and costs as much as the transform).
template <typename V>
__attribute__((always_inline)) static inline void store(V v, at::BFloat16* p) {
  using W = Width<V>;
  using U = typename W::bits;
  const U bits = reinterpret_cast<U>(v);
  const U rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  // All-ones lanes where v is NaN (|v|'s bits above infinity's), by integer arithmetic rather
  // than a comparison (which the AVX2 clone would do lane by lane for vf16): 0x7F800000 - |v| is
  // negative exactly there, and an arithmetic shift spreads the sign bit.
  const U nan = reinterpret_cast<U>(
      (0x7F800000 - reinterpret_cast<typename W::signed_bits>(bits & 0x7FFFFFFFu)) >> 31);
  const U out = (rounded & ~nan) | (nan & 0x7FC0u);
  *reinterpret_cast<typename W::bf16_mem*>(p) =
      __builtin_convertvector(out, typename W::bf16_bits);
}

// The first n < lanes values only (the last group of channels that are not a multiple of the
// width): through a full-width buffer, so that nothing past the tensor's end is read or written.
template <typename V, typename T>
static inline V load_first(const T* p, int64_t n) {
  T buf[Width<V>::lanes] = {};
  std::memcpy(buf, p, n * sizeof(T));
  return load<V>(buf);
}
template <typename V, typename T>
static inline void store_first(V v, T* p, int64_t n) {
  T buf[Width<V>::lanes];
  store(v, buf);
  std::memcpy(p, buf, n * sizeof(T));
}

// The 16-lane names the transforms use.
template <typename T>
__attribute__((always_inline)) static inline vf16 load16(const T* p) {
  return load<vf16>(p);
}
template <typename T>
__attribute__((always_inline)) static inline void store16(vf16 v, T* p) {
  store(v, p);
}
template <typename T>
static inline vf16 load16_first(const T* p, int64_t n) {
  return load_first<vf16>(p, n);
}
template <typename T>
static inline void store16_first(vf16 v, T* p, int64_t n) {
  store_first(v, p, n);
}

// max(x, 0) with NaN kept NaN (of either sign), as torch.relu, by integer arithmetic: lanes with
// the sign bit set that are not NaN become +0. No select, so it is cheap at any width in any
// clone (the Winograd epilogue applies it to vf16 values in the AVX2 clone too).
template <typename V>
__attribute__((always_inline)) static inline V vrelu(V x) {
  using U = typename Width<V>::bits;
  using S = typename Width<V>::signed_bits;
  const U bits = reinterpret_cast<U>(x);
  const U negative = reinterpret_cast<U>(reinterpret_cast<S>(bits) >> 31);
  const U nan = reinterpret_cast<U>((0x7F800000 - reinterpret_cast<S>(bits & 0x7FFFFFFFu)) >> 31);
  return reinterpret_cast<V>(bits & ~(negative & ~nan));
}

// exp(x), lane by lane: Cephes' expf (range reduction by ln 2 in two parts, a degree-5
// polynomial, the power of two built in the exponent bits), ~2 ulp for finite inputs; below
// -87.3 it gives ~1e-38 instead of a denormal or 0 and above 88.7 ~3.4e38 instead of inf
// (for silu, u / (1 + exp(-u)), both give the limit in float32). NaN in, NaN out (the clamps'
// comparisons are false for NaN). Use it at the CPU's width (wide_vectors()): it selects.
// (The conv kernels' epilogues call std::exp per lane, a small part of their time; an
// element-wise pass such as a Swish is almost nothing but this exp.)
template <typename V>
__attribute__((always_inline)) static inline V vexp(V x) {
  const V hi = x > 88.7f ? 88.7f : x;
  x = hi < -87.3f ? -87.3f : hi;
  // n = round(x / ln 2): adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
  const V n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const V r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V y = p * r * r + r + 1.f;
  using S = typename Width<V>::signed_bits;
  const S bits = (__builtin_convertvector(n, S) + 127) << 23;
  return y * reinterpret_cast<V>(bits);
}

// silu(u) = u * sigmoid(u) = u / (1 + exp(-u)).
template <typename V>
__attribute__((always_inline)) static inline V vsilu(V u) {
  return u / (1.f + vexp(-u));
}

}  // namespace vec16
}  // namespace videoconv
