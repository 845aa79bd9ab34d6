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

import torch

from ab_common import (eager_model_and_clip, patched, print_environment, print_paired,
                       whole_model_args)
from videoconv.backends import CpuBackend
from videoconv.bench.timing import time_interleaved


def main() -> None:
    args = whole_model_args(__doc__, ["r2plus1d_18"])
    import videoconv

    print_environment()
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
            print_paired(model, name, t, "direct", "prepared")


if __name__ == "__main__":
    main()
