// Operator schemas of videoconv, declared once for every backend.
//
// The device kernels of these public ops are Python dispatchers (videoconv/ops/*.py, registered
// with torch.library.register_kernel for cpu and cuda): they validate the inputs and pick a
// backend (videoconv/backends) per call. Compiled kernels (csrc/cpu, csrc/cuda) must therefore
// register under private op names of their own (e.g. videoconv::_conv3d_bn_act_cuda) that a
// backend calls, never TORCH_LIBRARY_IMPL on the public names, which would clash.
// The schema strings are mirrored in videoconv/ops/schemas.py so the package still declares the
// ops when this extension is not built; tests/test_extension.py checks that the two agree.

#include <Python.h>
#include <torch/library.h>

#include <string>

namespace videoconv {
extern PyMethodDef parameter_stamp_methods[];  // csrc/parameter_stamp.cpp
}

// The extension is imported from Python (`from videoconv import _C`) for the side effect of
// running the TORCH_LIBRARY static initialisers below; its only Python functions are the fused
// modules' parameter stamp (csrc/parameter_stamp.cpp), which a torch.ops call's ~5 µs of
// dispatch would defeat.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          videoconv::parameter_stamp_methods};
  return PyModule_Create(&module_def);
}
}

namespace videoconv {

// What this binary was built with, for `videoconv info` (a CPU-only build and a CUDA build of
// the same revision behave differently, and a bug report needs to say which one ran).
std::string build_info() {
  std::string info = "compiler=";
#if defined(__clang__)
  info += "clang " __clang_version__;
#elif defined(__GNUC__)
  info += "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
          std::to_string(__GNUC_PATCHLEVEL__);
#else
  info += "unknown";
#endif
#ifdef VIDEOCONV_WITH_CUDA
  info += "; cuda=yes";
#else
  info += "; cuda=no";
#endif
#ifdef _OPENMP
  info += "; openmp=" + std::to_string(_OPENMP);
#else
  info += "; openmp=no";
#endif
  return info;
}

TORCH_LIBRARY(videoconv, m) {
  // y = act(conv3d(input, weight) * scale + shift [+ residual]); scale/shift per output channel.
  m.def(
      "conv3d_bn_act(Tensor input, Tensor weight, Tensor scale, Tensor shift, int[3] stride, "
      "int[3] padding, int[3] dilation, int groups, str activation, Tensor? residual) -> Tensor");
  // A whole (2+1)D unit: conv(1,kh,kw) -> scale1/shift1 -> act -> conv(kt,1,1) -> scale2/shift2
  // [+ residual] -> act, or temporal-first.
  m.def(
      "conv2plus1d_bn_act(Tensor input, Tensor w1, Tensor scale1, Tensor shift1, Tensor w2, "
      "Tensor scale2, Tensor shift2, int[3] stride, int[3] padding, str activation, "
      "bool temporal_first, Tensor? residual) -> Tensor");
  // Gradients of the convolution inside conv3d_bn_act (with respect to its input and weight,
  // given the gradient of the convolution's output). Its own op so that a backend with a faster
  // backward (the Triton depthwise kernels) is used in training and under torch.compile; other
  // backends use ATen's convolution_backward. Gradients not asked for are empty tensors.
  m.def(
      "_conv3d_input_weight_grad(Tensor grad_z, Tensor input, Tensor weight, int[3] stride, "
      "int[3] padding, int[3] dilation, int groups, bool[2] output_mask) -> (Tensor, Tensor)");
  // Training-mode BatchNorm's input statistics from the convolution: returns (out, mean, var),
  // out = conv3d(input, weight) in the input's dtype and layout, and the float64 per-channel
  // mean and biased variance of out (over N, D, H, W; the values as returned, after rounding to
  // the input dtype). Each backend reduces per tile to (sum, centred sum of squares) and merges
  // the tiles in a fixed order in float64 (Chan et al.): deterministic, and no cancellation
  // when |mean| >> std. See videoconv/ops/conv3d_bn_stats.py.
  m.def(
      "conv3d_bn_stats(Tensor input, Tensor weight, int[3] stride, int[3] padding, "
      "int[3] dilation, int groups) -> (Tensor, Tensor, Tensor)");
  // Squeeze-and-Excitation's element-wise ends (videoconv/ops/squeeze_excitation.py): the mean
  // over D, H, W of each channel, (N, C, 1, 1, 1); and act(input * scale) with scale of size
  // (N, C, 1, 1, 1), the rescaling and the activation after it in one pass.
  m.def("channel_mean(Tensor input) -> Tensor");
  m.def("scale_act(Tensor input, Tensor scale, str activation) -> Tensor");
  m.def("_build_info() -> str", &build_info);
}

}  // namespace videoconv
