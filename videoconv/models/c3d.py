"""C3D of Tran et al. (2015), "Learning Spatiotemporal Features with 3D Convolutional Networks".

Eight 3x3x3 convolutions (stride 1, "same" padding) in five stages separated by max-pools, then
three fully connected layers. pool1 is 1x2x2 so early frames are not merged too soon; the
other pools are 2x2x2, and pool5 pads H and W by one so that a 16x112x112 clip ends as a
512x1x4x4 map, i.e. the 8192 inputs of fc6. Because of that fixed-size head the network only
takes 16-frame 112x112 clips.

As published, C3D has no normalisation and its convolutions have biases; ``batch_norm=True``
builds the BN variant (bias-free convs followed by BatchNorm3d) used by later re-trainings.
Modules are named after the paper's layers (conv1, conv2, conv3a ... conv5b, fc6, fc7, fc8). Each
convolution is a :class:`~.blocks.Conv3DBlock` whose children are ``conv``, [``bn``], ``relu``
and, where the paper pools, ``pool``: the paper's pool1 is ``conv1.pool``, pool5 is
``conv5b.pool``. Keeping conv -> BN -> ReLU as consecutive children is what lets ``fuse()`` find
them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._checks import check_video_input

# A leaf for torch.fx: videoconv.fuse() traces the model, and the check (which needs real
# tensors) is kept in the traced graph as a call instead of failing on a Proxy.
torch.fx.wrap("check_video_input")
from ._registry import register_model
from .blocks import Conv3DBlock, init_weights_torchvision_style

__all__ = ["C3D", "c3d"]

#: (name, in, out, pool kernel or None) of the eight convolutions; the pools follow the paper.
_C3D_CONVS = (
    ("conv1", 3, 64, (1, 2, 2)),
    ("conv2", 64, 128, (2, 2, 2)),
    ("conv3a", 128, 256, None),
    ("conv3b", 256, 256, (2, 2, 2)),
    ("conv4a", 256, 512, None),
    ("conv4b", 512, 512, (2, 2, 2)),
    ("conv5a", 512, 512, None),
    ("conv5b", 512, 512, (2, 2, 2)),
)
#: The only clip (T, H, W) the 8192-wide fc6 fits.
C3D_CLIP = (16, 112, 112)


class C3D(nn.Module):
    """C3D: eight 3x3x3 convs, five max-pools, fc6/fc7 (4096, ReLU, dropout), fc8.

    Args:
        num_classes: width of fc8 (101 for the UCF-101 head of the paper's fine-tuning).
        batch_norm: BatchNorm3d after each conv (and no conv bias) instead of the published
            bias-only convs.
        dropout: drop probability after fc6 and fc7 (0.5 in the paper).
        in_channels: channels of the clip.
    """

    def __init__(
        self,
        num_classes: int = 101,
        batch_norm: bool = False,
        dropout: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        for name, cin, cout, pool in _C3D_CONVS:
            cin = in_channels if name == "conv1" else cin
            # pool5 pads H and W by one: 7x7 -> 4x4 rather than 3x3, as in the Caffe original.
            pool_padding = (0, 1, 1) if name == "conv5b" else 0
            setattr(
                self,
                name,
                Conv3DBlock(cin, cout, 3, batch_norm=batch_norm, pool=pool, pool_padding=pool_padding),
            )
        self.fc6 = nn.Linear(512 * 1 * 4 * 4, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(p=dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init keeps activations O(1) through the eight un-normalised convs and two 4096-wide
        # layers; a fixed small std (the Caffe prototxt's 0.01) would shrink the logits towards
        # zero and make relative float32/bfloat16-vs-float64 checks meaningless.
        init_weights_torchvision_style(self, linear_std=None)  # the convs (and BNs)
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(fc.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc8.weight, 0, 0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(
            x, "c3d", in_channels=self.in_channels, min_frames=C3D_CLIP[0], exact_size=C3D_CLIP
        )
        for name, *_ in _C3D_CONVS:
            x = getattr(self, name)(x)
        x = x.flatten(1)
        x = self.dropout(self.relu(self.fc6(x)))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


@register_model(
    "c3d",
    paper="Tran et al., Learning Spatiotemporal Features with 3D Convolutional Networks, ICCV 2015",
    input_shape=(3, 16, 112, 112),
    num_classes=101,
    published_params=78_409_573,
    params_rtol=0.0,
    params_source=(
        "78.41M quoted for C3D with a 101-way head; the exact figure is the count of the "
        "published layers (8 biased 3x3x3 convs, fc6 8192->4096, fc7 4096->4096, fc8 4096->101)"
    ),
    test_input_shape=(3, 16, 112, 112),
    min_frames=16,
)
def c3d(num_classes: int = 101, batch_norm: bool = False, **kwargs) -> C3D:
    """C3D as published (``batch_norm=False``) or its BatchNorm variant."""
    return C3D(num_classes=num_classes, batch_norm=batch_norm, **kwargs)
