// The element-wise ends of Squeeze-and-Excitation (Hu et al.), as X3D uses it:
//
//   s = sigmoid(W2 relu(W1 mean_{D,H,W}(x)))      (the 1x1x1 convolutions run elsewhere)
//   y = act(x * s)                                (X3D: act = Swish, right after the SE block)
//
// videoconv::_channel_mean_cpu(x)           -> (N, C, 1, 1, 1): the mean over D, H, W
// videoconv::_scale_act_cpu(x, s, act)      -> act(x * s), s of size (N, C, 1, 1, 1)
//
// Why: in eager PyTorch these are three passes over the block's biggest tensor (pool, multiply,
// Swish), the first two rounding to the dtype, and ATen's channels_last_3d pool of a 54- or
// 108-channel map runs at ~7 GB/s (its vectors do not line up with the channels). Here the pool
// is one pass at memory speed and the scale and the activation are one pass, in float32, rounded
// once. Measured on the 2-core Zen 4 (bfloat16, channels_last_3d, 54 channels @13x40x40): pool
// 263 -> 48 µs, scale + Swish 498 -> 384 µs (the Swish's exp, not memory, bounds that one: ~20
// vector operations per 16 values, as in ATen's). In X3D-S's fused forward: ~1.4 ms of ~29
// (bfloat16) and ~2 ms of ~43 (float32), with the fused graph calling the kernels directly.
// On the 2-core Zen 3 (AVX2), float32, scale + Swish: 437 µs against ATen's mul and silu's 632
// (54 channels @13x40x40), 131 against 165 (216 @13x10x10); the loops run 8 lanes wide there
// (vec16.h, "Vector width"). Written 16 wide they took 1855 and 547 µs, 3-4x ATen's.
//
// Layouts: channels_last_3d and contiguous NCDHW. In channels_last_3d, 16 consecutive
// positions are 16 C values, i.e. exactly C vectors of 16 whatever C is, and lane l of vector v
// is always channel (16 v + l) mod C: the loops step through such blocks (no partial vector per
// position for X3D's 54 and 108 channels) with the scale laid out once in that pattern, and the
// pool folds the lanes back to channels at the end. In NCDHW a channel's D*H*W values are
// contiguous: one scale per plane. Float32 and bfloat16; the Python side
// (videoconv/ops/squeeze_excitation.py) computes other dtypes, and other devices, with ATen.
// Indices are 64-bit throughout.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "activation.h"

#include "vec16.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace videoconv {
namespace {

using namespace vec16;

template <typename V>
__attribute__((always_inline)) inline V activate(V u, int activation) {
  if (activation == kRelu) return vrelu(u);  // NaN stays NaN, as in torch.relu
  if (activation == kSilu) return vsilu(u);
  return u;
}

// ---------------------------------------------------------------------------------------------
// channel mean

// Positions per work item: a fixed split (not the thread count), so that the float32 partial
// sums, merged in item order, give the same bits on any number of threads. Chunks are summed in
// float32 (at most 2048 / 16 = 128 values per accumulator) and the chunk sums added in float64:
// a float32 running total of a whole plane stops absorbing its values once it is ~2^24 times
// their size (a plane of 2^27 values of 3 averaged to 3.33, summed in 16 float32 lanes); the
// float64 total adds ~1e-16 of relative error per chunk, whatever the plane's size.
constexpr int64_t kMeanChunk = 2048;  // a multiple of 16 (see channel_mean_cl_items)

// channels_last_3d. A sample's values are one flat run, position after position, C channels
// each. 16 consecutive positions are 16 C values: exactly C vectors of 16, whatever C is, and
// lane l of vector v always holds channel (16 v + l) mod C. So the loops below step through
// blocks of 16 positions as C whole vectors (no partial vector per position when C is not a
// multiple of 16, as for X3D's 54 and 108 channels), and fold the lanes to channels at the end.
// Work items are chunks of kMeanChunk positions (a multiple of 16, so every chunk starts on a
// block boundary); their float32 partial sums are merged in item order, in float64, so the
// result does not depend on the thread count. The loops are in their own multi-versioned
// functions: a lambda passed to at::parallel_for would be compiled for the baseline ISA only.
template <typename T>
VIDEOCONV_ISA_CLONES void channel_mean_cl_items(const T* x, float* partial, int64_t channels,
                                                int64_t positions, int64_t chunks, int64_t i0,
                                                int64_t i1) {
  std::vector<float> acc(channels * kLanes);
  for (int64_t item = i0; item < i1; item++) {
    const int64_t n = item / chunks, chunk = item % chunks;
    const int64_t p0 = chunk * kMeanChunk, p1 = std::min(positions, p0 + kMeanChunk);
    const T* in = x + (n * positions + p0) * channels;
    std::fill(acc.begin(), acc.end(), 0.f);
    const int64_t blocks = (p1 - p0) / kLanes;
    for (int64_t b = 0; b < blocks; b++, in += kLanes * channels) {
      for (int64_t v = 0; v < channels; v++) {
        store16(load16(acc.data() + v * kLanes) + load16(in + v * kLanes), acc.data() + v * kLanes);
      }
    }
    // the last < 16 positions: flat values in the same lanes as a block's
    const int64_t rest = (p1 - p0 - blocks * kLanes) * channels;
    for (int64_t i = 0; i < rest; i += kLanes) {
      const int64_t valid = std::min(kLanes, rest - i);
      store16(load16(acc.data() + i) + load16_first(in + i, valid), acc.data() + i);
    }
    // lane k of the block holds channel k mod C: block row b is channels 0 .. C-1 again
    float* out = partial + item * channels;
    std::fill(out, out + channels, 0.f);
    for (int64_t b = 0; b < kLanes; b++)
      for (int64_t c = 0; c < channels; c++) out[c] += acc[b * channels + c];
  }
}

template <typename T>
void channel_mean_cl(const T* x, T* out, int64_t batch, int64_t channels, int64_t positions) {
  const int64_t chunks = (positions + kMeanChunk - 1) / kMeanChunk;
  std::vector<float> partial(batch * chunks * channels);
  at::parallel_for(0, batch * chunks, 1, [&](int64_t i0, int64_t i1) {
    channel_mean_cl_items<T>(x, partial.data(), channels, positions, chunks, i0, i1);
  });
  for (int64_t n = 0; n < batch; n++) {
    for (int64_t c = 0; c < channels; c++) {
      double sum = 0.0;
      for (int64_t chunk = 0; chunk < chunks; chunk++)
        sum += partial[(n * chunks + chunk) * channels + c];
      out[n * channels + c] = static_cast<T>(static_cast<float>(sum / positions));
    }
  }
}

// contiguous NCDHW: planes i0 .. i1 - 1, each in chunks of kMeanChunk values summed in 16
// float32 lanes, then across them, the chunk sums added in float64.
template <typename T>
VIDEOCONV_ISA_CLONES void channel_mean_planes_items(const T* x, T* out, int64_t positions,
                                                    int64_t i0, int64_t i1) {
  for (int64_t plane = i0; plane < i1; plane++) {
    const T* p = x + plane * positions;
    double total = 0.0;
    for (int64_t c0 = 0; c0 < positions; c0 += kMeanChunk) {
      const int64_t c1 = std::min(positions, c0 + kMeanChunk);
      vf16 acc = {};
      int64_t i = c0;
      for (; i + kLanes <= c1; i += kLanes) acc += load16(p + i);
      if (i < c1) acc += load16_first(p + i, c1 - i);
      float sum = 0.f;
      for (int l = 0; l < kLanes; l++) sum += acc[l];
      total += sum;
    }
    out[plane] = static_cast<T>(static_cast<float>(total / positions));
  }
}

template <typename T>
void channel_mean_planes(const T* x, T* out, int64_t planes, int64_t positions) {
  at::parallel_for(0, planes, 1, [&](int64_t i0, int64_t i1) {
    channel_mean_planes_items<T>(x, out, positions, i0, i1);
  });
}

bool is_channels_last(const at::Tensor& x) {
  // A tensor that is both (C == 1 or D*H*W == 1) counts as contiguous, as in the Python ops.
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

void check_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 5, op, ": input must be 5-D (N, C, D, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
              ": input must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast3d), op,
              ": input must be contiguous or channels_last_3d");
}

at::Tensor channel_mean_cpu(const at::Tensor& x) {
  check_input(x, "_channel_mean_cpu");
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t positions = x.size(2) * x.size(3) * x.size(4);
  TORCH_CHECK(positions > 0 || batch * channels == 0,
              "_channel_mean_cpu: input has no positions to average (D*H*W == 0)");
  auto out = at::empty({batch, channels, 1, 1, 1}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_SWITCH(x.scalar_type(), "_channel_mean_cpu",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      if (is_channels_last(x)) {
        channel_mean_cl<float>(x.data_ptr<float>(), out.data_ptr<float>(), batch, channels,
                               positions);
      } else {
        channel_mean_planes<float>(x.data_ptr<float>(), out.data_ptr<float>(), batch * channels,
                                   positions);
      }
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      using T = at::BFloat16;
      if (is_channels_last(x)) {
        channel_mean_cl<T>(x.data_ptr<T>(), out.data_ptr<T>(), batch, channels, positions);
      } else {
        channel_mean_planes<T>(x.data_ptr<T>(), out.data_ptr<T>(), batch * channels, positions);
      }
    }));
  return out;
}

// ---------------------------------------------------------------------------------------------
// scale and activation

// Positions per work item in channels_last_3d (a multiple of 16), values per item in NCDHW.
constexpr int64_t kScalePositions = 256;
constexpr int64_t kScalePlane = 16384;

// A sample's scale laid out for a block of 16 positions, scale[k mod C] for 16 C lanes (see
// channel_mean_cl_items): what both scale_act loops below multiply by.
template <typename T>
inline void fill_scale_pattern(const T* s, int64_t channels, std::vector<float>& pattern) {
  for (int64_t c = 0; c < channels; c++) pattern[c] = static_cast<float>(s[c]);
  for (int64_t b = 1; b < kLanes; b++)
    std::copy(pattern.begin(), pattern.begin() + channels, pattern.begin() + b * channels);
}

// channels_last_3d, items i0 .. i1 - 1 (a sample's chunk of kScalePositions positions each, a
// multiple of 16): blocks of 16 positions are C whole vectors (see channel_mean_cl_items), so
// the scale is laid out once per sample in that pattern, scale[k mod C] for 16 C lanes, and
// stays in L1 while the sample's positions stream through.
template <typename V, typename T>
__attribute__((always_inline)) inline void scale_act_cl_items_at(const T* x, const T* s, T* y,
                                                                 int64_t channels,
                                                                 int64_t positions, int64_t chunks,
                                                                 int activation, int64_t i0,
                                                                 int64_t i1) {
  constexpr int64_t lanes = Width<V>::lanes;  // divides kLanes: a block is C * kLanes values
  std::vector<float> pattern(channels * kLanes);
  int64_t pattern_of = -1;
  for (int64_t item = i0; item < i1; item++) {
    const int64_t n = item / chunks, chunk = item % chunks;
    if (n != pattern_of) {
      fill_scale_pattern(s + n * channels, channels, pattern);
      pattern_of = n;
    }
    const int64_t p0 = chunk * kScalePositions, p1 = std::min(positions, p0 + kScalePositions);
    const int64_t offset = (n * positions + p0) * channels;
    const T* in = x + offset;
    T* out = y + offset;
    const int64_t blocks = (p1 - p0) / kLanes;
    for (int64_t b = 0; b < blocks; b++, in += kLanes * channels, out += kLanes * channels) {
      for (int64_t i = 0; i < kLanes * channels; i += lanes) {
        store(activate(load<V>(in + i) * load<V>(pattern.data() + i), activation), out + i);
      }
    }
    const int64_t rest = (p1 - p0 - blocks * kLanes) * channels;
    for (int64_t i = 0; i < rest; i += lanes) {
      const int64_t valid = std::min(lanes, rest - i);
      const V u = load_first<V>(in + i, valid) * load<V>(pattern.data() + i);
      store_first(activate(u, activation), out + i, valid);
    }
  }
}

// The loop at the CPU's vector width (vec16.h, "Vector width"), in every clone.
template <typename T>
VIDEOCONV_ISA_CLONES void scale_act_cl_items(const T* x, const T* s, T* y, int64_t channels,
                                             int64_t positions, int64_t chunks, int activation,
                                             int64_t i0, int64_t i1) {
  if (wide_vectors()) {
    scale_act_cl_items_at<vf16>(x, s, y, channels, positions, chunks, activation, i0, i1);
  } else {
    scale_act_cl_items_at<vf8>(x, s, y, channels, positions, chunks, activation, i0, i1);
  }
}

// ---------------------------------------------------------------------------------------------
// scale and activation with AVX-512 intrinsics (CPUs with AVX-512 BW/VL/DQ and AVX512-BF16:
// Cooper Lake, Sapphire Rapids and later, Zen 4 and later).
//
// Why a second copy of the loops above: GCC compiles the generic ones poorly in the AVX-512
// clone. Their bfloat16 load becomes two 8-lane vpmovzxwd, an extract and an insert; their
// bfloat16 store (c10's rounding as integer arithmetic) ~11 instructions and a vpermt2w; the
// activation's branch stays inside the vector loop, and with it ~10 constant broadcasts per
// vector. Here the activation is a template argument, a load is one vpmovzxwd and a shift and a
// store one vcvtneps2bf16. On the 2-core Zen 4 (bfloat16, channels_last_3d, 54 channels
// @13x40x40): scale + Swish 393 -> 231 µs on two threads (758 -> 437 on one), scale alone
// 118 -> 56 µs; float32 scale + Swish 250 -> 198 µs; X3D-S's bfloat16 forward 1.036x faster
// (benchmarks/results/README.md, tenth session).
//
// The arithmetic is vec16::vexp / vsilu's, operation for operation, including the fused
// multiply-adds GCC forms there (1 + exp(-u) is one FMA of the polynomial and the power of two),
// so both widths give the same float32 values. The one difference is vcvtneps2bf16 itself: a
// result below bfloat16's smallest normal (|y| < 1.2e-38) is flushed to zero, and a NaN keeps
// its sign (c10's conversion rounds the first and makes the second +NaN), as in oneDNN's bfloat16
// outputs and the 1x1x1 kernel's (conv3d_pointwise.cpp).

// The intrinsic loops run where vectors are 16 lanes (wide_vectors(): also when the tests force
// 16) on a CPU that has the instructions; the generic loops everywhere else (and with 8 forced).
bool avx512_scale_act() { return wide_vectors() && cpu_has_avx512_bf16(); }

#if VIDEOCONV_X86_GCC
// -Wmaybe-uninitialized reports inside the intrinsics' headers are a known false positive (as in
// conv3d_pointwise.cpp): silenced for this region.
#pragma GCC push_options
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

namespace avx512 {

inline __m512 load(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load(const at::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load_first(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_first(const at::BFloat16* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void store(__m512 v, float* p) { _mm512_storeu_ps(p, v); }
inline void store(__m512 v, at::BFloat16* p) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}
inline void store_first(__m512 v, float* p, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
inline void store_first(__m512 v, at::BFloat16* p, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

// vec16::vsilu(u) = u / (1 + vexp(-u)), step for step (see above).
inline __m512 silu(__m512 u) {
  // -u, then vexp's clamps: vminps / vmaxps return their second operand when either is NaN,
  // so a NaN passes through, as through vexp's comparisons.
  __m512 x = _mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(u), _mm512_set1_epi32(INT32_MIN)));
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), x);
  x = _mm512_max_ps(_mm512_set1_ps(-87.3f), x);
  const __m512 round = _mm512_set1_ps(12582912.f);
  const __m512 n =
      _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), round), round);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(1.9875691500e-4f), _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), one);
  const __m512i bits = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_div_ps(u, _mm512_fmadd_ps(y, _mm512_castsi512_ps(bits), one));
}

template <int Act>
inline __m512 activate(__m512 u) {
  if constexpr (Act == kRelu) return _mm512_max_ps(_mm512_setzero_ps(), u);  // NaN stays NaN
  if constexpr (Act == kSilu) return silu(u);
  return u;
}

// scale_act_cl_items_at, the activation a template argument.
template <int Act, typename T>
void scale_act_cl_items(const T* x, const T* s, T* y, int64_t channels, int64_t positions,
                        int64_t chunks, int64_t i0, int64_t i1) {
  std::vector<float> pattern(channels * kLanes);
  int64_t pattern_of = -1;
  for (int64_t item = i0; item < i1; item++) {
    const int64_t n = item / chunks, chunk = item % chunks;
    if (n != pattern_of) {
      fill_scale_pattern(s + n * channels, channels, pattern);
      pattern_of = n;
    }
    const int64_t p0 = chunk * kScalePositions, p1 = std::min(positions, p0 + kScalePositions);
    const int64_t offset = (n * positions + p0) * channels;
    const T* in = x + offset;
    T* out = y + offset;
    const float* sp = pattern.data();
    const int64_t blocks = (p1 - p0) / kLanes;
    for (int64_t b = 0; b < blocks; b++, in += kLanes * channels, out += kLanes * channels) {
      for (int64_t i = 0; i < kLanes * channels; i += kLanes) {
        store(activate<Act>(_mm512_mul_ps(load(in + i), _mm512_loadu_ps(sp + i))), out + i);
      }
    }
    const int64_t rest = (p1 - p0 - blocks * kLanes) * channels;
    for (int64_t i = 0; i < rest; i += kLanes) {
      const __mmask16 m = static_cast<__mmask16>((1u << std::min(kLanes, rest - i)) - 1u);
      store_first(activate<Act>(_mm512_mul_ps(load_first(in + i, m), _mm512_loadu_ps(sp + i))),
                  out + i, m);
    }
  }
}

// scale_act_planes_items_at, the activation a template argument.
template <int Act, typename T>
void scale_act_planes_items(const T* x, const T* s, T* y, int64_t positions, int64_t chunks,
                            int64_t i0, int64_t i1) {
  for (int64_t item = i0; item < i1; item++) {
    const int64_t plane = item / chunks, chunk = item % chunks;
    const int64_t i_begin = chunk * kScalePlane, i_end = std::min(positions, i_begin + kScalePlane);
    const __m512 sc = _mm512_set1_ps(static_cast<float>(s[plane]));
    const T* in = x + plane * positions;
    T* out = y + plane * positions;
    int64_t i = i_begin;
    for (; i + kLanes <= i_end; i += kLanes) {
      store(activate<Act>(_mm512_mul_ps(load(in + i), sc)), out + i);
    }
    if (i < i_end) {
      const __mmask16 m = static_cast<__mmask16>((1u << (i_end - i)) - 1u);
      store_first(activate<Act>(_mm512_mul_ps(load_first(in + i, m), sc)), out + i, m);
    }
  }
}

}  // namespace avx512

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif  // VIDEOCONV_X86_GCC

// The AVX-512 loop for this activation, when avx512_scale_act().
template <typename T>
void scale_act_cl_items_avx512(const T* x, const T* s, T* y, int64_t channels, int64_t positions,
                               int64_t chunks, int activation, int64_t i0, int64_t i1) {
#if VIDEOCONV_X86_GCC
  if (activation == kRelu) {
    avx512::scale_act_cl_items<kRelu>(x, s, y, channels, positions, chunks, i0, i1);
  } else if (activation == kSilu) {
    avx512::scale_act_cl_items<kSilu>(x, s, y, channels, positions, chunks, i0, i1);
  } else {
    avx512::scale_act_cl_items<kIdentity>(x, s, y, channels, positions, chunks, i0, i1);
  }
#endif
}

template <typename T>
void scale_act_planes_items_avx512(const T* x, const T* s, T* y, int64_t positions,
                                   int64_t chunks, int activation, int64_t i0, int64_t i1) {
#if VIDEOCONV_X86_GCC
  if (activation == kRelu) {
    avx512::scale_act_planes_items<kRelu>(x, s, y, positions, chunks, i0, i1);
  } else if (activation == kSilu) {
    avx512::scale_act_planes_items<kSilu>(x, s, y, positions, chunks, i0, i1);
  } else {
    avx512::scale_act_planes_items<kIdentity>(x, s, y, positions, chunks, i0, i1);
  }
#endif
}

template <typename T>
void scale_act_cl(const T* x, const T* s, T* y, int64_t batch, int64_t channels,
                  int64_t positions, int activation) {
  const int64_t chunks = (positions + kScalePositions - 1) / kScalePositions;
  const bool intrinsics = avx512_scale_act();
  at::parallel_for(0, batch * chunks, 1, [&](int64_t i0, int64_t i1) {
    if (intrinsics) {
      scale_act_cl_items_avx512<T>(x, s, y, channels, positions, chunks, activation, i0, i1);
    } else {
      scale_act_cl_items<T>(x, s, y, channels, positions, chunks, activation, i0, i1);
    }
  });
}

// contiguous NCDHW, items i0 .. i1 - 1 (a plane's chunk of kScalePlane values each): every value
// of plane (n, c) times s[n, c].
template <typename V, typename T>
__attribute__((always_inline)) inline void scale_act_planes_items_at(
    const T* x, const T* s, T* y, int64_t positions, int64_t chunks, int activation, int64_t i0,
    int64_t i1) {
  constexpr int64_t lanes = Width<V>::lanes;
  for (int64_t item = i0; item < i1; item++) {
    const int64_t plane = item / chunks, chunk = item % chunks;
    const int64_t i_begin = chunk * kScalePlane, i_end = std::min(positions, i_begin + kScalePlane);
    const float sc = static_cast<float>(s[plane]);
    const T* in = x + plane * positions;
    T* out = y + plane * positions;
    int64_t i = i_begin;
    for (; i + lanes <= i_end; i += lanes)
      store(activate(load<V>(in + i) * sc, activation), out + i);
    if (i < i_end) {
      store_first(activate(load_first<V>(in + i, i_end - i) * sc, activation), out + i, i_end - i);
    }
  }
}

template <typename T>
VIDEOCONV_ISA_CLONES void scale_act_planes_items(const T* x, const T* s, T* y, int64_t positions,
                                                 int64_t chunks, int activation, int64_t i0,
                                                 int64_t i1) {
  if (wide_vectors()) {
    scale_act_planes_items_at<vf16>(x, s, y, positions, chunks, activation, i0, i1);
  } else {
    scale_act_planes_items_at<vf8>(x, s, y, positions, chunks, activation, i0, i1);
  }
}

template <typename T>
void scale_act_planes(const T* x, const T* s, T* y, int64_t planes, int64_t positions,
                      int activation) {
  const int64_t chunks = (positions + kScalePlane - 1) / kScalePlane;
  const bool intrinsics = avx512_scale_act();
  at::parallel_for(0, planes * chunks, 1, [&](int64_t i0, int64_t i1) {
    if (intrinsics) {
      scale_act_planes_items_avx512<T>(x, s, y, positions, chunks, activation, i0, i1);
    } else {
      scale_act_planes_items<T>(x, s, y, positions, chunks, activation, i0, i1);
    }
  });
}

at::Tensor scale_act_cpu(const at::Tensor& x, const at::Tensor& s, c10::string_view activation) {
  check_input(x, "_scale_act_cpu");
  const int act = activation_code(activation, "_scale_act_cpu");
  const int64_t batch = x.size(0), channels = x.size(1);
  TORCH_CHECK(s.dim() == 5 && s.size(0) == batch && s.size(1) == channels && s.size(2) == 1 &&
                  s.size(3) == 1 && s.size(4) == 1,
              "_scale_act_cpu: scale must have size (N, C, 1, 1, 1) = (", batch, ", ", channels,
              ", 1, 1, 1), got ", s.sizes());
  TORCH_CHECK(s.scalar_type() == x.scalar_type(), "_scale_act_cpu: scale has dtype ",
              s.scalar_type(), ", the input ", x.scalar_type());
  const at::Tensor scale = s.contiguous();
  const bool cl = is_channels_last(x);
  auto y = at::empty_like(x, cl ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  const int64_t positions = x.size(2) * x.size(3) * x.size(4);
  AT_DISPATCH_SWITCH(x.scalar_type(), "_scale_act_cpu",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      if (cl) {
        scale_act_cl<float>(x.data_ptr<float>(), scale.data_ptr<float>(), y.data_ptr<float>(),
                            batch, channels, positions, act);
      } else {
        scale_act_planes<float>(x.data_ptr<float>(), scale.data_ptr<float>(), y.data_ptr<float>(),
                                batch * channels, positions, act);
      }
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      using T = at::BFloat16;
      if (cl) {
        scale_act_cl<T>(x.data_ptr<T>(), scale.data_ptr<T>(), y.data_ptr<T>(), batch, channels,
                        positions, act);
      } else {
        scale_act_planes<T>(x.data_ptr<T>(), scale.data_ptr<T>(), y.data_ptr<T>(),
                            batch * channels, positions, act);
      }
    }));
  return y;
}

// For the tests: the vector width the width-templated loops use (vec16.h, "Vector width"):
// 8 or 16 forces it, 0 lets the CPU decide. Returns the previous setting. Either width computes
// the same values; the tests check both against the reference on any CPU. 8 also selects the AVX2
// variant of the 1x1x1 kernel on an AVX-512 CPU (conv3d_pointwise.cpp), whose packed weights the
// Python side then builds for that variant.
int64_t cpu_vector_lanes(int64_t lanes) {
  TORCH_CHECK(lanes == 0 || lanes == 8 || lanes == 16,
              "_cpu_vector_lanes: lanes must be 0 (automatic), 8 or 16, got ", lanes);
  return vec16::forced_lanes.exchange(static_cast<int>(lanes));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  m.def("_channel_mean_cpu(Tensor input) -> Tensor");
  m.def("_scale_act_cpu(Tensor input, Tensor scale, str activation) -> Tensor");
  m.def("_cpu_vector_lanes(int lanes) -> int", &cpu_vector_lanes);
}

TORCH_LIBRARY_IMPL(videoconv, CPU, m) {
  m.impl("_channel_mean_cpu", &channel_mean_cpu);
  m.impl("_scale_act_cpu", &scale_act_cpu);
}

}  // namespace videoconv
