"""What a practitioner asks of a video model before training it.

* :func:`count_params` — parameters.
* :func:`count_flops` — multiply-accumulates per layer and in total (torchvision's convention).
* :func:`conv_output_shape` — output size of a convolution/pooling with PyTorch's floor rule.
* :func:`compare_conv_parameters` — 2D vs 3D vs (2+1)D parameters and compute.
* :func:`activation_memory` — bytes autograd keeps for the backward pass of a training step.
* :mod:`.roofline` — device peaks, minimal FLOPs/bytes of fused vs unfused layers, fusion headroom.
"""

from .compare import ConvVariant, compare_conv_parameters, midplanes
from .flops import FlopReport, LayerFlops, count_flops, layer_macs
from .memory import ActivationMemory, activation_memory
from .params import count_params
from .shapes import conv_output_shape
from ._tracing import parse_input_shape
from . import roofline
from .roofline import DeviceSpec, LayerCost, device_spec, fusion_summary, layer_cost, roofline_time

__all__ = [
    "count_params",
    "count_flops",
    "layer_macs",
    "FlopReport",
    "LayerFlops",
    "conv_output_shape",
    "compare_conv_parameters",
    "ConvVariant",
    "midplanes",
    "activation_memory",
    "ActivationMemory",
    "parse_input_shape",
    "roofline",
    "DeviceSpec",
    "LayerCost",
    "device_spec",
    "layer_cost",
    "roofline_time",
    "fusion_summary",
]
