"""Shared pieces of the cpu backend's A/B scripts (pointwise_ab.py, winograd_ab.py,
temporal_2d_ab.py): each prepares the same convolution twice through two routes of
videoconv/backends/cpu.py, with the module's limits patched for the duration of the preparation,
and times both calls in turns; or times whole fused models against eager.

Imported as a sibling module (``python benchmarks/<script>.py`` puts benchmarks/ on sys.path).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from videoconv.backends import cpu
from videoconv.bench.timing import Timing, paired_speedup, time_interleaved
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


def whole_model_args(doc: str, models: Sequence[str]) -> argparse.Namespace:
    """The command line of the whole-model A/B scripts (``doc``: the script's docstring):
    ``--models``, ``--dtypes``, ``--min-run-time`` and ``--rounds`` of ``time_interleaved``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(models))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=("float32", "bfloat16"))
    parser.add_argument("--min-run-time", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=30)
    return parser.parse_args()


def print_environment() -> None:
    """The machine, torch and the git revision, for the record next to the figures."""
    from videoconv.bench.environment import environment

    env = environment(torch.device("cpu"))
    print(f"{env['device']}, torch {env['torch']}, rev {env['git_revision']}, {env['date']}",
          flush=True)


def print_paired(model: str, dtype: str, t: Dict[str, Timing], base: str, other: str) -> None:
    """One line: every timed call's median, and ``base`` / ``other`` as the median of the
    rounds' paired ratios with its 95% interval (``paired_speedup``; > 1: ``other`` is faster)."""
    mid, lo, hi = paired_speedup(t[base], t[other])
    line = ", ".join(f"{k} {v.median_ms:.2f} ms" for k, v in t.items())
    print(f"{model} {dtype}: {line}; {base} / {other} {mid:.3f} [{lo:.3f}-{hi:.3f}] (median of "
          "the rounds' paired ratios, 95% interval)", flush=True)
