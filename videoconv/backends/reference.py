"""The reference backend's math: plain PyTorch eager, the oracle of every other backend.

``conv3d_bn_act`` is ``F.conv3d`` (in the input dtype, as eager ``nn.Conv3d`` computes it) followed
by the epilogue ``act(z * scale + shift [+ residual])``. For float16/bfloat16 inputs the epilogue is
computed in float32 and rounded once to the input dtype, as eager BatchNorm does (its "opmath");
float32/float64 are computed in their own dtype. The output has the memory format of the input
(:func:`videoconv.backends.output_memory_format`), whatever layout ``F.conv3d`` produced.

Inputs are validated by the operator before they reach a backend (see videoconv/ops/_validation.py).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["conv3d_bn_act", "conv2plus1d_bn_act", "conv3d_bn_stats", "channel_stats", "epilogue",
           "opmath_dtype", "split_2plus1d"]


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the epilogue is computed in: float32 for 16-bit floats, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _channel(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return v.to(dtype).view(1, -1, 1, 1, 1)


def epilogue(
    z: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    residual: Optional[torch.Tensor],
    activation: str,
    out_dtype: torch.dtype,
    inplace: bool = True,
) -> torch.Tensor:
    """``act(z * scale + shift [+ residual])`` computed in :func:`opmath_dtype`, then cast.

    With ``inplace`` (the default) ``z`` may be overwritten: pass the fresh output of a
    convolution, or ``inplace=False`` to keep it.
    """
    opmath = opmath_dtype(out_dtype)
    if not inplace:
        u = z.to(opmath) * _channel(scale, opmath) + _channel(shift, opmath)
        if residual is not None:
            u = u + residual
        if activation == "relu":
            u = torch.relu(u)
        elif activation == "silu":
            u = F.silu(u)
        elif activation != "identity":
            raise ValueError(f"unknown activation {activation!r}")
        return u.to(out_dtype)
    u = z if z.dtype == opmath else z.to(opmath)
    u = u.mul_(_channel(scale, opmath)).add_(_channel(shift, opmath))
    if residual is not None:
        u = u.add_(residual)
    if activation == "relu":
        u = u.relu_()
    elif activation == "silu":
        u = F.silu(u, inplace=True)
    elif activation != "identity":  # validated earlier; never a silent wrong answer
        raise ValueError(f"unknown activation {activation!r}")
    return u.to(out_dtype)


def conv3d_bn_act(
    *,
    input: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    activation: str,
    residual: Optional[torch.Tensor],
) -> torch.Tensor:
    from . import output_memory_format

    z = F.conv3d(input, weight, None, list(stride), list(padding), list(dilation), groups)
    y = epilogue(z, scale, shift, residual, activation, input.dtype)
    return y.contiguous(memory_format=output_memory_format(input))


def split_2plus1d(
    stride: Sequence[int], padding: Sequence[int], temporal_first: bool
) -> Tuple[Tuple[int, int, int], Tuple[int, int, int], Tuple[int, int, int], Tuple[int, int, int]]:
    """(stride1, padding1, stride2, padding2) of the two convolutions of a (2+1)D unit."""
    st, sh, sw = stride
    pt, ph, pw = padding
    spatial = ((1, sh, sw), (0, ph, pw))
    temporal = ((st, 1, 1), (pt, 0, 0))
    first, second = (temporal, spatial) if temporal_first else (spatial, temporal)
    return first[0], first[1], second[0], second[1]


def conv2plus1d_bn_act(
    *,
    input: torch.Tensor,
    w1: torch.Tensor,
    scale1: torch.Tensor,
    shift1: torch.Tensor,
    w2: torch.Tensor,
    scale2: torch.Tensor,
    shift2: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    activation: str,
    temporal_first: bool,
    residual: Optional[torch.Tensor],
) -> torch.Tensor:
    s1, p1, s2, p2 = split_2plus1d(stride, padding, temporal_first)
    ones = (1, 1, 1)
    # The intermediate is rounded to the input dtype, as the eager module chain stores it.
    h = conv3d_bn_act(input=input, weight=w1, scale=scale1, shift=shift1, stride=s1, padding=p1,
                      dilation=ones, groups=1, activation=activation, residual=None)
    return conv3d_bn_act(input=h, weight=w2, scale=scale2, shift=shift2, stride=s2, padding=p2,
                         dilation=ones, groups=1, activation=activation, residual=residual)


def channel_stats(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 per-channel ``(mean, biased variance)`` of a 5-D tensor over N, D, H, W.

    ``torch.var_mean`` of the float64 copy: no shortcut formula, so it is exact to float64
    rounding whatever the mean (the oracle the other backends' tiled reductions are checked
    against). Deterministic: ATen's CPU and CUDA reductions use no atomics.
    """
    var, mean = torch.var_mean(z.to(torch.float64), dim=(0, 2, 3, 4), correction=0)
    return mean, var


def conv3d_bn_stats(
    *,
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, mean, var)``: ``F.conv3d`` in the input dtype (as eager ``nn.Conv3d``), in the
    input's layout, and the float64 statistics of that (rounded) output."""
    from . import output_memory_format

    z = F.conv3d(input, weight, None, list(stride), list(padding), list(dilation), groups)
    z = z.contiguous(memory_format=output_memory_format(input))
    mean, var = channel_stats(z)
    return z, mean, var
