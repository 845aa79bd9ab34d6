"""BatchNorm folding: the one place where ``(conv bias, BN)`` becomes a per-channel ``scale``/``shift``.

For an eval-mode ``nn.Conv3d`` (weight ``w``, optional bias ``b``) followed by ``nn.BatchNorm3d``
(``gamma``, ``beta``, ``running_mean``, ``running_var``, ``eps``)::

    bn(conv(x)) = (conv(x, w) + b - mean) / sqrt(var + eps) * gamma + beta
                = conv(x, w) * scale + shift

    scale = gamma / sqrt(var + eps)
    shift = beta - mean * scale + b * scale          (= beta + (b - mean) * scale)

A BN without affine parameters has ``gamma = 1``, ``beta = 0``; a convolution with no BN (C3D)
has ``scale = 1``, ``shift = b`` (or 0 without a bias).

Numerics: the fold is computed in float64 (float32 on devices without float64, e.g. MPS) and
rounded once to the weight's dtype. ``var + eps`` can be tiny and ``gamma`` large, so doing the
rsqrt and the products in float16/bfloat16 would compound three roundings (and could overflow
float16); computing in high precision and rounding once gives the correctly rounded ``scale``
and ``shift`` of the target dtype. The rounding of ``scale``/``shift`` to a 16-bit dtype is the
only error the fold adds: it is below that dtype's own resolution, i.e. within the tolerance at
which eager 16-bit BatchNorm itself is accurate. In float32 the fused result differs from
eager ``bn(conv(x))`` by a few ulps (one multiply-add instead of subtract/multiply/multiply/add).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["fold_batch_norm", "fold_conv_bn", "fold_dtype"]


def fold_dtype(device: torch.device) -> torch.dtype:
    """The dtype the fold is computed in: float64, or float32 where the device has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def fold_batch_norm(
    running_mean: Tensor,
    running_var: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    conv_bias: Optional[Tensor] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` of an eval-mode BatchNorm (after a conv with optional ``conv_bias``).

    ``weight``/``bias`` are the BN's gamma/beta (None without affine). The result has ``dtype``
    (default: the dtype of ``running_mean``). Differentiable with respect to every tensor.
    """
    out_dtype = dtype if dtype is not None else running_mean.dtype
    hp = fold_dtype(running_mean.device)
    inv_std = torch.rsqrt(running_var.to(hp) + eps)
    scale = inv_std if weight is None else weight.to(hp) * inv_std
    mean = running_mean.to(hp)
    if conv_bias is not None:
        mean = mean - conv_bias.to(hp)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(hp)
    return scale.to(out_dtype), shift.to(out_dtype)


def fold_conv_bn(conv: torch.nn.Module, bn: Optional[torch.nn.Module]) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` for ``conv`` (an ``nn.Conv3d``) followed by ``bn`` (BatchNorm3d or None),
    in the dtype of ``conv.weight``."""
    weight = conv.weight
    dtype = weight.dtype
    if bn is None:
        scale = torch.ones(weight.shape[0], dtype=dtype, device=weight.device)
        if conv.bias is None:
            return scale, torch.zeros_like(scale)
        return scale, conv.bias
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "cannot fold a BatchNorm3d without running statistics (track_running_stats=False): "
            "it normalises with batch statistics in eval mode too"
        )
    return fold_batch_norm(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps,
                           conv_bias=conv.bias, dtype=dtype)
