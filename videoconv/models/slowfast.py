"""SlowFast R50 of Feichtenhofer et al. (2019), "SlowFast Networks for Video Recognition".

Two ResNet-50 pathways look at the same clip at two frame rates:

* the **Slow** pathway sees every ``alpha``-th frame with full width (64 ... 2048 channels) and
  no temporal convolution before res4 ("inflating early layers hurts");
* the **Fast** pathway sees every frame with ``beta = 1/8`` of the width (8 ... 256 channels) and
  temporal kernels (3x1x1 in every bottleneck, 5x7x7 in the stem).

After the stem and after res2, res3 and res4 a *lateral connection* (time-strided convolution,
``Conv3d(Cf, 2*Cf, (k, 1, 1), stride (alpha, 1, 1))`` -> BN -> ReLU) brings the Fast features to
the Slow frame rate, and they are concatenated to the Slow features. The head averages each
pathway globally, concatenates 2048 + 256 features, applies dropout and a linear classifier.

The hyper-parameters are facebookresearch/SlowFast's ``SLOWFAST_8x8_R50`` / ``SLOWFAST_4x16_R50``
configs and pytorchvideo's ``create_slowfast`` (whose default is the 8x8 model):

=========  =====  ============  ===========  ======================
variant    alpha  fusion kernel  fast frames  slow frames (32 / alpha)
=========  =====  ============  ===========  ======================
``8x8``    4      7              32           8
``4x16``   8      5              32           4
=========  =====  ============  ===========  ======================

The model takes either one clip at the Fast rate (N, 3, T, H, W), from which the Slow input is
``x[:, :, ::alpha]``, or the pair ``[slow, fast]`` that pytorchvideo's models take (its
``PackPathway`` transform samples the Slow frames with ``linspace``, not ``::alpha``, so pass the
pair to reproduce its pipeline exactly).

Unlike pytorchvideo, whose head pool has a fixed kernel sized for the standard clip, the head
pools adaptively, so any clip whose length is a multiple of ``alpha`` works; at the standard clip
the two are the same. :func:`convert_pytorchvideo_state_dict` renames a pytorchvideo
``create_slowfast`` state_dict (e.g. its ``SLOWFAST_8x8_R50`` checkpoint) to this layout.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ._checks import check_video_input

# A leaf for torch.fx: videoconv.fuse() traces the model, and the check (which needs real
# tensors) is kept in the traced graph as a call instead of failing on a Proxy.
torch.fx.wrap("check_video_input")
from ._registry import register_model
from .blocks import init_weights_torchvision_style

__all__ = [
    "SLOWFAST_VARIANTS",
    "Bottleneck",
    "LateralConnection",
    "SlowFast",
    "slowfast_r50",
    "convert_pytorchvideo_state_dict",
]

#: variant -> (alpha, lateral temporal kernel, standard number of Fast frames).
SLOWFAST_VARIANTS: Dict[str, Tuple[int, int, int]] = {
    "8x8": (4, 7, 32),
    "4x16": (8, 5, 32),
}

Clip = Union[torch.Tensor, Sequence[torch.Tensor]]


class Stem(nn.Sequential):
    """ResNet stem of one pathway: conv 7x7 (stride 2 in space) -> BN -> ReLU -> max-pool 3x3.

    Children ``conv``, ``bn``, ``relu``, ``pool`` (pytorchvideo's ``ResNetBasicStem``).
    """

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv3d(
                    in_channels,
                    out_channels,
                    kernel_size=(temporal_kernel, 7, 7),
                    stride=(1, 2, 2),
                    padding=(temporal_kernel // 2, 3, 3),
                    bias=False,
                ),
                bn=nn.BatchNorm3d(out_channels),
                relu=nn.ReLU(inplace=True),
                pool=nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            )
        )


class LateralConnection(nn.Sequential):
    """Fast -> Slow fusion: time-strided conv (k x 1 x 1, stride alpha) -> BN -> ReLU.

    The paper's "time-strided convolution" variant, with ``2 * Cf`` output channels. Padding
    ``k // 2`` over time makes ``T_fast`` frames come out as ``ceil(T_fast / alpha)``, i.e. exactly
    the Slow pathway's frame count when ``T_fast`` is a multiple of ``alpha``.
    """

    def __init__(self, fast_channels: int, alpha: int, kernel: int, channel_ratio: int = 2) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv3d(
                    fast_channels,
                    fast_channels * channel_ratio,
                    kernel_size=(kernel, 1, 1),
                    stride=(alpha, 1, 1),
                    padding=(kernel // 2, 0, 0),
                    bias=False,
                ),
                bn=nn.BatchNorm3d(fast_channels * channel_ratio),
                relu=nn.ReLU(inplace=True),
            )
        )
        self.out_channels = fast_channels * channel_ratio


class Bottleneck(nn.Module):
    """ResNet bottleneck with a (kt x 1 x 1) first conv, as SlowFast uses it.

    ``conv_a`` (kt x 1 x 1, Cin -> inner) -> BN -> ReLU -> ``conv_b`` (1 x 3 x 3, inner -> inner,
    spatial ``stride``) -> BN -> ReLU -> ``conv_c`` (1 x 1 x 1, inner -> 4 * inner) -> BN, plus
    the shortcut (a strided 1x1x1 projection with BN when the width or the stride changes), then
    ReLU. The stride sits on ``conv_b`` (SlowFast's ``STRIDE_1X1: False``), and the shortcut is
    registered first, as in both reference implementations, so the state_dict order matches
    theirs.
    """

    def __init__(
        self,
        in_channels: int,
        inner_channels: int,
        out_channels: int,
        temporal_kernel: int,
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.shortcut: Optional[nn.Sequential] = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv3d(
                        in_channels, out_channels, kernel_size=1, stride=(1, stride, stride), bias=False
                    ),
                    bn=nn.BatchNorm3d(out_channels),
                )
            )
        self.conv_a = nn.Conv3d(
            in_channels,
            inner_channels,
            kernel_size=(temporal_kernel, 1, 1),
            padding=(temporal_kernel // 2, 0, 0),
            bias=False,
        )
        self.bn_a = nn.BatchNorm3d(inner_channels)
        self.relu_a = nn.ReLU(inplace=True)
        self.conv_b = nn.Conv3d(
            inner_channels,
            inner_channels,
            kernel_size=(1, 3, 3),
            stride=(1, stride, stride),
            padding=(0, 1, 1),
            bias=False,
        )
        self.bn_b = nn.BatchNorm3d(inner_channels)
        self.relu_b = nn.ReLU(inplace=True)
        self.conv_c = nn.Conv3d(inner_channels, out_channels, kernel_size=1, bias=False)
        self.bn_c = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.relu_a(self.bn_a(self.conv_a(x)))
        out = self.relu_b(self.bn_b(self.conv_b(out)))
        out = self.bn_c(self.conv_c(out))
        return self.relu(out + shortcut)


def _stage(
    blocks: int, in_channels: int, inner: int, temporal_kernel: int, stride: int
) -> nn.Sequential:
    """A ResNet stage: ``blocks`` bottlenecks, the first one strided (in space) and projecting."""
    out = 4 * inner
    layers = [Bottleneck(in_channels, inner, out, temporal_kernel, stride)]
    layers += [Bottleneck(out, inner, out, temporal_kernel) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class SlowFast(nn.Module):
    """SlowFast network with ResNet bottleneck pathways (R50 by default).

    Module names: ``slow_stem``/``fast_stem`` (:class:`Stem`), ``lateral_stem``, then
    ``slow_res{2..5}``/``fast_res{2..5}`` (``nn.Sequential`` of :class:`Bottleneck`) with
    ``lateral_res{2,3,4}`` (:class:`LateralConnection`) after the first three stages, and the head
    ``pool`` (adaptive average), ``dropout``, ``fc``.

    Args:
        num_classes: width of ``fc``.
        variant: "8x8" or "4x16", which sets ``alpha`` and ``fusion_kernel``
            (see :data:`SLOWFAST_VARIANTS`).
        alpha, fusion_kernel: override the variant's frame-rate ratio / lateral temporal kernel.
        beta_inv: Slow width / Fast width (8: the Fast stem has 64 / 8 = 8 channels).
        fusion_channel_ratio: lateral output channels / Fast channels (2).
        layers: bottlenecks per stage ((3, 4, 6, 3) for R50).
        dropout: drop probability before ``fc`` (0.5).
        in_channels: channels of the clip.
        name: model name used in input-validation messages.
    """

    def __init__(
        self,
        num_classes: int = 400,
        variant: str = "8x8",
        alpha: Optional[int] = None,
        fusion_kernel: Optional[int] = None,
        beta_inv: int = 8,
        fusion_channel_ratio: int = 2,
        layers: Sequence[int] = (3, 4, 6, 3),
        dropout: float = 0.5,
        in_channels: int = 3,
        name: str = "slowfast_r50",
    ) -> None:
        super().__init__()
        if variant not in SLOWFAST_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(SLOWFAST_VARIANTS)}; got {variant!r}")
        default_alpha, default_kernel, _ = SLOWFAST_VARIANTS[variant]
        self.alpha = default_alpha if alpha is None else int(alpha)
        self.fusion_kernel = default_kernel if fusion_kernel is None else int(fusion_kernel)
        if self.alpha < 1:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if len(layers) != 4:
            raise ValueError(f"layers must give the number of bottlenecks of 4 stages, got {layers!r}")
        self.variant = variant
        self.name = name
        self.in_channels = in_channels

        slow_width, fast_width = 64, 64 // beta_inv
        self.slow_stem = Stem(in_channels, slow_width, temporal_kernel=1)
        self.fast_stem = Stem(in_channels, fast_width, temporal_kernel=5)
        self.lateral_stem = LateralConnection(fast_width, self.alpha, self.fusion_kernel, fusion_channel_ratio)

        slow_in = slow_width + self.lateral_stem.out_channels
        fast_in = fast_width
        # Temporal kernel of conv_a per stage: the Slow pathway has none before res4 (the paper's
        # "non-degenerate temporal convolutions" only in res4 and res5), the Fast one everywhere.
        slow_kt = (1, 1, 3, 3)
        for index, blocks in enumerate(layers):
            stage = index + 2
            stride = 1 if stage == 2 else 2
            slow_inner, fast_inner = 64 * 2**index, fast_width * 2**index
            setattr(self, f"slow_res{stage}", _stage(blocks, slow_in, slow_inner, slow_kt[index], stride))
            setattr(self, f"fast_res{stage}", _stage(blocks, fast_in, fast_inner, 3, stride))
            slow_in, fast_in = 4 * slow_inner, 4 * fast_inner
            if stage < 5:
                lateral = LateralConnection(fast_in, self.alpha, self.fusion_kernel, fusion_channel_ratio)
                setattr(self, f"lateral_res{stage}", lateral)
                slow_in += lateral.out_channels
        self.slow_channels, self.fast_channels = slow_in, fast_in  # 2048, 256

        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.slow_channels + self.fast_channels, num_classes)
        # He init for the convs, unit BN, small classifier (pytorchvideo's init_net_weights minus
        # its zero-initialised last BN of each block, which would silence every residual branch
        # of an untrained oracle and make numerical comparisons meaningless).
        init_weights_torchvision_style(self)

    # -- input -------------------------------------------------------------------------------

    def pathway_inputs(self, x: Clip) -> Tuple[torch.Tensor, torch.Tensor]:
        """Check the clip and return (slow, fast) inputs.

        ``x`` is either one clip at the Fast frame rate, (N, C, T, H, W) with T a multiple of
        ``alpha`` (the Slow pathway gets ``x[:, :, ::alpha]``, T / alpha frames), or a
        ``[slow, fast]`` pair with ``T_fast == alpha * T_slow``.
        """
        if isinstance(x, torch.Tensor):
            check_video_input(
                x, self.name, in_channels=self.in_channels, min_frames=self.alpha, frames_multiple_of=self.alpha
            )
            return x[:, :, :: self.alpha], x
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            raise TypeError(
                f"{self.name} expects one clip (N, C, T, H, W) at the Fast frame rate or a "
                f"[slow, fast] pair of clips; got {type(x).__name__}"
                + (f" of length {len(x)}" if isinstance(x, (list, tuple)) else "")
            )
        slow, fast = x
        check_video_input(slow, f"{self.name} (slow pathway)", in_channels=self.in_channels)
        check_video_input(
            fast,
            f"{self.name} (fast pathway)",
            in_channels=self.in_channels,
            min_frames=self.alpha,
            frames_multiple_of=self.alpha,
        )
        n, _, t_slow, h, w = slow.shape
        if fast.shape[0] != n or fast.shape[3:] != slow.shape[3:]:
            raise ValueError(
                f"{self.name}: the slow and fast clips must have the same batch size and frame size; "
                f"got slow {tuple(slow.shape)} and fast {tuple(fast.shape)}"
            )
        if fast.shape[2] != self.alpha * t_slow:
            raise ValueError(
                f"{self.name}: the fast clip must have alpha={self.alpha} times the frames of the "
                f"slow one; got {t_slow} slow and {fast.shape[2]} fast frames"
            )
        return slow, fast

    # -- forward -----------------------------------------------------------------------------

    def features(self, x: Clip) -> Tuple[torch.Tensor, torch.Tensor]:
        """res5 outputs before pooling: (N, 2048, T/alpha, H', W') and (N, 256, T, H', W')."""
        slow, fast = self.pathway_inputs(x)
        slow = self.slow_stem(slow)
        fast = self.fast_stem(fast)
        slow = torch.cat([slow, self.lateral_stem(fast)], dim=1)
        for stage in (2, 3, 4, 5):
            slow = getattr(self, f"slow_res{stage}")(slow)
            fast = getattr(self, f"fast_res{stage}")(fast)
            if stage < 5:
                slow = torch.cat([slow, getattr(self, f"lateral_res{stage}")(fast)], dim=1)
        return slow, fast

    def forward(self, x: Clip) -> torch.Tensor:
        slow, fast = self.features(x)
        pooled = torch.cat([self.pool(slow).flatten(1), self.pool(fast).flatten(1)], dim=1)
        return self.fc(self.dropout(pooled))


@register_model(
    "slowfast_r50",
    paper=(
        "Feichtenhofer et al., SlowFast Networks for Video Recognition, ICCV 2019 "
        "(facebookresearch/SlowFast SLOWFAST_8x8_R50, pytorchvideo create_slowfast)"
    ),
    input_shape=(3, 32, 224, 224),
    num_classes=400,
    published_params=34_570_000,
    params_rtol=0.01,
    params_source=(
        "pytorchvideo model zoo, Kinetics-400 SlowFast R50 8x8: 34.57M; our exact count, "
        "34,566,488, is that of pytorchvideo's create_slowfast() (the 4x16 variant, with its "
        "5x1x1 lateral kernels, has 34,480,216)"
    ),
    test_input_shape=(3, 8, 32, 32),
    min_frames=SLOWFAST_VARIANTS["8x8"][0],
)
def slowfast_r50(num_classes: int = 400, variant: str = "8x8", **kwargs) -> SlowFast:
    """SlowFast R50, ``variant`` "8x8" (default, alpha 4) or "4x16" (alpha 8); 32-frame clips."""
    return SlowFast(num_classes=num_classes, variant=variant, layers=(3, 4, 6, 3), **kwargs)


# ------------------------------------------------------------------------------------------------
# pytorchvideo checkpoints
# ------------------------------------------------------------------------------------------------

_PATHWAY = {"0": "slow", "1": "fast"}
_LATERAL = {"0": "stem", "1": "res2", "2": "res3", "3": "res4"}
_RULES = (
    # (pattern, replacement builder)
    (
        re.compile(r"^blocks\.0\.multipathway_blocks\.([01])\.(conv|norm)\.(.+)$"),
        lambda m: f"{_PATHWAY[m[1]]}_stem.{'bn' if m[2] == 'norm' else 'conv'}.{m[3]}",
    ),
    (
        re.compile(r"^blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(.+)$"),
        lambda m: f"lateral_{_LATERAL[m[1]]}.{'bn' if m[2] == 'norm' else 'conv'}.{m[3]}",
    ),
    (
        re.compile(r"^blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.branch1_(conv|norm)\.(.+)$"),
        lambda m: f"{_PATHWAY[m[2]]}_res{int(m[1]) + 1}.{m[3]}.shortcut.{'bn' if m[4] == 'norm' else 'conv'}.{m[5]}",
    ),
    (
        re.compile(r"^blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.branch2\.(conv|norm)_([abc])\.(.+)$"),
        lambda m: f"{_PATHWAY[m[2]]}_res{int(m[1]) + 1}.{m[3]}.{'bn' if m[4] == 'norm' else 'conv'}_{m[5]}.{m[6]}",
    ),
    (re.compile(r"^blocks\.\d+\.proj\.(.+)$"), lambda m: f"fc.{m[1]}"),
)


def convert_pytorchvideo_state_dict(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Rename a pytorchvideo ``create_slowfast`` (R50) state_dict to :class:`SlowFast`'s keys.

    ``model.load_state_dict(convert_pytorchvideo_state_dict(sd))`` then loads strictly. Raises
    ``ValueError`` listing any key it does not know (another depth's or head's layout).
    """
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    unknown: List[str] = []
    for key, value in state_dict.items():
        for pattern, rename in _RULES:
            match = pattern.match(key)
            if match:
                converted[rename(match)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"convert_pytorchvideo_state_dict: {len(unknown)} key(s) are not part of pytorchvideo's "
            f"SlowFast layout: {', '.join(unknown)}"
        )
    return converted
