"""What computing the bfloat16 weight gradients that ATen gets wrong in float32 costs
(``cpu._weight_grad_unsafe``, ``CpuBackend.conv3d_input_weight_grad``), in one process.

    python benchmarks/weight_grad_ab.py [--models r3d_18] [--min-run-time 12] [--rounds 30]

A fused model's training step (batch 1, standard clip, bfloat16, channels_last_3d, train mode:
forward, ``sum().backward()``) timed in turns (``time_interleaved``) with the rule as it is and
with it switched off, which hands those convolutions back to ATen's bfloat16 weight gradient
(wrong there: garbage or a crash, see ``_weight_grad_unsafe``; the comparison is of speed only).
The ratio is the median of the rounds' paired ratios with its 95% interval (``paired_speedup``;
> 1: the fix is faster). It also lists the convolutions the rule routes, by input and weight
shape. R3D-18 at 16 frames has three: its last stage's 3x3x3 convs on 2 frames. bfloat16 only
(the rule routes nothing in float32): the common ``--dtypes`` option is not read.
"""

from __future__ import annotations

import torch

from ab_common import (eager_model_and_clip, patched, print_environment, print_paired,
                       whole_model_args)
from videoconv.backends import cpu
from videoconv.bench.timing import pin_host_allocator, time_interleaved


def main() -> None:
    args = whole_model_args(__doc__, ["r3d_18"])
    import videoconv

    pin_host_allocator()  # as `videoconv bench` runs: no mmap/munmap of the large buffers per call
    print_environment()
    for model in args.models:
        eager, x = eager_model_and_clip(model, torch.bfloat16)
        fused = videoconv.fuse(eager).train()

        def step():
            fused.zero_grad(set_to_none=True)
            fused(x).float().sum().backward()

        def step_aten():
            with patched(cpu, _weight_grad_unsafe=lambda *_: False):
                step()

        routed = []
        rule = cpu._weight_grad_unsafe

        def spy(dtype, input_size, weight_shape, dilation):
            hit = rule(dtype, input_size, weight_shape, dilation)
            if hit:
                routed.append((tuple(input_size), tuple(weight_shape)))
            return hit

        with patched(cpu, _weight_grad_unsafe=spy):
            step()
        print(f"{model}: {len(routed)} weight gradients in float32: {routed}", flush=True)
        t = time_interleaved({"aten-bf16": step_aten, "fixed": step},
                             min_run_time=args.min_run_time, rounds=args.rounds)
        print_paired(model, "bfloat16 train step", t, "aten-bf16", "fixed")


if __name__ == "__main__":
    main()
