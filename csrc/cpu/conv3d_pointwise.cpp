// videoconv::_conv3d_pointwise_cpu: 1x1x1 Conv3d + folded BN + activation (+ residual), any
// stride, as one GEMM over the output positions with the epilogue applied to the accumulators.
//
// Why: X3D, CSN and the ResNets' bottlenecks and shortcuts are mostly 1x1x1 convolutions, and on
// the CPU these are small: an X3D-S layer is ~54 MFLOP, ~120 µs of oneDNN's brgconv_1x1 kernel.
// Through torch.ops.mkldnn._convolution_pointwise each call also pays oneDNN's primitive set-up
// (descriptor creation, primitive-cache lookup, memory objects): ~30 µs in a micro-benchmark and
// ~60 µs inside a model, where the convolutions before it have pushed the set-up code and data
// out of the caches. X3D-S makes 58 such calls per forward: ~3.5 ms of a ~33 ms bfloat16 forward.
// This kernel computes the same arithmetic with the same instructions oneDNN's kernel uses
// (AVX512-BF16 dot products for bfloat16, AVX-512 FMAs for float32) and ~2 µs of set-up.
// A second variant for CPUs without AVX512-BF16 (AVX2 + FMA, float32 products for both dtypes)
// is further down, with its own reasons; pointwise_variant() says which one a CPU runs.
//
// Arithmetic: y[m, co] = act(sum_ci x[m, ci] * w[co, ci] + shift[co] [+ residual[m, co]]), where
// m runs over the output positions (N, D_out, H_out, W_out) and w has the BN scale folded in (by
// videoconv/backends/cpu.py, _pointwise_weight, in float64, rounded once to the input dtype, as
// for oneDNN). Accumulation in float32; the epilogue is float32 and the result is rounded once.
//
// Micro-kernel (AVX-512): MR output positions x NV vectors of 16 output channels (up to 64), with
// MR x NV = 24 accumulator registers (6 x 4, 8 x 3, 12 x 2 or 12 x 1), NV weight registers and
// one broadcast: at most 29 of AVX-512's 32. Per step it loads NV weight vectors and, for each
// row, broadcasts the row's input (one float32, or one pair of bfloat16 values as a 32-bit word,
// straight from memory) into NV FMAs/dot products. 24 independent accumulators cover the FMA
// latency on both pipes. Measured on Zen 4 against oneDNN's brgconv_1x1 (kernel alone, 2 cores):
// 1.10-1.24x on X3D-S's bfloat16 layers with C_in >= 48; the Python side's rule
// (_use_pointwise) keeps oneDNN where it was not faster.
//
// Packed weight (one tensor, built once per weight and cached by the Python side): column blocks
// of 64 output channels (the last one narrower, rounded up to 16 with zero columns), each block
// [K steps][block width][pair], where a step is one input channel (float32) or a pair of input
// channels (bfloat16, vdpbf16ps's operand layout; an odd C_in gets a zero last row). A micro-tile
// reads its block sequentially; the block (at most 432 x 64 x 4 bytes here) stays in L2.
//
// Layout: channels_last_3d input, residual and output: the channel vector of a position is
// contiguous, so a row of the GEMM is one position's channels. Strided inputs (the shortcut
// projections) read every stride-th position in place, no gather copy.
// Indices are 64-bit throughout.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "activation.h"
#include "vec16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define VIDEOCONV_POINTWISE_X86 1
#else
#define VIDEOCONV_POINTWISE_X86 0
#endif

namespace videoconv {
namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kBlockWidth = 4 * kLanes;  // output channels per column block: 4 vectors

// Where the input rows are: position m of the output reads position (n, t*st, h*sh, w*sw).
struct Geometry {
  int64_t ci = 0, co = 0, co_pad = 0, k_steps = 0;
  int64_t t_in = 0, h_in = 0, w_in = 0;
  int64_t t_out = 0, h_out = 0, w_out = 0;
  int64_t st = 1, sh = 1, sw = 1;
  bool unit_stride = true;
  int64_t rows = 0;  // N * t_out * h_out * w_out
};

constexpr int64_t kChunkRows = 192;  // output positions per work item (a multiple of 6, 8, 12)

// The work split both kernels use. Work items are chunks of at most kChunkRows output positions.
// Within a chunk the column blocks are the outer loop: a block's packed weight (<= 64 channels x
// C_in) is read from L2 once per micro-tile, while the chunk's input rows (<= 192 x C_in values)
// stay in L1/L2 across blocks. body(m_begin, m_end, b_begin, b_end, offsets) computes output rows
// [m_begin, m_end) x column blocks [b_begin, b_end); offsets[m - m_begin] is where output row m's
// input position starts in the input (in elements).
template <typename Body>
void for_each_work_item(const Geometry& g, const Body& body) {
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = (g.co_pad + kBlockWidth - 1) / kBlockWidth;
  int64_t chunks = (g.rows + kChunkRows - 1) / kChunkRows;
  // Enough chunks for every thread: a multiple of the thread count, as even as possible (7
  // chunks on 2 threads would leave one thread idle for the last one). Otherwise (a small late
  // layer, 325 positions) the items are (chunk, column block) pairs.
  const bool by_block = chunks < 2 * threads;
  if (!by_block) chunks = (chunks + threads - 1) / threads * threads;
  const int64_t chunk_rows = (g.rows + chunks - 1) / chunks;
  const int64_t items = by_block ? chunks * blocks : chunks;
  // Tiny GEMMs (Squeeze-and-Excitation's convs on a pooled map: one row, a few thousand MACs)
  // run on the calling thread: waking the OpenMP team costs more (~5-10 µs) than the work, and
  // made a 16 -> 216 expansion (four column blocks, so four items) 1.7x slower than eager's.
  const int64_t serial_below = int64_t{1} << 18;  // MACs: ~5 µs on one core
  const auto run_items = [&](int64_t i0, int64_t i1) {
    int64_t offsets[kChunkRows];
    for (int64_t item = i0; item < i1; item++) {
      const int64_t chunk = by_block ? item / blocks : item;
      const int64_t b_begin = by_block ? item % blocks : 0;
      const int64_t b_end = by_block ? b_begin + 1 : blocks;
      const int64_t m_begin = chunk * chunk_rows;
      const int64_t m_end = std::min(g.rows, m_begin + chunk_rows);
      if (m_begin >= m_end) continue;
      // The input position of each output row, stepped through (w, h, t, n) without divisions.
      int64_t w_o = m_begin % g.w_out, h_o = (m_begin / g.w_out) % g.h_out;
      int64_t t_o = (m_begin / (g.w_out * g.h_out)) % g.t_out;
      int64_t n = m_begin / (g.w_out * g.h_out * g.t_out);
      for (int64_t m = m_begin; m < m_end; m++) {
        offsets[m - m_begin] =
            g.unit_stride ? m * g.ci
                          : (((n * g.t_in + t_o * g.st) * g.h_in + h_o * g.sh) * g.w_in +
                             w_o * g.sw) * g.ci;
        if (++w_o == g.w_out) {
          w_o = 0;
          if (++h_o == g.h_out) {
            h_o = 0;
            if (++t_o == g.t_out) {
              t_o = 0;
              n++;
            }
          }
        }
      }
      body(m_begin, m_end, b_begin, b_end, static_cast<const int64_t*>(offsets));
    }
  };
  if (g.rows * g.co_pad * g.k_steps < serial_below) {
    run_items(0, items);
  } else {
    at::parallel_for(0, items, 1, run_items);
  }
}

#if VIDEOCONV_POINTWISE_X86

// The package is built for the baseline x86-64 ISA; the kernel code below is compiled for
// AVX-512 with AVX512-BF16, for both dtypes (one target keeps the float32 and bfloat16
// micro-kernels and their shared epilogue inlinable into each other), and runs only where
// cpu_has_avx512_bf16() found those instructions; the AVX2 kernel further down serves the other
// x86-64-v3 CPUs, and elsewhere the Python side keeps oneDNN.
// GCC 12's AVX-512 headers build some intrinsics from _mm512_undefined_*() values, which
// -Wuninitialized reports inside the headers (a known false positive): silenced for this region.
#pragma GCC push_options
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

// Loads and stores of 16 channels; masked only for the last, partial vector of a C_out that is
// not a multiple of 16 (masked stores are several times slower than plain ones on Zen 4, and
// the output is written once per value: with them on every vector, a 24 -> 54 layer on
// 13x80x80 positions ran at 0.67x of oneDNN).
constexpr __mmask16 kFull = 0xFFFF;

inline __m512 load_f32(const float* p, __mmask16 mask) {
  return mask == kFull ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask, p);
}
inline __m512 load_f32(const at::BFloat16* p, __mmask16 mask) {
  const __m256i h = mask == kFull ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                  : _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void store_f32(__m512 v, float* p, __mmask16 mask) {
  if (mask == kFull) {
    _mm512_storeu_ps(p, v);
  } else {
    _mm512_mask_storeu_ps(p, mask, v);
  }
}
// Round to nearest even (vcvtneps2bf16, as c10::BFloat16's conversion; a NaN stays a NaN).
inline void store_f32(__m512 v, at::BFloat16* p, __mmask16 mask) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
  if (mask == kFull) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  } else {
    _mm256_mask_storeu_epi16(p, mask, h);
  }
}

template <typename T>
inline __m512 epilogue(__m512 v, __m512 shift, const T* residual, __mmask16 mask,
                       int activation) {
  v = _mm512_add_ps(v, shift);
  if (residual != nullptr) v = _mm512_add_ps(v, load_f32(residual, mask));
  if (activation == kRelu) {
    // vmaxps returns its second operand when either is NaN: NaN stays NaN, as torch.relu.
    v = _mm512_max_ps(_mm512_setzero_ps(), v);
  } else if (activation == kSilu) {
    // The epilogue is O(rows x C_out) against the GEMM's O(rows x C_out x C_in): std::exp per
    // lane costs little and is the same function the other CPU paths use.
    alignas(64) float lanes[kLanes];
    _mm512_store_ps(lanes, v);
    for (int i = 0; i < kLanes; i++) lanes[i] = lanes[i] / (1.f + std::exp(-lanes[i]));
    v = _mm512_load_ps(lanes);
  }
  return v;
}

// acc[r][j] = sum_k rows[r][k] * wblock[k][16 j .. 16 j + 15]: the GEMM of one micro-tile.
template <typename T, int MR, int NV>
struct Tile;

template <int MR, int NV>
struct Tile<float, MR, NV> {
  static void run(const float* const* rows, const float* wblock, int64_t wb, const Geometry& g,
                  __m512 (&acc)[MR][NV]) {
    for (int r = 0; r < MR; r++)
      for (int j = 0; j < NV; j++) acc[r][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < g.k_steps; k++) {
      __m512 w[NV];
      for (int j = 0; j < NV; j++) w[j] = _mm512_loadu_ps(wblock + k * wb + j * kLanes);
      for (int r = 0; r < MR; r++) {
        const __m512 x = _mm512_set1_ps(rows[r][k]);
        for (int j = 0; j < NV; j++) acc[r][j] = _mm512_fmadd_ps(x, w[j], acc[r][j]);
      }
    }
  }
};

template <int MR, int NV>
struct Tile<at::BFloat16, MR, NV> {
  static void run(const at::BFloat16* const* rows, const at::BFloat16* wblock, int64_t wb,
                  const Geometry& g, __m512 (&acc)[MR][NV]) {
    for (int r = 0; r < MR; r++)
      for (int j = 0; j < NV; j++) acc[r][j] = _mm512_setzero_ps();
    const int64_t full_pairs = g.ci / 2;
    for (int64_t k = 0; k < full_pairs; k++) {
      __m512i w[NV];
      for (int j = 0; j < NV; j++) w[j] = _mm512_loadu_si512(wblock + (k * wb + j * kLanes) * 2);
      for (int r = 0; r < MR; r++) {
        // The pair (x[2k], x[2k+1]) as one 32-bit word in every lane (a memory broadcast).
        uint32_t pair;
        std::memcpy(&pair, rows[r] + 2 * k, sizeof(pair));
        const __m512i x = _mm512_set1_epi32(static_cast<int>(pair));
        for (int j = 0; j < NV; j++)
          acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)x, (__m512bh)w[j]);
      }
    }
    if (full_pairs < g.k_steps) {  // odd C_in: the pair (x[C_in - 1], 0), nothing past the row
      const int64_t k = full_pairs;
      __m512i w[NV];
      for (int j = 0; j < NV; j++) w[j] = _mm512_loadu_si512(wblock + (k * wb + j * kLanes) * 2);
      for (int r = 0; r < MR; r++) {
        uint16_t last;
        std::memcpy(&last, rows[r] + 2 * k, sizeof(last));
        const __m512i x = _mm512_set1_epi32(static_cast<int>(last));
        for (int j = 0; j < NV; j++)
          acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)x, (__m512bh)w[j]);
      }
    }
  }
};

// Output positions per micro-tile for NV channel vectors: as many as keep MR x NV accumulators,
// NV weight vectors and one broadcast within the 32 registers (24 accumulators, enough
// independent chains to cover the FMA latency on both pipes).
constexpr int rows_for(int nv) { return nv == 4 ? 6 : nv == 3 ? 8 : 12; }

// One micro-tile: output rows m0 .. m0 + nrows - 1 (nrows <= MR; the missing rows of a last,
// partial tile repeat row m0 and are not stored) x channels c0 .. c0 + 16 NV - 1.
template <typename T, int NV>
void micro_tile(const T* x, const int64_t* row_offsets, int nrows, const T* wblock, int64_t wb,
                const float* shift, const T* residual, T* y, const Geometry& g, int64_t m0,
                int64_t c0, int activation) {
  constexpr int MR = rows_for(NV);
  const T* rows[MR];
  for (int r = 0; r < MR; r++) rows[r] = x + row_offsets[r < nrows ? r : 0];
  __m512 acc[MR][NV];
  Tile<T, MR, NV>::run(rows, wblock, wb, g, acc);
  for (int j = 0; j < NV; j++) {
    const int64_t c = c0 + j * kLanes;
    const int64_t valid = std::min<int64_t>(kLanes, g.co - c);
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
    const __m512 sh = _mm512_maskz_loadu_ps(mask, shift + c);
    for (int r = 0; r < MR; r++) {
      if (r >= nrows) break;
      const int64_t off = (m0 + r) * g.co + c;
      store_f32(epilogue(acc[r][j], sh, residual ? residual + off : nullptr, mask, activation),
                y + off, mask);
    }
  }
}

template <typename T>
void conv3d_pointwise_kernel(const T* x, const T* w, const float* shift, const T* residual, T* y,
                             const Geometry& g, int activation) {
  for_each_work_item(g, [&](int64_t m_begin, int64_t m_end, int64_t b_begin, int64_t b_end,
                            const int64_t* offsets) {
    for (int64_t b = b_begin; b < b_end; b++) {
      const int64_t c0 = b * kBlockWidth;
      const int64_t wb = std::min(kBlockWidth, g.co_pad - c0);
      const T* wblock = w + c0 * g.k_steps * (std::is_same<T, float>::value ? 1 : 2);
      const int nv = static_cast<int>(wb / kLanes);
      const int mr = rows_for(nv);
      for (int64_t m0 = m_begin; m0 < m_end; m0 += mr) {
        const int nrows = static_cast<int>(std::min<int64_t>(mr, m_end - m0));
        const int64_t* offs = offsets + (m0 - m_begin);
        switch (nv) {
          case 1:
            micro_tile<T, 1>(x, offs, nrows, wblock, wb, shift, residual, y, g, m0, c0, activation);
            break;
          case 2:
            micro_tile<T, 2>(x, offs, nrows, wblock, wb, shift, residual, y, g, m0, c0, activation);
            break;
          case 3:
            micro_tile<T, 3>(x, offs, nrows, wblock, wb, shift, residual, y, g, m0, c0, activation);
            break;
          default:
            micro_tile<T, 4>(x, offs, nrows, wblock, wb, shift, residual, y, g, m0, c0, activation);
        }
      }
    }
  });
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

// The AVX2 + FMA kernel: float32 arithmetic for float32 tensors and for bfloat16 ones (CPUs
// without AVX512-BF16 have no bfloat16 dot product; there the packed weight is float32, holding
// the folded weight rounded once to bfloat16, so the products are the bfloat16 path's and the
// accumulation float32, as in the widened oneDNN route of videoconv/backends/cpu.py).
//
// Why it exists: on those CPUs the alternative is oneDNN's 1x1x1 kernel through
// _convolution_pointwise, whose per-call set-up (~30-60 µs) is a large part of a small layer, and
// for bfloat16 tensors oneDNN has no bfloat16 convolution at all: each call also widened the
// input (and residual) to a float32 copy and rounded the output from another. Here the bfloat16
// input rows of a micro-tile are widened into a small buffer in L1 and the epilogue rounds while
// storing: no copies of whole tensors.
//
// Micro-kernel: 6 output positions x 16 output channels (two 8-lane vectors) = 12 accumulator
// registers, 2 weight registers and one broadcast: 15 of AVX2's 16. The classic AVX2 GEMM shape:
// per input channel 2 weight loads and 6 broadcasts feed 12 FMAs, 6 cycles on two FMA pipes,
// with 12 independent chains covering the FMA latency (4-5 cycles). A column block of up to 64
// channels is 1-4 such 16-channel columns, computed one after the other on the same 6 rows
// (which stay in L1). The packed weight has the AVX-512 kernel's float32 layout.
#pragma GCC push_options
#pragma GCC target("avx2,fma")

constexpr int kRowsAvx2 = 6;

// out[r][h] = sum_k rows[r][k] * wcol[k * wb + 8 h .. 8 h + 7] for h < H: H = 2 for a full
// column of 16 channels, 1 for a last column with at most 8 channels left (C_out 24, 54, 216 in
// X3D-S: half the FMAs of that column would only compute padding).
// The 12 accumulators are named variables, written out by a macro, and the function is not
// inlined. Both are for GCC's register allocation, measured: accumulating into an array (even a
// local one indexed by unrolled loops) made it store every accumulator to the stack on every
// step, and inlined into the tile loop it kept a constant of the epilogue's exp in a register
// and spilled an accumulator (12 accumulators, 2 weights and the broadcast are 15 of the 16
// registers); either was 2-3x slower.
template <int H>
__attribute__((noinline)) void tile_avx2(const float* const* rows, const float* wcol, int64_t wb,
                                         int64_t k_steps, __m256 (&out)[kRowsAvx2][2]) {
  static_assert(kRowsAvx2 == 6, "the macro below writes out 6 rows");
  __m256 a00 = _mm256_setzero_ps(), a10 = a00, a20 = a00, a30 = a00, a40 = a00, a50 = a00;
  __m256 a01 = a00, a11 = a00, a21 = a00, a31 = a00, a41 = a00, a51 = a00;
  const float *x0 = rows[0], *x1 = rows[1], *x2 = rows[2], *x3 = rows[3], *x4 = rows[4],
              *x5 = rows[5];
  for (int64_t k = 0; k < k_steps; k++) {
    const __m256 w0 = _mm256_loadu_ps(wcol + k * wb);
    const __m256 w1 = H == 2 ? _mm256_loadu_ps(wcol + k * wb + 8) : w0;
#define VIDEOCONV_ROW(r)                                  \
  {                                                       \
    const __m256 x = _mm256_broadcast_ss(x##r + k);       \
    a##r##0 = _mm256_fmadd_ps(x, w0, a##r##0);            \
    if (H == 2) a##r##1 = _mm256_fmadd_ps(x, w1, a##r##1); \
  }
    VIDEOCONV_ROW(0) VIDEOCONV_ROW(1) VIDEOCONV_ROW(2)
    VIDEOCONV_ROW(3) VIDEOCONV_ROW(4) VIDEOCONV_ROW(5)
#undef VIDEOCONV_ROW
  }
  out[0][0] = a00, out[1][0] = a10, out[2][0] = a20, out[3][0] = a30, out[4][0] = a40;
  out[5][0] = a50;
  out[0][1] = a01, out[1][1] = a11, out[2][1] = a21, out[3][1] = a31, out[4][1] = a41;
  out[5][1] = a51;
}

// One output position x the whole column block (up to 64 channels, N = wb / 8 vectors):
// out[j] = sum_k row[k] * wblock[k * wb + 8 j .. 8 j + 7]. For GEMMs of one row (a 1x1x1 head on
// a pooled map: X3D-S's 432 -> 2048, 0.9 MMAC), where the 6-row tile computes five duplicate
// rows, 6x the FMAs: that head ran at 0.69x of eager's oneDNN call with it, 1.4x with this pass
// (Zen 3, fused module against nn.Conv3d + ReLU, in turns). Up to 8 independent accumulators;
// named, not inlined, as above.
template <int N>
__attribute__((noinline)) void row_tile_avx2(const float* row, const float* wblock, int64_t wb,
                                             int64_t k_steps, __m256 (&out)[8]) {
  static_assert(N >= 1 && N <= 8, "a column block is at most 8 vectors");
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t k = 0; k < k_steps; k++) {
    const __m256 x = _mm256_broadcast_ss(row + k);
    const float* w = wblock + k * wb;
#define VIDEOCONV_COL(j) \
  if (N > j) a##j = _mm256_fmadd_ps(x, _mm256_loadu_ps(w + 8 * j), a##j);
    VIDEOCONV_COL(0) VIDEOCONV_COL(1) VIDEOCONV_COL(2) VIDEOCONV_COL(3)
    VIDEOCONV_COL(4) VIDEOCONV_COL(5) VIDEOCONV_COL(6) VIDEOCONV_COL(7)
#undef VIDEOCONV_COL
  }
  out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3, out[4] = a4, out[5] = a5, out[6] = a6;
  out[7] = a7;
}

// 8 channels starting at p, of which the first `valid` exist (the last vector of a C_out that is
// not a multiple of 8). Loads of a partial vector go through a buffer (rare: only shift, and a
// residual, whose widths in the zoo are multiples of 8). Stores of one are written in pieces of
// 4, 2 and 1 values: X3D-S's 54-channel layers store a partial vector on every output row, where
// a variable-length memcpy per row cost more than the row's arithmetic (not tried instead: AVX2's
// masked store, vmaskmovps, which Agner Fog's tables list as many micro-ops on AMD's Zen cores).
template <typename T>
inline vec16::vf8 load8(const T* p, int64_t valid) {
  return valid == 8 ? vec16::load<vec16::vf8>(p) : vec16::load_first<vec16::vf8>(p, valid);
}
template <typename T>
inline void store8(vec16::vf8 v, T* p, int64_t valid) {
  if (valid == 8) {
    vec16::store(v, p);
    return;
  }
  T buf[8];
  vec16::store(v, buf);  // the rounding to bfloat16 for bfloat16 outputs
  int64_t i = 0;
  if (valid & 4) {
    std::memcpy(p, buf, 4 * sizeof(T));
    i = 4;
  }
  if (valid & 2) {
    std::memcpy(p + i, buf + i, 2 * sizeof(T));
    i += 2;
  }
  if (valid & 1) p[i] = buf[i];
}

// The epilogue of one micro-tile: rows m0 .. m0 + nrows - 1, channels c .. c + 8 H - 1.
template <typename T, int H>
inline void store_tile_avx2(const __m256 (&acc)[kRowsAvx2][2], int nrows, const float* shift,
                            const T* residual, T* y, const Geometry& g, int64_t m0, int64_t c,
                            int activation) {
  for (int h = 0; h < H; h++) {
    const int64_t ch = c + 8 * h;
    const int64_t valid = std::min<int64_t>(8, g.co - ch);
    if (valid <= 0) break;
    const vec16::vf8 sh = load8(shift + ch, valid);
    for (int r = 0; r < nrows; r++) {
      const int64_t off = (m0 + r) * g.co + ch;
      vec16::vf8 v = reinterpret_cast<const vec16::vf8&>(acc[r][h]) + sh;
      if (residual != nullptr) v += load8(residual + off, valid);
      if (activation == kRelu) {
        v = vec16::vrelu(v);
      } else if (activation == kSilu) {
        v = vec16::vsilu(v);
      }
      store8(v, y + off, valid);  // bfloat16: rounded to nearest even, NaN kept
    }
  }
}

// One input row of C_in bfloat16 values widened (exactly) into float32.
inline void widen_row(const at::BFloat16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) vec16::store(vec16::load<vec16::vf8>(src + i), dst + i);
  for (; i < n; i++) dst[i] = static_cast<float>(src[i]);
}

template <typename T>
void conv3d_pointwise_avx2(const T* x, const float* w, const float* shift, const T* residual,
                           T* y, const Geometry& g, int activation) {
  constexpr bool widen = !std::is_same<T, float>::value;
  for_each_work_item(g, [&](int64_t m_begin, int64_t m_end, int64_t b_begin, int64_t b_end,
                            const int64_t* offsets) {
    // bfloat16: the micro-tile's rows in float32 (6 x C_in floats, <= 11 KB here: L1).
    std::vector<float> widened(widen ? kRowsAvx2 * g.ci : 0);
    for (int64_t b = b_begin; b < b_end; b++) {
      const int64_t c0 = b * kBlockWidth;
      const int64_t wb = std::min(kBlockWidth, g.co_pad - c0);
      const float* wblock = w + c0 * g.k_steps;
      for (int64_t m0 = m_begin; m0 < m_end; m0 += kRowsAvx2) {
        const int nrows = static_cast<int>(std::min<int64_t>(kRowsAvx2, m_end - m0));
        const int64_t* offs = offsets + (m0 - m_begin);
        // The missing rows of a last, partial tile repeat its first row and are not stored.
        const float* rows[kRowsAvx2];
        for (int r = 0; r < kRowsAvx2; r++) {
          const int64_t src = offs[r < nrows ? r : 0];
          if constexpr (widen) {
            float* dst = widened.data() + r * g.ci;
            if (r < nrows) widen_row(x + src, dst, g.ci);
            rows[r] = r < nrows ? dst : widened.data();
          } else {
            rows[r] = x + src;
          }
        }
        if (nrows == 1) {  // one position: the whole block in one pass over C_in
          __m256 row_acc[8];
          switch (wb / 8) {
            case 2: row_tile_avx2<2>(rows[0], wblock, wb, g.k_steps, row_acc); break;
            case 4: row_tile_avx2<4>(rows[0], wblock, wb, g.k_steps, row_acc); break;
            case 6: row_tile_avx2<6>(rows[0], wblock, wb, g.k_steps, row_acc); break;
            default: row_tile_avx2<8>(rows[0], wblock, wb, g.k_steps, row_acc);
          }
          for (int64_t c = c0; c < c0 + wb; c += kLanes) {
            __m256 acc[kRowsAvx2][2];
            acc[0][0] = row_acc[(c - c0) / 8];
            acc[0][1] = row_acc[(c - c0) / 8 + 1];
            store_tile_avx2<T, 2>(acc, 1, shift, residual, y, g, m0, c, activation);
          }
          continue;
        }
        for (int64_t c = c0; c < c0 + wb; c += kLanes) {
          __m256 acc[kRowsAvx2][2];
          if (g.co - c > 8) {
            tile_avx2<2>(rows, wblock + (c - c0), wb, g.k_steps, acc);
            store_tile_avx2<T, 2>(acc, nrows, shift, residual, y, g, m0, c, activation);
          } else {
            tile_avx2<1>(rows, wblock + (c - c0), wb, g.k_steps, acc);
            store_tile_avx2<T, 1>(acc, nrows, shift, residual, y, g, m0, c, activation);
          }
        }
      }
    }
  });
}

#pragma GCC pop_options

#endif  // VIDEOCONV_POINTWISE_X86

// Which kernel this build and this CPU run (asked by the Python side when it packs a weight,
// which otherwise keeps oneDNN), built with GCC for x86-64:
//   "avx512_bf16": AVX-512 F/BW/VL/DQ and AVX512-BF16: float32 with AVX-512 FMAs, bfloat16 with
//                  vdpbf16ps on a bfloat16 packed weight;
//   "avx2":        AVX2 and FMA (every x86-64-v3 CPU, e.g. AMD Zen 1-3, Intel Haswell and later
//                  without AVX512-BF16): float32 arithmetic for both dtypes, float32 packed weight;
//   "":            neither (or another compiler / architecture).
// vec16::forced_lanes = 8 (videoconv::_cpu_vector_lanes(8)) picks "avx2" on an AVX-512 CPU too,
// so that the tests run both kernels there.
bool cpu_has_avx512_bf16() { return vec16::cpu_has_avx512_bf16(); }

bool cpu_has_avx2_fma() {
#if VIDEOCONV_POINTWISE_X86
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

bool avx512_variant() {
  return cpu_has_avx512_bf16() && vec16::forced_lanes.load(std::memory_order_relaxed) != 8;
}

std::string pointwise_variant() {
  return avx512_variant() ? "avx512_bf16" : cpu_has_avx2_fma() ? "avx2" : "";
}

bool pointwise_supported() { return !pointwise_variant().empty(); }

at::Tensor conv3d_pointwise_cpu(const at::Tensor& input, const at::Tensor& packed,
                                const at::Tensor& shift, at::IntArrayRef stride,
                                c10::string_view activation,
                                const std::optional<at::Tensor>& residual) {
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  TORCH_CHECK(input.dim() == 5 && input.is_contiguous(cl),
              "_conv3d_pointwise_cpu: input must be 5-D and channels_last_3d");
  const bool bf16 = input.scalar_type() == at::kBFloat16;
  TORCH_CHECK(input.scalar_type() == at::kFloat || bf16,
              "_conv3d_pointwise_cpu: input must be float32 or bfloat16");
  // The packed weight's dtype says which arithmetic the Python side chose: bfloat16 (pairs of
  // input channels for vdpbf16ps) or float32 (float32 products, also for bfloat16 tensors).
  const bool f32_weight = packed.scalar_type() == at::kFloat;
  TORCH_CHECK((packed.scalar_type() == input.scalar_type() || (bf16 && f32_weight)) &&
                  packed.dim() == 1 && packed.is_contiguous(),
              "_conv3d_pointwise_cpu: the packed weight must be a contiguous 1-D tensor of the "
              "input's dtype (or float32 for a bfloat16 input)");
  // float32 products run on AVX-512 where the AVX-512 kernel is the variant in use (not forced
  // to 8 lanes) and the tensors are float32; a float32 weight for bfloat16 tensors and every
  // CPU without AVX-512 BF16 take the AVX2 kernel.
  const bool avx512 = f32_weight ? (!bf16 && avx512_variant())
                                 : cpu_has_avx512_bf16();
  TORCH_CHECK(avx512 || (f32_weight && cpu_has_avx2_fma()),
              "_conv3d_pointwise_cpu: needs an x86-64 CPU with AVX2 and FMA (float32 products) "
              "or AVX-512 with AVX512-BF16 (a bfloat16 packed weight), and a GCC build; use the "
              "oneDNN path");
  TORCH_CHECK(stride.size() == 3 && stride[0] > 0 && stride[1] > 0 && stride[2] > 0,
              "_conv3d_pointwise_cpu: stride must have 3 positive values");
  TORCH_CHECK(shift.dim() == 1 && shift.scalar_type() == at::kFloat && shift.is_contiguous() &&
                  shift.numel() > 0,
              "_conv3d_pointwise_cpu: shift must be a contiguous float32 vector of C_out values");
  Geometry g;
  const int64_t batch = input.size(0);
  g.ci = input.size(1);
  g.t_in = input.size(2);
  g.h_in = input.size(3);
  g.w_in = input.size(4);
  g.co = shift.numel();
  g.co_pad = (g.co + kLanes - 1) / kLanes * kLanes;
  const bool pairs = bf16 && !f32_weight;
  g.k_steps = pairs ? (g.ci + 1) / 2 : g.ci;
  TORCH_CHECK(packed.numel() == g.co_pad * g.k_steps * (pairs ? 2 : 1),
              "_conv3d_pointwise_cpu: the packed weight has ", packed.numel(),
              " values; for C_in ", g.ci, " and C_out ", g.co, " it must have ",
              g.co_pad * g.k_steps * (pairs ? 2 : 1));
  g.st = stride[0];
  g.sh = stride[1];
  g.sw = stride[2];
  g.unit_stride = g.st == 1 && g.sh == 1 && g.sw == 1;
  g.t_out = (g.t_in - 1) / g.st + 1;
  g.h_out = (g.h_in - 1) / g.sh + 1;
  g.w_out = (g.w_in - 1) / g.sw + 1;
  g.rows = batch * g.t_out * g.h_out * g.w_out;
  // One position per sample (Squeeze-and-Excitation on a pooled map): the output is both
  // layouts at once; it gets the plain strides, as the other paths and the fake give it.
  const bool point = g.t_out * g.h_out * g.w_out == 1;
  auto y = at::empty({batch, g.co, g.t_out, g.h_out, g.w_out},
                     input.options().memory_format(point ? at::MemoryFormat::Contiguous : cl));
  const bool has_res = residual.has_value() && residual->defined();
  if (has_res) {
    TORCH_CHECK(residual->sizes() == y.sizes() && residual->scalar_type() == input.scalar_type() &&
                    residual->is_contiguous(cl),
                "_conv3d_pointwise_cpu: residual must match the output (shape, dtype, "
                "channels_last_3d)");
  }
  if (y.numel() == 0) return y;
  const int act = activation_code(activation, "_conv3d_pointwise_cpu");
#if VIDEOCONV_POINTWISE_X86
  // The epilogues load shift a vector at a time (masked or through a buffer): no padding needed.
  const float* sh = shift.data_ptr<float>();
  if (bf16) {
    const auto* in = input.data_ptr<at::BFloat16>();
    const auto* res = has_res ? residual->data_ptr<at::BFloat16>() : nullptr;
    auto* out = y.data_ptr<at::BFloat16>();
    if (f32_weight) {
      conv3d_pointwise_avx2(in, packed.data_ptr<float>(), sh, res, out, g, act);
    } else {
      conv3d_pointwise_kernel(in, packed.data_ptr<at::BFloat16>(), sh, res, out, g, act);
    }
  } else {
    const float* in = input.data_ptr<float>();
    const float* res = has_res ? residual->data_ptr<float>() : nullptr;
    float* out = y.data_ptr<float>();
    if (avx512) {
      conv3d_pointwise_kernel(in, packed.data_ptr<float>(), sh, res, out, g, act);
    } else {
      conv3d_pointwise_avx2(in, packed.data_ptr<float>(), sh, res, out, g, act);
    }
  }
#endif
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  m.def(
      "_conv3d_pointwise_cpu(Tensor input, Tensor packed_weight, Tensor shift, int[3] stride, "
      "str activation, Tensor? residual) -> Tensor");
  m.def("_conv3d_pointwise_cpu_supported() -> bool", &pointwise_supported);
  m.def("_conv3d_pointwise_cpu_variant() -> str", &pointwise_variant);
}

TORCH_LIBRARY_IMPL(videoconv, CPU, m) {
  m.impl("_conv3d_pointwise_cpu", &conv3d_pointwise_cpu);
}

}  // namespace videoconv
