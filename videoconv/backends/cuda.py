"""The ``cuda`` backend: videoconv's CUDA C++ kernels (csrc/cuda, one file per op).

* ``conv3d_bn_act``: a CUTLASS implicit-GEMM ``Conv3dFprop`` over NDHWC with the scale/shift,
  residual and activation applied in its epilogue (csrc/cuda/conv3d_bn_act.cu); depthwise
  convolutions go to a hand-written direct kernel (csrc/cuda/depthwise_conv3d_bn_act.cu), whose
  backward also serves training (:meth:`CudaBackend.conv3d_input_weight_grad`);
* ``conv2plus1d_bn_act``: one kernel with the intermediate in shared memory
  (csrc/cuda/conv2plus1d_bn_act.cu);
* ``conv3d_bn_stats`` (training-mode BatchNorm): the convolution above with an identity
  epilogue, then a deterministic per-channel statistics pass (csrc/cuda/conv3d_bn_stats.cu).

The kernels are private ops (``torch.ops.videoconv._*_cuda``) of the extension, present only
when it was built against a CUDA torch. Whether a problem can run, and with which kernel, is
decided by the same C++ planning code the launchers use (csrc/cuda/conv_plan.h, exposed on every
build as ``torch.ops.videoconv._cuda_plan``; see :mod:`videoconv.backends.cuda_plan`), so a
refusal here is exactly what the launcher would refuse, with its reason.

It comes after ``triton`` in the priority list: Triton is the default GPU path; this one is the
cross-check and the choice for the last few percent on dense layers, by ``use("cuda")`` or
``fuse(model, backend="cuda")``. GPU speed of either is unmeasured until a GPU run.
"""

from __future__ import annotations

from typing import Any, List

import torch

from . import Backend
from . import cuda_plan

__all__ = ["CudaBackend"]

_OPS = ("_conv3d_bn_act_cuda", "_depthwise_conv3d_bn_act_cuda", "_depthwise_conv3d_backward_cuda",
        "_conv2plus1d_bn_act_cuda", "_channel_stats_cuda")


def _has_cuda_kernels() -> bool:
    try:
        return all(hasattr(torch.ops.videoconv, name) for name in _OPS)
    except RuntimeError:
        return False


def _plan(op_name: str, inputs) -> cuda_plan.CudaPlan:
    x = inputs["input"]
    if op_name in ("conv3d_bn_act", "conv3d_bn_stats"):
        return cuda_plan.plan_conv3d(x, inputs["weight"], inputs["stride"], inputs["padding"],
                                     inputs["dilation"], inputs["groups"], inputs.get("residual"))
    return cuda_plan.plan_conv2plus1d(x, inputs["w1"], inputs["w2"], inputs["stride"],
                                      inputs["padding"], inputs["temporal_first"],
                                      inputs.get("residual"))


class CudaBackend(Backend):
    name = "cuda"
    devices = frozenset({"cuda"})
    description = ("CUDA C++: CUTLASS implicit-GEMM conv3d with fused epilogue, direct depthwise "
                   "(forward, backward), one-kernel (2+1)D unit")
    dtypes = frozenset({torch.float32, torch.float16, torch.bfloat16})
    # conv3d_bn_stats (training-mode BatchNorm): the convolution with an identity epilogue, then
    # a deterministic statistics pass (csrc/cuda/conv3d_bn_stats.cu). The Triton backend, first
    # in priority on a GPU, reduces in its epilogue instead and saves that extra read; a CUTLASS
    # epilogue visitor doing the same is the next step for this backend.
    ops = frozenset({"conv3d_bn_act", "conv2plus1d_bn_act", "conv3d_bn_stats"})

    @classmethod
    def environment_reasons(cls) -> List[str]:
        from .._extension import extension_build_info, extension_loaded

        if not extension_loaded():
            return ["the videoconv._C extension is not loaded"]
        if not _has_cuda_kernels():
            info = extension_build_info() or ""
            why = "it was built against a CPU-only torch" if "cuda=no" in info else "unknown build"
            return [f"videoconv._C has no CUDA kernels ({why}; rebuild with a CUDA torch)"]
        if not torch.cuda.is_available():
            return ["no CUDA GPU is visible"]
        return []

    @classmethod
    def not_supported_reasons(cls, op_name: str, **inputs: Any) -> List[str]:
        reasons = super().not_supported_reasons(op_name, **inputs)
        if reasons:
            return reasons
        plan = _plan(op_name, inputs)
        return list(plan.reasons)

    @classmethod
    def conv3d_bn_act(cls, *, input, weight, scale, shift, stride, padding, dilation, groups,
                      activation, residual):
        ops = torch.ops.videoconv
        plan = _plan("conv3d_bn_act", dict(input=input, weight=weight, stride=stride,
                                           padding=padding, dilation=dilation, groups=groups,
                                           residual=residual))
        if plan.kernel.startswith("depthwise"):
            return ops._depthwise_conv3d_bn_act_cuda(input, weight, scale, shift, list(stride),
                                                     list(padding), list(dilation), activation,
                                                     residual)
        return ops._conv3d_bn_act_cuda(input, weight, scale, shift, list(stride), list(padding),
                                       list(dilation), groups, activation, residual,
                                       bool(torch.backends.cudnn.allow_tf32))

    @classmethod
    def conv3d_bn_stats(cls, *, input, weight, stride, padding, dilation, groups):
        # The eval path's kernels with an identity epilogue (scale 1, shift 0, no activation):
        # exact, since the epilogue computes acc * 1 + 0 in float32 before the one rounding.
        ones = torch.ones(weight.shape[0], device=input.device, dtype=input.dtype)
        zeros = torch.zeros_like(ones)
        z = cls.conv3d_bn_act(input=input, weight=weight, scale=ones, shift=zeros, stride=stride,
                              padding=padding, dilation=dilation, groups=groups,
                              activation="identity", residual=None)
        mean, var = torch.ops.videoconv._channel_stats_cuda(z)
        return z, mean, var

    @classmethod
    def conv2plus1d_bn_act(cls, *, input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                           activation, temporal_first, residual):
        return torch.ops.videoconv._conv2plus1d_bn_act_cuda(
            input, w1, scale1, shift1, w2, scale2, shift2, list(stride), list(padding), activation,
            temporal_first, residual)

    @classmethod
    def conv3d_input_weight_grad(cls, *, grad_z, input, weight, stride, padding, dilation, groups,
                                 output_mask):
        """The depthwise backward kernels; ``None`` (ATen/cuDNN) for the other convolutions."""
        if not (groups > 1 and weight.shape[1] == 1 and weight.shape[0] == groups):
            return None
        plan = cuda_plan.plan_depthwise_backward(input, weight, stride, padding, dilation)
        if plan.reasons:
            return None
        gx, gw = torch.ops.videoconv._depthwise_conv3d_backward_cuda(
            grad_z, input, weight, list(stride), list(padding), list(dilation), list(output_mask))
        return (gx if output_mask[0] else None), (gw if output_mask[1] else None)
