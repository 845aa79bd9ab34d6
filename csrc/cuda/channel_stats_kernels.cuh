// Per-channel batch statistics (mean, biased variance) of a convolution output on CUDA: the
// statistics pass of the cuda backend's conv3d_bn_stats (training-mode BatchNorm), its kernels
// and the host-side preparation of their launches. The op glue is in conv3d_bn_stats.cu; this
// header is also compiled as host C++ by the CPU emulation test (tests/test_cuda_emulation.py).
//
// Why a separate pass and not a CUTLASS epilogue: the cuda backend's convolution is CUTLASS's
// implicit GEMM (or the direct depthwise kernel), whose epilogue is element-wise; a reduction
// epilogue would need an epilogue visitor tree per CUTLASS version and tile shape. This pass
// reads the output once more (the Triton backend reduces in its epilogue instead). It is the
// same contract and the same numerics as the CPU pass (csrc/cpu/conv3d_bn_stats.cpp):
//
//   * z is cut into blocks whose boundaries depend only on its shape and layout (never on the
//     device): channels_last_3d, a block is kRowsPerBlock positions x kChannelsPerBlock
//     channels; NCDHW, a block is kPlaneChunk consecutive values of one (n, c) plane;
//   * each thread reduces its values with the corrected two-pass algorithm (Chan, Golub &
//     LeVeque) in float32: sum -> approximate mean m, then D = sum(z - m), Q = sum((z - m)^2),
//     giving the exact-to-rounding sum n*m + D and centred sum of squares Q - D^2/n. Centring
//     per thread is what keeps the variance right when |mean| >> std (a float32 sum of squares
//     minus a squared sum would lose every digit at mean 1e4, std 1);
//   * the threads of a block combine their (count, sum, M2) in a fixed order (Chan's pairwise
//     update: every M2 term is non-negative), and the block writes one float64 partial per
//     channel: no atomics;
//   * a last kernel merges the partials of each channel in block order in float64, exactly as
//     the CPU pass does: mean = sum_b S_b / n, M2 = sum_b M2_b + sum_b n_b (S_b/n_b - mean)^2.
//   So the result is bitwise the same from run to run, and independent of the SM count.
//
// Offsets are 64-bit (a video batch's activations pass 2^31 elements); the pass is memory-bound,
// so the kernels are about coalesced reads: in channels_last_3d consecutive threads read
// consecutive channels of a row, in NCDHW consecutive values of a plane.

#pragma once

#include <cstdint>

#include "device_common.cuh"
#include "host_common.h"

namespace videoconv {
namespace cuda {
namespace stats {

constexpr int kThreads = 256;
// channels_last_3d tile: 32 channels (a 64- or 128-byte row segment per warp) x 8 row groups;
// each thread reduces kRowsPerThread rows of its channel.
constexpr int kChannelsPerBlock = 32;
constexpr int kRowGroups = kThreads / kChannelsPerBlock;
constexpr int kRowsPerThread = 16;
constexpr int64_t kRowsPerBlock = int64_t(kRowGroups) * kRowsPerThread;  // 128
// NCDHW: each thread reduces kValuesPerThread values strided by kThreads (coalesced).
constexpr int kValuesPerThread = 16;
constexpr int64_t kPlaneChunk = int64_t(kThreads) * kValuesPerThread;  // 4096

// A (count, sum, centred sum of squares) triple and Chan's pairwise combination.
struct Moments {
  float n;
  float sum;
  float m2;
};

__device__ __forceinline__ Moments combine(const Moments& a, const Moments& b) {
  if (a.n == 0.f) return b;
  if (b.n == 0.f) return a;
  const float n = a.n + b.n;
  const float delta = b.sum / b.n - a.sum / a.n;
  return Moments{n, a.sum + b.sum, a.m2 + b.m2 + delta * delta * (a.n * b.n / n)};
}

// ---------------------------------------------------------------------------------------------
// channels_last_3d: z is [P, C] (row = position n, d, h, w).

struct RowsParams {
  const void* z;
  double* part_sum;    // [row_blocks][C]
  double* part_m2;     // [row_blocks][C]
  int64_t* part_n;     // [row_blocks][C]
  int64_t rows;        // P
  int64_t channels;    // C
  int64_t channel_blocks;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) channel_stats_rows_kernel(const RowsParams prm) {
  VIDEOCONV_DYNAMIC_SMEM(float, smem);  // [3][kRowGroups][kChannelsPerBlock]
  const T* z = static_cast<const T*>(prm.z);
  const int64_t block = int64_t(blockIdx.x);
  const int64_t cb = block % prm.channel_blocks, rb = block / prm.channel_blocks;
  const int lane = int(threadIdx.x) % kChannelsPerBlock, group = int(threadIdx.x) / kChannelsPerBlock;
  const int64_t c = cb * kChannelsPerBlock + lane;
  const int64_t r0 = rb * kRowsPerBlock;
  const bool active = c < prm.channels;

  // Rows group, group + kRowGroups, ...: a warp reads 32 consecutive channels of one row.
  float sum = 0.f;
  int count = 0;
  if (active) {
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int64_t r = r0 + group + int64_t(i) * kRowGroups;
      if (r >= prm.rows) break;
      sum += to_float(z[r * prm.channels + c]);
      ++count;
    }
  }
  const float m = count > 0 ? sum / float(count) : 0.f;
  float dsum = 0.f, q = 0.f;
  for (int i = 0; i < count; ++i) {
    const int64_t r = r0 + group + int64_t(i) * kRowGroups;
    const float d = to_float(z[r * prm.channels + c]) - m;
    dsum += d;
    q += d * d;
  }
  const float n = float(count);
  float* s_n = smem;
  float* s_sum = smem + kThreads;
  float* s_m2 = smem + 2 * kThreads;
  s_n[threadIdx.x] = n;
  s_sum[threadIdx.x] = count > 0 ? n * m + dsum : 0.f;
  s_m2[threadIdx.x] = count > 0 ? fmaxf(0.f, q - dsum * dsum / n) : 0.f;
  VIDEOCONV_SYNC();
  if (group == 0 && active) {
    // The kRowGroups partials of this channel, combined in group order.
    Moments acc{s_n[lane], s_sum[lane], s_m2[lane]};
    for (int g = 1; g < kRowGroups; ++g) {
      const int t = g * kChannelsPerBlock + lane;
      acc = combine(acc, Moments{s_n[t], s_sum[t], s_m2[t]});
    }
    const int64_t i = rb * prm.channels + c;
    prm.part_sum[i] = double(acc.sum);
    prm.part_m2[i] = double(acc.m2);
    prm.part_n[i] = int64_t(acc.n);
  }
}

// ---------------------------------------------------------------------------------------------
// NCDHW: z is [N, C, S]. Block (n, c, j) reduces values [j*kPlaneChunk, ...) of plane (n, c);
// its partial goes to index (c * N + n) * J + j, so each channel's partials are contiguous.

struct PlanesParams {
  const void* z;
  double* part_sum;
  double* part_m2;
  int64_t* part_n;
  int64_t batch;     // N
  int64_t channels;  // C
  int64_t plane;     // S = D * H * W
  int64_t chunks;    // J = ceil(S / kPlaneChunk)
};

template <typename T>
__global__ void __launch_bounds__(kThreads) channel_stats_planes_kernel(const PlanesParams prm) {
  VIDEOCONV_DYNAMIC_SMEM(float, smem);  // [3][kThreads]
  const T* z = static_cast<const T*>(prm.z);
  const int64_t block = int64_t(blockIdx.x);
  const int64_t j = block % prm.chunks, nc = block / prm.chunks;  // nc = n * C + c
  const int64_t n_idx = nc / prm.channels, c = nc % prm.channels;
  const int64_t v0 = j * kPlaneChunk;
  const T* x = z + nc * prm.plane;
  const int t = int(threadIdx.x);

  float sum = 0.f;
  int count = 0;
  for (int i = 0; i < kValuesPerThread; ++i) {
    const int64_t v = v0 + t + int64_t(i) * kThreads;
    if (v >= prm.plane) break;
    sum += to_float(x[v]);
    ++count;
  }
  const float m = count > 0 ? sum / float(count) : 0.f;
  float dsum = 0.f, q = 0.f;
  for (int i = 0; i < count; ++i) {
    const float d = to_float(x[v0 + t + int64_t(i) * kThreads]) - m;
    dsum += d;
    q += d * d;
  }
  float* s_n = smem;
  float* s_sum = smem + kThreads;
  float* s_m2 = smem + 2 * kThreads;
  const float nf = float(count);
  s_n[t] = nf;
  s_sum[t] = count > 0 ? nf * m + dsum : 0.f;
  s_m2[t] = count > 0 ? fmaxf(0.f, q - dsum * dsum / nf) : 0.f;
  VIDEOCONV_SYNC();
  // A fixed pairwise tree over the threads: thread t absorbs t + half (deterministic order).
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (t < half) {
      const Moments r = combine(Moments{s_n[t], s_sum[t], s_m2[t]},
                                Moments{s_n[t + half], s_sum[t + half], s_m2[t + half]});
      s_n[t] = r.n;
      s_sum[t] = r.sum;
      s_m2[t] = r.m2;
    }
    VIDEOCONV_SYNC();
  }
  if (t == 0) {
    const int64_t i = (c * prm.batch + n_idx) * prm.chunks + j;
    prm.part_sum[i] = double(s_sum[0]);
    prm.part_m2[i] = double(s_m2[0]);
    prm.part_n[i] = int64_t(s_n[0]);
  }
}

// ---------------------------------------------------------------------------------------------
// The float64 merge: one thread per channel walks its partials in block order. Partial (b, c)
// is at b * stride_b + c * stride_c.

struct MergeParams {
  const double* part_sum;
  const double* part_m2;
  const int64_t* part_n;
  double* mean;
  double* var;
  int64_t channels;
  int64_t blocks;
  int64_t stride_b;
  int64_t stride_c;
  int64_t total;  // values per channel
};

__global__ void __launch_bounds__(kThreads) channel_stats_merge_kernel(const MergeParams prm) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= prm.channels) return;
  double s = 0.0;
  for (int64_t b = 0; b < prm.blocks; ++b) s += prm.part_sum[b * prm.stride_b + c * prm.stride_c];
  const double mean = s / double(prm.total);
  double m2 = 0.0;
  for (int64_t b = 0; b < prm.blocks; ++b) {
    const int64_t i = b * prm.stride_b + c * prm.stride_c;
    const int64_t nb = prm.part_n[i];
    if (nb == 0) continue;
    const double d = prm.part_sum[i] / double(nb) - mean;
    m2 += prm.part_m2[i] + double(nb) * d * d;
  }
  prm.mean[c] = mean;
  prm.var[c] = m2 / double(prm.total);
}

// ---------------------------------------------------------------------------------------------
// host side (shared by the CUDA op and the CPU emulation)

struct StatsLaunch {
  at::Tensor z;  // the input in the layout the kernels read (a view when already contiguous)
  at::Tensor mean, var;  // float64 [C]
  at::Tensor part_sum, part_m2, part_n;
  bool channels_last = false;
  bool empty = false;  // no values per channel: mean and var are NaN, no kernel runs
  RowsParams rows{};
  PlanesParams planes{};
  MergeParams merge{};
  int64_t blocks = 0;        // of the rows or planes kernel
  int64_t merge_blocks = 0;  // of the merge kernel
  int64_t smem = int64_t(3) * kThreads * int64_t(sizeof(float));
};

inline StatsLaunch prepare_channel_stats(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 5, op, ": expected a 5-D tensor (N, C, D, H, W), got ", input.dim(),
              "-D");
  StatsLaunch l;
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t S = input.size(2) * input.size(3) * input.size(4);
  const int64_t P = N * S;
  auto f64 = input.options().dtype(at::kDouble);
  l.mean = at::empty({C}, f64);
  l.var = at::empty({C}, f64);
  if (P == 0 || C == 0) {
    l.empty = true;
    return l;
  }
  // The layout decides the blocking, as on the CPU: channels_last_3d (and not also contiguous,
  // which a tensor with C == 1 or D = H = W = 1 is) reads rows, anything else NCDHW planes.
  l.channels_last = !input.is_contiguous() && input.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  l.z = l.channels_last ? input : input.contiguous();
  int64_t blocks, stride_b, stride_c;
  if (l.channels_last) {
    const int64_t row_blocks = cuda_plan::ceil_div(P, kRowsPerBlock);
    const int64_t channel_blocks = cuda_plan::ceil_div(C, int64_t(kChannelsPerBlock));
    blocks = row_blocks;
    stride_b = C, stride_c = 1;
    l.blocks = row_blocks * channel_blocks;
    l.rows = RowsParams{l.z.data_ptr(), nullptr, nullptr, nullptr, P, C, channel_blocks};
  } else {
    const int64_t J = cuda_plan::ceil_div(S, kPlaneChunk);
    blocks = N * J;
    stride_b = 1, stride_c = blocks;
    l.blocks = N * C * J;
    l.planes = PlanesParams{l.z.data_ptr(), nullptr, nullptr, nullptr, N, C, S, J};
  }
  l.part_sum = at::empty({blocks * C}, f64);
  l.part_m2 = at::empty({blocks * C}, f64);
  l.part_n = at::empty({blocks * C}, input.options().dtype(at::kLong));
  double* ps = l.part_sum.data_ptr<double>();
  double* pm = l.part_m2.data_ptr<double>();
  int64_t* pn = l.part_n.data_ptr<int64_t>();
  l.rows.part_sum = l.planes.part_sum = ps;
  l.rows.part_m2 = l.planes.part_m2 = pm;
  l.rows.part_n = l.planes.part_n = pn;
  l.merge = MergeParams{ps, pm, pn, l.mean.data_ptr<double>(), l.var.data_ptr<double>(), C, blocks,
                        stride_b, stride_c, P};
  l.merge_blocks = cuda_plan::ceil_div(C, int64_t(kThreads));
  return l;
}

}  // namespace stats
}  // namespace cuda
}  // namespace videoconv
