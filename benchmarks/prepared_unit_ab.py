"""The (2+1)D units' prepared call against their direct call, in whole fused models, in one process
(``CpuBackend.prepare_conv2plus1d_bn_act``, used by ``Conv2Plus1dBNAct``'s eval fast path).

    python benchmarks/prepared_unit_ab.py [--models r2plus1d_18] [--dtypes bfloat16 float32]

Two fused copies of each model (batch 1, standard clip, channels_last_3d, ``no_grad``): in one
the units keep the backend's prepared call (both stages' packed weights and routes bound once);
in the other the backend is made to offer none while the copy's first call runs, so its units
take the direct call (backend chosen once, validation skipped, but both stages' routes and
packed weights looked up on every call), as before the prepared call existed. Both, and the
eager model, are timed in turns (``time_interleaved``); the ratio is the median of the rounds'
paired ratios with its 95% interval (``paired_speedup``), > 1: the prepared call is faster.
"""

from __future__ import annotations

import argparse

import torch

from ab_common import eager_model_and_clip, patched
from videoconv.backends import CpuBackend
from videoconv.bench.environment import environment
from videoconv.bench.timing import paired_speedup, time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r2plus1d_18"])
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
                prepared = videoconv.fuse(eager)
                reference = prepared(x)
                prepared(x)  # the second call prepares; later ones run prepared
                direct = videoconv.fuse(eager)
                with patched(CpuBackend,
                             prepare_conv2plus1d_bn_act=classmethod(lambda cls, **_: None)):
                    direct(x)
                    direct(x)
                assert torch.equal(prepared(x), reference) and torch.equal(direct(x), reference)
                eager(x)
                t = time_interleaved({"prepared": lambda: prepared(x), "direct": lambda: direct(x),
                                      "eager": lambda: eager(x)},
                                     min_run_time=args.min_run_time, rounds=args.rounds)
            mid, lo, hi = paired_speedup(t["direct"], t["prepared"])
            line = ", ".join(f"{k} {v.median_ms:.2f} ms" for k, v in t.items())
            print(f"{model} {name}: {line}; direct / prepared {mid:.3f} [{lo:.3f}-{hi:.3f}] "
                  "(median of the rounds' paired ratios, 95% interval)", flush=True)


if __name__ == "__main__":
    main()
