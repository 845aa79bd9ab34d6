"""ir-CSN (Tran et al., ICCV 2019), built like pytorchvideo's ``create_csn``.

Du Tran, Heng Wang, Lorenzo Torresani, Matt Feiszli. "Video Classification with
Channel-Separated Convolutional Networks." ICCV 2019. https://arxiv.org/abs/1904.02811

ir-CSN ("interaction-reduced") is a ResNet whose bottleneck 3x3x3 convolution is depthwise
(``groups == channels``): all channel interaction happens in the 1x1x1 convolutions, all
spatio-temporal interaction in the depthwise one.

This module also holds the pytorchvideo-style building blocks shared with :mod:`.x3d`
(``ResNetBasicStem``, ``BottleneckBlock``, ``ResBlock``, ``ResStage``, ``ResNetBasicHead``,
``Net``). They mirror ``pytorchvideo.models.{stem,resnet,head,net}`` attribute for attribute, so
that

* a pytorchvideo checkpoint's ``state_dict`` loads with ``strict=True`` (key names are the
  attribute paths: ``blocks.1.res_blocks.0.branch2.conv_b.weight``, ...), and
* the zoo contains networks whose conv / norm / activation are *attributes* of a block rather
  than entries of an ``nn.Sequential``. Note in particular that :class:`ResBlock` registers its
  post-addition ``activation`` *after* ``branch2`` (whose last module is ``norm_c``): in
  registration order ``norm_c`` is followed by a ReLU, but that ReLU is applied to
  ``shortcut + branch2(x)``, not to ``norm_c``'s output. A fusion pass must follow the data flow
  of ``forward``, not the order of ``named_modules()``.

Deliberate differences from pytorchvideo (none of them changes the ``state_dict``):

* The head pools with ``AdaptiveAvgPool3d(1)`` instead of pytorchvideo's fixed
  ``AvgPool3d((4, 7, 7), stride=1)`` followed by a global average. On the standard 32x224x224
  clip the last feature map is exactly 4x7x7, so both compute the same thing; the adaptive pool
  also accepts any other clip size (the fixed one fails on clips smaller than the standard one).
* The head returns logits; no softmax.
* The last BatchNorm of each bottleneck is initialised to weight 1, not 0 (pytorchvideo's
  "zero-init residual"): this zoo is a numerical oracle, and with zero-initialised ``norm_c``
  every residual branch would contribute exactly nothing, hiding errors of a fused kernel in
  those branches. Pass ``zero_init_residual=True`` for pytorchvideo's initialisation.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ._checks import check_video_input

# A leaf for torch.fx: videoconv.fuse() traces the model, and the check (which needs real
# tensors) is kept in the traced graph as a call instead of failing on a Proxy.
torch.fx.wrap("check_video_input")
from ._registry import register_model
from .blocks import init_weights_torchvision_style

__all__ = [
    "ResNetBasicStem",
    "BottleneckBlock",
    "ResBlock",
    "ResStage",
    "ResNetBasicHead",
    "Net",
    "init_resnet_weights",
    "create_csn",
    "csn_r101",
]

# pytorchvideo's defaults for every BatchNorm3d of these networks (also PyTorch's defaults).
BN_EPS = 1e-5
BN_MOMENTUM = 0.1

# Blocks per stage for the ResNet depths create_csn accepts.
CSN_STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


# --------------------------------------------------------------------------------------------
# pytorchvideo-style containers (shared with x3d.py)
# --------------------------------------------------------------------------------------------


class ResNetBasicStem(nn.Module):
    """conv -> norm -> activation -> pool, as ``pytorchvideo.models.stem.ResNetBasicStem``.

    Any of ``norm``, ``activation``, ``pool`` may be None (X3D's stem has no pool). ``conv`` may
    be a composite module (X3D's stem conv is a spatial conv followed by a depthwise temporal
    one).
    """

    def __init__(
        self,
        *,
        conv: nn.Module,
        norm: Optional[nn.Module] = None,
        activation: Optional[nn.Module] = None,
        pool: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        # Registration order (and names) follow pytorchvideo, so state_dict keys and order match.
        self.conv = conv
        self.norm = norm
        self.activation = activation
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        if self.pool is not None:
            x = self.pool(x)
        return x


class BottleneckBlock(nn.Module):
    """The residual branch: conv_a -> norm_a -> act_a -> conv_b -> norm_b -> act_b -> conv_c -> norm_c.

    Mirrors ``pytorchvideo.models.resnet.BottleneckBlock``. There is deliberately no activation
    after ``norm_c``: the ReLU of a residual block comes after the addition (:class:`ResBlock`).
    X3D passes ``norm_b = nn.Sequential(BatchNorm3d, SqueezeExcitation | Identity)`` and a Swish
    ``act_b``, exactly as pytorchvideo does.
    """

    def __init__(
        self,
        *,
        conv_a: nn.Module,
        norm_a: Optional[nn.Module],
        act_a: Optional[nn.Module],
        conv_b: nn.Module,
        norm_b: Optional[nn.Module],
        act_b: Optional[nn.Module],
        conv_c: nn.Module,
        norm_c: Optional[nn.Module],
    ) -> None:
        super().__init__()
        self.conv_a = conv_a
        self.norm_a = norm_a
        self.act_a = act_a
        self.conv_b = conv_b
        self.norm_b = norm_b
        self.act_b = act_b
        self.conv_c = conv_c
        self.norm_c = norm_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1x1x1 reduction.
        x = self.conv_a(x)
        if self.norm_a is not None:
            x = self.norm_a(x)
        if self.act_a is not None:
            x = self.act_a(x)
        # 3x3x3 (depthwise in CSN and X3D); carries the block's stride.
        x = self.conv_b(x)
        if self.norm_b is not None:
            x = self.norm_b(x)
        if self.act_b is not None:
            x = self.act_b(x)
        # 1x1x1 expansion; no activation before the residual addition.
        x = self.conv_c(x)
        if self.norm_c is not None:
            x = self.norm_c(x)
        return x


class ResBlock(nn.Module):
    """``activation(shortcut(x) + branch2(x))``, as ``pytorchvideo.models.resnet.ResBlock``.

    The shortcut is the identity when ``branch1_conv`` is None, otherwise a strided 1x1x1
    projection, followed by ``branch1_norm`` when that is not None. (X3D's first block of its
    first stage has a projection *without* BatchNorm, because pytorchvideo only adds the norm when
    the channel count changes; keeping that quirk keeps its checkpoints loadable.)
    """

    def __init__(
        self,
        *,
        branch1_conv: Optional[nn.Module],
        branch1_norm: Optional[nn.Module],
        branch2: nn.Module,
        activation: Optional[nn.Module],
    ) -> None:
        super().__init__()
        self.branch1_conv = branch1_conv
        self.branch1_norm = branch1_norm
        self.branch2 = branch2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1_conv is None:
            shortcut = x
        else:
            shortcut = self.branch1_conv(x)
            if self.branch1_norm is not None:
                shortcut = self.branch1_norm(shortcut)
        x = shortcut + self.branch2(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class ResStage(nn.Module):
    """A sequence of :class:`ResBlock` held in ``res_blocks`` (pytorchvideo's ``ResStage``)."""

    def __init__(self, res_blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(res_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class ResNetBasicHead(nn.Module):
    """pool -> dropout -> Linear, as ``pytorchvideo.models.head.ResNetBasicHead``.

    ``pool`` must reduce the clip to (N, C, 1, 1, 1): a plain ``AdaptiveAvgPool3d(1)`` for CSN,
    X3D's ``ProjectedPool`` (which pools adaptively inside). pytorchvideo applies ``proj`` to
    every position of a possibly larger pooled map and averages afterwards; on a 1x1x1 map that is
    the same as flattening first.
    """

    def __init__(self, *, pool: nn.Module, dropout: Optional[nn.Module], proj: nn.Linear) -> None:
        super().__init__()
        self.pool = pool
        self.dropout = dropout
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.proj(torch.flatten(x, 1))


class Net(nn.Module):
    """Runs ``blocks`` in order (stem, stages, head), as ``pytorchvideo.models.net.Net``.

    Keeping the single ``blocks`` list is what makes the state_dict keys ``blocks.<i>...`` match
    pytorchvideo's. ``model_name`` and ``in_channels`` are only used to validate the clip.
    """

    def __init__(self, *, blocks: Sequence[nn.Module], model_name: str, in_channels: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.model_name = model_name
        self.in_channels = in_channels

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Output of the stem and of every stage (everything but the head), for inspection."""
        check_video_input(x, self.model_name, in_channels=self.in_channels)
        outputs = []
        for block in self.blocks[:-1]:
            x = block(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(x, self.model_name, in_channels=self.in_channels)
        for block in self.blocks:
            x = block(x)
        return x


def init_resnet_weights(model: nn.Module, *, zero_init_residual: bool = False, fc_std: float = 0.01) -> None:
    """pytorchvideo's "resnet" initialisation, optionally without the zero-init residual.

    Convolutions: Kaiming normal, fan_out, ReLU gain (Caffe2's MSRA fill), bias 0. BatchNorm:
    weight 1, bias 0 (weight 0 for each bottleneck's ``norm_c`` if ``zero_init_residual``).
    Linear: N(0, fc_std), bias 0.
    """
    init_weights_torchvision_style(model, linear_std=fc_std)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, BottleneckBlock) and isinstance(m.norm_c, nn.BatchNorm3d):
                nn.init.zeros_(m.norm_c.weight)


# --------------------------------------------------------------------------------------------
# CSN
# --------------------------------------------------------------------------------------------


def _csn_res_block(
    dim_in: int, dim_inner: int, dim_out: int, stride: Tuple[int, int, int]
) -> ResBlock:
    """One ir-CSN bottleneck: 1x1x1 -> depthwise 3x3x3 (strided) -> 1x1x1, plus the shortcut."""
    branch2 = BottleneckBlock(
        conv_a=nn.Conv3d(dim_in, dim_inner, kernel_size=1, bias=False),
        norm_a=_bn(dim_inner),
        act_a=nn.ReLU(),
        # Depthwise: one 3x3x3 filter per channel ("interaction-reduced"); the stride of the
        # block is here, as in pytorchvideo (conv_a has stride 1).
        conv_b=nn.Conv3d(
            dim_inner, dim_inner, kernel_size=3, stride=stride, padding=1, groups=dim_inner, bias=False
        ),
        norm_b=_bn(dim_inner),
        act_b=nn.ReLU(),
        conv_c=nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False),
        norm_c=_bn(dim_out),
    )
    needs_projection = dim_in != dim_out or any(s != 1 for s in stride)
    return ResBlock(
        branch1_conv=nn.Conv3d(dim_in, dim_out, kernel_size=1, stride=stride, bias=False)
        if needs_projection
        else None,
        branch1_norm=_bn(dim_out) if needs_projection else None,
        branch2=branch2,
        activation=nn.ReLU(),
    )


def create_csn(
    *,
    model_depth: int = 101,
    num_classes: int = 400,
    in_channels: int = 3,
    dropout_rate: float = 0.0,
    stem_channels: int = 64,
    stage_spatial_stride: Tuple[int, ...] = (1, 2, 2, 2),
    stage_temporal_stride: Tuple[int, ...] = (1, 2, 2, 2),
    zero_init_residual: bool = False,
    model_name: Optional[str] = None,
) -> Net:
    """ir-CSN as pytorchvideo's ``create_csn(model_depth=..., stem_pool=nn.MaxPool3d)``.

    Stem: Conv3d(3, 64, (3, 7, 7), stride (1, 2, 2), pad (1, 3, 3)) -> BN -> ReLU ->
    MaxPool3d((1, 3, 3), stride (1, 2, 2), pad (0, 1, 1)). Stages: ResNet bottlenecks with
    inner widths 64, 128, 256, 512 and output widths 256, 512, 1024, 2048; the first block of
    each stage strides (temporal, spatial) = (1, 1), (2, 2), (2, 2), (2, 2) in its depthwise
    conv_b and in its projection shortcut. Head: global average pool -> dropout -> Linear.

    ``dropout_rate`` defaults to 0 like pytorchvideo's ``csn_r101`` (which then has no dropout
    module at all); any rate > 0 adds an ``nn.Dropout`` before the classifier.
    """
    if model_depth not in CSN_STAGE_DEPTHS:
        raise ValueError(f"CSN depth must be one of {sorted(CSN_STAGE_DEPTHS)}; got {model_depth}")
    stem = ResNetBasicStem(
        conv=nn.Conv3d(
            in_channels, stem_channels, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False
        ),
        norm=_bn(stem_channels),
        activation=nn.ReLU(),
        pool=nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    )
    blocks: List[nn.Module] = [stem]

    dim_in = stem_channels
    dim_out = stem_channels * 4  # bottleneck ratio 4: out 256, 512, 1024, 2048
    for depth, s_stride, t_stride in zip(CSN_STAGE_DEPTHS[model_depth], stage_spatial_stride, stage_temporal_stride):
        dim_inner = dim_out // 4
        first_stride = (t_stride, s_stride, s_stride)
        blocks.append(
            ResStage(
                [
                    _csn_res_block(
                        dim_in if i == 0 else dim_out,
                        dim_inner,
                        dim_out,
                        first_stride if i == 0 else (1, 1, 1),
                    )
                    for i in range(depth)
                ]
            )
        )
        dim_in = dim_out
        dim_out *= 2

    blocks.append(
        ResNetBasicHead(
            pool=nn.AdaptiveAvgPool3d(1),
            dropout=nn.Dropout(dropout_rate) if dropout_rate > 0 else None,
            proj=nn.Linear(dim_in, num_classes),
        )
    )
    model = Net(blocks=blocks, model_name=model_name or f"csn_r{model_depth}", in_channels=in_channels)
    init_resnet_weights(model, zero_init_residual=zero_init_residual)
    return model


@register_model(
    "csn_r101",
    paper="Tran et al., Video Classification with Channel-Separated Convolutional Networks, "
    "ICCV 2019 (ir-CSN-101, as pytorchvideo.models.csn.create_csn / hub csn_r101)",
    input_shape=(3, 32, 224, 224),
    num_classes=400,
    published_params=22_210_000,
    params_rtol=0.01,
    params_source="pytorchvideo model zoo, Kinetics-400 CSN R101 32x2: 22.21M "
    "(this build: 22,213,776, identical to pytorchvideo's create_csn(model_depth=101))",
    test_input_shape=(3, 8, 64, 64),
)
def csn_r101(num_classes: int = 400, **kwargs) -> Net:
    """ir-CSN-101 for 32x224x224 clips (pytorchvideo's ``csn_r101`` architecture)."""
    return create_csn(model_depth=101, num_classes=num_classes, model_name="csn_r101", **kwargs)
