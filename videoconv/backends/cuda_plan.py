"""What the CUDA C++ kernels would do with a problem, and why they cannot: a thin wrapper of the
private op ``torch.ops.videoconv._cuda_plan`` (csrc/cuda/conv_plan.h, built into every build of
the extension, CPU-only ones included).

The plan needs no GPU. It names the kernel family (``cutlass_implicit_gemm``,
``depthwise_direct``, ``depthwise_direct_backward``, ``conv2plus1d_fused``), its parameters
(tiles, alignment, padding copies, shared memory, grid) and the readable reasons it cannot run.
The CUDA launchers call the same C++ functions, so a plan with no reasons is what runs, and a
plan with reasons is exactly what the launcher would refuse. The CUDA backend uses it for
``not_supported_reasons``.

Example::

    >>> from videoconv.backends import cuda_plan
    >>> plan = cuda_plan.plan_conv3d_sizes([8, 64, 16, 56, 56], [64, 64, 3, 3, 3], stride=1,
    ...                                    padding=1, dtype="bfloat16", sm=90)
    >>> plan.kernel if plan.available else "extension not built"  # doctest: +SKIP
    'cutlass_implicit_gemm'
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "CudaPlan",
    "plan_available",
    "parse_plan",
    "device_properties",
    "plan_conv3d_sizes",
    "plan_conv3d",
    "plan_depthwise_backward",
    "plan_conv2plus1d_sizes",
    "plan_conv2plus1d",
]

_IntOrTriple = Union[int, Sequence[int]]


@dataclasses.dataclass(frozen=True)
class CudaPlan:
    """A parsed plan: ``kernel``, integer ``fields`` and ``reasons`` (empty when it can run).

    ``available`` is False when the plan could not be computed at all (extension not built);
    ``reasons`` then says so.
    """

    kernel: str
    fields: Dict[str, int]
    reasons: List[str]
    available: bool = True

    @property
    def ok(self) -> bool:
        return self.available and not self.reasons

    def __getitem__(self, key: str) -> int:
        return self.fields[key]

    def get(self, key: str, default: Optional[int] = None) -> Optional[int]:
        return self.fields.get(key, default)


def plan_available() -> Optional[str]:
    """None if ``torch.ops.videoconv._cuda_plan`` exists, else why not."""
    from .._extension import extension_error, extension_loaded

    if not extension_loaded():
        return f"videoconv._C is not loaded ({extension_error()})"
    try:
        torch.ops.videoconv._cuda_plan.default
    except (AttributeError, RuntimeError):
        return "videoconv._C was built without csrc/cpu/cuda_plan.cpp (rebuild the extension)"
    return None


def parse_plan(text: str) -> CudaPlan:
    """Parse the ``key=value`` lines of ``_cuda_plan`` into a :class:`CudaPlan`."""
    kernel, fields, reasons = "none", {}, []
    for line in text.splitlines():
        if not line:
            continue
        key, _, value = line.partition("=")
        if key == "kernel":
            kernel = value
        elif key == "reason":
            reasons.append(value)
        else:
            fields[key] = int(value)
    return CudaPlan(kernel, fields, reasons)


def _triple(v: _IntOrTriple) -> List[int]:
    return [int(v)] * 3 if isinstance(v, int) else [int(x) for x in v]


def _dtype_name(dtype: Union[str, torch.dtype]) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")


@functools.lru_cache(maxsize=None)
def _properties(index: int) -> Tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return props.major * 10 + props.minor, props.multi_processor_count


def device_properties(device: Optional[torch.device] = None) -> Tuple[int, int]:
    """(compute capability x 10, multiprocessor count) of a CUDA device; (0, 0) without one."""
    if not torch.cuda.is_available():
        return 0, 0
    if device is None or device.index is None:
        index = torch.cuda.current_device()
    else:
        index = device.index
    return _properties(index)


def _call(op: str, input_size, weight_size, weight2_size, stride, padding, dilation, groups,
          dtype, residual, temporal_first, allow_tf32, sm, num_sms) -> CudaPlan:
    missing = plan_available()
    if missing is not None:
        return CudaPlan("none", {}, [missing], available=False)
    text = torch.ops.videoconv._cuda_plan(
        op, [int(s) for s in input_size], [int(s) for s in weight_size],
        [int(s) for s in weight2_size], _triple(stride), _triple(padding), _triple(dilation),
        int(groups), _dtype_name(dtype), bool(residual), bool(temporal_first), bool(allow_tf32),
        int(sm), int(num_sms),
    )
    return parse_plan(text)


def plan_conv3d_sizes(input_size: Sequence[int], weight_size: Sequence[int],
                      stride: _IntOrTriple = 1, padding: _IntOrTriple = 0,
                      dilation: _IntOrTriple = 1, groups: int = 1,
                      dtype: Union[str, torch.dtype] = "float32", residual: bool = False,
                      allow_tf32: bool = True, sm: int = 0, num_sms: int = 0) -> CudaPlan:
    """Plan of ``conv3d_bn_act`` from sizes (``sm`` = compute capability x 10, 0 = unknown)."""
    return _call("conv3d_bn_act", input_size, weight_size, [], stride, padding, dilation, groups,
                 dtype, residual, False, allow_tf32, sm, num_sms)


def _tf32_allowed() -> bool:
    # Convolutions follow cuDNN's flag (default True), as F.conv3d does.
    return bool(torch.backends.cudnn.allow_tf32)


def plan_conv3d(input: torch.Tensor, weight: torch.Tensor, stride: _IntOrTriple,
                padding: _IntOrTriple, dilation: _IntOrTriple, groups: int,
                residual: Optional[torch.Tensor] = None,
                allow_tf32: Optional[bool] = None) -> CudaPlan:
    """Plan of ``conv3d_bn_act`` for these tensors on their device."""
    sm, num_sms = device_properties(input.device) if input.is_cuda else (0, 0)
    return plan_conv3d_sizes(
        input.shape, weight.shape, stride, padding, dilation, groups, input.dtype,
        residual is not None, _tf32_allowed() if allow_tf32 is None else allow_tf32, sm, num_sms)


def plan_depthwise_backward(input: torch.Tensor, weight: torch.Tensor, stride: _IntOrTriple,
                            padding: _IntOrTriple, dilation: _IntOrTriple) -> CudaPlan:
    """Plan of ``_depthwise_conv3d_backward_cuda`` (grad_input and grad_weight)."""
    sm, num_sms = device_properties(input.device) if input.is_cuda else (0, 0)
    return _call("depthwise_backward", input.shape, weight.shape, [], stride, padding, dilation,
                 input.shape[1], input.dtype, False, False, True, sm, num_sms)


def plan_conv2plus1d_sizes(input_size: Sequence[int], w1_size: Sequence[int],
                           w2_size: Sequence[int], stride: _IntOrTriple = 1,
                           padding: _IntOrTriple = 0, temporal_first: bool = False,
                           dtype: Union[str, torch.dtype] = "float32", residual: bool = False,
                           sm: int = 0, num_sms: int = 0) -> CudaPlan:
    """Plan of the fused ``conv2plus1d_bn_act`` kernel from sizes."""
    return _call("conv2plus1d_bn_act", input_size, w1_size, w2_size, stride, padding, 1, 1, dtype,
                 residual, temporal_first, True, sm, num_sms)


def plan_conv2plus1d(input: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                     stride: _IntOrTriple, padding: _IntOrTriple, temporal_first: bool,
                     residual: Optional[torch.Tensor] = None) -> CudaPlan:
    """Plan of the fused ``conv2plus1d_bn_act`` kernel for these tensors on their device."""
    sm, num_sms = device_properties(input.device) if input.is_cuda else (0, 0)
    return plan_conv2plus1d_sizes(input.shape, w1.shape, w2.shape, stride, padding,
                                  temporal_first, input.dtype, residual is not None, sm, num_sms)
