"""Video ResNets of Tran et al. (2018): R3D, MC3 and R(2+1)D, 18 and 34 layers.

"A Closer Look at Spatiotemporal Convolutions for Action Recognition", CVPR 2018. The layout,
module names and initialisation are torchvision's ``VideoResNet``, so a torchvision state_dict
(including the Kinetics-400 checkpoints) loads with ``strict=True`` and gives the same output.

* R3D: 3x3x3 convs everywhere; every strided stage halves T, H and W.
* MC3 ("mixed convolutions", MC3 in torchvision's naming): 3x3x3 convs in the first stage, 1x3x3
  ones in the three others, which then only downsample space.
* R(2+1)D: every 3x3x3 conv factored into 1x3x3 and 3x1x1 (:class:`SpatioTemporalConv`), with a
  factored stem too.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ._checks import check_video_input

# A leaf for torch.fx: videoconv.fuse() traces the model, and the check (which needs real
# tensors) is kept in the traced graph as a call instead of failing on a Proxy.
torch.fx.wrap("check_video_input")
from ._registry import register_model
from .blocks import Residual3DBlock, init_weights_torchvision_style

__all__ = ["VideoResNet", "BasicStem", "R2Plus1dStem", "r3d_18", "r3d_34", "mc3_18", "r2plus1d_18", "r2plus1d_34"]

_PAPER = (
    "Tran et al., A Closer Look at Spatiotemporal Convolutions for Action Recognition, CVPR 2018 "
    "(torchvision.models.video.resnet)"
)
_STAGE_WIDTHS = (64, 128, 256, 512)


class BasicStem(nn.Sequential):
    """R3D/MC3 stem: Conv3d 3x7x7, stride (1, 2, 2) -> BN -> ReLU. Time is not downsampled."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class R2Plus1dStem(nn.Sequential):
    """R(2+1)D stem: 1x7x7 to 45 channels -> BN -> ReLU -> 3x1x1 to 64 -> BN -> ReLU.

    The 45 middle channels are torchvision's fixed choice (not :func:`~.blocks.midplanes`), kept
    so its checkpoints load.
    """

    def __init__(self, in_channels: int = 3, mid_channels: int = 45, out_channels: int = 64) -> None:
        super().__init__(
            nn.Conv3d(in_channels, mid_channels, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid_channels, out_channels, (3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class VideoResNet(nn.Module):
    """ResNet over clips: stem, four stages of :class:`Residual3DBlock`, global pool, fc.

    Args:
        layers: number of blocks in each of the four stages ([2, 2, 2, 2] for 18 layers,
            [3, 4, 6, 3] for 34).
        conv_types: the :class:`Residual3DBlock` ``conv_type`` of each stage.
        stem: ``"basic"`` (:class:`BasicStem`) or ``"r2plus1d"`` (:class:`R2Plus1dStem`).
        num_classes: width of ``fc``.
        in_channels: channels of the clip.
        name: model name used in input-validation messages.

    The global average pool makes the network accept any clip of at least one frame and one
    pixel; the standard clip is 16 frames of 112x112.
    """

    def __init__(
        self,
        layers: Sequence[int],
        conv_types: Sequence[str],
        stem: str = "basic",
        num_classes: int = 400,
        in_channels: int = 3,
        name: str = "VideoResNet",
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(conv_types) != 4:
            raise ValueError(f"need 4 stages, got layers={list(layers)} conv_types={list(conv_types)}")
        self.name = name
        self.in_channels = in_channels
        if stem == "basic":
            self.stem = BasicStem(in_channels, _STAGE_WIDTHS[0])
        elif stem == "r2plus1d":
            self.stem = R2Plus1dStem(in_channels, out_channels=_STAGE_WIDTHS[0])
        else:
            raise ValueError(f"stem must be 'basic' or 'r2plus1d', got {stem!r}")

        width = _STAGE_WIDTHS[0]
        for index, (blocks, conv_type, planes) in enumerate(zip(layers, conv_types, _STAGE_WIDTHS)):
            stride = 1 if index == 0 else 2
            stage = [Residual3DBlock(width, planes, stride, conv_type)]
            stage += [Residual3DBlock(planes, planes, 1, conv_type) for _ in range(1, blocks)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            width = planes

        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(width, num_classes)
        # torchvision's scheme, so a fresh model is distributed like a fresh torchvision one.
        init_weights_torchvision_style(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(x, self.name, in_channels=self.in_channels)
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


_COMMON = dict(
    paper=_PAPER,
    input_shape=(3, 16, 112, 112),
    test_input_shape=(3, 8, 32, 32),
    num_classes=400,
    min_frames=1,
)


@register_model(
    "r3d_18",
    published_params=33_371_472,
    params_rtol=0.0,
    params_source="torchvision R3D_18_Weights.KINETICS400_V1 meta num_params",
    **_COMMON,
)
def r3d_18(num_classes: int = 400, **kwargs) -> VideoResNet:
    """R3D-18: 3x3x3 convs in every stage, [2, 2, 2, 2] blocks."""
    return VideoResNet([2, 2, 2, 2], ["3d"] * 4, "basic", num_classes, name="r3d_18", **kwargs)


@register_model(
    "r3d_34",
    published_params=None,
    params_source=(
        "none cited: torchvision has no 34-layer video ResNet and we found no exact figure to cite "
        "(Tran et al. 2018 round to 0.1M); ours is 63,681,104 at 400 classes"
    ),
    **_COMMON,
)
def r3d_34(num_classes: int = 400, **kwargs) -> VideoResNet:
    """R3D-34: 3x3x3 convs in every stage, [3, 4, 6, 3] blocks."""
    return VideoResNet([3, 4, 6, 3], ["3d"] * 4, "basic", num_classes, name="r3d_34", **kwargs)


@register_model(
    "mc3_18",
    published_params=11_695_440,
    params_rtol=0.0,
    params_source="torchvision MC3_18_Weights.KINETICS400_V1 meta num_params",
    **_COMMON,
)
def mc3_18(num_classes: int = 400, **kwargs) -> VideoResNet:
    """MC3-18: 3x3x3 convs in the first stage, 1x3x3 (no temporal extent) in the others."""
    return VideoResNet([2, 2, 2, 2], ["3d", "2d", "2d", "2d"], "basic", num_classes, name="mc3_18", **kwargs)


@register_model(
    "r2plus1d_18",
    published_params=31_505_325,
    params_rtol=0.0,
    params_source="torchvision R2Plus1D_18_Weights.KINETICS400_V1 meta num_params",
    **_COMMON,
)
def r2plus1d_18(num_classes: int = 400, **kwargs) -> VideoResNet:
    """R(2+1)D-18: every 3x3x3 conv factored into 1x3x3 + 3x1x1, [2, 2, 2, 2] blocks."""
    return VideoResNet([2, 2, 2, 2], ["2plus1d"] * 4, "r2plus1d", num_classes, name="r2plus1d_18", **kwargs)


@register_model(
    "r2plus1d_34",
    published_params=None,
    params_source=(
        "none cited: torchvision has no 34-layer video ResNet, and Tran et al. (2018) choose the "
        "(2+1)D widths per conv, unlike torchvision's per-block width used here; ours is "
        "61,831,661 at 400 classes"
    ),
    **_COMMON,
)
def r2plus1d_34(num_classes: int = 400, **kwargs) -> VideoResNet:
    """R(2+1)D-34: every 3x3x3 conv factored into 1x3x3 + 3x1x1, [3, 4, 6, 3] blocks."""
    return VideoResNet([3, 4, 6, 3], ["2plus1d"] * 4, "r2plus1d", num_classes, name="r2plus1d_34", **kwargs)
