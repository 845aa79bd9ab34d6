// Shared host pieces of videoconv's CUDA launchers that need the CUDA runtime: error checks,
// device attributes. Device helpers are in device_common.cuh, ATen-only helpers in host_common.h.
//
// Kept free of ATen/cuda/CUDAContext.h (it needs cuBLAS/cuSPARSE/cuSOLVER headers that a bare
// CUDA toolkit lacks): the stream comes from c10/cuda/CUDAStream.h and device attributes from the
// CUDA runtime. Every kernel computes in float32 and rounds once to the output dtype.

#pragma once

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "device_common.cuh"
#include "host_common.h"

namespace videoconv {
namespace cuda {

#define VIDEOCONV_CUDA_CHECK(expr)                                                            \
  do {                                                                                        \
    cudaError_t videoconv_err_ = (expr);                                                      \
    TORCH_CHECK(videoconv_err_ == cudaSuccess, "videoconv CUDA error: ",                      \
                cudaGetErrorString(videoconv_err_), " (", #expr, ")");                        \
  } while (0)

// Checks the launch of the kernel just issued (configuration errors surface here, at the call,
// instead of at a later synchronisation).
#define VIDEOCONV_CHECK_LAUNCH(what)                                                          \
  do {                                                                                        \
    cudaError_t videoconv_err_ = cudaGetLastError();                                          \
    TORCH_CHECK(videoconv_err_ == cudaSuccess, "videoconv: launching ", what, " failed: ",    \
                cudaGetErrorString(videoconv_err_));                                          \
  } while (0)

struct DeviceInfo {
  int sm = 0;        // compute capability x 10
  int num_sms = 0;   // multiprocessors
};

inline DeviceInfo device_info(int device) {
  DeviceInfo info;
  int major = 0, minor = 0;
  VIDEOCONV_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  VIDEOCONV_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  VIDEOCONV_CUDA_CHECK(cudaDeviceGetAttribute(&info.num_sms, cudaDevAttrMultiProcessorCount, device));
  info.sm = major * 10 + minor;
  return info;
}

// ---------------------------------------------------------------------------------------------
// launchers shared between translation units (defined in depthwise_conv3d_bn_act.cu)

at::Tensor depthwise_conv3d_bn_act_cuda(const at::Tensor& input, const at::Tensor& weight,
                                        const at::Tensor& scale, const at::Tensor& shift,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, c10::string_view activation,
                                        const std::optional<at::Tensor>& residual);

}  // namespace cuda
}  // namespace videoconv
