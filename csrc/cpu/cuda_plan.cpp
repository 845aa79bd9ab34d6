// videoconv::_cuda_plan: the CUDA kernels' host-side plan (csrc/cuda/conv_plan.h), exposed on
// every build, CPU-only ones included.
//
// The plan needs no GPU: it says which CUDA kernel would run a problem, with which tiles, and
// why it cannot. Building it into the CPU extension lets tests/test_cuda_plan.py check it on
// machines without a GPU, and lets the CUDA backend ask for reasons before launching anything.
// The launchers in csrc/cuda/*.cu call the same functions, so the plan is what runs.

#include <torch/library.h>

#include <string>
#include <vector>

#include "../cuda/conv_plan.h"

namespace videoconv {
namespace {

std::string plan_op(const std::string& op, std::vector<int64_t> input_size,
                    std::vector<int64_t> weight_size, std::vector<int64_t> weight2_size,
                    std::vector<int64_t> stride, std::vector<int64_t> padding,
                    std::vector<int64_t> dilation, int64_t groups, const std::string& dtype,
                    bool residual, bool temporal_first, bool allow_tf32, int64_t sm,
                    int64_t num_sms) {
  return cuda_plan::plan_from_op(op, input_size, weight_size, weight2_size, stride, padding,
                                 dilation, groups, dtype, residual, temporal_first, allow_tf32, sm,
                                 num_sms)
      .to_string();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(videoconv, m) {
  // op: "conv3d_bn_act" | "depthwise_backward" | "conv2plus1d_bn_act"; weight2_size is w2's size
  // for conv2plus1d_bn_act (else empty); sm: compute capability x 10 (0 = unknown); num_sms:
  // the device's multiprocessor count (0 = assume 132). Returns "key=value" lines: "kernel=...",
  // the parameters, and one "reason=..." line per reason it cannot run.
  m.def(
      "_cuda_plan(str op, int[] input_size, int[] weight_size, int[] weight2_size, int[] stride, "
      "int[] padding, int[] dilation, int groups, str dtype, bool residual, bool temporal_first, "
      "bool allow_tf32, int sm, int num_sms) -> str",
      &plan_op);
}

}  // namespace videoconv
