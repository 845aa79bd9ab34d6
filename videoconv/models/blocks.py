"""Building blocks shared by the video zoo.

All blocks are made of plain ``nn.Conv3d`` / ``nn.BatchNorm3d`` / ``nn.ReLU`` modules kept as
separate children, in execution order: the zoo is the correctness oracle for the fused kernels,
and the ``fuse()`` pass finds Conv3d -> BatchNorm3d -> ReLU chains by walking those children.

* :class:`Conv3DBlock`: conv -> BN -> ReLU -> optional max-pool (C3D, stems).
* :class:`SpatioTemporalConv`: the (2+1)D factorisation of Tran et al. (2018), laid out like
  torchvision's ``Conv2Plus1D`` so its checkpoints load.
* :class:`Residual3DBlock`: torchvision's video ``BasicBlock`` with 3D, 2D or (2+1)D convs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    "Conv3DBlock",
    "SpatioTemporalConv",
    "Residual3DBlock",
    "midplanes",
    "CONV_TYPES",
    "init_weights_torchvision_style",
]

IntOrTriple = Union[int, Sequence[int]]


def init_weights_torchvision_style(
    model: nn.Module,
    linear_std: Optional[float] = 0.01,
    classifier: Optional[nn.Module] = None,
) -> None:
    """torchvision's (and pytorchvideo's) initialisation of a ResNet-like network, in place.

    Walks ``model.modules()`` in order:

    * Conv2d/Conv3d: Kaiming normal, ``fan_out``, ReLU gain (Caffe2's MSRA fill); bias 0.
    * BatchNorm2d/3d: weight 1, bias 0.
    * Linear, and ``classifier`` whatever its type (I3D's 1x1x1 conv logits): weight
      N(0, ``linear_std``), bias 0; with ``linear_std=None`` they are left alone (nn.Linear's
      default init, or a scheme the caller applies afterwards), and so is ``classifier``.
    """
    for module in model.modules():
        if module is classifier or isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _triple(value: IntOrTriple, what: str) -> Tuple[int, int, int]:
    """``value`` as a (T, H, W) triple; an int applies to all three dimensions."""
    if isinstance(value, int):
        return (value, value, value)
    triple = tuple(int(v) for v in value)
    if len(triple) != 3:
        raise ValueError(f"{what} must be an int or a (T, H, W) triple, got {value!r}")
    return triple  # type: ignore[return-value]


def _same_padding(kernel_size: Tuple[int, int, int]) -> Tuple[int, int, int]:
    # k // 2 keeps the size for odd kernels at stride 1, which is what every block here uses.
    return tuple(k // 2 for k in kernel_size)  # type: ignore[return-value]


def midplanes(
    in_channels: int,
    out_channels: int,
    kernel_size: IntOrTriple = (3, 3, 3),
    temporal_first: bool = False,
) -> int:
    """Middle width that gives a (2+1)D conv (about) the parameters of the full 3D conv.

    A ``kt x kh x kw`` conv has ``kt*kh*kw*Cin*Cout`` weights. Spatial-first factorisation
    (``1 x kh x kw`` to M channels, then ``kt x 1 x 1``) has ``M*(kh*kw*Cin + kt*Cout)``, so
    Tran et al. (2018) take ``M = floor(kt*kh*kw*Cin*Cout / (kh*kw*Cin + kt*Cout))``. For the
    temporal-first order the first conv sees Cin through ``kt`` taps, so the denominator becomes
    ``kt*Cin + kh*kw*Cout``.

    >>> midplanes(64, 128), midplanes(128, 256), midplanes(256, 512)
    (230, 460, 921)
    """
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channel counts must be positive, got {in_channels} -> {out_channels}")
    kt, kh, kw = _triple(kernel_size, "kernel_size")
    full = kt * kh * kw * in_channels * out_channels
    if temporal_first:
        return full // (kt * in_channels + kh * kw * out_channels)
    return full // (kh * kw * in_channels + kt * out_channels)


class Conv3DBlock(nn.Sequential):
    """Conv3d -> BatchNorm3d -> ReLU -> optional MaxPool3d.

    Children are named ``conv``, ``bn`` (only with ``batch_norm``), ``relu`` and ``pool`` (only
    with ``pool``), in that order.

    Args:
        in_channels, out_channels: channel widths.
        kernel_size: int or (kt, kh, kw).
        stride: int or (st, sh, sw) of the convolution.
        padding: int or triple; None pads ``k // 2`` per dimension ("same" at stride 1).
        batch_norm: insert a BatchNorm3d. Without it the conv gets a bias, as in C3D, which
            was published without normalisation.
        pool: MaxPool3d kernel (int or triple) applied after the ReLU, with stride equal to
            the kernel; None for no pooling.
        pool_padding: padding of the pool (C3D's pool5 pads H and W by 1).
        bias: override the conv's bias; None means "bias exactly when there is no BN" (with BN
            a bias is redundant, BN's shift absorbs it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTriple = 3,
        stride: IntOrTriple = 1,
        padding: Optional[IntOrTriple] = None,
        batch_norm: bool = True,
        pool: Optional[IntOrTriple] = None,
        pool_padding: IntOrTriple = 0,
        bias: Optional[bool] = None,
    ) -> None:
        kernel = _triple(kernel_size, "kernel_size")
        pad = _same_padding(kernel) if padding is None else _triple(padding, "padding")
        layers = OrderedDict()
        layers["conv"] = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=kernel,
            stride=_triple(stride, "stride"),
            padding=pad,
            bias=(not batch_norm) if bias is None else bias,
        )
        if batch_norm:
            layers["bn"] = nn.BatchNorm3d(out_channels)
        layers["relu"] = nn.ReLU(inplace=True)
        if pool is not None:
            pool_kernel = _triple(pool, "pool")
            layers["pool"] = nn.MaxPool3d(
                kernel_size=pool_kernel, stride=pool_kernel, padding=_triple(pool_padding, "pool_padding")
            )
        super().__init__(layers)


class SpatioTemporalConv(nn.Sequential):
    """(2+1)D convolution: a ``kt x kh x kw`` conv factored into spatial and temporal convs.

    Spatial-first (Tran et al. 2018, torchvision's ``Conv2Plus1D``)::

        Conv3d(Cin, M, (1, kh, kw), stride (1, sh, sw)) -> BN(M) -> ReLU
        -> Conv3d(M, Cout, (kt, 1, 1), stride (st, 1, 1))

    ``temporal_first=True`` swaps the two convs (pytorchvideo's default order). Children are
    exactly ``[conv, bn, relu, conv]`` so the state_dict keys (``0.weight``, ``1.*``,
    ``3.weight``) are torchvision's. Neither conv has a bias: a BN follows each of them, inside
    the block or in the block that wraps it.

    Args:
        in_channels, out_channels: Cin and Cout.
        kernel_size: (kt, kh, kw) of the 3D conv being factored, or an int for all three.
        stride: (st, sh, sw) or int; the spatial conv takes sh, sw and the temporal one st.
        padding: (pt, ph, pw) or int; None pads ``k // 2`` per dimension.
        mid_channels: M; None for the parameter-matching width of :func:`midplanes`.
        temporal_first: run the temporal conv first.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTriple = (3, 3, 3),
        stride: IntOrTriple = (1, 1, 1),
        padding: Optional[IntOrTriple] = None,
        mid_channels: Optional[int] = None,
        temporal_first: bool = False,
    ) -> None:
        kt, kh, kw = _triple(kernel_size, "kernel_size")
        st, sh, sw = _triple(stride, "stride")
        pt, ph, pw = _same_padding((kt, kh, kw)) if padding is None else _triple(padding, "padding")
        if mid_channels is None:
            mid_channels = midplanes(in_channels, out_channels, (kt, kh, kw), temporal_first)
        if mid_channels < 1:
            raise ValueError(f"mid_channels must be positive, got {mid_channels}")

        def spatial(cin: int, cout: int) -> nn.Conv3d:
            return nn.Conv3d(cin, cout, (1, kh, kw), stride=(1, sh, sw), padding=(0, ph, pw), bias=False)

        def temporal(cin: int, cout: int) -> nn.Conv3d:
            return nn.Conv3d(cin, cout, (kt, 1, 1), stride=(st, 1, 1), padding=(pt, 0, 0), bias=False)

        if temporal_first:
            first, second = temporal(in_channels, mid_channels), spatial(mid_channels, out_channels)
        else:
            first, second = spatial(in_channels, mid_channels), temporal(mid_channels, out_channels)
        super().__init__(first, nn.BatchNorm3d(mid_channels), nn.ReLU(inplace=True), second)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mid_channels = mid_channels
        self.temporal_first = temporal_first


#: Convolution types of :class:`Residual3DBlock`, with the downsampling each one implies.
CONV_TYPES = ("3d", "2d", "2plus1d")


def _residual_conv(
    conv_type: str, in_channels: int, out_channels: int, stride: int, mid_channels: int
) -> nn.Module:
    """The 3x3x3-class convolution of a residual block, as torchvision builds it."""
    if conv_type == "3d":  # torchvision's Conv3DSimple
        return nn.Conv3d(in_channels, out_channels, (3, 3, 3), stride=stride, padding=1, bias=False)
    if conv_type == "2d":  # torchvision's Conv3DNoTemporal
        return nn.Conv3d(
            in_channels, out_channels, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )
    if conv_type == "2plus1d":  # torchvision's Conv2Plus1D
        return SpatioTemporalConv(
            in_channels, out_channels, (3, 3, 3), stride=stride, padding=1, mid_channels=mid_channels
        )
    raise ValueError(f"conv_type must be one of {', '.join(CONV_TYPES)}; got {conv_type!r}")


class Residual3DBlock(nn.Module):
    """torchvision's video ``BasicBlock``: two convs with a shortcut, ReLU after the sum.

    Layout (names are torchvision's, so its checkpoints load)::

        conv1 = Sequential(conv(Cin -> Cout, stride), BN, ReLU)
        conv2 = Sequential(conv(Cout -> Cout), BN)
        downsample = Sequential(Conv3d 1x1x1 with the block's stride, BN)  # or None
        relu(conv2(conv1(x)) + shortcut(x))

    ``conv_type`` picks the convolution and how the block downsamples:

    * ``"3d"``: 3x3x3 conv, stride (s, s, s): R3D halves time as well as space.
    * ``"2d"``: 1x3x3 conv, stride (1, s, s): time is untouched (MC3's upper stages).
    * ``"2plus1d"``: :class:`SpatioTemporalConv`, stride (s, s, s).

    For ``"2plus1d"`` torchvision computes one middle width from (Cin, Cout) and uses it for
    *both* convs, so conv2 of a stage's first block is narrower than a parameter-matched
    Cout -> Cout factorisation would be; ``mid_channels=None`` reproduces that (it is what the
    published torchvision parameter counts and checkpoints contain).

    The shortcut is a projection only when the stride is not 1 or the width changes; otherwise
    ``downsample`` is None and the input is added as is.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        conv_type: str = "3d",
        mid_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        if conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type must be one of {', '.join(CONV_TYPES)}; got {conv_type!r}")
        if mid_channels is None:
            mid_channels = midplanes(in_channels, out_channels, 3)
        self.conv_type = conv_type
        self.stride = stride
        self.conv1 = nn.Sequential(
            _residual_conv(conv_type, in_channels, out_channels, stride, mid_channels),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            _residual_conv(conv_type, out_channels, out_channels, 1, mid_channels),
            nn.BatchNorm3d(out_channels),
        )
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or in_channels != out_channels:
            shortcut_stride = (1, stride, stride) if conv_type == "2d" else (stride, stride, stride)
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=shortcut_stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)
