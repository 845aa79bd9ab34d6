"""Per-call cost of a fused module's eval forward, path by path (videoconv/ops/_direct.py).

    python benchmarks/call_overhead.py [--channels 432] [--size 13 5 5] [--dtype float32]
    python benchmarks/call_overhead.py --se [--channels 216] [--dtype float32]

Times one ``Conv3dBNAct`` (depthwise 3x3x3 + BN + ReLU, channels_last_3d) under ``no_grad``:

* ``through torch.ops``: the operator call (dispatcher, torch.library autograd layer,
  validation, backend choice);
* ``direct call``: the backend the op would choose, called without the dispatcher;
* ``prepared call``: the cpu backend's prepared call (packed weight and arguments bound once);
* ``bare oneDNN call``: ``torch.ops.mkldnn._convolution_pointwise`` alone, the floor.

``--se`` times a Squeeze-and-Excitation's two convolutions instead, as X3D has them: 1x1x1 with
bias on a pooled (1, C, 1, 1, 1) map, ``C -> C / 16`` (rounded as X3D does) + ReLU, then back
to C with no activation; the fused modules (their prepared call is one small GEMM) against the
eager ``nn.Conv3d``/``nn.ReLU`` modules they replace.

Best of 7 loops of 1000 calls each, in one process; the paths are switched by patching the two
module-level hooks the modules call, which is what this script is for (not for production).
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch

from videoconv.backends import cpu
from videoconv.bench.environment import environment
from videoconv.models.x3d import round_width
from videoconv.nn import Conv3dBNAct


def _best_us(fn, calls: int = 1000, loops: int = 7) -> float:
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(loops):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def _squeeze_excitation(c: int, dtype: torch.dtype) -> None:
    """SE's two convs on a pooled map: eager modules against the fused module's prepared call."""
    reduced = round_width(c, 1 / 16)  # X3D's SE width (16 for 216 channels)
    reduce = torch.nn.Sequential(torch.nn.Conv3d(c, reduced, 1), torch.nn.ReLU()).eval().to(dtype)
    expand = torch.nn.Conv3d(reduced, c, 1).eval().to(dtype)  # no activation: sigmoid comes after
    fused_reduce = Conv3dBNAct.from_modules(reduce[0], None, reduce[1])
    fused_expand = Conv3dBNAct.from_modules(expand, None, None)
    x = torch.randn(1, c, 1, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    s = torch.randn(1, reduced, 1, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        results = {
            f"reduce {c} -> {reduced} + ReLU, eager": _best_us(lambda: reduce(x)),
            f"reduce {c} -> {reduced} + ReLU, fused": _best_us(lambda: fused_reduce(x)),
            f"expand {reduced} -> {c}, eager": _best_us(lambda: expand(s)),
            f"expand {reduced} -> {c}, fused": _best_us(lambda: fused_expand(s)),
        }
    env = environment(x.device)
    print(f"{env['device']}, torch {env['torch']}, rev {env['git_revision']}, {env['date']}")
    print(f"SE convs (1x1x1 with bias) on a pooled map, {dtype}, channels_last_3d, no_grad; eager "
          "modules against the fused module's prepared call; best of 7 x 1000 calls")
    for name, us in results.items():
        print(f"  {name:<32} {us:7.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=None,
                        help="default 432 (depthwise), 216 (--se)")
    parser.add_argument("--size", type=int, nargs=3, default=(13, 5, 5), metavar=("D", "H", "W"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--se", action="store_true",
                        help="time a Squeeze-and-Excitation's two convs instead")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.se:
        _squeeze_excitation(args.channels or 216, dtype)
        return
    args.channels = args.channels or 432
    c = args.channels
    module = Conv3dBNAct(c, c, 3, padding=1, groups=c).eval().to(dtype)
    x = torch.randn(1, c, *args.size, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    ops_mod = importlib.import_module("videoconv.ops.conv3d_bn_act")
    nn_mod = importlib.import_module("videoconv.nn.conv3d_bn_act")
    unobservable, prepare = ops_mod.dispatcher_unobservable, nn_mod.prepare_conv3d_bn_act
    results = {}
    with torch.no_grad():
        scale, shift = module.folded()
        conv = module.conv
        key = ((conv.weight.dtype, conv.weight.device, torch.channels_last_3d,
                tuple(conv.weight.shape)), (1, 1, 1), (1, 1, 1), (1, 1, 1), c, tuple(x.shape))
        # The route is part of the pack cache's key: a depthwise conv always runs on oneDNN.
        packed, bias = cpu.pack_cache.get(conv.weight, scale, shift, (key, "onednn"))
        try:
            results["bare oneDNN call"] = _best_us(lambda: torch.ops.mkldnn._convolution_pointwise(
                x, packed, bias, [1] * 3, [1] * 3, [1] * 3, c, "relu", [], ""))
            results["prepared call"] = _best_us(lambda: module(x))
            nn_mod.prepare_conv3d_bn_act = lambda *a: None
            module.invalidate_fold_cache()
            results["direct call"] = _best_us(lambda: module(x))
            ops_mod.dispatcher_unobservable = lambda *a: False
            results["through torch.ops"] = _best_us(lambda: module(x))
        finally:
            ops_mod.dispatcher_unobservable, nn_mod.prepare_conv3d_bn_act = unobservable, prepare
    env = environment(x.device)
    print(f"{env['device']}, torch {env['torch']}, rev {env['git_revision']}, {env['date']}")
    print(f"Conv3dBNAct depthwise {c} ch @ {tuple(args.size)}, {args.dtype}, channels_last_3d, "
          "no_grad; best of 7 x 1000 calls")
    for name in ("through torch.ops", "direct call", "prepared call", "bare oneDNN call"):
        print(f"  {name:<18} {results[name]:7.1f} µs")


if __name__ == "__main__":
    main()
