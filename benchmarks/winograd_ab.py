"""The cpu backend's Winograd kernel against oneDNN's direct convolution, layer by layer, in one
process (csrc/cpu/conv3d_winograd.cpp; the limits in videoconv/backends/cpu.py,
``_use_winograd``, come from measurements like these).

    python benchmarks/winograd_ab.py [--models r3d_18 r2plus1d_18] [--dtypes float32 bfloat16]
    python benchmarks/winograd_ab.py --whole [--models r2plus1d_18] [--dtypes bfloat16]

For every distinct (kt, 3, 3) stride-1 convolution of the models' fused layers (batch 1,
standard clip, channels_last_3d; the first conv of R(2+1)D's units) it prepares the cpu
backend's call through the Winograd kernel whatever its size limits say, with F(4x4, 3x3) and,
for bfloat16, also F(7x7, 3x3), and through oneDNN, and times them in turns
(``time_interleaved``). Prints the medians, the ratios oneDNN / F(4x4) and F(4x4) / F(7x7)
(> 1: the second is slower), the output tiles (4x4) and which route the rule takes.

``--whole`` times whole fused models (eval forward) with bfloat16's F(7x7) on and off (the
rule's choice otherwise), and the eager model, in turns; each timed call sets
``WINOGRAD_7X7`` first, since the (2+1)D units choose their route on every call.
"""

from __future__ import annotations

import argparse

import torch

from ab_common import conv_key, eager_model_and_clip, patched, prepare_conv, time_prepared
from videoconv.backends import cpu
from videoconv.bench.layers import trace_layers
from videoconv.bench.timing import time_interleaved


def _limits(route: str):
    """Every eligible shape through the kernel with the given tile ("4" or "7"), or none
    ("onednn"): the limits are what this measures."""
    return patched(cpu, WINOGRAD=route != "onednn", WINOGRAD_7X7=route == "7",
                   _WINOGRAD_MIN_TILES_BF16=1, _WINOGRAD_MIN_CHANNELS_BF16=1,
                   _WINOGRAD_MAX_WEIGHT_BYTES=1 << 62, _WINOGRAD7_MIN_TILES=1,
                   _WINOGRAD7_MAX_PRODUCTS=float("inf"))


def _convs(layer):
    """(conv, bn, input shape) of the layer's convs: the unit's first conv, or the layer's."""
    module = layer.module
    if layer.kind == "conv3d_bn_act":
        return [(module._get("conv"), module._get("bn") if hasattr(module, "bn") else None)]
    return [(module._get("conv1"), module._get("bn1"))]


def _prepare(conv, bn, shape, dtype, activation, route: str):
    with _limits(route):
        return prepare_conv(conv, bn, shape, dtype, activation)


def _shape_eligible(conv, shape) -> bool:
    with _limits("4"):
        return cpu._use_winograd(conv_key(conv, torch.float32, shape))


def _rule(key) -> str:
    if not cpu._use_winograd(key):
        return "oneDNN"
    return "F(7x7)" if cpu._winograd_tile(key) == 7 else "F(4x4)"


def _whole(models, dtypes, min_run_time) -> None:
    import videoconv

    for model in models:
        for name in dtypes:
            eager, x = eager_model_and_clip(model, getattr(torch, name))
            saved = cpu.WINOGRAD_7X7

            def run(fused, tile7):
                cpu.WINOGRAD_7X7 = tile7
                return fused(x)

            fns = {}
            with torch.no_grad():
                try:
                    for label, tile7 in (("fused, F(7x7) rule", True), ("fused, F(4x4)", False)):
                        fused = videoconv.fuse(eager)
                        run(fused, tile7)
                        run(fused, tile7)
                        fns[label] = lambda f=fused, t=tile7: run(f, t)
                    fns["eager"] = lambda: eager(x)
                    eager(x)
                    t = time_interleaved(fns, min_run_time=min_run_time)
                finally:
                    cpu.WINOGRAD_7X7 = saved
            e = t["eager"]
            line = ", ".join(f"{k} {v.median_ms:.1f} ms ({e.median_ms / v.median_ms:.2f}x)"
                             for k, v in t.items())
            print(f"{model} {name}: {line}; F(4x4) / F(7x7) "
                  f"{t['fused, F(4x4)'].median_ms / t['fused, F(7x7) rule'].median_ms:.3f}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r3d_18", "r2plus1d_18"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--whole", action="store_true", help="whole fused models, not layers")
    args = parser.parse_args()
    if not cpu._has_winograd_kernel():
        raise SystemExit("the videoconv._C extension (and so the Winograd kernel) is not loaded")
    if args.whole:
        print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}")
        _whole(args.models, args.dtypes, max(args.min_run_time, 8.0))
        return
    cl = torch.channels_last_3d
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'conv':44s} {'dtype':8s} {'F4 ms':>8s} {'F7 ms':>8s} {'oneDNN ms':>9s} "
          f"{'oD/F4':>6s} {'F4/F7':>6s} {'tiles':>6s} rule")
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
                    routes = ["4", "onednn"] + (["7"] if dtype == torch.bfloat16 else [])
                    calls = {r: _prepare(conv, bn, shape, dtype, act, r) for r in routes}
                    t = time_prepared(calls, x, None, args.min_run_time)
                    wino, onednn = t["4"].median_ms, t["onednn"].median_ms
                    wino7 = t["7"].median_ms if "7" in t else float("nan")
                    key = conv_key(conv, dtype, shape)
                    print(f"{label[:44]:44s} {name:8s} {wino:8.3f} {wino7:8.3f} {onednn:9.3f} "
                          f"{onednn / wino:6.2f} {wino / wino7:6.2f} "
                          f"{cpu._winograd_tiles(key):6d} {_rule(key)}", flush=True)


if __name__ == "__main__":
    main()
