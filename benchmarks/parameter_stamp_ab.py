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

import torch

from ab_common import (eager_model_and_clip, patched, print_environment, print_paired,
                       whole_model_args)
from videoconv.bench.timing import time_interleaved
from videoconv.nn import _common


def _no_stamp(fn):
    """``fn`` with the fused modules' ``parameter_stamp`` giving None for the call."""
    def run():
        with patched(_common, parameter_stamp=lambda specs: None):
            return fn()
    return run


def main() -> None:
    args = whole_model_args(__doc__, ["x3d_s", "r2plus1d_18"])
    import videoconv

    print_environment()
    for model in args.models:
        for name in args.dtypes:
            eager, x = eager_model_and_clip(model, getattr(torch, name))
            with torch.no_grad():
                stamped, keyed = videoconv.fuse(eager), videoconv.fuse(eager)
                fns = {"stamp": lambda: stamped(x), "python key": _no_stamp(lambda: keyed(x)),
                       "eager": lambda: eager(x)}
                outputs = [fns[k]() for k in ("stamp", "python key") for _ in range(3)]
                stamps = [m.__dict__["_prepared"][3] is not None
                          for m in stamped.modules() if "_prepared" in m.__dict__]
                assert stamps and all(stamps), "the stamped copy has modules without a stamp"
                assert all(torch.equal(y, outputs[0]) for y in outputs)
                eager(x)
                t = time_interleaved(fns, min_run_time=args.min_run_time, rounds=args.rounds)
            print_paired(model, name, t, "python key", "stamp")


if __name__ == "__main__":
    main()
