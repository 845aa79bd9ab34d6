"""2D vs 3D vs (2+1)D convolutions: parameters and compute for the same channel widths.

Tran et al. (2018) factor a t x d x d convolution into a 1 x d x d spatial convolution to M
channels followed by a t x 1 x 1 temporal one, choosing
``M = floor(t*d*d*Cin*Cout / (d*d*Cin + t*Cout))`` so that the (2+1)D block has (about) the
parameters of the full 3D one while doubling the non-linearities.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

from ..models.blocks import midplanes

__all__ = ["ConvVariant", "compare_conv_parameters", "midplanes"]


@dataclasses.dataclass(frozen=True)
class ConvVariant:
    name: str
    kernels: str
    params: int
    #: MACs per output position (T'*H'*W' positions): the cost independent of the clip.
    macs_per_position: int
    #: MACs for ``input_size`` (stride 1, 'same' padding), or None when no size was given.
    macs: Optional[int]
    #: Non-linearities between input and output (the (2+1)D argument of Tran et al.).
    nonlinearities: int


def compare_conv_parameters(
    in_channels: int,
    out_channels: int,
    spatial_kernel: int = 3,
    temporal_kernel: int = 3,
    input_size: Optional[Sequence[int]] = None,
    bias: bool = False,
) -> List[ConvVariant]:
    """Parameters and MACs of a 2D (1 x d x d), 3D (t x d x d) and (2+1)D convolution.

    ``input_size`` is (T, H, W) of a clip (stride 1 and 'same' padding, so the output has the
    same size); without it only the per-position cost is given.

    >>> [v.params for v in compare_conv_parameters(64, 64)]
    [36864, 110592, 110592]
    """
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channel counts must be positive, got {in_channels} -> {out_channels}")
    if spatial_kernel < 1 or temporal_kernel < 1:
        raise ValueError("kernel sizes must be positive")
    d, t = spatial_kernel, temporal_kernel
    b = 1 if bias else 0
    positions = None
    if input_size is not None:
        if len(input_size) != 3 or any(s < 1 for s in input_size):
            raise ValueError(f"input_size must be (T, H, W) with positive sizes, got {input_size}")
        positions = input_size[0] * input_size[1] * input_size[2]

    def variant(name, kernels, params, per_pos, nonlin):
        return ConvVariant(name, kernels, params, per_pos, None if positions is None else per_pos * positions, nonlin)

    mid = midplanes(in_channels, out_channels, (t, d, d))
    w2d = d * d * in_channels * out_channels
    w3d = t * d * d * in_channels * out_channels
    w21 = d * d * in_channels * mid + t * mid * out_channels
    return [
        variant("2d", f"1x{d}x{d}", w2d + b * out_channels, w2d, 1),
        variant("3d", f"{t}x{d}x{d}", w3d + b * out_channels, w3d, 1),
        variant(
            "(2+1)d",
            f"1x{d}x{d} -> {mid} -> {t}x1x1",
            w21 + b * (mid + out_channels),
            # The spatial conv runs once per output position too (stride 1, same padding).
            w21,
            2,
        ),
    ]
