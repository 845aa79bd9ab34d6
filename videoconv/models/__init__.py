"""Reference zoo of the classic video architectures, built from plain ``nn.Conv3d``.

These models are the correctness oracle and the speed baseline for every fused kernel of the
package: they compute exactly what the papers (and torchvision, where it has the model) compute.

>>> import videoconv.models as vm
>>> vm.list_models()[:3]
['c2d_r18', 'c3d', 'csn_r101']
>>> model = vm.get_model("r2plus1d_18", num_classes=400)
"""

from ._registry import ModelSpec, get_model, get_model_spec, list_models, register_model
from ._checks import check_video_input

# Importing the architecture modules registers them.
from . import blocks, resnet3d, c3d, c2d, i3d, slowfast, x3d, csn  # noqa: E402,F401
from .blocks import Conv3DBlock, Residual3DBlock, SpatioTemporalConv  # noqa: E402
from .i3d import inflate_2d_to_3d  # noqa: E402

__all__ = [
    "ModelSpec",
    "register_model",
    "list_models",
    "get_model",
    "get_model_spec",
    "check_video_input",
    "Conv3DBlock",
    "Residual3DBlock",
    "SpatioTemporalConv",
    "inflate_2d_to_3d",
]
