"""The CPU kernels' element-wise loops at 8 and at 16 lanes, in one process (csrc/cpu/vec16.h,
"Vector width").

    python benchmarks/vector_width_ab.py [--model x3d_s] [--dtype float32] [--rounds 20]

The loops that select (SE's scale + activation) run 16 lanes wide on AVX-512 CPUs and 8 wide
elsewhere; ``torch.ops.videoconv._cpu_vector_lanes`` forces either. This times the fused model's
eval forward with each width, and eager, one call of each per round in turns (a shared machine's
speed drifts by tens of percent within minutes), and prints the medians and minima. On a CPU
without AVX-512 the 16-lane loops are what ran before the 8-lane ones existed (each select done
lane by lane); on an AVX-512 CPU the 8-lane loops are the ones that do not run by default.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import videoconv
from videoconv import models as zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="x3d_s")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cl = torch.channels_last_3d
    spec = zoo.get_model_spec(args.model)
    torch.manual_seed(0)
    eager = zoo.get_model(args.model).eval().to(dtype=dtype, memory_format=cl)
    fused = videoconv.fuse(eager)
    x = torch.randn((1,) + tuple(spec.input_shape)).to(dtype).contiguous(memory_format=cl)
    set_lanes = torch.ops.videoconv._cpu_vector_lanes
    calls = {"fused, 8 lanes": (8, fused), "fused, 16 lanes": (16, fused), "eager": (0, eager)}
    times = {name: [] for name in calls}
    previous = set_lanes(0)
    try:
        with torch.inference_mode():
            for lanes, module in calls.values():
                set_lanes(lanes)
                module(x)
                module(x)
            for _ in range(args.rounds):
                for name, (lanes, module) in calls.items():
                    set_lanes(lanes)
                    start = time.perf_counter()
                    module(x)
                    times[name].append(time.perf_counter() - start)
    finally:
        set_lanes(previous)
    print(f"{args.model} {args.dtype}, batch 1, channels_last_3d; "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    for name, ts in times.items():
        print(f"{name:16s} median {1e3 * statistics.median(ts):7.1f} ms   min {1e3 * min(ts):7.1f} ms")


if __name__ == "__main__":
    main()
