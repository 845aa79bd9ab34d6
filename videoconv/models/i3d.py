"""I3D of Carreira & Zisserman (2017), "Quo Vadis, Action Recognition? A New Model and the
Kinetics Dataset", and the 2D Inception-v1 it is inflated from.

I3D takes Inception-v1 (GoogLeNet with batch normalisation, as in TF-slim's ``inception_v1``)
and *inflates* it: every N x N filter becomes N x N x N (with the exceptions the paper makes for
the first pools and the last one), and ImageNet weights are bootstrapped by repeating each 2D
filter over time and dividing by the temporal extent. A video made of one repeated frame then
produces, at every time step, the activations the 2D network gives on that frame.

The layout follows deepmind/kinetics-i3d (``i3d.py``):

=====================  ==============================  =============================
endpoint               3D (I3D)                        output for a 64x224x224 clip
=====================  ==============================  =============================
Conv3d_1a_7x7          7x7x7 conv, 64, stride 2        64 x 32 x 112 x 112
MaxPool3d_2a_3x3       1x3x3 max, stride (1, 2, 2)     64 x 32 x 56 x 56
Conv3d_2b_1x1          1x1x1 conv, 64                  64 x 32 x 56 x 56
Conv3d_2c_3x3          3x3x3 conv, 192                 192 x 32 x 56 x 56
MaxPool3d_3a_3x3       1x3x3 max, stride (1, 2, 2)     192 x 32 x 28 x 28
Mixed_3b, Mixed_3c     Inception modules               256, 480 x 32 x 28 x 28
MaxPool3d_4a_3x3       3x3x3 max, stride 2             480 x 16 x 14 x 14
Mixed_4b ... Mixed_4f  Inception modules               512 ... 832 x 16 x 14 x 14
MaxPool3d_5a_2x2       2x2x2 max, stride 2             832 x 8 x 7 x 7
Mixed_5b, Mixed_5c     Inception modules               832, 1024 x 8 x 7 x 7
head                   2x7x7 avg (stride 1), dropout,  400 x 7 x 1 x 1, then the mean
                       1x1x1 conv with bias (logits)   over time: 400
=====================  ==============================  =============================

Every convolution is a :class:`Unit`: conv (no bias) -> BatchNorm (eps 1e-3, TF's value) -> ReLU,
kept as three separate children so the ``fuse()`` pass finds the chain. TF pads "SAME"
(asymmetrically for even inputs); here padding is symmetric, ``k // 2`` for the convs and 1 for
the 3x3(x3) stride-2 pools, which gives exactly the paper's feature-map sizes above.

:class:`InceptionV1` is written once for ``dims`` 2 and 3 with identical module names, so the 2D
network (:func:`inception_v1_2d`) and I3D (:func:`i3d`) share state_dict keys and
:func:`inflate_2d_to_3d` maps one onto the other name by name. The names are kinetics-i3d's
endpoints (``Conv3d_1a_7x7``, ``Mixed_4b``, ...) in both, "3d" included, precisely so that they
are the same keys.

Two deliberate differences from the TF original, neither of which changes the architecture:

* BatchNorm here is the usual affine one (scale and shift). Sonnet's ``snt.BatchNorm`` in
  kinetics-i3d (like slim's) has no scale, so the checkpoint has one fewer vector per BN: our
  model has 7,280 more parameters (0.06%), and a ported checkpoint sets the scales to 1.
* ``padding_mode`` (default ``"zeros"``, as published) is passed to every convolution. With
  ``"replicate"`` the temporal border no longer sees zeros, and the inflation fixed point holds
  exactly at every frame, not only away from the clip's ends (see the tests).
"""

from __future__ import annotations

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
    "Unit",
    "InceptionModule",
    "InceptionV1",
    "inception_v1_2d",
    "i3d",
    "inflate_2d_to_3d",
    "I3D_MIN_FRAMES",
    "I3D_MIN_SIZE",
]

Triple = Tuple[int, int, int]

# The smallest clip the fixed 2x7x7 average pool of the head accepts. Along time the clip goes
# through Conv3d_1a (k7 s2 p3: T -> ceil(T/2)), MaxPool3d_4a (k3 s2 p1: -> ceil(T/2)) and
# MaxPool3d_5a (k2 s2 p0: -> floor(T/2)), and the pool needs 2 frames at the end:
# floor(ceil(ceil(T/2)/2)/2) >= 2  <=>  T >= 13.  Spatially there are two more ceil-halvings
# (MaxPool3d_2a, MaxPool3d_3a) and the pool needs 7: floor(ceil^4(H/2)/2) >= 7  <=>  H >= 209.
I3D_MIN_FRAMES = 13
I3D_MIN_SIZE = 209
# features() stops before the head; only MaxPool3d_5a (kernel 2, no padding) needs anything:
# 2 frames/pixels after the earlier halvings, i.e. T >= 5 and H, W >= 17.
_FEATURES_MIN_FRAMES = 5
_FEATURES_MIN_SIZE = 17

#: The Inception modules' widths: [branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1,
#: branch2 3x3, branch3 pool-projection 1x1], from kinetics-i3d.
_MIXED_WIDTHS: Dict[str, Tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

#: The trunk in execution order; ``features()`` runs these and the head follows.
ENDPOINTS: Tuple[str, ...] = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
)


class _AvgPool3d(nn.AvgPool3d):
    """``nn.AvgPool3d`` that also runs reduced-precision clips on the CPU.

    PyTorch's CPU ``avg_pool3d`` has no bfloat16/float16 kernel ("avg_pool3d_out_frame" not
    implemented). There the pool runs in float32 and the result is rounded back, which is what
    GPU kernels do anyway (they accumulate in float32); elsewhere it is the plain module.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def _layers(dims: int):
    """(Conv, BatchNorm, MaxPool, AvgPool) classes for 2D or 3D."""
    if dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, _AvgPool3d
    if dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d
    raise ValueError(f"dims must be 2 or 3, got {dims!r}")


def _spatial(value: Union[int, Triple], dims: int) -> Tuple[int, ...]:
    """A (T, H, W) triple, or its (H, W) part for the 2D network.

    The architecture is written once in 3D terms; the 2D network is its spatial part (that is
    what inflation inverts: 1x3x3 and 3x3x3 pools both come from a 3x3 one).
    """
    triple = (value,) * 3 if isinstance(value, int) else tuple(value)
    return tuple(triple[-dims:])


class Unit(nn.Sequential):
    """kinetics-i3d's ``Unit3D`` (and slim's conv2d): conv without bias -> BN(eps 1e-3) -> ReLU.

    Children ``conv``, ``bn``, ``relu``. The convolution pads ``k // 2`` per dimension ("same"
    at stride 1, the paper's sizes at stride 2) with ``padding_mode``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Triple] = 1,
        stride: Union[int, Triple] = 1,
        dims: int = 3,
        padding_mode: str = "zeros",
    ) -> None:
        conv_cls, bn_cls, _, _ = _layers(dims)
        kernel = _spatial(kernel_size, dims)
        super().__init__(
            OrderedDict(
                conv=conv_cls(
                    in_channels,
                    out_channels,
                    kernel_size=kernel,
                    stride=_spatial(stride, dims),
                    padding=tuple(k // 2 for k in kernel),
                    bias=False,  # BN's shift makes a bias redundant
                    padding_mode=padding_mode,
                ),
                # TF's default epsilon; PyTorch's 1e-5 would change the outputs of ported weights.
                bn=bn_cls(out_channels, eps=1e-3),
                relu=nn.ReLU(inplace=True),
            )
        )


class InceptionModule(nn.Module):
    """Inception block with four parallel branches, concatenated along channels.

    * ``branch0``: 1x1(x1) Unit.
    * ``branch1``: 1x1 Unit -> 3x3(x3) Unit.
    * ``branch2``: 1x1 Unit -> 3x3(x3) Unit (GoogLeNet's 5x5 branch; BN-Inception, slim's
      Inception-v1 and I3D all use 3x3 here).
    * ``branch3``: 3x3(x3) max-pool, stride 1, padding 1 -> 1x1 Unit.

    ``widths`` = (b0, b1a, b1b, b2a, b2b, b3); the output has ``b0 + b1b + b2b + b3`` channels.
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        dims: int = 3,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        _, _, maxpool_cls, _ = _layers(dims)

        def unit(cin: int, cout: int, k: int) -> Unit:
            return Unit(cin, cout, k, dims=dims, padding_mode=padding_mode)

        self.branch0 = unit(in_channels, b0, 1)
        self.branch1 = nn.Sequential(unit(in_channels, b1a, 1), unit(b1a, b1b, 3))
        self.branch2 = nn.Sequential(unit(in_channels, b2a, 1), unit(b2a, b2b, 3))
        # Max-pooling pads with -inf, so it needs no padding_mode to respect the fixed point.
        self.branch3 = nn.Sequential(
            maxpool_cls(_spatial(3, dims), stride=_spatial(1, dims), padding=_spatial(1, dims)),
            unit(in_channels, b3, 1),
        )
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class InceptionV1(nn.Module):
    """Inception-v1 trunk and head, 2D (GoogLeNet/slim ``inception_v1``) or 3D (I3D).

    The 2D network has no auxiliary heads and no local response normalisation (BN replaces it,
    as in slim). Its pools are the spatial parts of I3D's: 3x3 stride 2 at 2a/3a/4a, 2x2 stride 2
    at 5a; its head is a 7x7 average pool, dropout and a 1x1 conv with bias.

    Args:
        dims: 2 for images (N, C, H, W), 3 for clips (N, C, T, H, W).
        num_classes: width of the logits conv.
        in_channels: 3 for RGB (2 for I3D's optical-flow stream).
        dropout: drop probability before the logits (kinetics-i3d takes it as an argument;
            0.5 is the usual training value, eval ignores it).
        padding_mode: ``padding_mode`` of every convolution ("zeros" as published, or
            "replicate" / "reflect" / "circular").
        name: model name used in input-validation messages.
    """

    def __init__(
        self,
        dims: int = 3,
        num_classes: int = 400,
        in_channels: int = 3,
        dropout: float = 0.5,
        padding_mode: str = "zeros",
        name: Optional[str] = None,
    ) -> None:
        super().__init__()
        _, _, maxpool_cls, avgpool_cls = _layers(dims)
        self.dims = dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.name = name or ("i3d" if dims == 3 else "inception_v1_2d")

        def unit(cin: int, cout: int, k: Union[int, Triple], stride: Union[int, Triple] = 1) -> Unit:
            return Unit(cin, cout, k, stride, dims=dims, padding_mode=padding_mode)

        def maxpool(kernel: Triple, stride: Triple, padding: Triple) -> nn.Module:
            return maxpool_cls(_spatial(kernel, dims), _spatial(stride, dims), _spatial(padding, dims))

        # Stem. The first two pools leave time alone (the paper: "it was helpful not to perform
        # temporal pooling in the first two max-pooling layers").
        self.Conv3d_1a_7x7 = unit(in_channels, 64, 7, 2)
        self.MaxPool3d_2a_3x3 = maxpool((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.Conv3d_2b_1x1 = unit(64, 64, 1)
        self.Conv3d_2c_3x3 = unit(64, 192, 3)
        self.MaxPool3d_3a_3x3 = maxpool((1, 3, 3), (1, 2, 2), (0, 1, 1))
        width = 192
        for name in ENDPOINTS[5:]:
            if name == "MaxPool3d_4a_3x3":
                module = maxpool((3, 3, 3), (2, 2, 2), (1, 1, 1))
            elif name == "MaxPool3d_5a_2x2":
                module = maxpool((2, 2, 2), (2, 2, 2), (0, 0, 0))
            else:
                module = InceptionModule(width, _MIXED_WIDTHS[name], dims=dims, padding_mode=padding_mode)
                width = module.out_channels
            setattr(self, name, module)
        self.out_channels = width  # 1024

        # Head (kinetics-i3d's "Logits" scope). The 2x7x7 pool has stride 1, so a 64-frame clip
        # yields 7 temporal logits that are averaged; the pool is fixed-size, hence the minimum
        # clip of I3D_MIN_FRAMES x I3D_MIN_SIZE x I3D_MIN_SIZE.
        self.avg_pool = avgpool_cls(_spatial((2, 7, 7), dims), stride=_spatial(1, dims))
        self.dropout = nn.Dropout(p=dropout)
        conv_cls = nn.Conv3d if dims == 3 else nn.Conv2d
        self.logits = conv_cls(width, num_classes, kernel_size=1, bias=True)
        # He init for the ReLU convs, unit BN; small logits so an untrained model is near-uniform.
        init_weights_torchvision_style(self, classifier=self.logits)

    # -- input checks --------------------------------------------------------------------------

    def _check(self, x: torch.Tensor, min_frames: int, min_size: int) -> None:
        if self.dims == 3:
            check_video_input(x, self.name, in_channels=self.in_channels, min_frames=min_frames, min_size=min_size)
            return
        # check_video_input is for clips; the 2D network gets the same checks for images.
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name} expects a torch.Tensor image batch, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{self.name} expects a 4-D image batch (N, C, H, W); got a {x.dim()}-D tensor of "
                f"shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name} expects {self.in_channels} input channels; got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name} expects a floating-point input, got dtype {x.dtype}")
        if min(x.shape[-2:]) < min_size:
            raise ValueError(
                f"{self.name} needs images of at least {min_size}x{min_size} pixels; got "
                f"{x.shape[-2]}x{x.shape[-1]}"
            )

    # -- forward -------------------------------------------------------------------------------

    def endpoints(self, x: torch.Tensor, final_endpoint: str = "Mixed_5c") -> "OrderedDict[str, torch.Tensor]":
        """Every endpoint's output up to ``final_endpoint`` (kinetics-i3d's ``end_points``)."""
        if final_endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {final_endpoint!r}; endpoints: {', '.join(ENDPOINTS)}")
        # Only MaxPool3d_5a_2x2 (kernel 2, no padding) sets a minimum before the head.
        needs_5a = ENDPOINTS.index(final_endpoint) >= ENDPOINTS.index("MaxPool3d_5a_2x2")
        self._check(x, _FEATURES_MIN_FRAMES if needs_5a else 1, _FEATURES_MIN_SIZE if needs_5a else 1)
        outputs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for name in ENDPOINTS:
            x = getattr(self, name)(x)
            outputs[name] = x
            if name == final_endpoint:
                break
        return outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The Mixed_5c map before pooling: (N, 1024, T', H', W') or (N, 1024, H', W')."""
        self._check(x, _FEATURES_MIN_FRAMES, _FEATURES_MIN_SIZE)
        for name in ENDPOINTS:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, I3D_MIN_FRAMES, I3D_MIN_SIZE)
        x = self.features(x)
        x = self.logits(self.dropout(self.avg_pool(x)))
        # kinetics-i3d squeezes the (1x1) space and averages the logits over the remaining time
        # steps; averaging over all remaining positions is the same for the standard clip and
        # also defined for larger frames.
        return x.flatten(2).mean(dim=2)


def inception_v1_2d(num_classes: int = 1000, **kwargs) -> InceptionV1:
    """2D Inception-v1 (GoogLeNet with BN, no auxiliary heads), e.g. for ImageNet weights.

    Its state_dict keys are exactly those of :func:`i3d`; :func:`inflate_2d_to_3d` turns it into
    an I3D.
    """
    return InceptionV1(dims=2, num_classes=num_classes, **kwargs)


@register_model(
    "i3d",
    paper=(
        "Carreira & Zisserman, Quo Vadis, Action Recognition? A New Model and the Kinetics "
        "Dataset, CVPR 2017 (deepmind/kinetics-i3d, RGB stream)"
    ),
    input_shape=(3, 64, 224, 224),
    num_classes=400,
    published_params=12_697_264,
    params_rtol=0.0,
    params_source=(
        "12,697,264 for I3D (Inception-v1) with a 400-way head in IBM/action-recognition-pytorch's "
        "benchmark_full.md (kinetics400-i3d-tp-max), the count of piergiaj/pytorch-i3d too; "
        "OpenVINO's i3d-rgb-tf (the deepmind checkpoint) lists 12.69 MParams, i.e. 12,689,984 "
        "without the 7,280 BN scales Sonnet's BatchNorm lacks. The paper's Table 1 rounds to "
        "12M; the '~12.3M' sometimes quoted is the trunk without the 410,000-parameter logits"
    ),
    test_input_shape=(3, I3D_MIN_FRAMES, I3D_MIN_SIZE, I3D_MIN_SIZE),
    min_frames=I3D_MIN_FRAMES,
)
def i3d(num_classes: int = 400, **kwargs) -> InceptionV1:
    """I3D (inflated Inception-v1) for clips of at least 13 x 209 x 209; 64 x 224 x 224 standard."""
    return InceptionV1(dims=3, num_classes=num_classes, **kwargs)


# ------------------------------------------------------------------------------------------------
# Inflation
# ------------------------------------------------------------------------------------------------


def inflate_2d_to_3d(
    model_2d: Union[nn.Module, Mapping[str, torch.Tensor]],
    model_3d: nn.Module,
    strict: bool = True,
) -> nn.Module:
    """Copy a 2D network's weights into the 3D network with the same module names (in place).

    Every entry of the 2D state_dict (parameters and buffers) goes to the entry of the same name
    in ``model_3d``:

    * a 2D conv weight (O, I, kh, kw) meeting a 3D one (O, I, kt, kh, kw) is repeated ``kt`` times
      along time and divided by ``kt``: on a clip of one repeated frame the 3D conv then sums to
      exactly the 2D response (the I3D paper's "boring video" fixed point);
    * anything else (BN weight/bias/running stats, conv and linear biases, linear weights, ...)
      must have the same shape and is copied as is.

    Args:
        model_2d: the 2D ``nn.Module`` or its state_dict.
        model_3d: the 3D module to fill.
        strict: like ``load_state_dict``: when True every 3D entry must receive a value and every
            2D entry must be used; when False names present on one side only are skipped. Shape
            mismatches are errors either way (drop those keys from a 2D state_dict to skip
            them, e.g. a classifier with a different number of classes).

    Returns:
        ``model_3d``.

    Raises:
        ValueError: listing the unmatched names and the shape-incompatible entries; nothing is
            copied in that case.
    """
    if isinstance(model_2d, nn.Module):
        source = model_2d.state_dict()
    elif isinstance(model_2d, Mapping):
        source = model_2d
    else:
        raise TypeError(f"model_2d must be an nn.Module or a state_dict, got {type(model_2d).__name__}")
    if not isinstance(model_3d, nn.Module):
        raise TypeError(f"model_3d must be an nn.Module, got {type(model_3d).__name__}")
    target = model_3d.state_dict(keep_vars=True)  # the live tensors, to copy into in place

    missing = [name for name in target if name not in source]
    unexpected = [name for name in source if name not in target]
    incompatible: List[str] = []
    plan: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for name, dst in target.items():
        if name not in source:
            continue
        src = torch.as_tensor(source[name])
        if src.dim() == 4 and dst.dim() == 5 and src.shape[:2] == dst.shape[:2] and src.shape[2:] == dst.shape[3:]:
            kt = dst.shape[2]
            # Repeat over time, divide by kt: sum over the kt taps of a constant clip = 2D filter.
            plan.append((dst, src.unsqueeze(2).expand(-1, -1, kt, -1, -1) / kt))
        elif src.shape == dst.shape:
            plan.append((dst, src))
        else:
            incompatible.append(f"{name}: 2D {tuple(src.shape)} vs 3D {tuple(dst.shape)}")

    problems = []
    if incompatible:
        problems.append(
            f"{len(incompatible)} shape-incompatible entr{'y' if len(incompatible) == 1 else 'ies'} "
            f"(a 2D conv weight (O, I, kh, kw) inflates only to (O, I, kt, kh, kw); other entries "
            f"must match exactly): " + "; ".join(incompatible)
        )
    if strict and missing:
        problems.append(
            f"{len(missing)} entr{'y' if len(missing) == 1 else 'ies'} of the 3D model with no "
            f"2D counterpart: " + ", ".join(missing)
        )
    if strict and unexpected:
        problems.append(
            f"{len(unexpected)} entr{'y' if len(unexpected) == 1 else 'ies'} of the 2D model with "
            f"no 3D counterpart: " + ", ".join(unexpected)
        )
    if problems:
        raise ValueError("inflate_2d_to_3d: " + "\n".join(problems))

    with torch.no_grad():
        for dst, value in plan:
            dst.copy_(value)
    return model_3d
