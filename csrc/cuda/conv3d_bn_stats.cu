// videoconv::_channel_stats_cuda: the statistics pass of the cuda backend's conv3d_bn_stats
// (training-mode BatchNorm). The cuda backend runs its convolution (CUTLASS implicit GEMM or the
// direct depthwise kernel) with an identity epilogue, then this op reduces the output to the
// float64 per-channel mean and biased variance.
//
// The kernels, their numerics (corrected two-pass per thread, Chan's combination, a fixed-order
// float64 merge: deterministic, no atomics) and the launch preparation are in
// channel_stats_kernels.cuh, shared with the CPU emulation test; this file is the op glue.

#include <torch/library.h>

#include <limits>
#include <tuple>

#include "channel_stats_kernels.cuh"
#include "common.cuh"

namespace videoconv {
namespace cuda {
namespace {

using namespace stats;

std::tuple<at::Tensor, at::Tensor> channel_stats_cuda(const at::Tensor& input) {
  const char* op = "videoconv::_channel_stats_cuda";
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(input.device());
  StatsLaunch l = prepare_channel_stats(op, input);
  if (l.empty) {
    l.mean.fill_(std::numeric_limits<double>::quiet_NaN());
    l.var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {l.mean, l.var};
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.get_device()).stream();
  // Grids are 1-D over blockIdx.x (up to 2^31 - 1 blocks); one block covers at least 128 rows x
  // 32 channels or 4096 values, so that limit is far beyond any activation that fits in memory.
  TORCH_CHECK(l.blocks < (int64_t(1) << 31), op, ": tensor too large (", l.blocks, " blocks)");
  dispatch_dtype(input.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (l.channels_last) {
      channel_stats_rows_kernel<T><<<dim3(unsigned(l.blocks)), dim3(kThreads), size_t(l.smem), stream>>>(l.rows);
    } else {
      channel_stats_planes_kernel<T><<<dim3(unsigned(l.blocks)), dim3(kThreads), size_t(l.smem), stream>>>(l.planes);
    }
    VIDEOCONV_CHECK_LAUNCH(l.channels_last ? "channel_stats_rows_kernel" : "channel_stats_planes_kernel");
  });
  channel_stats_merge_kernel<<<dim3(unsigned(l.merge_blocks)), dim3(kThreads), 0, stream>>>(l.merge);
  VIDEOCONV_CHECK_LAUNCH("channel_stats_merge_kernel");
  return {l.mean, l.var};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  // Per-channel (mean, biased variance) of a 5-D tensor over N, D, H, W, in float64; private to
  // the cuda backend's conv3d_bn_stats (videoconv/backends/cuda.py).
  m.def("_channel_stats_cuda(Tensor z) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(videoconv, CUDA, m) { m.impl("_channel_stats_cuda", &cuda::channel_stats_cuda); }

}  // namespace videoconv
