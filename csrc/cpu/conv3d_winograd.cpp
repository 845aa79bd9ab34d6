// videoconv::_conv3d_winograd_cpu: Conv3d + folded BN + activation (+ residual) for kernels
// (kt, 3, 3), stride 1, dilation 1, groups 1, by Winograd's minimal filtering F(4x4, 3x3) in
// the two spatial dimensions (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
// 2016) and a direct sum over the kt temporal taps. bfloat16 tensors may instead take F(7x7,
// 3x3) (WinogradTile<7> below: 27-44% fewer products, accurate enough for bfloat16 only); the
// transformed weight's plane count, 36 or 81, says which.
//
// Why: on a CPU without AMX these layers (the 3x3 spatial convs of R(2+1)D, the 3x3x3 convs of
// R3D/I3D) already run in oneDNN at ~80-95% of the FMA peak, so no direct kernel can be much
// faster. F(4x4, 3x3) computes a 4x4 output tile with 36 multiplies per (input, output) channel
// pair instead of 144, i.e. 4x fewer; the rest is cheap transforms that are linear in the
// number of channels. The products run in float32 even for bfloat16 tensors. float32 FMAs run at
// half the bfloat16 dot-product rate, so the net gain over a bfloat16 direct conv is at most 2x,
// but bfloat16 GEMM operands would round the transformed input and weight, whose transforms have
// coefficients up to 5 and 8 and cancelling sums. benchmarks/winograd_bf16.py measures both
// sides: (1) the rate: on one Zen 4 VM, cpublas::brgemm's bfloat16 micro-kernel was no faster
// than its float32 one without AMX (113-126 against 107-110 GFLOP/s per core at K = 64), on
// another (same family and model, torch 2.13.0) 1.85-2.62x faster (379-403 against 149-206
// GFLOP/s on 2 cores); on Zen 5 1.85-1.96x (801-900 against 427-459); (2) the accuracy (float64
// emulation, 64 -> 144 at 56x56): V and U in bfloat16 give F(4x4) a mean error of 1.6e-2, 11x a
// bfloat16 direct conv's 1.4e-3; F(2x2), accurate enough in bfloat16 (3.7e-3), does 4 products
// per output instead of 2.25: at 1.9x the rate, 2.1 float32 product-times against 2.25 (7%
// fewer), for 1.8x the transform work per output (16 values per 4 outputs against 36 per 16).
// float32 operands keep F(4x4) at least as accurate as the direct conv (measured on the kernel
// itself: 2e-3 against 6e-3 max relative error).
//
// Algorithm, per block of kTileBlock output tiles (m x m positions of one output frame each,
// m = 4 or 7, from an a x a input patch, a = m + 2, so a^2 = 36 or 81 planes):
//   for each temporal tap kt:
//     V[p][tile][ci] = (B^T d B)[p]   d = the a x a input patch of the tile in frame t + kt - pt
//     M[p] += V[p] @ U[kt][p]          a^2 GEMMs (tiles x Ci) @ (Ci x Co), at::native::cpublas::
//                                      brgemm (oneDNN's f32 micro-kernel), accumulating over kt
//   y = act(A^T M A + shift [+ residual])  the m x m outputs, written straight to y
// U[kt][p] = (G g G^T)[p] with the BN scale already folded into g, computed once per weight in
// float64 by the Python side (videoconv/backends/cpu.py, _winograd_weight) and cached.
// The block's V (a^2 x tiles x Ci) and M (a^2 x tiles x Co) float32 buffers are per thread and
// reused block after block (F(4x4), 64 tiles: 590 KB and 1.3 MB for Ci = 64, Co = 144, in L2
// and L3; F(7x7), 32 tiles: 660 KB and 1.5 MB).
// Block size of F(4x4), measured on the project's AMD EPYC Zen 5 (1 MB L2 per core), 64 against
// 32 tiles (benchmarks/winograd_ab.py, two builds of each alternating; each layer's
// Winograd/oneDNN ratio from the same run, averaged over the two runs): bfloat16 1.08-1.13x on
// the 16x56x56 layers of r3d_18 / r2plus1d_18 (the 64 -> 144 1x3x3 conv: ~9.5 -> 7.6 ms),
// 0.98-1.10x at 8x28x28, float32 0.96-1.15x; 128 tiles lost again on the 8x28x28 layers (392
// tiles: too few blocks for two threads). Each block reads all 36 of U's (Ci x Co) planes once,
// so twice the tiles per block halves that traffic, at the cost of V and M no longer fitting L2
// together. The 32 chosen first had been sized for L2 on Zen 4, not timed against 64; Zen 4 and
// AVX2-only CPUs were not re-measured with 64. F(7x7)'s 32 (1568 outputs a block): 16 and 64
// were no better on r2plus1d_18's layers on Zen 5 (within that machine's ~10% noise; 64 lost on
// the 3x3x3 one).
//
// Layout: channels_last_3d input, residual and output (the channel vector of a position is
// contiguous, and the transforms run on 16 channels at a time, as GCC vector values). C_in must
// be a multiple of 16. C_out need not be (R(2+1)D's middle widths are 230, 460, 921): U's C_out
// columns are zero-padded to a multiple of 16, the GEMMs run over the padded width, and only the
// last 16-lane group of the output transform stores (and reads the residual) with a mask. The
// Python side (_use_winograd) decides which layers come here, and the op checks its arguments
// again.
// Indices are 64-bit throughout.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include "activation.h"

#include "vec16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace videoconv {
namespace {

using namespace vec16;

// The two tile sizes. Each names its output tile kM x kM, its input patch kAlpha x kAlpha
// (kAlpha = kM + 2), its block of output tiles per GEMM round (see the note above) and its
// transforms, o = B^T d (input) and o = A^T m (output), applied to kAlpha vectors at a time.
template <int M>
struct WinogradTile;

// F(4x4, 3x3): Lavin & Gray's matrices, with their common subexpressions written out.
template <>
struct WinogradTile<4> {
  static constexpr int kM = 4, kAlpha = 6;
  static constexpr int64_t kTileBlock = 64;
  __attribute__((always_inline)) static inline void input_transform(const vf16* d, vf16* o) {
    o[0] = 4.f * d[0] - 5.f * d[2] + d[4];
    o[1] = -4.f * (d[1] + d[2]) + d[3] + d[4];
    o[2] = 4.f * (d[1] - d[2]) - d[3] + d[4];
    o[3] = 2.f * (d[3] - d[1]) - d[2] + d[4];
    o[4] = 2.f * (d[1] - d[3]) - d[2] + d[4];
    o[5] = 4.f * d[1] - 5.f * d[3] + d[5];
  }
  __attribute__((always_inline)) static inline void output_transform(const vf16* m, vf16* o) {
    const vf16 a = m[1] + m[2], b = m[1] - m[2], p = m[3] + m[4], q = m[3] - m[4];
    o[0] = m[0] + a + p;
    o[1] = b + 2.f * q;
    o[2] = a + 4.f * p;
    o[3] = b + 8.f * q + m[5];
  }
};

// o = mat v for a constant matrix: the loops unroll fully, so every coefficient is a constant,
// and the zero terms (about a quarter of F(7x7)'s B^T) and the multiplications by 1 fold away.
template <int R, int C>
__attribute__((always_inline)) static inline void apply_constant(const float (&mat)[R][C],
                                                                 const vf16* v, vf16* o) {
#pragma GCC unroll 16
  for (int i = 0; i < R; i++) {
    vf16 acc = {};
    bool first = true;
#pragma GCC unroll 16
    for (int j = 0; j < C; j++) {
      if (mat[i][j] == 0.f) continue;
      acc = first ? mat[i][j] * v[j] : acc + mat[i][j] * v[j];
      first = false;
    }
    o[i] = acc;
  }
}

// F(7x7, 3x3), bfloat16 only (the choice is made in videoconv/backends/cpu.py, _winograd_tile):
// interpolation points 0, 1, -1, 2, -2, 1/2, -1/2, 4 and infinity, the Cook-Toom construction
// with 1/f_j in G (as Lavin & Gray's F(4x4)); G is in _WINOGRAD_G7 on the Python side.
// Why: 81 products per 49 outputs (1.65 per output) against F(4x4)'s 36 per 16 (2.25), 27%
// fewer, and 44% fewer on 14x14 and 7x7 maps, which 4x4 tiles cover with a quarter of their
// outputs wasted; the V and M traffic shrinks with the products. 56, 28, 14 and 7, the spatial
// sizes of every ResNet-style video model at 112 or 224 input, are multiples of 7.
// The cost is accuracy: in float32 arithmetic (benchmarks/winograd_bf16.py, 64 -> 144 at 56x56)
// its error is 1.0e-5 mean and 2.6e-4 max (relative to the mean and the largest output), against
// F(4x4)'s 9.5e-7 and 4.5e-6: well under the 1.4e-3 / 2.6e-3 of rounding the output to bfloat16
// once, but over float32's. So float32 keeps F(4x4). Of the eighth points tried (3, 4, +-1/4,
// +-3/2), 4 gave the smallest errors (in a float32 emulation like the script's, not kept).
template <>
struct WinogradTile<7> {
  static constexpr int kM = 7, kAlpha = 9;
  // 32 tiles of 49 outputs: V and M (81 planes each) about the size of F(4x4)'s 64-tile blocks.
  static constexpr int64_t kTileBlock = 32;
  static constexpr float kBT[9][9] = {
      {4.f, -1.f, -21.f, 21.f / 4, 21.f, -21.f / 4, -4.f, 1.f, 0.f},
      {0.f, -4.f, -3.f, 18.f, 51.f / 4, -33.f / 4, -3.f, 1.f, 0.f},
      {0.f, 4.f, -5.f, -16.f, 85.f / 4, -1.f / 4, -5.f, 1.f, 0.f},
      {0.f, -2.f, -1.f / 2, 41.f / 4, 5.f / 2, -37.f / 4, -2.f, 1.f, 0.f},
      {0.f, 2.f, -3.f / 2, -39.f / 4, 15.f / 2, 27.f / 4, -6.f, 1.f, 0.f},
      {0.f, -8.f, -14.f, 14.f, 35.f / 2, -7.f, -7.f / 2, 1.f, 0.f},
      {0.f, 8.f, -18.f, -6.f, 45.f / 2, -3.f, -9.f / 2, 1.f, 0.f},
      {0.f, -1.f, 0.f, 21.f / 4, 0.f, -21.f / 4, 0.f, 1.f, 0.f},
      {0.f, 4.f, -1.f, -21.f, 21.f / 4, 21.f, -21.f / 4, -4.f, 1.f},
  };
  static constexpr float kAT[7][9] = {
      {1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 0.f},
      {0.f, 1.f, -1.f, 2.f, -2.f, 1.f / 2, -1.f / 2, 4.f, 0.f},
      {0.f, 1.f, 1.f, 4.f, 4.f, 1.f / 4, 1.f / 4, 16.f, 0.f},
      {0.f, 1.f, -1.f, 8.f, -8.f, 1.f / 8, -1.f / 8, 64.f, 0.f},
      {0.f, 1.f, 1.f, 16.f, 16.f, 1.f / 16, 1.f / 16, 256.f, 0.f},
      {0.f, 1.f, -1.f, 32.f, -32.f, 1.f / 32, -1.f / 32, 1024.f, 0.f},
      {0.f, 1.f, 1.f, 64.f, 64.f, 1.f / 64, 1.f / 64, 4096.f, 1.f},
  };
  __attribute__((always_inline)) static inline void input_transform(const vf16* d, vf16* o) {
    apply_constant(kBT, d, o);
  }
  __attribute__((always_inline)) static inline void output_transform(const vf16* m, vf16* o) {
    apply_constant(kAT, m, o);
  }
};

struct Geometry {
  int64_t frames_in, h, w, ci;        // input per sample (frames_in = D)
  int64_t frames_out, ho, wo, co;     // output per sample
  int64_t co_pad;                     // U's C_out columns: co rounded up to a multiple of 16
  int64_t taps, pad_t, pad_h, pad_w;  // kt and padding
  int64_t tile_block;                 // output tiles per GEMM round (WinogradTile::kTileBlock)
  int64_t tiles_h, tiles_w;
  int64_t tiles_per_frame() const { return tiles_h * tiles_w; }
  // Distance between the kAlpha^2 planes of V and of M in a block buffer: one cache line more
  // than the plane, so that the values of one tile and channel group (read or written together
  // by the transforms) fall in different L1 sets. Unpadded, the plane is a multiple of 4 KiB for
  // many channel counts and all would alias a few sets. (A precaution: it made no difference
  // that stood out of the noise on r2plus1d_18's shapes.)
  int64_t v_plane() const { return tile_block * ci + kLanes; }
  int64_t co_chunk;                   // output channels per work item (see the kernel)
  int64_t m_plane() const { return tile_block * co_chunk + kLanes; }
};

// V[p][k][ci] for the tiles t0 .. t0+nt of temporal tap `tap` (zeros where the tile's input
// frame is temporal padding; spatial padding is zeros in the input patch).
template <typename W, typename T>
VIDEOCONV_ISA_CLONES void transform_input_block(const T* x, const Geometry& g, int64_t t0,
                                                int64_t nt, int64_t tap, float* V) {
  constexpr int A = W::kAlpha;
  const int64_t tpf = g.tiles_per_frame();
  const vf16 zero = {};
  for (int64_t k = 0; k < nt; k++) {
    const int64_t tile = t0 + k;
    const int64_t tx = tile % g.tiles_w, ty = (tile / g.tiles_w) % g.tiles_h;
    const int64_t frame_out = tile / tpf;  // n * frames_out + t_out
    const int64_t n = frame_out / g.frames_out, t_out = frame_out % g.frames_out;
    const int64_t t_in = t_out - g.pad_t + tap;
    const bool frame_ok = t_in >= 0 && t_in < g.frames_in;
    const T* xf = x + ((n * g.frames_in + (frame_ok ? t_in : 0)) * g.h) * g.w * g.ci;
    const int64_t h0 = ty * W::kM - g.pad_h, w0 = tx * W::kM - g.pad_w;
    bool inside[A][A];
    for (int i = 0; i < A; i++) {
      for (int j = 0; j < A; j++) {
        const int64_t hh = h0 + i, ww = w0 + j;
        inside[i][j] = frame_ok && hh >= 0 && hh < g.h && ww >= 0 && ww < g.w;
      }
    }
    for (int64_t c0 = 0; c0 < g.ci; c0 += kLanes) {
      vf16 t[A][A];  // t = B^T d, column by column
      for (int j = 0; j < A; j++) {
        vf16 col[A];
        for (int i = 0; i < A; i++) {
          col[i] = inside[i][j] ? load16(xf + ((h0 + i) * g.w + (w0 + j)) * g.ci + c0) : zero;
        }
        vf16 o[A];
        W::input_transform(col, o);
        for (int i = 0; i < A; i++) t[i][j] = o[i];
      }
      for (int i = 0; i < A; i++) {  // V[i][:] = t[i][:] B
        vf16 o[A];
        W::input_transform(t[i], o);
        for (int j = 0; j < A; j++) store16(o[j], V + (i * A + j) * g.v_plane() + k * g.ci + c0);
      }
    }
  }
}

// y = act(A^T M A + shift [+ residual]) for the tiles t0 .. t0+nt, clipped at the output edge.
// Per tile: first t = A^T M for every channel group of the chunk (into `scratch`, cn / 16 x kM x
// kAlpha vectors), then output row by output row, t[i] A for every group, and the row's kM
// positions x cn channels stored in address order. A row of a tile is one contiguous span of the
// channels_last_3d output (kM positions of C_out channels) when the chunk is all of C_out, so
// its cache lines are written whole, one after the other. Group by group instead (t and the
// rows of one group, then the next), each group writes 32 or 64 bytes into each of the tile's
// kM^2 positions and every line of the tile is visited C_out / 16 times; perf's samples (no
// hardware counters on the VM: cpu-clock) fell mostly on those stores. Measured in turns, the
// whole F(7x7) kernel on Zen 5: 64 -> 144 at 16x56x56 1.19x faster (7.49 -> 6.24 ms), 128 ->
// 230 (+ residual) at 8x28x28 1.06x, 128 -> 288 there 0.99x, 144 -> 64 (3x3x3, + residual) at
// 4x56x56 0.97x.
template <typename W, typename T>
VIDEOCONV_ISA_CLONES void transform_output_block(const float* M, const float* shift,
                                                 const T* residual, T* y, const Geometry& g,
                                                 int64_t t0, int64_t nt, int64_t co_begin,
                                                 int64_t cn, int activation, vf16* scratch) {
  constexpr int A = W::kAlpha, TM = W::kM;
  const int64_t tpf = g.tiles_per_frame();
  const int64_t groups = cn / kLanes;  // cn is a multiple of 16 (U's padded columns)
  vf16* row = scratch + groups * TM * A;  // [j][group]: one output row of the tile
  for (int64_t k = 0; k < nt; k++) {
    const int64_t tile = t0 + k;
    const int64_t tx = tile % g.tiles_w, ty = (tile / g.tiles_w) % g.tiles_h;
    const int64_t frame_out = tile / tpf;
    const int64_t rows = std::min<int64_t>(TM, g.ho - ty * TM);
    const int64_t cols = std::min<int64_t>(TM, g.wo - tx * TM);
    for (int64_t q = 0; q < groups; q++) {  // t = A^T M, column by column
      vf16* t = scratch + q * TM * A;
      for (int j = 0; j < A; j++) {
        vf16 col[A];
        for (int i = 0; i < A; i++) {
          col[i] = load16(M + (i * A + j) * g.m_plane() + k * g.co_chunk + q * kLanes);
        }
        vf16 o[TM];
        W::output_transform(col, o);
        for (int i = 0; i < TM; i++) t[i * A + j] = o[i];
      }
    }
    for (int64_t i = 0; i < rows; i++) {
      for (int64_t q = 0; q < groups; q++) {
        vf16 o[TM];
        W::output_transform(scratch + (q * TM + i) * A, o);  // the row: o = t[i] A
        const vf16 sh = load16(shift + co_begin + q * kLanes);  // padded to co_pad by the caller
        for (int j = 0; j < TM; j++) row[j * groups + q] = o[j] + sh;
      }
      const int64_t row_off = ((frame_out * g.ho + ty * TM + i) * g.wo + tx * TM) * g.co;
      for (int64_t j = 0; j < cols; j++) {
        for (int64_t q = 0; q < groups; q++) {
          const int64_t c0 = co_begin + q * kLanes;
          const int64_t valid = std::min(kLanes, g.co - c0);  // < 16 only in C_out's last group
          const int64_t off = row_off + j * g.co + c0;
          vf16 v = row[j * groups + q];
          if (residual != nullptr) {
            v += valid == kLanes ? load16(residual + off) : load16_first(residual + off, valid);
          }
          if (activation == kRelu) {
            v = vrelu(v);  // NaN stays NaN, as in torch.relu
          } else if (activation == kSilu) {
            alignas(64) float lanes[kLanes];
            std::memcpy(lanes, &v, sizeof(v));
            for (int c = 0; c < kLanes; c++) lanes[c] = lanes[c] / (1.f + std::exp(-lanes[c]));
            std::memcpy(&v, lanes, sizeof(v));
          }
          if (valid == kLanes) {
            store16(v, y + off);
          } else {
            store16_first(v, y + off, valid);
          }
        }
      }
    }
  }
}

// Work items are (block of tile_block tiles) x (chunk of output channels). Large layers have
// many tile blocks and one chunk: each item reads all of U, which stays in L2/L3 between items.
// Small late layers (a few frames of 14x14 or less) have fewer tile blocks than threads x 4;
// their C_out is then split so that every thread has work and each reads only its chunk of U
// (U is 36 kt C_in C_out floats: 28 MB for a 3x3x3 256 -> 256 conv, which with one item per
// thread every thread streamed whole from DRAM; splitting took that layer from 0.80x to 0.86x
// of oneDNN in bfloat16, which is why bfloat16 still leaves such layers to oneDNN, and float32
// gains either way). The input transform is repeated per chunk; it is a few % of an item.
template <typename W, typename T>
void conv3d_winograd_kernel(const T* x, const float* U, const float* shift, const T* residual,
                            T* y, int64_t batch, Geometry g, int activation) {
  constexpr int P = W::kAlpha * W::kAlpha;  // planes: products per tile and channel pair
  g.tile_block = W::kTileBlock;
  g.tiles_h = (g.ho + W::kM - 1) / W::kM;
  g.tiles_w = (g.wo + W::kM - 1) / W::kM;
  const int64_t ntiles = batch * g.frames_out * g.tiles_per_frame();
  const int64_t nblocks = (ntiles + g.tile_block - 1) / g.tile_block;
  const int64_t lane_groups = g.co_pad / kLanes;
  const int64_t wanted_items = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t splits = std::min<int64_t>(
      lane_groups, std::max<int64_t>(1, (wanted_items + nblocks - 1) / nblocks));
  // Chunks of whole 16-lane groups, as even as possible (the last may be smaller).
  const int64_t groups_per_chunk = (lane_groups + splits - 1) / splits;
  const int64_t nchunks = (lane_groups + groups_per_chunk - 1) / groups_per_chunk;
  g.co_chunk = groups_per_chunk * kLanes;
  const int64_t u_tap = P * g.ci * g.co_pad;
  at::parallel_for(0, nblocks * nchunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> V(P * g.v_plane()), M(P * g.m_plane());
    // transform_output_block's per-tile scratch: the chunk's t = A^T M and one output row.
    // (floats, aligned to 64 bytes by hand: std::vector<vf16> drops the vector type's alignment)
    std::vector<float> scratch_floats(g.co_chunk * (W::kM * W::kAlpha + W::kM) + kLanes);
    vf16* scratch = reinterpret_cast<vf16*>(
        (reinterpret_cast<uintptr_t>(scratch_floats.data()) + 63) & ~uintptr_t{63});
    for (int64_t item = i0; item < i1; item++) {
      // Chunk-major: a thread's consecutive items share a chunk of U across tile blocks.
      const int64_t chunk = item / nblocks, b = item % nblocks;
      const int64_t t0 = b * g.tile_block, nt = std::min(g.tile_block, ntiles - t0);
      const int64_t co_begin = chunk * g.co_chunk;
      // The GEMMs run over the padded columns (zeros in U); the output transform stops at g.co.
      const int64_t cn = std::min(g.co_chunk, g.co_pad - co_begin);
      for (int64_t tap = 0; tap < g.taps; tap++) {
        transform_input_block<W, T>(x, g, t0, nt, tap, V.data());
        for (int p = 0; p < P; p++) {
          // M[p] (+)= V[p] @ U[tap][p][:, chunk]: (nt x Ci) @ (Ci x cn), float32 accumulation.
          at::native::cpublas::brgemm(nt, cn, g.ci, g.ci, g.co_pad, g.co_chunk, /*add_C=*/tap > 0,
                                      V.data() + p * g.v_plane(),
                                      U + tap * u_tap + p * g.ci * g.co_pad + co_begin,
                                      M.data() + p * g.m_plane(), /*is_vnni=*/false);
        }
      }
      transform_output_block<W, T>(M.data(), shift, residual, y, g, t0, nt, co_begin, cn,
                                   activation, scratch);
    }
  });
  at::native::cpublas::brgemm_release(/*is_vnni=*/false);
}

at::Tensor conv3d_winograd_cpu(const at::Tensor& input, const at::Tensor& U,
                               const at::Tensor& shift, at::IntArrayRef padding,
                               c10::string_view activation,
                               const std::optional<at::Tensor>& residual) {
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  TORCH_CHECK(input.dim() == 5 && input.is_contiguous(cl),
              "_conv3d_winograd_cpu: input must be 5-D and channels_last_3d");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
              "_conv3d_winograd_cpu: input must be float32 or bfloat16");
  TORCH_CHECK(U.dim() == 4 && (U.size(1) == 36 || U.size(1) == 81) &&
                  U.scalar_type() == at::kFloat && U.is_contiguous(),
              "_conv3d_winograd_cpu: U must be a contiguous float32 (kt, 36 or 81, C_in, C_out "
              "rounded up to a multiple of 16) tensor: 36 planes for F(4x4, 3x3), 81 for F(7x7, "
              "3x3)");
  const bool tile7 = U.size(1) == 81;
  TORCH_CHECK(!tile7 || input.scalar_type() == at::kBFloat16,
              "_conv3d_winograd_cpu: F(7x7, 3x3) (U with 81 planes) is for bfloat16 tensors only: "
              "its float32 error (up to ~3e-4 of the largest output) is under bfloat16's rounding "
              "but not float32's");
  TORCH_CHECK(padding.size() == 3, "_conv3d_winograd_cpu: padding must have 3 values");
  Geometry g;
  const int64_t batch = input.size(0);
  g.ci = input.size(1);
  g.frames_in = input.size(2);
  g.h = input.size(3);
  g.w = input.size(4);
  g.taps = U.size(0);
  g.co_pad = U.size(3);
  g.co = shift.numel();
  g.pad_t = padding[0];
  g.pad_h = padding[1];
  g.pad_w = padding[2];
  TORCH_CHECK(U.size(2) == g.ci, "_conv3d_winograd_cpu: U has ", U.size(2),
              " input channels, the input ", g.ci);
  TORCH_CHECK(g.ci % kLanes == 0, "_conv3d_winograd_cpu: C_in must be a multiple of ", kLanes);
  TORCH_CHECK(shift.dim() == 1 && shift.scalar_type() == at::kFloat && shift.is_contiguous(),
              "_conv3d_winograd_cpu: shift must be a contiguous float32 vector of C_out values");
  TORCH_CHECK(g.co > 0 && g.co_pad == (g.co + kLanes - 1) / kLanes * kLanes,
              "_conv3d_winograd_cpu: U has ", g.co_pad, " output columns; for ", g.co,
              " output channels (the length of shift) it must have them rounded up to a multiple "
              "of ", kLanes);
  g.frames_out = g.frames_in + 2 * g.pad_t - g.taps + 1;
  g.ho = g.h + 2 * g.pad_h - 2;
  g.wo = g.w + 2 * g.pad_w - 2;
  TORCH_CHECK(g.frames_out > 0 && g.ho > 0 && g.wo > 0 && g.pad_h <= 2 && g.pad_w <= 2,
              "_conv3d_winograd_cpu: input smaller than the kernel, or padding above 2");
  auto y = at::empty({batch, g.co, g.frames_out, g.ho, g.wo}, input.options().memory_format(cl));
  const bool has_res = residual.has_value() && residual->defined();
  if (has_res) {
    TORCH_CHECK(residual->sizes() == y.sizes() && residual->scalar_type() == input.scalar_type() &&
                    residual->is_contiguous(cl),
                "_conv3d_winograd_cpu: residual must match the output (shape, dtype, "
                "channels_last_3d)");
  }
  if (y.numel() == 0) return y;
  const int act = activation_code(activation, "_conv3d_winograd_cpu");
  // The output transform loads shift 16 lanes at a time, the last group included.
  const at::Tensor shift_padded =
      g.co_pad == g.co ? shift : at::constant_pad_nd(shift, {0, g.co_pad - g.co});
  if (input.scalar_type() == at::kFloat) {
    conv3d_winograd_kernel<WinogradTile<4>, float>(
        input.data_ptr<float>(), U.data_ptr<float>(), shift_padded.data_ptr<float>(),
        has_res ? residual->data_ptr<float>() : nullptr, y.data_ptr<float>(), batch, g, act);
  } else {
    auto* run = tile7 ? &conv3d_winograd_kernel<WinogradTile<7>, at::BFloat16>
                      : &conv3d_winograd_kernel<WinogradTile<4>, at::BFloat16>;
    run(input.data_ptr<at::BFloat16>(), U.data_ptr<float>(), shift_padded.data_ptr<float>(),
        has_res ? residual->data_ptr<at::BFloat16>() : nullptr, y.data_ptr<at::BFloat16>(), batch,
        g, act);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  m.def(
      "_conv3d_winograd_cpu(Tensor input, Tensor U, Tensor shift, int[3] padding, str activation, "
      "Tensor? residual) -> Tensor");
}

TORCH_LIBRARY_IMPL(videoconv, CPU, m) {
  m.impl("_conv3d_winograd_cpu", &conv3d_winograd_cpu);
}

}  // namespace videoconv
