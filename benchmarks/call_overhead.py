"""Per-call cost of a fused module's eval forward, path by path (videoconv/ops/_direct.py).

    python benchmarks/call_overhead.py [--channels 432] [--size 13 5 5] [--dtype float32]
    python benchmarks/call_overhead.py --se [--channels 216] [--dtype float32]

Times one ``Conv3dBNAct`` (depthwise 3x3x3 + BN + ReLU, channels_last_3d) under ``no_grad``:

* ``through torch.ops``: the operator call (dispatcher, torch.library autograd layer,
  validation, backend choice);
* ``direct call``: the backend the op would choose, called without the dispatcher;
* ``prepared call``: the cpu backend's prepared call (packed weight and arguments bound once);
* ``bare oneDNN call``: ``torch.ops.mkldnn._convolution_pointwise`` alone, the floor.

``--se`` times a Squeeze-and-Excitation reduction instead, as X3D has: a 1x1x1 conv with bias,
``channels -> channels / 16`` (rounded as X3D does), then ReLU, on a pooled (1, C, 1, 1, 1) input; the
fused module (its prepared call is one small GEMM) against the eager ``nn.Conv3d`` and ``nn.ReLU``
modules it replaces.

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
    """The SE reduction conv + ReLU: eager modules against the fused module's prepared call."""
    reduced = round_width(c, 1 / 16)  # X3D's SE width (16 for 216 channels)
    eager = torch.nn.Sequential(torch.nn.Conv3d(c, reduced, 1), torch.nn.ReLU()).eval().to(dtype)
    fused = Conv3dBNAct.from_modules(eager[0], None, eager[1])
    x = torch.randn(1, c, 1, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        results = {"eager Conv3d + ReLU": _best_us(lambda: eager(x)),
                   "fused, prepared call": _best_us(lambda: fused(x))}
    env = environment(x.device)
    print(f"{env['device']}, torch {env['torch']}, rev {env['git_revision']}, {env['date']}")
    print(f"SE reduction {c} -> {reduced}, 1x1x1 conv with bias + ReLU on (1, {c}, 1, 1, 1), "
          f"{dtype}, channels_last_3d, no_grad; best of 7 x 1000 calls")
    for name, us in results.items():
        print(f"  {name:<22} {us:7.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=None,
                        help="default 432 (depthwise), 216 (--se)")
    parser.add_argument("--size", type=int, nargs=3, default=(13, 5, 5), metavar=("D", "H", "W"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--se", action="store_true",
                        help="time a Squeeze-and-Excitation reduction conv instead")
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
        packed, bias = cpu.pack_cache.get(conv.weight, scale, shift, key)
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
