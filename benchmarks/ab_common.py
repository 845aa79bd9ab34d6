"""Shared pieces of the cpu backend's A/B scripts (pointwise_ab.py, winograd_ab.py,
temporal_2d_ab.py): each prepares the same convolution twice through two routes of
videoconv/backends/cpu.py, with the module's limits patched for the duration of the preparation,
and times both calls in turns; or times whole fused models against eager.

Imported as a sibling module (``python benchmarks/<script>.py`` puts benchmarks/ on sys.path).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Tuple

import torch

from videoconv.backends import cpu
from videoconv.bench.timing import Timing, time_interleaved
from videoconv.nn.folding import fold_conv_bn


@contextlib.contextmanager
def patched(obj, **values):
    """Set attributes of ``obj`` (e.g. the cpu backend's route limits) and restore them after."""
    saved = {name: getattr(obj, name) for name in values}
    for name, value in values.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


def conv_key(conv, dtype, shape) -> tuple:
    """The cpu backend's key (as ``_prepare`` builds it) of ``conv`` on a channels_last_3d input of
    size ``shape``: what its route rules (``_use_winograd``, ``_use_temporal_2d``, ...) read."""
    return ((dtype, torch.device("cpu"), torch.channels_last_3d, tuple(conv.weight.shape)),
            tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups,
            tuple(shape))


def prepare_conv(conv, bn, shape, dtype, activation) -> Callable:
    """The cpu backend's prepared call ``(x, residual) -> y`` of ``conv`` with ``bn`` folded, for
    channels_last_3d inputs of size ``shape``, through the route the current limits choose."""
    scale, shift = fold_conv_bn(conv, bn)
    return cpu._prepare(conv.weight.detach().to(dtype), scale.to(dtype), shift.to(dtype),
                        conv.stride, conv.padding, conv.dilation, conv.groups, activation,
                        torch.channels_last_3d, tuple(shape))


def time_prepared(calls: Dict[str, Callable], x: torch.Tensor, residual: Optional[torch.Tensor],
                  min_run_time: float) -> Dict[str, Timing]:
    """Each prepared call on (x, residual), called once, then timed in turns."""
    with torch.no_grad():
        fns = {name: (lambda f=f: f(x, residual)) for name, f in calls.items()}
        for f in fns.values():
            f()
        return time_interleaved(fns, min_run_time=min_run_time)


def eager_model_and_clip(model: str, dtype: torch.dtype) -> Tuple[torch.nn.Module, torch.Tensor]:
    """The zoo's ``model`` (seed 0, eval, ``dtype``, channels_last_3d) and a clip of its standard
    input, batch 1."""
    from videoconv import models as zoo

    cl = torch.channels_last_3d
    spec = zoo.get_model_spec(model)
    torch.manual_seed(0)
    eager = zoo.get_model(model).eval().to(dtype=dtype, memory_format=cl)
    x = torch.randn((1,) + tuple(spec.input_shape)).to(dtype).contiguous(memory_format=cl)
    return eager, x
