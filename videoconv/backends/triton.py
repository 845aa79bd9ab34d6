"""The ``triton`` backend: videoconv's Triton kernels (videoconv/triton/, one module per op).

* ``conv3d_bn_act``: depthwise convolutions (``groups == C_in == C_out``) go to the direct,
  bandwidth-bound depthwise kernel; everything else (dense and grouped) to the implicit-GEMM
  kernel.
* ``conv2plus1d_bn_act``: the one-kernel (2+1)D unit (the intermediate stays on chip).
* ``conv3d_bn_stats``: the implicit-GEMM kernel with a statistics epilogue (every ``groups``,
  depthwise included), videoconv/triton/conv3d_bn_stats.py.

It runs on CUDA tensors. Without a GPU, with ``TRITON_INTERPRET=1`` set before videoconv is
imported, it runs the same kernels on CPU tensors through Triton's interpreter: that is how the
kernels are tested here, and it is far too slow to be chosen automatically, so on the CPU the
backend only runs when forced (``videoconv.backends.use("triton")``).

The kernel modules are imported on first use, not with videoconv: ``triton.jit`` fixes
interpreted-or-compiled when a kernel is defined, so the CLI and the tests can still set
``TRITON_INTERPRET`` after ``import videoconv``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, List

import torch

from . import Backend

__all__ = ["TritonBackend", "interpreting"]


def interpreting() -> bool:
    """True when the Triton kernels run through the interpreter (CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels(name: str):
    return importlib.import_module(f"videoconv.triton.{name}")


def _is_depthwise(weight: torch.Tensor, groups: int) -> bool:
    return groups > 1 and weight.shape[1] == 1 and weight.shape[0] == groups


class TritonBackend(Backend):
    name = "triton"
    devices = frozenset({"cuda", "cpu"})  # cpu: through the interpreter, when forced
    description = ("Triton kernels: implicit-GEMM conv3d with fused epilogue (or a batch-statistics "
                   "epilogue for training), direct depthwise (forward and backward), one-kernel "
                   "(2+1)D unit")
    dtypes = frozenset({torch.float32, torch.float16, torch.bfloat16})

    @classmethod
    def environment_reasons(cls) -> List[str]:
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return [f"triton is not installed ({exc})"]
        if interpreting() or torch.cuda.is_available():
            return []
        return ["no CUDA GPU is visible (TRITON_INTERPRET=1, set before importing videoconv, runs "
                "the kernels on CPU tensors through the interpreter)"]

    @classmethod
    def not_supported_reasons(cls, op_name: str, **inputs: Any) -> List[str]:
        reasons = super().not_supported_reasons(op_name, **inputs)
        if reasons:
            return reasons
        x = inputs.get("input")
        if isinstance(x, torch.Tensor) and x.device.type == "cpu":
            if not interpreting():
                return ["CPU tensors run only through the Triton interpreter (TRITON_INTERPRET=1)"]
            from . import forced_backend

            if forced_backend() != cls.name:
                return ["the Triton interpreter (CPU tensors) is for testing; it runs only when "
                        "forced with videoconv.backends.use('triton')"]
        if op_name == "conv3d_bn_act":
            module = ("depthwise_conv3d_bn_act"
                      if _is_depthwise(inputs["weight"], inputs["groups"]) else "conv3d_bn_act")
            reasons += _kernels(module).not_supported_reasons(**inputs)
        elif op_name == "conv2plus1d_bn_act":
            reasons += _kernels("conv2plus1d_bn_act").not_supported_reasons(**inputs)
        elif op_name == "conv3d_bn_stats":
            reasons += _kernels("conv3d_bn_stats").not_supported_reasons(**inputs)
        return reasons

    @classmethod
    def conv3d_bn_act(cls, *, input, weight, scale, shift, stride, padding, dilation, groups,
                      activation, residual):
        if _is_depthwise(weight, groups):
            return _kernels("depthwise_conv3d_bn_act").depthwise_conv3d_bn_act(
                input, weight, scale, shift, stride, padding, dilation, activation, residual)
        return _kernels("conv3d_bn_act").conv3d_bn_act(
            input, weight, scale, shift, stride, padding, dilation, groups, activation, residual)

    @classmethod
    def conv2plus1d_bn_act(cls, *, input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                           activation, temporal_first, residual):
        return _kernels("conv2plus1d_bn_act").conv2plus1d_bn_act(
            input, w1, scale1, shift1, w2, scale2, shift2, stride, padding, activation,
            temporal_first, residual)

    @classmethod
    def conv3d_bn_stats(cls, *, input, weight, stride, padding, dilation, groups):
        return _kernels("conv3d_bn_stats").conv3d_bn_stats(input, weight, stride, padding,
                                                          dilation, groups)

    @classmethod
    def conv3d_input_weight_grad(cls, *, grad_z, input, weight, stride, padding, dilation, groups,
                                 output_mask):
        """(grad_input, grad_weight) of the convolution, or ``None`` to use ATen's."""
        if not _is_depthwise(weight, groups):
            return None  # the dense backward is ATen/cuDNN's gradient convolutions
        return _kernels("depthwise_conv3d_bn_act").depthwise_conv3d_backward(
            grad_z, input, weight, stride, padding, dilation, output_mask)
