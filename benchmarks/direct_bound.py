"""The most any direct convolution could give each layer: eager's time over the time of the
layer's useful arithmetic at the machine's measured peak, from a `videoconv bench` layers JSON.

    python benchmarks/direct_bound.py benchmarks/results/layers_resnets_s8_zen4_cpu.json \
        [--dtype bfloat16] [--target 1.3] [--all]

For each layer whose fused time (``videoconv-<backend>``) is under ``--target`` times faster than
eager (every layer with ``--all``): eager's and eager's convolution's (``conv-only``) times and
rate, the fused speedup, and the bound ``eager / (2 * MACs / peak)``: a fused layer that did its
convolution's multiply-adds at the peak rate and nothing else would be that much faster than
eager. The MACs are the useful ones (taps on zero padding excluded, as the bench's TFLOP/s
count them, so the bound is the peak over eager's rate); the peak is the one the bench measured in the same run (the faster of a square GEMM and a 3x3x3
convolution, ``environment.roofline``). Where the bound is under the target, no direct
convolution can meet it on that machine, however well fused; only an algorithm with fewer
products (Winograd, for stride-1 3x3 convolutions) can. The machine's speed drifts between the
peak's measurement and the layer's (~10% on the project's VMs), so a bound near the target is
not decisive.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="a `videoconv bench` JSON with layers")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--target", type=float, default=1.3)
    parser.add_argument("--all", action="store_true", help="every layer, not only those under")
    args = parser.parse_args()

    with open(args.json) as f:
        data = json.load(f)
    env = data["environment"]
    peak = env["roofline"]["peak_tflops"][args.dtype]
    layers = defaultdict(dict)
    for row in data["rows"]:
        if row["level"] == "layer" and row["dtype"] == args.dtype and row["mode"] == "fwd":
            layers[row["workload"]][row["provider"]] = row

    print(f"{env['device']}, torch {env['torch']}, rev {env['git_revision']}; {args.dtype} peak "
          f"{peak:.3f} TFLOP/s (measured in that run)\n")
    print("| layer | eager ms | conv-only ms (TFLOP/s) | fused | direct bound | verdict |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    under = over = 0
    for workload, providers in layers.items():
        eager = providers.get("eager")
        fused = next((r for p, r in providers.items() if p.startswith("videoconv-")), None)
        if eager is None or fused is None:
            continue
        if fused["speedup_vs_eager"] >= args.target and not args.all:
            continue
        conv = providers.get("conv-only")
        conv_text = (f"{conv['median_ms']:.2f} ({conv['tflops']:.3f})" if conv is not None
                     else "—")
        # eager's rate counts the useful products (the row's ``tflops``), so its time over
        # theirs at peak is peak / rate. (``gmacs`` counts every tap, padding included.)
        bound = peak / eager["tflops"]
        if bound < args.target:
            verdict = "no direct convolution reaches the target"
            under += 1
        else:
            verdict = "possible in principle"
            over += 1
        print(f"| {workload} | {eager['median_ms']:.2f} | {conv_text} | "
              f"{fused['speedup_vs_eager']:.2f}x | {bound:.2f}x | {verdict} |")
    print(f"\n{under} layer(s) with the bound under {args.target}x, {over} at or over it.")


if __name__ == "__main__":
    main()
