"""The cpu backend's depthwise kernel against oneDNN, layer by layer and in whole models, in one
process (csrc/cpu/conv3d_depthwise.cpp; ``_DEPTHWISE_MAX_FRAME`` in videoconv/backends/cpu.py
comes from this).

    python benchmarks/depthwise_ab.py [--models x3d_s] [--dtypes float32 bfloat16]
    python benchmarks/depthwise_ab.py --whole [--models x3d_s] [--dtypes bfloat16]
                                      [--max-frames 100 400 1600]

For every distinct depthwise Conv3d + BN + activation of the models (groups == channels; batch
1, standard clip, channels_last_3d) it prepares the cpu backend's call twice, once through the
kernel and once through oneDNN (``_convolution_pointwise``), whatever the size limit says, and
times both in turns (``time_interleaved``: a shared machine's speed drifts). Prints the medians
and the ratio oneDNN / kernel (> 1: the kernel is faster). Alone in a loop each call runs from
warm caches, which flatters oneDNN's per-call set-up (see the C++ file); ``--whole`` is the
measure that counts.

``--whole`` times whole fused models instead (eval forward, batch 1), in turns: one fused copy
per ``--max-frames`` value (the kernel on layers with output frames of at most that many
positions), one with oneDNN for every depthwise layer, and the eager model; each against the
oneDNN one as the median of the rounds' paired ratios with its 95% interval
(``paired_speedup``).
"""

from __future__ import annotations

import argparse

import torch

from ab_common import eager_model_and_clip, patched, prepare_conv, time_prepared
from videoconv.backends import cpu
from videoconv.bench.layers import trace_layers
from videoconv.bench.timing import paired_speedup, time_interleaved


def _prepare(layer, dtype, depthwise: bool):
    module = layer.module
    bn = module._get("bn") if hasattr(module, "bn") else None
    with patched(cpu, DEPTHWISE=depthwise, _DEPTHWISE_MAX_FRAME=1 << 62):
        return prepare_conv(module._get("conv"), bn, layer.input_shape, dtype, module.activation)


def _whole(models, dtypes, max_frames, min_run_time, rounds) -> None:
    import videoconv

    for model in models:
        for name in dtypes:
            eager, x = eager_model_and_clip(model, getattr(torch, name))
            fns = {}
            with torch.no_grad():
                variants = [(f"kernel <= {m}", True, m) for m in max_frames]
                for label, enabled, limit in variants + [("oneDNN", False, 0)]:
                    with patched(cpu, DEPTHWISE=enabled, _DEPTHWISE_MAX_FRAME=limit):
                        fused = videoconv.fuse(eager)
                        fused(x)  # the calls are prepared (and their routes fixed) here
                        fused(x)
                    fns[label] = lambda f=fused: f(x)
                fns["eager"] = lambda: eager(x)
                eager(x)
                t = time_interleaved(fns, min_run_time=min_run_time, rounds=rounds)
            parts = []
            for k, v in t.items():
                mid, lo, hi = paired_speedup(t["oneDNN"], v)
                parts.append(f"{k} {v.median_ms:.2f} ms ({mid:.3f}x [{lo:.3f}-{hi:.3f}])")
            print(f"{model} {name}: {', '.join(parts)}  [oneDNN / each: median of the "
                  f"{rounds} rounds' ratios, 95% interval]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["x3d_s"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--whole", action="store_true", help="whole fused models, not layers")
    parser.add_argument("--rounds", type=int, default=20, help="--whole: rounds of turns")
    parser.add_argument("--max-frames", nargs="+", type=int,
                        default=[cpu._DEPTHWISE_MAX_FRAME],
                        help="--whole: the kernel's limits to compare (output positions/frame)")
    args = parser.parse_args()
    if not cpu._has_depthwise_kernel():
        raise SystemExit("the depthwise kernel does not run on this CPU (it needs AVX-512)")
    if args.whole:
        print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
        _whole(args.models, args.dtypes, args.max_frames, max(args.min_run_time, 5.0),
               args.rounds)
        return
    cl = torch.channels_last_3d
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'layer':58s} {'dtype':8s} {'kernel µs':>10s} {'oneDNN µs':>10s} {'ratio':>6s}")
    for model in args.models:
        for layer in trace_layers(model):
            conv = layer.convs[0]
            if not (layer.kind == "conv3d_bn_act" and conv["groups"] > 1
                    and conv["groups"] == conv["weight"][0] and conv["weight"][1] == 1):
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
