// videoconv::_conv3d_depthwise_cpu: depthwise Conv3d (groups == C_in == C_out) + folded BN +
// activation (+ residual), channels_last_3d, any kernel, stride, padding and dilation.
//
// Why: X3D's and CSN's depthwise convolutions are small (X3D-S: 27 per forward, 216 channels at
// 13x10x10 is ~7.6 M multiply-adds) and oneDNN computes them fast, but every call through
// torch.ops.mkldnn._convolution_pointwise pays oneDNN's primitive set-up (descriptors, the
// primitive-cache lookup, memory objects): ~25 µs in a loop, and inside X3D-S, where the layers
// before have pushed that code and data out of the caches, 40-80 µs a call. Measured in the
// bfloat16 X3D-S forward on the project's Zen 5 (each prepared call timed from Python, then the
// same call alone in a loop): 6.2 ms for the 27 calls in the model against 4.6 ms alone; on a
// 32x32 clip, where the arithmetic is ~25x smaller, the 27 calls still cost ~1.5 ms. This kernel
// does the same arithmetic with a ~2 µs call.
//
// Arithmetic: y[n, c, t, h, w] = act(sum_taps x[n, c, t', h', w'] * w[c, tap] + shift[c]
// [+ residual]), w with the BN scale folded in (videoconv/backends/cpu.py, _depthwise_weight,
// in float64, rounded once to float32: the kernel multiplies in float32 for bfloat16 tensors too,
// so it keeps the weight in float32 rather than rounding it to bfloat16 as oneDNN's would be).
// float32 accumulation in tap order, the epilogue in float32, one rounding of the result.
//
// Vectorisation: along channels, which are contiguous in channels_last_3d (a depthwise conv has
// no reduction over channels, so there is no dot product to use: float32 FMAs, bfloat16 inputs
// widened in registers). Channels go in groups of 16 (the packed weight's layout); C need not be
// a multiple of 16: the last group is the last 16 channels, [C - 16, C), overlapping the one
// before, and computes those overlapping channels again, with the same weights in the same
// order, so the values stored twice are equal (and the same thread stores both: a work item is
// a whole output row). That avoids masked loads and stores in the inner loop; it needs C >= 16.
//
// Register blocking: an output row is cut into blocks of NC columns (8 at 16 lanes); for each
// (kt, kh) tap row the block's input columns are loaded once ((NC - 1) * stride_w + KW vectors,
// widened once) and reused by the KW weights: KW FMAs per column per load, NC accumulators. For
// KW = 3, stride 1: 10 loads, 3 weight loads, 24 FMAs; stride 2: 17 loads (28 of the 32 AVX-512
// registers in use). The AVX2 clone, 16 registers, runs 8 lanes and blocks of 4. Columns whose
// taps reach into the padding (the first and last one or two) take a per-column path with bounds
// checks; so do kernels other than KW in {1, 3} with stride_w <= 2 and dilation_w 1. Rows and
// frames whose taps are padding are skipped once per output row.
//
// Work split: an item is one output row (n, t, h) with all its channel groups; at::parallel_for
// hands each thread a contiguous range of rows. Layers under ~2^17 multiply-adds run on the
// calling thread (waking the OpenMP team costs more).
// Indices are 64-bit throughout.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "activation.h"
#include "vec16.h"

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define VIDEOCONV_DEPTHWISE_X86 1
#else
#define VIDEOCONV_DEPTHWISE_X86 0
#endif

namespace videoconv {
namespace {

using namespace vec16;

constexpr int64_t kGroup = 16;       // channels per vector and per packed weight group

struct Geometry {
  int64_t c = 0;
  int64_t t_in = 0, h_in = 0, w_in = 0;
  int64_t t_out = 0, h_out = 0, w_out = 0;
  int64_t kt = 1, kh = 1, kw = 1;
  int64_t st = 1, sh = 1, sw = 1;
  int64_t pt = 0, ph = 0, pw = 0;
  int64_t dt = 1, dh = 1, dw = 1;
  int64_t groups = 0;  // ceil(c / 16)
};

// Channel of group q's first lane: 16 q, except the last group of a C that is not a multiple of
// 16, which is the last 16 channels (see the note above).
inline int64_t group_start(const Geometry& g, int64_t q) {
  return std::min(q * kGroup, g.c - kGroup);
}

#if VIDEOCONV_DEPTHWISE_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

// 16 input values as float32. bfloat16: vpmovzxwd and a shift. (vec16.h's portable load lowers
// this, in code compiled for AVX-512 with GCC's default tuning, to two 8-lane vpmovzxwd, an
// extract, an insert and the shift; in this loop, which widens 10-17 vectors for every 24 FMAs,
// that was a visible part of the time.)
__attribute__((always_inline)) inline vf16 widen(const float* p) { return load<vf16>(p); }
__attribute__((always_inline)) inline vf16 widen(const at::BFloat16* p) {
  const __m512i bits =
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
  return reinterpret_cast<vf16>(_mm512_castsi512_ps(bits));
}

// silu(u) = u / (1 + exp(-u)), with the division as a reciprocal estimate (vrcp14ps, 14 bits)
// refined by one Newton step (~23 bits, within 2 ulp of the quotient): vdivps is the slowest
// instruction of the epilogue, and X3D's depthwise layers without Squeeze-and-Excitation end in
// a Swish. NaN stays NaN; the overflow of exp(-u) is handled below.
__attribute__((always_inline)) inline vf16 silu_fast(vf16 u) {
  // vexp's clamp still gives inf at its top (2^128), and rcp14(inf) * inf would be NaN: clamp.
  const vf16 d = reinterpret_cast<vf16>(
      _mm512_min_ps(reinterpret_cast<__m512>(1.f + vexp(-u)), _mm512_set1_ps(3.4e38f)));
  const __m512 r0 = _mm512_rcp14_ps(reinterpret_cast<__m512>(d));
  const vf16 r = reinterpret_cast<vf16>(r0);
  const vf16 refined = r * (2.f - d * r);
  // Below -88.7 torch's exp(-u) overflows and u / inf is -0 (NaN for -inf); the estimate of a
  // clamped d would instead leave a tiny nonzero value, so those lanes are u * 0.
  const __mmask16 overflow = _mm512_cmp_ps_mask(reinterpret_cast<__m512>(u), _mm512_set1_ps(-88.7f),
                                                _CMP_LT_OQ);
  return reinterpret_cast<vf16>(_mm512_mask_mul_ps(reinterpret_cast<__m512>(u * refined), overflow,
                                                   reinterpret_cast<__m512>(u),
                                                   _mm512_setzero_ps()));
}

__attribute__((always_inline)) inline vf16 activate(vf16 v, int activation) {
  if (activation == kRelu) return vrelu(v);
  if (activation == kSilu) return silu_fast(v);
  return v;
}

// One output position's epilogue: + shift, + residual, activation, store.
template <typename T>
__attribute__((always_inline)) inline void finish(vf16 acc, vf16 shift, const T* residual, T* y,
                                                  int64_t off, int activation) {
  vf16 v = acc + shift;
  if (residual != nullptr) v += widen(residual + off);
  store(activate(v, activation), y + off);
}

// Columns [w_begin, w_end) of output row (n, t_out, h_out) at the channel vector c0, with a
// bounds check per tap: kernels, strides and dilations the tiles do not cover, and padding wider
// than one column.
template <typename T>
__attribute__((always_inline)) inline void columns_checked_at(
    const Geometry& g, const T* x, const float* wq, vf16 shift, const T* residual, T* y,
    int64_t n, int64_t t_out, int64_t h_out, int64_t c0, int64_t w_begin, int64_t w_end,
    int activation) {
  const int64_t out_row = ((n * g.t_out + t_out) * g.h_out + h_out) * g.w_out;
  for (int64_t wo = w_begin; wo < w_end; wo++) {
    vf16 acc = {};
    for (int64_t kt = 0; kt < g.kt; kt++) {
      const int64_t ti = t_out * g.st - g.pt + kt * g.dt;
      if (ti < 0 || ti >= g.t_in) continue;
      for (int64_t kh = 0; kh < g.kh; kh++) {
        const int64_t hi = h_out * g.sh - g.ph + kh * g.dh;
        if (hi < 0 || hi >= g.h_in) continue;
        const T* xr = x + ((n * g.t_in + ti) * g.h_in + hi) * g.w_in * g.c + c0;
        const float* wr = wq + (kt * g.kh + kh) * g.kw * kGroup;
        for (int64_t kw = 0; kw < g.kw; kw++) {
          const int64_t wi = wo * g.sw - g.pw + kw * g.dw;
          if (wi < 0 || wi >= g.w_in) continue;
          acc += widen(xr + wi * g.c) * load<vf16>(wr + kw * kGroup);
        }
      }
    }
    finish(acc, shift, residual, y, (out_row + wo) * g.c + c0, activation);
  }
}

// The blocked path: a tile of RB output rows x NC output columns of one frame, at one channel
// vector, for a KH x KW kernel with strides SH, SW and dilation 1 in h and w (see the note
// above). Per temporal tap: the KH x KW weights into registers; then each of the tile's
// (RB - 1) SH + KH input rows is loaded once ((NC - 1) SW + KW vectors, widened once) and feeds
// every output row of the tile that reads it. The first Lead and last Trail input columns are
// padding (0 or 1 each: a 3-wide kernel with padding 1 at the row's edges): their loads and FMAs
// are left out at compile time. Rows outside the input are skipped; tile rows past the output
// (rb < RB, the frame's last tile) are computed and not stored.
struct TileArgs {
  int64_t n, t_out, h0, rb, w0, c0;
};

template <int KH, int KW, int SH, int SW, int RB, int NC, int Lead, int Trail, typename T>
__attribute__((always_inline)) inline void tile(const Geometry& g, const T* x, const float* wq,
                                                vf16 shift, const T* residual, T* y,
                                                const TileArgs& a, int activation) {
  constexpr int NI = (NC - 1) * SW + KW;  // input columns
  constexpr int NR = (RB - 1) * SH + KH;  // input rows
  const int64_t wi0 = a.w0 * SW - g.pw, hi0 = a.h0 * SH - g.ph;
  const int64_t row_stride = g.w_in * g.c;
  vf16 acc[RB][NC] = {};
  for (int64_t kt = 0; kt < g.kt; kt++) {
    const int64_t ti = a.t_out * g.st - g.pt + kt * g.dt;
    if (ti < 0 || ti >= g.t_in) continue;
    vf16 wv[KH][KW];
#pragma GCC unroll 4
    for (int i = 0; i < KH; i++) {
#pragma GCC unroll 4
      for (int k = 0; k < KW; k++) wv[i][k] = load<vf16>(wq + ((kt * KH + i) * KW + k) * kGroup);
    }
    const T* frame = x + (a.n * g.t_in + ti) * g.h_in * row_stride + a.c0;
#pragma GCC unroll 16
    for (int r = 0; r < NR; r++) {
      const int64_t hi = hi0 + r;
      if (hi < 0 || hi >= g.h_in) continue;
      const T* xr = frame + hi * row_stride + wi0 * g.c;
      vf16 in[NI];
#pragma GCC unroll 32
      for (int i = Lead; i < NI - Trail; i++) in[i] = widen(xr + i * g.c);
#pragma GCC unroll 4
      for (int rr = 0; rr < RB; rr++) {
        const int kh = r - rr * SH;  // this input row's tap in output row rr
        if (kh < 0 || kh >= KH) continue;
#pragma GCC unroll 16
        for (int j = 0; j < NC; j++) {
#pragma GCC unroll 4
          for (int k = 0; k < KW; k++) {
            const int i = j * SW + k;
            if (i >= Lead && i < NI - Trail) acc[rr][j] += in[i] * wv[kh][k];
          }
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int rr = 0; rr < RB; rr++) {
    if (rr >= a.rb) break;
    const int64_t out_row = ((a.n * g.t_out + a.t_out) * g.h_out + a.h0 + rr) * g.w_out;
#pragma GCC unroll 16
    for (int j = 0; j < NC; j++) {
      finish(acc[rr][j], shift, residual, y, (out_row + a.w0 + j) * g.c + a.c0, activation);
    }
  }
}

template <int KH, int KW, int SH, int SW, int RB, int NC, typename T>
__attribute__((always_inline)) inline void tile_at(const Geometry& g, const T* x, const float* wq,
                                                   vf16 shift, const T* residual, T* y,
                                                   const TileArgs& a, int activation) {
  constexpr int NI = (NC - 1) * SW + KW;
  const int64_t wi0 = a.w0 * SW - g.pw;
  const int64_t lead = std::max<int64_t>(0, -wi0);
  const int64_t trail = std::max<int64_t>(0, wi0 + NI - g.w_in);
  if (lead == 0 && trail == 0) {
    tile<KH, KW, SH, SW, RB, NC, 0, 0>(g, x, wq, shift, residual, y, a, activation);
  } else if (lead == 1 && trail == 0) {
    tile<KH, KW, SH, SW, RB, NC, 1, 0>(g, x, wq, shift, residual, y, a, activation);
  } else if (lead == 0 && trail == 1) {
    tile<KH, KW, SH, SW, RB, NC, 0, 1>(g, x, wq, shift, residual, y, a, activation);
  } else {
    // (1, 1), or wider padding: the (1, 1) tile reads the padded columns as zeros only if there
    // is exactly one on each side; anything else takes the checked path, row by row.
    if (lead == 1 && trail == 1) {
      tile<KH, KW, SH, SW, RB, NC, 1, 1>(g, x, wq, shift, residual, y, a, activation);
      return;
    }
    for (int64_t rr = 0; rr < a.rb; rr++) {
      columns_checked_at(g, x, wq, shift, residual, y, a.n, a.t_out, a.h0 + rr, a.c0, a.w0,
                         a.w0 + NC, activation);
    }
  }
}

// A tile row (RB output rows) in column blocks of at most MaxNC, as even as possible (10
// columns: 4 + 3 + 3, not 4 + 4 + 2: a block's width is a compile-time constant, so that its
// accumulators and inputs stay in registers, and a short block runs fewer FMAs per load).
template <int KH, int KW, int SH, int SW, int RB, int MaxNC, typename T>
__attribute__((always_inline)) inline void tile_row(const Geometry& g, const T* x,
                                                    const float* wq, vf16 shift,
                                                    const T* residual, T* y, TileArgs a,
                                                    int activation) {
  const int64_t blocks = (g.w_out + MaxNC - 1) / MaxNC;
  const int64_t base = g.w_out / blocks, wider = g.w_out % blocks;  // the first `wider` get +1
  a.w0 = 0;
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t nc = base + (b < wider ? 1 : 0);
#define VIDEOCONV_DW_TILE(n)                                                                  \
  case n:                                                                                     \
    if constexpr (n <= MaxNC) {                                                               \
      tile_at<KH, KW, SH, SW, RB, n>(g, x, wq, shift, residual, y, a, activation);            \
    }                                                                                         \
    break;
    switch (nc) {
      VIDEOCONV_DW_TILE(1)
      VIDEOCONV_DW_TILE(2)
      VIDEOCONV_DW_TILE(3)
      VIDEOCONV_DW_TILE(4)
      VIDEOCONV_DW_TILE(5)
      VIDEOCONV_DW_TILE(6)
      VIDEOCONV_DW_TILE(7)
      VIDEOCONV_DW_TILE(8)
    }
#undef VIDEOCONV_DW_TILE
    a.w0 += nc;
  }
}

// Which tile a kernel takes: X3D's and CSN's 3x3x3 (stride 1 or 2 in h and w) and (kt, 1, 1)
// kernels. Register budget (32 zmm): 3x3, stride 1: 3 rows x 4 columns of accumulators, 9
// weights, 6 inputs; stride 2: 2 x 4, 9 weights, 9 inputs; (kt, 1, 1): 1 x 8, 1 weight, 8
// inputs. Anything else: nullopt, the checked path.
enum class TileKind { k3x3s1, k3x3s2, k1x1s1, none };

inline TileKind tile_kind(const Geometry& g) {
  if (g.dh != 1 || g.dw != 1) return TileKind::none;
  if (g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1) return TileKind::k3x3s1;
  if (g.kh == 3 && g.kw == 3 && g.sh == 2 && g.sw == 2) return TileKind::k3x3s2;
  if (g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1) return TileKind::k1x1s1;
  return TileKind::none;
}

inline int64_t tile_rows(TileKind kind) {
  return kind == TileKind::k1x1s1 ? 1 : 2;
}

// Work items [i0, i1): item = (n, t_out, tile row of tile_rows() output rows), every channel
// group.
template <typename T>
void depthwise_items(const T* x, const float* w, const float* shift, const T* residual, T* y,
                     const Geometry& g, int activation, int64_t i0, int64_t i1) {
  const TileKind kind = tile_kind(g);
  const int64_t rows_per_item = tile_rows(kind);
  const int64_t tiles_h = (g.h_out + rows_per_item - 1) / rows_per_item;
  const int64_t taps = g.kt * g.kh * g.kw;
  for (int64_t item = i0; item < i1; item++) {
    TileArgs a;
    const int64_t th = item % tiles_h;
    a.t_out = (item / tiles_h) % g.t_out;
    a.n = item / (tiles_h * g.t_out);
    a.h0 = th * rows_per_item;
    a.rb = std::min(rows_per_item, g.h_out - a.h0);
    for (int64_t q = 0; q < g.groups; q++) {
      a.c0 = group_start(g, q);
      const float* wq = w + q * taps * kGroup;
      const vf16 sh = load<vf16>(shift + a.c0);
      switch (kind) {
        case TileKind::k3x3s1:
          tile_row<3, 3, 1, 1, 2, 4>(g, x, wq, sh, residual, y, a, activation);
          break;
        case TileKind::k3x3s2:
          tile_row<3, 3, 2, 2, 2, 3>(g, x, wq, sh, residual, y, a, activation);
          break;
        case TileKind::k1x1s1:
          tile_row<1, 1, 1, 1, 1, 8>(g, x, wq, sh, residual, y, a, activation);
          break;
        default:
          for (int64_t rr = 0; rr < a.rb; rr++) {
            columns_checked_at(g, x, wq, sh, residual, y, a.n, a.t_out, a.h0 + rr, a.c0, 0,
                               g.w_out, activation);
          }
      }
    }
  }
}

template <typename T>
void conv3d_depthwise_kernel(const T* x, const float* w, const float* shift, const T* residual,
                             T* y, int64_t batch, const Geometry& g, int activation) {
  const int64_t rows_per_item = tile_rows(tile_kind(g));
  const int64_t items = batch * g.t_out * ((g.h_out + rows_per_item - 1) / rows_per_item);
  const int64_t macs_per_item = rows_per_item * g.w_out * g.c * g.kt * g.kh * g.kw;
  const int64_t grain =
      std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, macs_per_item));
  at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
    depthwise_items<T>(x, w, shift, residual, y, g, activation, i0, i1);
  });
}

#pragma GCC pop_options
#endif  // VIDEOCONV_DEPTHWISE_X86

// Whether this CPU runs the kernel: AVX-512 (F, BW, VL, DQ). Elsewhere the cpu backend keeps
// oneDNN for depthwise convolutions (videoconv/backends/cpu.py, _use_depthwise).
bool depthwise_supported() {
#if VIDEOCONV_DEPTHWISE_X86
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return ok;
#else
  return false;
#endif
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

at::Tensor conv3d_depthwise_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& shift, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view activation,
                                const std::optional<at::Tensor>& residual) {
  const char* op = "_conv3d_depthwise_cpu";
  TORCH_CHECK(depthwise_supported(), op, ": needs a CPU with AVX-512 (F, BW, VL, DQ)");
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  TORCH_CHECK(input.dim() == 5 && input.is_contiguous(cl), op,
              ": input must be 5-D and channels_last_3d");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16, op,
              ": input must be float32 or bfloat16");
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3 && dilation.size() == 3, op,
              ": stride, padding and dilation must have 3 values each");
  Geometry g;
  const int64_t batch = input.size(0);
  g.c = input.size(1);
  g.t_in = input.size(2);
  g.h_in = input.size(3);
  g.w_in = input.size(4);
  TORCH_CHECK(g.c >= kGroup, op, ": needs at least ", kGroup, " channels, got ", g.c);
  g.groups = (g.c + kGroup - 1) / kGroup;
  TORCH_CHECK(weight.dim() == 5 && weight.scalar_type() == at::kFloat && weight.is_contiguous() &&
                  weight.size(0) == g.groups && weight.size(4) == kGroup,
              op, ": weight must be the packed contiguous float32 (ceil(C / 16), kt, kh, kw, 16) "
              "tensor; for ", g.c, " channels that is ", g.groups, " groups, got ",
              weight.sizes());
  g.kt = weight.size(1);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  TORCH_CHECK(g.kt >= 1 && g.kh >= 1 && g.kw >= 1, op, ": empty kernel ", weight.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.numel() == g.c && shift.scalar_type() == at::kFloat &&
                  shift.is_contiguous(),
              op, ": shift must be a contiguous float32 vector of C values");
  g.st = stride[0], g.sh = stride[1], g.sw = stride[2];
  g.pt = padding[0], g.ph = padding[1], g.pw = padding[2];
  g.dt = dilation[0], g.dh = dilation[1], g.dw = dilation[2];
  TORCH_CHECK(g.st > 0 && g.sh > 0 && g.sw > 0 && g.dt > 0 && g.dh > 0 && g.dw > 0, op,
              ": stride and dilation must be positive");
  TORCH_CHECK(g.pt >= 0 && g.ph >= 0 && g.pw >= 0, op, ": padding must be non-negative");
  g.t_out = out_size(g.t_in, g.kt, g.st, g.pt, g.dt);
  g.h_out = out_size(g.h_in, g.kh, g.sh, g.ph, g.dh);
  g.w_out = out_size(g.w_in, g.kw, g.sw, g.pw, g.dw);
  TORCH_CHECK(g.t_out > 0 && g.h_out > 0 && g.w_out > 0, op,
              ": input smaller than the (dilated) kernel");
  auto y = at::empty({batch, g.c, g.t_out, g.h_out, g.w_out}, input.options().memory_format(cl));
  const bool has_res = residual.has_value() && residual->defined();
  if (has_res) {
    TORCH_CHECK(residual->sizes() == y.sizes() && residual->scalar_type() == input.scalar_type() &&
                    residual->is_contiguous(cl),
                op, ": residual must match the output (shape, dtype, channels_last_3d)");
  }
  if (y.numel() == 0) return y;
  const int act = activation_code(activation, op);
#if VIDEOCONV_DEPTHWISE_X86
  if (input.scalar_type() == at::kFloat) {
    conv3d_depthwise_kernel<float>(input.data_ptr<float>(), weight.data_ptr<float>(),
                                   shift.data_ptr<float>(),
                                   has_res ? residual->data_ptr<float>() : nullptr,
                                   y.data_ptr<float>(), batch, g, act);
  } else {
    conv3d_depthwise_kernel<at::BFloat16>(
        input.data_ptr<at::BFloat16>(), weight.data_ptr<float>(), shift.data_ptr<float>(),
        has_res ? residual->data_ptr<at::BFloat16>() : nullptr, y.data_ptr<at::BFloat16>(), batch,
        g, act);
  }
#endif
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  m.def(
      "_conv3d_depthwise_cpu(Tensor input, Tensor weight, Tensor shift, int[3] stride, "
      "int[3] padding, int[3] dilation, str activation, Tensor? residual) -> Tensor");
  m.def("_conv3d_depthwise_cpu_supported() -> bool", &depthwise_supported);
}

TORCH_LIBRARY_IMPL(videoconv, CPU, m) {
  m.impl("_conv3d_depthwise_cpu", &conv3d_depthwise_cpu);
}

}  // namespace videoconv
