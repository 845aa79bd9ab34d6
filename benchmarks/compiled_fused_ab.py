"""``torch.compile(videoconv.fuse(model))`` against the fused model in eager, in one process.

    python benchmarks/compiled_fused_ab.py [--models x3d_s r2plus1d_18] [--dtypes bfloat16 float32]

A compiled graph calls ``torch.ops.videoconv.*`` itself, with the parameters and the folded
scale and shift it recomputes on every forward, where the fused modules in eager hold prepared
calls (videoconv/ops/_direct.py): this measures what the operators' own path costs against the
modules' (the operators keep prepared calls too, ``OpPreparedCalls``). Batch 1, the model's
standard clip, channels_last_3d, ``inference_mode``; default ``torch.compile`` (no freezing, as a
user would call it). Outputs are checked against each other first; the two, and the eager model,
are timed in turns (``time_interleaved``); the ratio is the median of the rounds' paired ratios
with its 95% interval (``paired_speedup``), > 1: the compiled model is faster.
"""

from __future__ import annotations

import time

import torch

from ab_common import eager_model_and_clip, print_environment, print_paired, whole_model_args
from videoconv.bench.timing import pin_host_allocator, time_interleaved


def main() -> None:
    args = whole_model_args(__doc__, ["x3d_s", "r2plus1d_18"])
    import videoconv

    pin_host_allocator()
    print_environment()
    for model in args.models:
        for name in args.dtypes:
            eager, x = eager_model_and_clip(model, getattr(torch, name))
            fused = videoconv.fuse(eager)
            compiled = torch.compile(fused)
            with torch.inference_mode():
                start = time.perf_counter()
                y = compiled(x)
                print(f"{model} {name}: compiled in {time.perf_counter() - start:.0f} s",
                      flush=True)
                ref = fused(x)
                scale = ref.abs().max().item()
                error = (y.float() - ref.float()).abs().max().item()
                assert error <= (1e-4 if name == "float32" else 5e-2) * scale, (error, scale)
                fns = {"fused": lambda: fused(x), "compiled fused": lambda: compiled(x),
                       "eager": lambda: eager(x)}
                for f in fns.values():
                    f()
                t = time_interleaved(fns, min_run_time=args.min_run_time, rounds=args.rounds)
            print_paired(model, name, t, "fused", "compiled fused")


if __name__ == "__main__":
    main()
