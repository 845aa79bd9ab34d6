"""The cpu backend's Winograd kernel against oneDNN's direct convolution, layer by layer, in one
process (csrc/cpu/conv3d_winograd.cpp; the limits in videoconv/backends/cpu.py,
``_use_winograd``, come from measurements like these).

    python benchmarks/winograd_ab.py [--models r3d_18 r2plus1d_18] [--dtypes float32 bfloat16]

For every distinct (kt, 3, 3) stride-1 convolution of the models' fused layers (batch 1,
standard clip, channels_last_3d; the first conv of R(2+1)D's units) it prepares the cpu
backend's call twice, once through the Winograd kernel whatever its size limits say and once
through oneDNN, and times both in turns (``time_interleaved``). Prints the medians, the ratio
oneDNN / Winograd (> 1: Winograd is faster), the output tiles and whether the rule takes the
kernel for that layer.
"""

from __future__ import annotations

import argparse

import torch

from ab_common import conv_key, patched, prepare_conv, time_prepared
from videoconv.backends import cpu
from videoconv.bench.layers import trace_layers


def _limits(winograd: bool):
    """Every eligible shape through the kernel (or none): the limits are what this measures."""
    return patched(cpu, WINOGRAD=winograd, _WINOGRAD_MIN_TILES_BF16=1,
                   _WINOGRAD_MIN_CHANNELS_BF16=1, _WINOGRAD_MAX_WEIGHT_BYTES=1 << 62)


def _convs(layer):
    """(conv, bn, input shape) of the layer's convs: the unit's first conv, or the layer's."""
    module = layer.module
    if layer.kind == "conv3d_bn_act":
        return [(module._get("conv"), module._get("bn") if hasattr(module, "bn") else None)]
    return [(module._get("conv1"), module._get("bn1"))]


def _prepare(conv, bn, shape, dtype, activation, winograd: bool):
    with _limits(winograd):
        return prepare_conv(conv, bn, shape, dtype, activation)


def _shape_eligible(conv, shape) -> bool:
    with _limits(True):
        return cpu._use_winograd(conv_key(conv, torch.float32, shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r3d_18", "r2plus1d_18"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    if not cpu._has_winograd_kernel():
        raise SystemExit("the videoconv._C extension (and so the Winograd kernel) is not loaded")
    cl = torch.channels_last_3d
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'conv':44s} {'dtype':8s} {'wino ms':>8s} {'oneDNN ms':>9s} {'ratio':>6s} "
          f"{'tiles':>6s} rule")
    seen = set()
    for model in args.models:
        for layer in trace_layers(model):
            for conv, bn in _convs(layer):
                shape = tuple(layer.input_shape)
                label = (f"{model} {conv.in_channels}->{conv.out_channels} "
                         f"{'x'.join(map(str, conv.kernel_size))} @{'x'.join(map(str, shape[2:]))}")
                if label in seen or not _shape_eligible(conv, shape):
                    continue
                seen.add(label)
                for name in args.dtypes:
                    dtype = getattr(torch, name)
                    x = torch.randn(shape).to(dtype).contiguous(memory_format=cl)
                    act = layer.module.activation
                    calls = {"winograd": _prepare(conv, bn, shape, dtype, act, True),
                             "onednn": _prepare(conv, bn, shape, dtype, act, False)}
                    t = time_prepared(calls, x, None, args.min_run_time)
                    wino, onednn = t["winograd"].median_ms, t["onednn"].median_ms
                    key = conv_key(conv, dtype, shape)
                    print(f"{label[:44]:44s} {name:8s} {wino:8.3f} {onednn:9.3f} "
                          f"{onednn / wino:6.2f} {cpu._winograd_tiles(key):6d} "
                          f"{'winograd' if cpu._use_winograd(key) else 'oneDNN'}", flush=True)


if __name__ == "__main__":
    main()
