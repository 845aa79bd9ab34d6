"""The cpu backend's 1x1x1 kernel against oneDNN, layer by layer, in one process
(csrc/cpu/conv3d_pointwise.cpp; the limits in videoconv/backends/cpu.py come from this).

    python benchmarks/pointwise_ab.py [--models x3d_s r3d_18 r2plus1d_18]
                                      [--dtypes float32 bfloat16]
    python benchmarks/pointwise_ab.py --whole [--models x3d_s] [--dtypes bfloat16]

For every distinct 1x1x1 Conv3d + BN + activation of the models (batch 1, standard clip,
channels_last_3d) it prepares the cpu backend's call twice, once through the kernel this CPU
runs (``_pointwise_variant()``) and once through oneDNN (``_convolution_pointwise``; for bfloat16
without native oneDNN support, the widened float32 route with its copies), whatever the size
limits say, and times both in turns (``time_interleaved``: a shared machine's speed drifts).
Prints the medians and the ratio oneDNN / kernel (> 1: the kernel is faster).

``--whole`` times whole fused models instead (eval forward, batch 1): one fused copy whose
calls were prepared with the kernel where ``_use_pointwise`` (with its limits) takes it, one
prepared with oneDNN only, and the eager model, in turns.
"""

from __future__ import annotations

import argparse

import torch

from ab_common import eager_model_and_clip, patched, prepare_conv, time_prepared
from videoconv.backends import cpu
from videoconv.bench.layers import trace_layers
from videoconv.bench.timing import time_interleaved


def _prepare(layer, dtype, pointwise: bool):
    module = layer.module
    bn = module._get("bn") if hasattr(module, "bn") else None
    # every 1x1x1 layer through the kernel (or none): the limits are what this measures
    with patched(cpu, POINTWISE=pointwise, _POINTWISE_MIN_CHANNELS=1,
                 _POINTWISE_MAX_ROWS_F32=1 << 62, _POINTWISE_MAX_STRIDED_OUTPUT_BF16=1 << 62,
                 _POINTWISE_AVX2_MAX_OUTPUT_F32=1 << 62,
                 _POINTWISE_AVX2_EXPANSION_OUTPUT_BF16=1 << 62,
                 _POINTWISE_AVX2_BF16_NATIVE_ONEDNN=True):
        return prepare_conv(module._get("conv"), bn, layer.input_shape, dtype, module.activation)


def _whole(models, dtypes, min_run_time) -> None:
    import videoconv

    for model in models:
        for name in dtypes:
            eager, x = eager_model_and_clip(model, getattr(torch, name))
            fns = {}
            with torch.no_grad():
                for label, enabled in (("fused, kernel", True), ("fused, oneDNN", False)):
                    saved, cpu.POINTWISE = cpu.POINTWISE, enabled
                    try:
                        fused = videoconv.fuse(eager)
                        fused(x)  # the calls are prepared (and their routes fixed) here
                        fused(x)
                    finally:
                        cpu.POINTWISE = saved
                    fns[label] = lambda f=fused: f(x)
                fns["eager"] = lambda: eager(x)
                eager(x)
                t = time_interleaved(fns, min_run_time=min_run_time)
            line = ", ".join(f"{k} {v.median_ms:.1f} ms" for k, v in t.items())
            print(f"{model} {name}: {line}; oneDNN / kernel "
                  f"{t['fused, oneDNN'].median_ms / t['fused, kernel'].median_ms:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["x3d_s", "r3d_18", "r2plus1d_18"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--whole", action="store_true", help="whole fused models, not layers")
    args = parser.parse_args()
    if args.whole:
        print(f"kernel variant {cpu._pointwise_variant()!r}, {torch.get_num_threads()} threads")
        _whole(args.models, args.dtypes, max(args.min_run_time, 5.0))
        return
    cl = torch.channels_last_3d
    print(f"kernel variant {cpu._pointwise_variant()!r}, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"{'layer':58s} {'dtype':8s} {'kernel µs':>10s} {'oneDNN µs':>10s} {'ratio':>6s}")
    for model in args.models:
        for layer in trace_layers(model):
            conv = layer.convs[0]
            if not (layer.kind == "conv3d_bn_act" and conv["weight"][2:] == [1, 1, 1]
                    and conv["groups"] == 1 and layer.input_shape[2:] != (1, 1, 1)):
                continue
            for name in args.dtypes:
                dtype = getattr(torch, name)
                x = torch.randn(layer.input_shape).to(dtype).contiguous(memory_format=cl)
                res = (torch.randn(layer.output_shape).to(dtype).contiguous(memory_format=cl)
                       if layer.residual else None)
                calls = {"kernel": _prepare(layer, dtype, True),
                         "onednn": _prepare(layer, dtype, False)}
                t = time_prepared(calls, x, res, args.min_run_time)
                k, o = t["kernel"].median_ms * 1e3, t["onednn"].median_ms * 1e3
                print(f"{layer.label[:58]:58s} {name:8s} {k:10.1f} {o:10.1f} {o / k:6.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
