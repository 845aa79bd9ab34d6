// Depthwise Conv3d (groups == C_in == C_out) + scale/shift + residual + activation on CUDA, with
// its backward (grad_input and grad_weight from the gradient of the convolution output).
//
// The kernels, their design notes and the host-side preparation of the launches are in
// depthwise_conv3d_kernels.cuh (shared with the CPU emulation test); this file is the op glue:
// device checks, stream, launches, registration.

#include <torch/library.h>

#include <tuple>

#include "common.cuh"
#include "depthwise_conv3d_kernels.cuh"

namespace videoconv {
namespace cuda {
namespace {

using namespace depthwise;

template <typename Kernel, typename Params>
void launch_direct(Kernel kernel, const Params& prm, int64_t blocks, int64_t smem,
                   cudaStream_t stream, const char* what) {
  if (smem > (48 << 10)) {
    VIDEOCONV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              int(smem)));
  }
  kernel<<<dim3(unsigned(blocks)), dim3(kThreads), size_t(smem), stream>>>(prm);
  VIDEOCONV_CHECK_LAUNCH(what);
}

}  // namespace

at::Tensor depthwise_conv3d_bn_act_cuda(const at::Tensor& input, const at::Tensor& weight,
                                        const at::Tensor& scale, const at::Tensor& shift,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, c10::string_view activation,
                                        const std::optional<at::Tensor>& residual) {
  const char* op = "videoconv::_depthwise_conv3d_bn_act_cuda";
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor");
  check_cuda_tensor(weight, "weight", input);
  check_cuda_tensor(scale, "scale", input);
  check_cuda_tensor(shift, "shift", input);
  if (residual.has_value()) check_cuda_tensor(*residual, "residual", input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DeviceInfo dev = device_info(input.get_device());
  const ForwardLaunch l = prepare_forward(op, input, weight, scale, shift, stride, padding,
                                          dilation, activation, residual, dev.sm, dev.num_sms);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.get_device()).stream();
  dispatch_dtype(input.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if (l.vec > 1) {
      launch_direct(depthwise_fwd_kernel<T, 16 / sizeof(T)>, l.params, l.blocks, l.smem, stream, op);
    } else {
      launch_direct(depthwise_fwd_kernel<T, 1>, l.params, l.blocks, l.smem, stream, op);
    }
  });
  return to_output_layout(l.y, input);
}

namespace {

std::tuple<at::Tensor, at::Tensor> depthwise_conv3d_backward_cuda(
    const at::Tensor& grad_conv, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::array<bool, 2> output_mask) {
  const char* op = "videoconv::_depthwise_conv3d_backward_cuda";
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor");
  check_cuda_tensor(grad_conv, "grad_conv", input);
  check_cuda_tensor(weight, "weight", input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DeviceInfo dev = device_info(input.get_device());
  BackwardLaunch l = prepare_backward(op, grad_conv, input, weight, stride, padding, dilation,
                                      output_mask, dev.sm, dev.num_sms);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.get_device()).stream();
  dispatch_dtype(input.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    if (l.want_dx) {
      if (l.dx.vec > 1) {
        launch_direct(depthwise_dgrad_kernel<T, V>, l.dx.params, l.dx.blocks, l.dx.smem, stream, op);
      } else {
        launch_direct(depthwise_dgrad_kernel<T, 1>, l.dx.params, l.dx.blocks, l.dx.smem, stream, op);
      }
    }
    if (l.want_dw) {
      if (l.dw.vec > 1) {
        launch_direct(depthwise_wgrad_kernel<T, V>, l.dw.params, l.dw.blocks, l.dw.smem, stream, op);
      } else {
        launch_direct(depthwise_wgrad_kernel<T, 1>, l.dw.params, l.dw.blocks, l.dw.smem, stream, op);
      }
      depthwise_wgrad_reduce_kernel<T>
          <<<dim3(unsigned(cuda_plan::ceil_div(l.weight_elems, kThreads))), dim3(kThreads), 0, stream>>>(
              l.partial.data_ptr<float>(), static_cast<T*>(l.grad_weight.data_ptr()),
              l.weight_elems, l.dw.params.chunks);
      VIDEOCONV_CHECK_LAUNCH("depthwise_wgrad_reduce_kernel");
    }
  });
  // Not requested: an empty tensor in its place (the schema returns two tensors).
  at::Tensor grad_input = l.want_dx ? to_output_layout(l.grad_input, input) : at::empty({0}, input.options());
  at::Tensor grad_weight = l.want_dw ? l.grad_weight : at::empty({0}, weight.options());
  return {grad_input, grad_weight};
}

}  // namespace
}  // namespace cuda
TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  // Private ops of the CUDA backend (the public op is videoconv::conv3d_bn_act with groups ==
  // C_in == C_out). The backward takes the gradient of the *convolution output* (the epilogue's
  // derivative is applied by the caller) and returns (grad_input, grad_weight); an entry of
  // output_mask that is False gives an empty tensor in its place.
  m.def(
      "_depthwise_conv3d_bn_act_cuda(Tensor input, Tensor weight, Tensor scale, Tensor shift, "
      "int[3] stride, int[3] padding, int[3] dilation, str activation, Tensor? residual) -> Tensor");
  m.def(
      "_depthwise_conv3d_backward_cuda(Tensor grad_conv, Tensor input, Tensor weight, "
      "int[3] stride, int[3] padding, int[3] dilation, bool[2] output_mask) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(videoconv, CUDA, m) {
  m.impl("_depthwise_conv3d_bn_act_cuda", &cuda::depthwise_conv3d_bn_act_cuda);
  m.impl("_depthwise_conv3d_backward_cuda", &cuda::depthwise_conv3d_backward_cuda);
}

}  // namespace videoconv
