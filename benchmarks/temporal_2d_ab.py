"""The cpu backend's temporal convolutions as 2-D convolutions against the 3-D oneDNN call, in one
process (route "onednn-2d", ``_use_temporal_2d`` in videoconv/backends/cpu.py).

    python benchmarks/temporal_2d_ab.py [--models r2plus1d_18] [--dtypes float32 bfloat16]
    python benchmarks/temporal_2d_ab.py --whole [--models r2plus1d_18] [--dtypes bfloat16]
    python benchmarks/temporal_2d_ab.py --sum [--whole] [--models r2plus1d_18] [--dtypes bfloat16]

For every distinct (kt, 1, 1) convolution of the models' fused layers (batch 1, standard clip,
channels_last_3d; the second conv of R(2+1)D's units) it prepares the cpu backend's call twice,
once over the (D, H*W) view and once as the 3-D convolution, and times both in turns
(``time_interleaved``). Prints the medians and the ratio 3-D / 2-D (> 1: the view is faster).

``--whole`` times whole fused models (eval forward), with and without the route, and the eager
model, in turns, and prints the ratio as the median of the rounds' paired ratios with its 95%
interval (``paired_speedup``). The (2+1)D units bind their routes when their call is prepared (on
their first calls) and the sum flag is read on every call, so each call sets its variant's flag
first.

``--sum`` compares, on the route, the two ways a residual is added (``TEMPORAL_2D_SUM``): oneDNN's
sum post-op into a copy of the residual (``sum``) against the binary add post-op (``binary``), on
the convs that add one (layers) or in whole models (``--whole``; the flag is read on every call).
Prints the ratio binary / sum (> 1: the sum post-op is faster).
"""

from __future__ import annotations

import argparse

import torch

from ab_common import (conv_key, eager_model_and_clip, patched, prepare_conv, print_paired,
                       time_prepared)
from videoconv.backends import cpu
from videoconv.bench.layers import trace_layers
from videoconv.bench.timing import time_interleaved


def _temporal_convs(layer):
    """(conv, bn, input shape, last) of the layer's (kt, 1, 1) convs that qualify for the route;
    ``last``: the conv that produces the layer's output (and adds its residual)."""
    module = layer.module
    if layer.kind == "conv3d_bn_act":
        pairs = [(module._get("conv"), module._get("bn") if hasattr(module, "bn") else None,
                  layer.input_shape, True)]
    else:  # a (2+1)D unit: the temporal conv's input is the spatial conv's output
        conv1, conv2 = module._get("conv1"), module._get("conv2")
        with torch.no_grad():
            h = torch.nn.functional.conv3d(torch.empty(layer.input_shape, device="meta"),
                                           conv1.weight.to("meta"), None, conv1.stride,
                                           conv1.padding, conv1.dilation, conv1.groups)
        pairs = [(conv1, module._get("bn1"), layer.input_shape, False),
                 (conv2, module._get("bn2"), tuple(h.shape), True)]
    with patched(cpu, TEMPORAL_2D=True):
        return [(conv, bn, tuple(shape), last) for conv, bn, shape, last in pairs
                if cpu._use_temporal_2d(conv_key(conv, torch.float32, shape))]


def _prepare(conv, bn, shape, dtype, activation, as_2d: bool):
    with patched(cpu, TEMPORAL_2D=as_2d):
        return prepare_conv(conv, bn, shape, dtype, activation)


def _with_sum(call, value: bool):
    """``call`` with the route's ``TEMPORAL_2D_SUM`` set to ``value`` for the call."""
    def run(x, residual):
        with patched(cpu, TEMPORAL_2D_SUM=value):
            return call(x, residual)
    return run


def _whole(models, dtypes, min_run_time, compare_sum: bool) -> None:
    import videoconv

    # (label, attribute, value): each variant sets one of the cpu backend's flags before a call
    if compare_sum:
        variants = [("sum", "TEMPORAL_2D_SUM", True), ("binary", "TEMPORAL_2D_SUM", False)]
    else:
        variants = [("fused, 2-D", "TEMPORAL_2D", True), ("fused, 3-D", "TEMPORAL_2D", False)]
    for model in models:
        for name in dtypes:
            eager, x = eager_model_and_clip(model, getattr(torch, name))

            def run(fused, attr, value):
                setattr(cpu, attr, value)
                return fused(x)

            fns = {}
            # every flag a variant sets is restored afterwards (ab_common.patched)
            with torch.no_grad(), patched(cpu, **{attr: getattr(cpu, attr)
                                                  for _, attr, _ in variants}):
                for label, attr, value in variants:
                    fused = videoconv.fuse(eager)
                    run(fused, attr, value)
                    run(fused, attr, value)
                    fns[label] = lambda f=fused, a=attr, v=value: run(f, a, v)
                fns["eager"] = lambda: eager(x)
                eager(x)
                t = time_interleaved(fns, min_run_time=min_run_time)
            (a, _, _), (b, _, _) = variants
            print_paired(model, name, t, b, a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r2plus1d_18"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--whole", action="store_true", help="whole fused models, not layers")
    parser.add_argument("--sum", action="store_true",
                        help="the residual's sum post-op against the binary one, on the route")
    args = parser.parse_args()
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.whole:
        _whole(args.models, args.dtypes, max(args.min_run_time, 8.0), args.sum)
        return
    cl = torch.channels_last_3d
    a_name, b_name = ("sum", "binary") if args.sum else ("2-D", "3-D")
    print(f"{'temporal conv':52s} {'dtype':8s} {a_name + ' ms':>8s} {b_name + ' ms':>8s} "
          f"{b_name + '/' + a_name:>10s}")
    seen = set()
    for model in args.models:
        for layer in trace_layers(model):
            for conv, bn, shape, last in _temporal_convs(layer):
                label = (f"{model} {conv.in_channels}->{conv.out_channels} "
                         f"{'x'.join(map(str, conv.kernel_size))} s{conv.stride[0]} "
                         f"@{'x'.join(map(str, shape[2:]))}")
                residual_shape = tuple(layer.output_shape) if layer.residual and last else None
                if (label, residual_shape) in seen or (args.sum and residual_shape is None):
                    continue
                seen.add((label, residual_shape))
                for name in args.dtypes:
                    dtype = getattr(torch, name)
                    x = torch.randn(shape).to(dtype).contiguous(memory_format=cl)
                    res = (None if residual_shape is None else
                           torch.randn(residual_shape).to(dtype).contiguous(memory_format=cl))
                    act = layer.module.activation
                    if args.sum:  # one prepared call; the flag is read on every call
                        call = _prepare(conv, bn, shape, dtype, act, True)
                        calls = {a_name: _with_sum(call, True), b_name: _with_sum(call, False)}
                    else:
                        calls = {a_name: _prepare(conv, bn, shape, dtype, act, True),
                                 b_name: _prepare(conv, bn, shape, dtype, act, False)}
                    t = time_prepared(calls, x, res, args.min_run_time)
                    a, b = t[a_name].median_ms, t[b_name].median_ms
                    tag = label + (" +res" if res is not None else "")
                    print(f"{tag[:52]:52s} {name:8s} {a:8.3f} {b:8.3f} {b / a:10.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
