"""X3D-S and X3D-M (Feichtenhofer, CVPR 2020), built like pytorchvideo's ``create_x3d``.

Christoph Feichtenhofer. "X3D: Expanding Architectures for Efficient Video Recognition."
CVPR 2020. https://arxiv.org/abs/2004.04730

X3D is a ResNet of inverted bottlenecks: a 1x1x1 expansion (x2.25), a *depthwise* 3x3x3
convolution, Squeeze-and-Excitation on every other block, Swish, and a 1x1x1 projection. X3D-S
and X3D-M are the same network (width factor 2, depth factor 2.2); they differ only in the clip
they are trained and evaluated on: 13x160x160 for S, 16x224x224 for M.

The modules mirror pytorchvideo attribute for attribute (see :mod:`.csn` for the shared
containers), so pytorchvideo X3D checkpoints load with ``strict=True``. Two naming quirks of
pytorchvideo are kept on purpose, because the ``state_dict`` keys depend on them:

* The stem's *spatial* (1x3x3) convolution is the attribute ``conv_t`` and its *temporal*
  depthwise (5x1x1) convolution is ``conv_xy`` (pytorchvideo's ``create_x3d_stem`` passes them
  swapped to ``Conv2plus1d``). The spatial one runs first.
* ``norm_b`` of each bottleneck is ``nn.Sequential(BatchNorm3d, SE-or-Identity)``: the
  depthwise ``conv_b`` is followed by ``norm_b[0]``, then Squeeze-and-Excitation
  (``norm_b[1]``, Identity in blocks without SE), then the Swish ``act_b``.

Deliberate differences from pytorchvideo (none of them changes the ``state_dict``):

* The head pools with ``AdaptiveAvgPool3d(1)`` where pytorchvideo uses a fixed
  ``AvgPool3d(kernel=(T, ceil(H/32), ceil(W/32)), stride=1)`` sized for the clip the model was
  built for. On that clip the last feature map is exactly the kernel size, so the two agree (the
  tests check it against pytorchvideo); unlike the fixed pool, the adaptive one makes the same
  network valid for X3D-S's and X3D-M's clips and for any other size.
* Swish is ``nn.SiLU`` (the same function, x * sigmoid(x)); pytorchvideo uses its own autograd
  function.
* The head returns logits; pytorchvideo's ``create_x3d`` appends a softmax by default.
* No zero-initialised final BatchNorm in the bottlenecks (see :mod:`.csn` for why).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ._registry import register_model
from .csn import (
    BN_EPS,
    BN_MOMENTUM,
    BottleneckBlock,
    Net,
    ResBlock,
    ResNetBasicHead,
    ResNetBasicStem,
    ResStage,
    init_resnet_weights,
)

__all__ = [
    "round_width",
    "round_repeats",
    "SqueezeExcitation",
    "X3DStemConv",
    "ProjectedPool",
    "create_x3d",
    "x3d_s",
    "x3d_m",
]

# Base depths of the four stages before the depth factor (X3D paper, Table 1).
X3D_BASE_STAGE_DEPTHS = (1, 2, 5, 3)


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8, ceil: bool = False) -> int:
    """Scale a channel count and round it to a multiple of ``divisor`` (pytorchvideo's rule).

    Rounds to the nearest multiple (or up, with ``ceil``), never below ``min_width``, and adds one
    more ``divisor`` if rounding lost more than 10%. This is how X3D sizes its SE bottlenecks:
    ``round_width(inner, 1/16)`` gives 8, 8, 16, 32 for inner widths 54, 108, 216, 432 (the last
    one is 27 rounded to 24, more than 10% below 27, hence 32).
    """
    if not multiplier:
        return int(width)
    width = width * multiplier
    min_width = min_width or divisor
    if ceil:
        width_out = max(min_width, int(math.ceil(width / divisor)) * divisor)
    else:
        width_out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if width_out < 0.9 * width:
        width_out += divisor
    return int(width_out)


def round_repeats(repeats: int, multiplier: float) -> int:
    """Blocks in a stage after the depth factor: ``ceil(multiplier * repeats)`` (pytorchvideo)."""
    if not multiplier:
        return repeats
    return int(math.ceil(multiplier * repeats))


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation (Hu et al.) on a 3-D feature map, laid out like fvcore's.

    ``x * sigmoid(W2 relu(W1 mean_{T,H,W}(x) + b1) + b2)`` with 1x1x1 convolutions (with bias)
    for W1, W2. The parameters live in ``block`` at indices 0 and 2, as in
    ``fvcore.nn.squeeze_excitation.SqueezeExcitation`` (which pytorchvideo uses), so the keys are
    ``...block.0.weight`` and ``...block.2.weight``. The pool has no parameters, so it is kept
    outside ``block`` without changing those keys.
    """

    def __init__(self, channels: int, reduced_channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.reduced_channels = reduced_channels
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.block = nn.Sequential(
            nn.Conv3d(channels, reduced_channels, kernel_size=1, bias=True),
            nn.ReLU(),
            nn.Conv3d(reduced_channels, channels, kernel_size=1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(self.pool(x))


class X3DStemConv(nn.Module):
    """X3D's factorised stem convolution: spatial 1x3x3 conv, then depthwise temporal 5x1x1 conv.

    The attribute names are pytorchvideo's, which are swapped relative to what the convolutions
    do: ``conv_t`` is the *spatial* conv (3 -> 24 channels, stride (1, 2, 2)) and runs first,
    ``conv_xy`` is the *temporal* depthwise conv (groups = 24). Checkpoints store them under these
    names (``blocks.0.conv.conv_t.weight`` has shape (24, 3, 1, 3, 3)).
    There is no norm between the two: BN and ReLU follow ``conv_xy`` in the enclosing stem.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int = 5, spatial_kernel: int = 3) -> None:
        super().__init__()
        self.conv_t = nn.Conv3d(  # spatial, despite the name (see class docstring)
            in_channels,
            out_channels,
            kernel_size=(1, spatial_kernel, spatial_kernel),
            stride=(1, 2, 2),
            padding=(0, spatial_kernel // 2, spatial_kernel // 2),
            bias=False,
        )
        self.conv_xy = nn.Conv3d(  # temporal depthwise, despite the name
            out_channels,
            out_channels,
            kernel_size=(temporal_kernel, 1, 1),
            padding=(temporal_kernel // 2, 0, 0),
            groups=out_channels,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_xy(self.conv_t(x))


class ProjectedPool(nn.Module):
    """X3D head's pooling: pre_conv -> pre_norm -> pre_act -> pool -> post_conv -> post_act.

    As pytorchvideo's ``ProjectedPool`` with ``bn_lin5_on=False`` (``post_norm`` is None: the
    2048-wide projection after pooling has no BatchNorm and no bias).
    """

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int) -> None:
        super().__init__()
        self.pre_conv = nn.Conv3d(dim_in, dim_inner, kernel_size=1, bias=False)
        self.pre_norm = _bn(dim_inner)
        self.pre_act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.post_conv = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.post_norm = None
        self.post_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_act(self.pre_norm(self.pre_conv(x)))
        x = self.pool(x)
        return self.post_act(self.post_conv(x))


def _x3d_res_block(
    dim_in: int, dim_inner: int, dim_out: int, stride: Tuple[int, int, int], se_channels: Optional[int]
) -> ResBlock:
    """One X3D block; SE (with ``se_channels`` reduced channels) when that is not None."""
    se = SqueezeExcitation(dim_inner, se_channels) if se_channels else nn.Identity()
    branch2 = BottleneckBlock(
        conv_a=nn.Conv3d(dim_in, dim_inner, kernel_size=1, bias=False),
        norm_a=_bn(dim_inner),
        act_a=nn.ReLU(),
        # Depthwise 3x3x3, carrying the block's stride (spatial 2 in each stage's first block).
        conv_b=nn.Conv3d(
            dim_inner, dim_inner, kernel_size=3, stride=stride, padding=1, groups=dim_inner, bias=False
        ),
        # Sequential(BN, SE) rather than two attributes: that is pytorchvideo's layout, and the
        # checkpoint keys (norm_b.0.*, norm_b.1.block.*) depend on it.
        norm_b=nn.Sequential(_bn(dim_inner), se),
        act_b=nn.SiLU(),  # Swish
        conv_c=nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False),
        norm_c=_bn(dim_out),
    )
    # pytorchvideo adds the projection when the shape changes (channels or stride) but its
    # BatchNorm only when the *channel count* changes. Stage 1 (24 -> 24 channels, stride 2)
    # therefore has a strided 1x1x1 projection with no BatchNorm (and no bias) after it.
    needs_conv = dim_in != dim_out or any(s != 1 for s in stride)
    return ResBlock(
        branch1_conv=nn.Conv3d(dim_in, dim_out, kernel_size=1, stride=stride, bias=False) if needs_conv else None,
        branch1_norm=_bn(dim_out) if dim_in != dim_out else None,
        branch2=branch2,
        activation=nn.ReLU(),
    )


def create_x3d(
    *,
    num_classes: int = 400,
    in_channels: int = 3,
    width_factor: float = 2.0,
    depth_factor: float = 2.2,
    bottleneck_factor: float = 2.25,
    se_ratio: float = 0.0625,
    stem_dim_in: int = 12,
    head_dim_out: int = 2048,
    dropout_rate: float = 0.5,
    zero_init_residual: bool = False,
    model_name: str = "x3d",
) -> Net:
    """X3D as pytorchvideo's ``create_x3d`` (defaults: X3D-S/M; ``depth_factor=5.0`` gives X3D-L).

    Widths: stem ``round_width(12, width_factor)`` = 24; stage outputs 24, 48, 96, 192; stage
    inner widths ``int(2.25 * out)`` = 54, 108, 216, 432. Depths ``ceil(depth_factor * (1, 2, 5,
    3))`` = 3, 5, 11, 7. Every stage halves the spatial size in its first block; there is no
    temporal striding anywhere. SE with ``round_width(inner, se_ratio)`` channels on blocks 0, 2,
    4, ... of every stage. Head: 1x1x1 192 -> 432 + BN + ReLU, global average pool, 1x1x1
    432 -> 2048 + ReLU, dropout, Linear 2048 -> num_classes.
    """
    stem_dim_out = round_width(stem_dim_in, width_factor)
    stem = ResNetBasicStem(
        conv=X3DStemConv(in_channels, stem_dim_out),
        norm=_bn(stem_dim_out),
        activation=nn.ReLU(),
        pool=None,
    )
    blocks: List[nn.Module] = [stem]

    # Stage base widths 12, 24, 48, 96 (each x2 of the previous), then x width_factor.
    base_dims = [stem_dim_in]
    for _ in range(len(X3D_BASE_STAGE_DEPTHS) - 1):
        base_dims.append(round_width(base_dims[-1], 2.0, divisor=8))

    dim_in = stem_dim_out
    dim_inner = dim_out = dim_in
    for base_depth, base_dim in zip(X3D_BASE_STAGE_DEPTHS, base_dims):
        dim_out = round_width(base_dim, width_factor)
        dim_inner = int(bottleneck_factor * dim_out)
        depth = round_repeats(base_depth, depth_factor)
        se_channels = round_width(dim_inner, se_ratio) if se_ratio > 0 else None
        stage_blocks = [
            _x3d_res_block(
                dim_in if i == 0 else dim_out,
                dim_inner,
                dim_out,
                stride=(1, 2, 2) if i == 0 else (1, 1, 1),
                # SE on every other block, starting with the first (pytorchvideo: (idx + 1) % 2).
                se_channels=se_channels if i % 2 == 0 else None,
            )
            for i in range(depth)
        ]
        blocks.append(ResStage(stage_blocks))
        dim_in = dim_out

    blocks.append(
        ResNetBasicHead(
            pool=ProjectedPool(dim_out, dim_inner, head_dim_out),
            dropout=nn.Dropout(dropout_rate) if dropout_rate > 0 else None,
            proj=nn.Linear(head_dim_out, num_classes),
        )
    )
    model = Net(blocks=blocks, model_name=model_name, in_channels=in_channels)
    init_resnet_weights(model, zero_init_residual=zero_init_residual)
    return model


_X3D_PAPER = (
    "Feichtenhofer, X3D: Expanding Architectures for Efficient Video Recognition, CVPR 2020 "
    "(as pytorchvideo.models.x3d.create_x3d)"
)
_X3D_PARAMS_SOURCE = (
    "X3D paper, Table 3: 3.76M for X3D-S and X3D-M (pytorchvideo's model zoo lists 3.79M; this "
    "build, like pytorchvideo's create_x3d: 3,794,274, 0.9% above the paper)"
)


@register_model(
    "x3d_s",
    paper=_X3D_PAPER,
    input_shape=(3, 13, 160, 160),
    num_classes=400,
    published_params=3_760_000,
    params_rtol=0.015,
    params_source=_X3D_PARAMS_SOURCE,
    test_input_shape=(3, 4, 64, 64),
)
def x3d_s(num_classes: int = 400, **kwargs) -> Net:
    """X3D-S: the X3D-S/M network, meant for 13x160x160 clips."""
    return create_x3d(num_classes=num_classes, model_name="x3d_s", **kwargs)


@register_model(
    "x3d_m",
    paper=_X3D_PAPER,
    input_shape=(3, 16, 224, 224),
    num_classes=400,
    published_params=3_760_000,
    params_rtol=0.015,
    params_source=_X3D_PARAMS_SOURCE,
    test_input_shape=(3, 4, 64, 64),
)
def x3d_m(num_classes: int = 400, **kwargs) -> Net:
    """X3D-M: the same network as X3D-S, meant for 16x224x224 clips."""
    return create_x3d(num_classes=num_classes, model_name="x3d_m", **kwargs)
