"""The fused modules' parameter check on the eval fast path, C stamp against Python key, in whole
fused models, in one process (csrc/parameter_stamp.cpp; videoconv/nn/_common.py).

    python benchmarks/parameter_stamp_ab.py [--models x3d_s r2plus1d_18] [--dtypes bfloat16 float32]

Two fused copies of each model (batch 1, standard clip, channels_last_3d, ``no_grad``); in one
the fused modules check that their parameters are unchanged with the C stamp (one call), in the
other ``parameter_stamp`` is patched to give no stamp while its calls run, so that every call
reads the parameters and builds their key in Python (``_fold_sources_of``, ``_sources_key``), as
without the extension. Both, and the eager model, are timed in turns (``time_interleaved``); the
ratio is the median of the rounds' paired ratios with its 95% interval (``paired_speedup``),
> 1: the stamp is faster. Outputs are checked to be equal first.
"""

from __future__ import annotations

import argparse

import torch

from ab_common import eager_model_and_clip, patched
from videoconv.bench.environment import environment
from videoconv.bench.timing import paired_speedup, time_interleaved
from videoconv.nn import conv2plus1d_bn_act as unit_module
from videoconv.nn import conv3d_bn_act as conv_module


def _no_stamp(fn):
    """``fn`` with both fused modules' ``parameter_stamp`` giving None for the call."""
    def run():
        with patched(conv_module, parameter_stamp=lambda specs: None), \
                patched(unit_module, parameter_stamp=lambda specs: None):
            return fn()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["x3d_s", "r2plus1d_18"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=("float32", "bfloat16"))
    parser.add_argument("--min-run-time", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    import videoconv

    env = environment(torch.device("cpu"))
    print(f"{env['device']}, torch {env['torch']}, rev {env['git_revision']}, {env['date']}",
          flush=True)
    for model in args.models:
        for name in args.dtypes:
            eager, x = eager_model_and_clip(model, getattr(torch, name))
            with torch.no_grad():
                stamped, keyed = videoconv.fuse(eager), videoconv.fuse(eager)
                fns = {"stamp": lambda: stamped(x), "python key": _no_stamp(lambda: keyed(x)),
                       "eager": lambda: eager(x)}
                outputs = [fns["stamp"]() for _ in range(3)] + [fns["python key"]() for _ in range(3)]
                stamps = [m.__dict__.get("_prepared", (None,) * 4)[3] is not None
                          for m in stamped.modules() if "_prepared" in m.__dict__]
                assert stamps and all(stamps), "the stamped copy has modules without a stamp"
                assert all(torch.equal(y, outputs[0]) for y in outputs)
                eager(x)
                t = time_interleaved(fns, min_run_time=args.min_run_time, rounds=args.rounds)
            mid, lo, hi = paired_speedup(t["python key"], t["stamp"])
            line = ", ".join(f"{k} {v.median_ms:.2f} ms" for k, v in t.items())
            print(f"{model} {name}: {line}; python key / stamp {mid:.3f} [{lo:.3f}-{hi:.3f}] "
                  "(median of the rounds' paired ratios, 95% interval)", flush=True)


if __name__ == "__main__":
    main()
