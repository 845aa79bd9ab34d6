"""C2D: a 2D ResNet-18 applied to every frame, features averaged over time.

The 2D baseline of the 2D-vs-3D comparisons (Tran et al. 2018 call it R2D with frame-level
input; Wang et al. 2018 call the ResNet version C2D). Every frame goes through an ImageNet-style
ResNet-18 independently, so the network has no temporal modelling at all; the 512-d frame
features are averaged over the clip before the classifier.

The 2D convolutions are written as ``nn.Conv3d`` with a 1 x k x k kernel (and pools with a
temporal extent of 1) rather than by folding time into the batch of ``nn.Conv2d``: that is the
same function (a temporal extent of 1 never mixes frames, and BatchNorm's statistics are per
channel over N*T*H*W either way), and it keeps the model made of the Conv3d -> BatchNorm3d ->
ReLU modules that the fused kernels, ``fuse()`` and ``channels_last_3d`` work on, so 2D and 3D
models are compared on the same engine. The final ``AdaptiveAvgPool3d(1)`` over (T, H, W) is
the mean over frames of each frame's spatial mean.

Module names are torchvision's ``resnet18`` (conv1, bn1, relu, maxpool, layer1..layer4 of
BasicBlocks with conv1/bn1/conv2/bn2/downsample, avgpool, fc), and 4-D (2D) conv weights are
given their unit temporal axis on loading, so a 2D ImageNet checkpoint loads with
``strict=True``: all of it when ``num_classes`` matches its fc, otherwise everything but ``fc``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from ._checks import check_video_input

# A leaf for torch.fx: videoconv.fuse() traces the model, and the check (which needs real
# tensors) is kept in the traced graph as a call instead of failing on a Proxy.
torch.fx.wrap("check_video_input")
from ._registry import register_model
from .blocks import init_weights_torchvision_style

__all__ = ["FrameBasicBlock", "C2DResNet", "c2d_r18"]


def _frame_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv3d:
    """A ``kernel x kernel`` 2D conv applied to each frame: Conv3d with a temporal extent of 1."""
    return nn.Conv3d(
        in_channels,
        out_channels,
        kernel_size=(1, kernel, kernel),
        stride=(1, stride, stride),
        padding=(0, kernel // 2, kernel // 2),
        bias=False,
    )


class FrameBasicBlock(nn.Module):
    """torchvision's 2D ``BasicBlock`` on every frame: two 3x3 convs with BN, shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _frame_conv(in_channels, out_channels, 3, stride)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _frame_conv(out_channels, out_channels, 3)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                _frame_conv(in_channels, out_channels, 1, stride),
                nn.BatchNorm3d(out_channels),
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def _accept_2d_conv_weights(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Load-state-dict pre-hook: give 4-D (2D checkpoint) conv weights a unit temporal axis."""
    for name, submodule in module.named_modules():
        if isinstance(submodule, nn.Conv3d):
            key = f"{prefix}{name}.weight" if name else f"{prefix}weight"
            weight = state_dict.get(key)
            if isinstance(weight, torch.Tensor) and weight.dim() == 4:
                state_dict[key] = weight.unsqueeze(2)


class C2DResNet(nn.Module):
    """2D ResNet over the frames of a clip, then temporal average, then ``fc``.

    Args:
        layers: BasicBlocks per stage ([2, 2, 2, 2] for ResNet-18).
        num_classes: width of ``fc``.
        in_channels: channels of each frame.
        name: model name used in input-validation messages.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 400,
        in_channels: int = 3,
        name: str = "C2DResNet",
    ) -> None:
        super().__init__()
        self.name = name
        self.in_channels = in_channels
        self.conv1 = _frame_conv(in_channels, 64, 7, stride=2)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        width = 64
        for index, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if index == 0 else 2
            stage = [FrameBasicBlock(width, planes, stride)]
            stage += [FrameBasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            width = planes
        # Over (T, H, W) at once: the mean over frames of the per-frame spatial means.
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(width, num_classes)
        # torchvision's resnet scheme (its fc keeps nn.Linear's default init); fan_out of a
        # 1 x k x k kernel is that of the k x k one, so the distributions are the same.
        init_weights_torchvision_style(self, linear_std=None)
        self.register_load_state_dict_pre_hook(_accept_2d_conv_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(x, self.name, in_channels=self.in_channels)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.fc(self.avgpool(x).flatten(1))


@register_model(
    "c2d_r18",
    paper=(
        "ResNet-18 (He et al., CVPR 2016) on each frame with temporal average pooling: the 2D "
        "baseline of Tran et al. 2018 / Wang et al. 2018 (C2D)"
    ),
    input_shape=(3, 16, 112, 112),
    num_classes=400,
    published_params=11_381_712,
    params_rtol=0.0,
    params_source=(
        "torchvision resnet18 num_params 11,689,512 with its 1000-way fc (513,000) replaced by a "
        "400-way one (205,200)"
    ),
    test_input_shape=(3, 4, 32, 32),
    min_frames=1,
)
def c2d_r18(num_classes: int = 400, **kwargs) -> C2DResNet:
    """C2D with a ResNet-18 trunk."""
    return C2DResNet((2, 2, 2, 2), num_classes=num_classes, name="c2d_r18", **kwargs)
