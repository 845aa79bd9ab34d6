// videoconv::_conv2plus1d_bn_act_cuda: a whole (2+1)D unit in one kernel (the intermediate stays
// in shared memory). The kernel, its design and its honest performance notes are in
// conv2plus1d_kernels.cuh (shared with the CPU emulation test); this file is the op glue:
// device checks, stream, launch, registration.

#include <torch/library.h>

#include "common.cuh"
#include "conv2plus1d_kernels.cuh"

namespace videoconv {
namespace cuda {
namespace {

at::Tensor conv2plus1d_bn_act_cuda(const at::Tensor& input, const at::Tensor& w1,
                                   const at::Tensor& scale1, const at::Tensor& shift1,
                                   const at::Tensor& w2, const at::Tensor& scale2,
                                   const at::Tensor& shift2, at::IntArrayRef stride,
                                   at::IntArrayRef padding, c10::string_view activation,
                                   bool temporal_first, const std::optional<at::Tensor>& residual) {
  const char* op = "videoconv::_conv2plus1d_bn_act_cuda";
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor");
  check_cuda_tensor(w1, "w1", input);
  check_cuda_tensor(w2, "w2", input);
  check_cuda_tensor(scale1, "scale1", input);
  check_cuda_tensor(shift1, "shift1", input);
  check_cuda_tensor(scale2, "scale2", input);
  check_cuda_tensor(shift2, "shift2", input);
  if (residual.has_value()) check_cuda_tensor(*residual, "residual", input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DeviceInfo dev = device_info(input.get_device());
  const plus1d::Conv2Plus1dLaunch l =
      plus1d::prepare(op, input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                      activation, temporal_first, residual, dev.sm, dev.num_sms);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.get_device()).stream();
  const dim3 grid(static_cast<unsigned int>(l.blocks)), block(plus1d::kThreads);
  const size_t smem = size_t(l.smem);
  switch (input.scalar_type()) {
    case at::kHalf: plus1d::conv2plus1d_kernel<__half><<<grid, block, smem, stream>>>(l.params); break;
    case at::kBFloat16:
      plus1d::conv2plus1d_kernel<__nv_bfloat16><<<grid, block, smem, stream>>>(l.params);
      break;
    case at::kFloat: plus1d::conv2plus1d_kernel<float><<<grid, block, smem, stream>>>(l.params); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", input.scalar_type());
  }
  VIDEOCONV_CHECK_LAUNCH(op);
  return to_output_layout(l.y, input);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  // Private op of the CUDA backend; the public op is videoconv::conv2plus1d_bn_act (same
  // arguments).
  m.def(
      "_conv2plus1d_bn_act_cuda(Tensor input, Tensor w1, Tensor scale1, Tensor shift1, Tensor w2, "
      "Tensor scale2, Tensor shift2, int[3] stride, int[3] padding, str activation, "
      "bool temporal_first, Tensor? residual) -> Tensor");
}

TORCH_LIBRARY_IMPL(videoconv, CUDA, m) {
  m.impl("_conv2plus1d_bn_act_cuda", &cuda::conv2plus1d_bn_act_cuda);
}

}  // namespace videoconv
