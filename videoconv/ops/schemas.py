"""Schemas of videoconv's operators, mirrored from csrc/ops.cpp.

The C++ extension declares these with ``TORCH_LIBRARY(videoconv, m)``. When it is not loaded the
same schemas are declared here with ``torch.library`` so that ``torch.ops.videoconv.*`` exists on
every install and the Python backends (reference, Triton) can register kernels against it.
tests/test_extension.py checks that both declarations are identical.
"""

from __future__ import annotations

import torch

from .._extension import extension_loaded

__all__ = ["SCHEMAS", "declare_schemas"]

#: operator name -> schema (without the namespace), exactly as in csrc/ops.cpp.
SCHEMAS = {
    "conv3d_bn_act": (
        "conv3d_bn_act(Tensor input, Tensor weight, Tensor scale, Tensor shift, int[3] stride, "
        "int[3] padding, int[3] dilation, int groups, str activation, Tensor? residual) -> Tensor"
    ),
    "conv2plus1d_bn_act": (
        "conv2plus1d_bn_act(Tensor input, Tensor w1, Tensor scale1, Tensor shift1, Tensor w2, "
        "Tensor scale2, Tensor shift2, int[3] stride, int[3] padding, str activation, "
        "bool temporal_first, Tensor? residual) -> Tensor"
    ),
    "conv3d_bn_stats": (
        "conv3d_bn_stats(Tensor input, Tensor weight, int[3] stride, int[3] padding, "
        "int[3] dilation, int groups) -> (Tensor, Tensor, Tensor)"
    ),
    "channel_mean": "channel_mean(Tensor input) -> Tensor",
    "scale_act": "scale_act(Tensor input, Tensor scale, str activation) -> Tensor",
    "_conv3d_input_weight_grad": (
        "_conv3d_input_weight_grad(Tensor grad_z, Tensor input, Tensor weight, int[3] stride, "
        "int[3] padding, int[3] dilation, int groups, bool[2] output_mask) -> (Tensor, Tensor)"
    ),
}

_python_library = None


def declare_schemas() -> None:
    """Declare the schemas from Python unless the extension already did."""
    global _python_library
    if extension_loaded() or _python_library is not None:
        return
    _python_library = torch.library.Library("videoconv", "DEF")
    for schema in SCHEMAS.values():
        _python_library.define(schema)
