// videoconv::_channel_stats_cpu: the statistics pass of conv3d_bn_stats on the CPU backend.
//
// Input: z, the convolution's output (N, C, D, H, W), NCDHW or channels_last_3d. Output: the
// float64 per-channel mean and biased variance of z over N, D, H, W.
//
// Why a separate pass: oneDNN's convolution takes only element-wise post-ops (eltwise, binary,
// sum) and gives no access to its output tiles, so the per-channel reduction that the Triton
// kernel does in its epilogue runs here right after the convolution, as one read of z.
//
// Numerics and determinism (the contract of every backend, videoconv/ops/conv3d_bn_stats.py):
//   * z is cut into blocks whose boundaries depend only on its shape and layout (never on the
//     number of threads): channels_last_3d, a block is R consecutive rows (positions) of all C
//     channels; NCDHW, a block is a run of at most kBlockValues values of one (n, c) plane;
//   * per block and channel, two passes over the block while it is in L1/L2: its sum, giving
//     an approximate block mean m, then the centred sums D = sum(z - m) and Q = sum((z - m)^2),
//     all accumulated in float32 (float64 for float64 z). The block's exact-to-rounding mean is
//     m + D / n and its centred sum of squares M2 = Q - D^2 / n (the "corrected two-pass"
//     algorithm of Chan, Golub & LeVeque: the float32 sum of the first pass can be off by
//     ~0.01 for values near 1e4, and centring on that m alone would add n * 0.01^2 to M2).
//     Centring inside the block is what keeps the variance exact when |mean| >> std; reading
//     the block twice costs cache, not memory, bandwidth;
//   * blocks run in parallel, each writing its own partials (no shared accumulators, no
//     atomics); then, per channel, the partials are merged in block order in float64:
//         mean = sum_b S_b / n,   M2 = sum_b M2_b + sum_b n_b (S_b / n_b - mean)^2
//     (Chan et al.): every term non-negative, so no cancellation either.
//   The result is bitwise the same whatever the thread count.
//
// Vectorisation: the inner loops run over channels (channels_last_3d: independent accumulators,
// one per channel) or over kLanes independent lane accumulators (NCDHW), so the compiler
// vectorises them without reassociating a sum (-O3, no -ffast-math needed). The pass is
// memory-bound: plain SSE/AVX code generated for the build's baseline ISA keeps up with DRAM.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

namespace videoconv {
namespace {

// Values per block: 64 KiB of float32, which stays in L2 between the block's two passes.
constexpr int64_t kBlockValues = 16384;
// channels_last_3d: at least this many rows per block (wide layers would otherwise get blocks of
// a few rows, and as many partials as z has values / few).
constexpr int64_t kMinBlockRows = 64;
// NCDHW: independent accumulators per block (a multiple of any SIMD width in use).
constexpr int kLanes = 16;
// Work (values) below which a parallel region costs more than it saves: ATen's grain size. Small
// layers then run on the calling thread (waking OpenMP workers on a busy machine costs
// milliseconds); the partition into blocks, and so the result, does not change.
constexpr int64_t kGrainValues = at::internal::GRAIN_SIZE;

inline int64_t grain(int64_t values_per_item) {
  return std::max<int64_t>(1, kGrainValues / std::max<int64_t>(1, values_per_item));
}

struct Partials {
  std::vector<double> sum;  // [blocks * channels] (block-major)
  std::vector<double> m2;
  std::vector<int64_t> count;  // [blocks * channels]
};

// One block's partials from its approximate mean m, D = sum(z - m) and Q = sum((z - m)^2):
// the block's sum n * m + D and centred sum of squares Q - D^2 / n, in float64.
template <typename acc_t>
inline void store_block(Partials& out, int64_t i, int64_t n, acc_t m, acc_t dsum, acc_t q) {
  const double nd = static_cast<double>(n), d = static_cast<double>(dsum);
  out.sum[i] = nd * static_cast<double>(m) + d;
  out.m2[i] = std::max(0.0, static_cast<double>(q) - d * d / nd);
  out.count[i] = n;
}

// channels_last_3d: z is [P, C] (row = position). Block b covers rows [b*R, min(P, (b+1)*R)).
template <typename scalar_t>
void rows_partials(const scalar_t* z, int64_t P, int64_t C, int64_t R, Partials& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blocks = (P + R - 1) / R;
  at::parallel_for(0, blocks, grain(R * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(C), mean(C), dsum(C), sq(C);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t r0 = b * R, rows = std::min(P, r0 + R) - r0;
      const scalar_t* block = z + r0 * C;
      std::fill(sum.begin(), sum.end(), acc_t(0));
      std::fill(dsum.begin(), dsum.end(), acc_t(0));
      std::fill(sq.begin(), sq.end(), acc_t(0));
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* row = block + r * C;
        for (int64_t c = 0; c < C; ++c) sum[c] += static_cast<acc_t>(row[c]);
      }
      for (int64_t c = 0; c < C; ++c) mean[c] = sum[c] / static_cast<acc_t>(rows);
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* row = block + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t d = static_cast<acc_t>(row[c]) - mean[c];
          dsum[c] += d;
          sq[c] += d * d;
        }
      }
      for (int64_t c = 0; c < C; ++c)
        store_block(out, b * C + c, rows, mean[c], dsum[c], sq[c]);
    }
  });
}

// NCDHW: z is [N, C, S]. Block (n, c, j) covers values [j*kBlockValues, ...) of plane (n, c).
// Partials are stored channel-free as [N * J] per channel: index ((c * N + n) * J + j).
template <typename scalar_t>
void planes_partials(const scalar_t* z, int64_t N, int64_t C, int64_t S, Partials& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t J = (S + kBlockValues - 1) / kBlockValues;
  const int64_t blocks = N * C * J;
  at::parallel_for(0, blocks, grain(std::min(S, kBlockValues)), [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t j = blk % J, plane = blk / J;  // plane = n * C + c
      const int64_t n = plane / C, c = plane % C;
      const int64_t v0 = j * kBlockValues, len = std::min(S, v0 + kBlockValues) - v0;
      const scalar_t* x = z + plane * S + v0;
      acc_t lanes[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= len; i += kLanes)
        for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<acc_t>(x[i + l]);
      acc_t sum = 0;
      for (int l = 0; l < kLanes; ++l) sum += lanes[l];
      for (; i < len; ++i) sum += static_cast<acc_t>(x[i]);
      const acc_t mean = sum / static_cast<acc_t>(len);
      acc_t ds[kLanes] = {}, sq[kLanes] = {};
      i = 0;
      for (; i + kLanes <= len; i += kLanes)
        for (int l = 0; l < kLanes; ++l) {
          const acc_t d = static_cast<acc_t>(x[i + l]) - mean;
          ds[l] += d;
          sq[l] += d * d;
        }
      acc_t dsum = 0, q = 0;
      for (int l = 0; l < kLanes; ++l) dsum += ds[l], q += sq[l];
      for (; i < len; ++i) {
        const acc_t d = static_cast<acc_t>(x[i]) - mean;
        dsum += d;
        q += d * d;
      }
      store_block(out, (c * N + n) * J + j, len, mean, dsum, q);
    }
  });
}

// Fixed-order float64 merge of `blocks` partials per channel. Partial (b, c) is at
// b * stride_b + c * stride_c.
void merge(const Partials& p, int64_t C, int64_t blocks, int64_t stride_b, int64_t stride_c,
           int64_t total, double* mean_out, double* var_out) {
  at::parallel_for(0, C, grain(4 * blocks), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double s = 0;
      for (int64_t b = 0; b < blocks; ++b) s += p.sum[b * stride_b + c * stride_c];
      const double mean = s / static_cast<double>(total);
      double m2 = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t i = b * stride_b + c * stride_c;
        const double nb = static_cast<double>(p.count[i]);
        const double d = p.sum[i] / nb - mean;
        m2 += p.m2[i] + nb * d * d;
      }
      mean_out[c] = mean;
      var_out[c] = m2 / static_cast<double>(total);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> channel_stats_cpu(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 5, "videoconv::_channel_stats_cpu: expected a 5-D tensor, got ",
              input.dim(), "-D");
  TORCH_CHECK(input.device().is_cpu(), "videoconv::_channel_stats_cpu: expected a CPU tensor");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "videoconv::_channel_stats_cpu: expected a floating-point tensor, got ",
              input.scalar_type());
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t S = input.size(2) * input.size(3) * input.size(4);
  const int64_t P = N * S;  // values per channel
  auto options = input.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({C}, options), var = at::empty({C}, options);
  if (P == 0 || C == 0) {
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {mean, var};
  }
  const bool channels_last = !input.is_contiguous() &&
                             input.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  at::Tensor z = channels_last ? input : input.contiguous();
  Partials p;
  int64_t blocks, stride_b, stride_c;
  if (channels_last) {
    const int64_t R = std::max<int64_t>(kMinBlockRows, kBlockValues / C);
    blocks = (P + R - 1) / R;
    p.sum.resize(blocks * C), p.m2.resize(blocks * C), p.count.resize(blocks * C);
    stride_b = C, stride_c = 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "channel_stats_cpu",
                                    [&] { rows_partials(z.const_data_ptr<scalar_t>(), P, C, R, p); });
  } else {
    const int64_t J = (S + kBlockValues - 1) / kBlockValues;
    blocks = N * J;
    p.sum.resize(blocks * C), p.m2.resize(blocks * C), p.count.resize(blocks * C);
    stride_b = 1, stride_c = blocks;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, z.scalar_type(), "channel_stats_cpu",
        [&] { planes_partials(z.const_data_ptr<scalar_t>(), N, C, S, p); });
  }
  merge(p, C, blocks, stride_b, stride_c, P, mean.data_ptr<double>(), var.data_ptr<double>());
  return {mean, var};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  // Per-channel (mean, biased variance) of a 5-D tensor over N, D, H, W, in float64; private to
  // the cpu backend's conv3d_bn_stats (videoconv/backends/cpu.py).
  m.def("_channel_stats_cpu(Tensor z) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(videoconv, CPU, m) { m.impl("_channel_stats_cpu", &channel_stats_cpu); }

}  // namespace videoconv
