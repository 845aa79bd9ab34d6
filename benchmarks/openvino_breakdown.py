"""Where a fused model's forward goes, by kind of layer, next to OpenVINO's own profile of the same
model, in one process (what the x3d_s comparison in benchmarks/results/README.md comes from).

    python benchmarks/openvino_breakdown.py [--model x3d_s] [--dtype bfloat16] [--forwards 20]
                                            [--repeats 2] [--size 32]

videoconv: the forward's wall time, then the same with forward hooks on every fused module,
which time each from the caller's side: each figure includes the module's own Python and the
backend's per-call set-up, as a model pays them; "rest" is the hooked forward's wall time minus
the modules (pooling, the SE blocks' element-wise ends, the head, the model's own Python, and
the hooks' own cost, ~1 ms for x3d_s's 116 modules). OpenVINO: the CPU plugin's
per-node counters (``PERF_COUNT``), summed by node type (depthwise convolutions apart), and its
wall time per inference. The two alternate ``--repeats`` times (the machine drifts).

``--size S`` also times the fused forward on an S x S clip (same frames): the convolutions'
work shrinks ~(160 / S)^2-fold and the per-call costs do not, so that time is close to the
forward's fixed overhead.
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings

import torch

from ab_common import eager_model_and_clip
from videoconv.bench.providers import openvino_compiled
from videoconv.bench.timing import pin_host_allocator


def _kind(module, x) -> str:
    name = type(module).__name__
    if name != "Conv3dBNAct":
        return name  # Conv2Plus1dBNAct
    conv = module._get("conv")
    if tuple(x.shape[2:]) == (1, 1, 1):
        return "conv on a pooled map (SE)"
    if conv.groups > 1:
        return "depthwise conv"
    if tuple(conv.weight.shape[2:]) == (1, 1, 1):
        return "1x1x1 conv"
    return "other conv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="x3d_s")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--forwards", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()

    import openvino as ov

    import videoconv

    warnings.filterwarnings("ignore")
    pin_host_allocator()
    eager, x = eager_model_and_clip(args.model, getattr(torch, args.dtype))
    fused = videoconv.fuse(eager)
    small = torch.randn(x.shape[:3] + (args.size, args.size)).to(x.dtype).contiguous(
        memory_format=torch.channels_last_3d)

    times = collections.defaultdict(float)
    started = {}

    def pre(module, inputs):
        started[id(module)] = time.perf_counter()

    def post(module, inputs, output):
        times[_kind(module, inputs[0])] += time.perf_counter() - started.pop(id(module))

    def hooked():
        hooks = []
        for m in fused.modules():
            if type(m).__name__ in ("Conv3dBNAct", "Conv2Plus1dBNAct"):
                hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        return hooks

    compiled = openvino_compiled(eager, (x,), x.dtype, PERF_COUNT=True)
    request = compiled.create_infer_request()
    clip = x.float().numpy()
    n = args.forwards
    print(f"{args.model} {args.dtype} @{tuple(x.shape)}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, openvino {ov.__version__}; ms per forward")
    with torch.inference_mode():
        for _ in range(3):
            fused(x)
            fused(small)
            request.infer([clip])
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(n):
                fused(x)
            plain = (time.perf_counter() - start) / n * 1e3
            hooks = hooked()
            times.clear()
            start = time.perf_counter()
            for _ in range(n):
                fused(x)
            wall = (time.perf_counter() - start) / n * 1e3
            for h in hooks:
                h.remove()
            parts = {k: v / n * 1e3 for k, v in times.items()}
            parts["rest"] = wall - sum(parts.values())
            start = time.perf_counter()
            for _ in range(n):
                fused(small)
            overhead = (time.perf_counter() - start) / n * 1e3
            print(f"videoconv {plain:6.2f} (with the hooks {wall:.2f}: " + ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
                + f"); at {args.size}x{args.size}: {overhead:.2f}")
            nodes = collections.defaultdict(float)
            start = time.perf_counter()
            for _ in range(n):
                request.infer([clip])
                for info in request.profiling_info:
                    kind = ("depthwise conv" if "_dw_" in info.exec_type else info.node_type)
                    nodes[kind] += info.real_time.total_seconds() * 1e3
            wall = (time.perf_counter() - start) / n * 1e3
            print(f"openvino  {wall:6.2f}: " + ", ".join(
                f"{k} {v / n:.2f}" for k, v in sorted(nodes.items(), key=lambda kv: -kv[1])
                if v / n >= 0.005))


if __name__ == "__main__":
    main()
