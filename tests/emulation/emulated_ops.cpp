// The direct CUDA kernels of videoconv, compiled as host C++ and run under the CPU emulation of
// cuda_emulation.h, registered as ops of a test-only namespace (videoconv_emu). Each op runs the
// same host-side preparation as the CUDA op (prepare_* in the kernel headers), then the kernels.
// Built by tests/test_cuda_emulation.py with torch.utils.cpp_extension.load_inline.

#include "cuda_emulation.h"  // first: defines the emulation macros

#include <torch/library.h>

#include <array>
#include <limits>
#include <tuple>

#include "cuda/channel_stats_kernels.cuh"
#include "cuda/conv2plus1d_kernels.cuh"
#include "cuda/depthwise_conv3d_kernels.cuh"

namespace {

using namespace videoconv::cuda;
constexpr int kSm = 90;  // the emulated device: sm_90 with `num_sms` multiprocessors

at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& scale, const at::Tensor& shift,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, c10::string_view activation,
                             const std::optional<at::Tensor>& residual, int64_t num_sms) {
  const char* op = "emulated depthwise forward";
  const depthwise::ForwardLaunch l = depthwise::prepare_forward(
      op, input, weight, scale, shift, stride, padding, dilation, activation, residual, kSm,
      int(num_sms));
  dispatch_dtype(input.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (l.vec > 1) {
      videoconv_emu::run(depthwise::depthwise_fwd_kernel<T, 16 / sizeof(T)>, l.params, l.blocks,
                         l.smem, depthwise::kThreads);
    } else {
      videoconv_emu::run(depthwise::depthwise_fwd_kernel<T, 1>, l.params, l.blocks, l.smem,
                         depthwise::kThreads);
    }
  });
  return to_output_layout(l.y, input);
}

std::tuple<at::Tensor, at::Tensor> depthwise_backward(
    const at::Tensor& grad_conv, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::array<bool, 2> output_mask, int64_t num_sms) {
  const char* op = "emulated depthwise backward";
  depthwise::BackwardLaunch l = depthwise::prepare_backward(
      op, grad_conv, input, weight, stride, padding, dilation, output_mask, kSm, int(num_sms));
  dispatch_dtype(input.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    if (l.want_dx) {
      if (l.dx.vec > 1) {
        videoconv_emu::run(depthwise::depthwise_dgrad_kernel<T, V>, l.dx.params, l.dx.blocks,
                           l.dx.smem, depthwise::kThreads);
      } else {
        videoconv_emu::run(depthwise::depthwise_dgrad_kernel<T, 1>, l.dx.params, l.dx.blocks,
                           l.dx.smem, depthwise::kThreads);
      }
    }
    if (l.want_dw) {
      if (l.dw.vec > 1) {
        videoconv_emu::run(depthwise::depthwise_wgrad_kernel<T, V>, l.dw.params, l.dw.blocks,
                           l.dw.smem, depthwise::kThreads);
      } else {
        videoconv_emu::run(depthwise::depthwise_wgrad_kernel<T, 1>, l.dw.params, l.dw.blocks,
                           l.dw.smem, depthwise::kThreads);
      }
      struct ReduceParams {
        const float* partial;
        T* out;
        int64_t elems;
        int chunks;
      };
      // The reduction kernel takes plain arguments; run it through a one-parameter wrapper.
      const ReduceParams rp{l.partial.data_ptr<float>(), static_cast<T*>(l.grad_weight.data_ptr()),
                            l.weight_elems, l.dw.params.chunks};
      auto reduce = +[](ReduceParams p) {
        depthwise::depthwise_wgrad_reduce_kernel<T>(p.partial, p.out, p.elems, p.chunks);
      };
      videoconv_emu::run(reduce, rp, videoconv::cuda_plan::ceil_div(l.weight_elems, depthwise::kThreads), 0,
                         depthwise::kThreads);
    }
  });
  at::Tensor dx = l.want_dx ? to_output_layout(l.grad_input, input) : at::empty({0}, input.options());
  at::Tensor dw = l.want_dw ? l.grad_weight : at::empty({0}, weight.options());
  return {dx, dw};
}

at::Tensor conv2plus1d(const at::Tensor& input, const at::Tensor& w1, const at::Tensor& scale1,
                       const at::Tensor& shift1, const at::Tensor& w2, const at::Tensor& scale2,
                       const at::Tensor& shift2, at::IntArrayRef stride, at::IntArrayRef padding,
                       c10::string_view activation, bool temporal_first,
                       const std::optional<at::Tensor>& residual, int64_t num_sms) {
  const char* op = "emulated conv2plus1d";
  const plus1d::Conv2Plus1dLaunch l =
      plus1d::prepare(op, input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                      activation, temporal_first, residual, kSm, int(num_sms));
  switch (input.scalar_type()) {
    case at::kHalf:
      videoconv_emu::run(plus1d::conv2plus1d_kernel<__half>, l.params, l.blocks, l.smem, plus1d::kThreads);
      break;
    case at::kBFloat16:
      videoconv_emu::run(plus1d::conv2plus1d_kernel<__nv_bfloat16>, l.params, l.blocks, l.smem,
                         plus1d::kThreads);
      break;
    case at::kFloat:
      videoconv_emu::run(plus1d::conv2plus1d_kernel<float>, l.params, l.blocks, l.smem, plus1d::kThreads);
      break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", input.scalar_type());
  }
  return to_output_layout(l.y, input);
}

std::tuple<at::Tensor, at::Tensor> channel_stats(const at::Tensor& input) {
  const char* op = "emulated channel_stats";
  stats::StatsLaunch l = stats::prepare_channel_stats(op, input);
  if (l.empty) {
    l.mean.fill_(std::numeric_limits<double>::quiet_NaN());
    l.var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {l.mean, l.var};
  }
  dispatch_dtype(input.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (l.channels_last) {
      videoconv_emu::run(stats::channel_stats_rows_kernel<T>, l.rows, l.blocks, l.smem, stats::kThreads);
    } else {
      videoconv_emu::run(stats::channel_stats_planes_kernel<T>, l.planes, l.blocks, l.smem,
                         stats::kThreads);
    }
  });
  videoconv_emu::run(stats::channel_stats_merge_kernel, l.merge, l.merge_blocks, 0, stats::kThreads);
  return {l.mean, l.var};
}

}  // namespace

TORCH_LIBRARY(videoconv_emu, m) {
  m.def("depthwise_forward(Tensor input, Tensor weight, Tensor scale, Tensor shift, int[3] stride, "
        "int[3] padding, int[3] dilation, str activation, Tensor? residual, int num_sms) -> Tensor");
  m.def("depthwise_backward(Tensor grad_conv, Tensor input, Tensor weight, int[3] stride, "
        "int[3] padding, int[3] dilation, bool[2] output_mask, int num_sms) -> (Tensor, Tensor)");
  m.def("conv2plus1d(Tensor input, Tensor w1, Tensor scale1, Tensor shift1, Tensor w2, "
        "Tensor scale2, Tensor shift2, int[3] stride, int[3] padding, str activation, "
        "bool temporal_first, Tensor? residual, int num_sms) -> Tensor");
  m.def("channel_stats(Tensor z) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(videoconv_emu, CPU, m) {
  m.impl("depthwise_forward", &depthwise_forward);
  m.impl("depthwise_backward", &depthwise_backward);
  m.impl("conv2plus1d", &conv2plus1d);
  m.impl("channel_stats", &channel_stats);
}
