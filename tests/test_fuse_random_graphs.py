"""``videoconv.fuse`` on randomly wired networks, against the unfused network in float64.

The model tests cover the architectures fuse() was written for. These cover the wiring it must
refuse or handle: a conv or BatchNorm output read twice, BatchNorms after something other than a
conv, chains of BatchNorms, adds of any two earlier values (in place or not, before or after an
activation), activations fuse() does not fuse (ReLU6), Identity modules in between, grouped and
depthwise convs. Every graph is drawn from a fixed seed, so a failure names one that reproduces;
the output, the input's gradient and every running statistic (train mode) must match, keyed by
the ``state_dict`` names, which fusing keeps.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn as nn

import videoconv

from reference_impls import randomise_batch_norm

_C = 8
_KINDS = ("conv", "conv", "conv", "bn", "bn", "relu", "silu", "relu6", "identity", "add", "add",
          "add_", "scale")


class _RandomGraph(nn.Module):
    """Nodes drawn from ``_KINDS``, each reading one (two for adds) of the values before it, most
    often the one just before; all keep the shape (C channels, "same" padding), so any two can be added. The output adds the
    last value to one in the middle, so no node's result is simply the output."""

    def __init__(self, seed: int):
        super().__init__()
        rng = random.Random(seed)
        self.nodes = []  # (kind, module name or None, input, other input)
        self.layers = nn.ModuleDict()
        for i in range(rng.randint(3, 12)):
            kind = rng.choice(_KINDS)
            name = f"n{i}"
            if kind == "conv":
                k = rng.choice([(1, 1, 1), (3, 3, 3), (3, 1, 1), (1, 3, 3)])
                self.layers[name] = nn.Conv3d(_C, _C, k, padding=tuple(v // 2 for v in k),
                                              bias=rng.random() < 0.3,
                                              groups=rng.choice([1, 1, 2, _C]))
            elif kind == "bn":
                self.layers[name] = nn.BatchNorm3d(_C)
            elif kind in ("relu", "silu", "relu6", "identity"):
                self.layers[name] = {"relu": nn.ReLU, "silu": nn.SiLU, "relu6": nn.ReLU6,
                                     "identity": nn.Identity}[kind]()
            # Mostly the value just before, so that conv -> BN -> act chains form.
            src = i if rng.random() < 0.7 else rng.randrange(i + 1)
            self.nodes.append((kind, name if name in self.layers else None, src,
                               rng.randrange(i + 1)))

    def forward(self, x):
        values = [x]
        for kind, name, src, other in self.nodes:
            a = values[src]
            if kind == "add":
                v = a + values[other]
            elif kind == "add_":
                v = a.clone()
                v += values[other]
            elif kind == "scale":
                v = a * 0.5
            else:
                v = self.layers[name](a)
            values.append(v)
        return values[-1] + values[len(values) // 2]


def _graph(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batch_norm(_RandomGraph(seed).eval(), seed)


def _kinds(seed: int) -> str:
    return "-".join(kind for kind, *_ in _RandomGraph(seed).nodes)


_SEEDS = range(60)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("seed", _SEEDS, ids=[f"{s}-{_kinds(s)}" for s in _SEEDS])
def test_fused_random_graph_matches_float64(seed, mode):
    net = _graph(seed)
    fused = videoconv.fuse(net).train(mode == "train")
    reference = copy.deepcopy(net).double().train(mode == "train")
    x = torch.randn(2, _C, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    x64 = x.double().requires_grad_(mode == "train")
    x32 = x.clone().requires_grad_(mode == "train")
    with torch.set_grad_enabled(mode == "train"):
        expected = reference(x64)
        y = fused(x32)
    scale = expected.abs().max().item()
    assert (y.double() - expected).abs().max().item() <= 1e-5 * scale
    if mode == "eval":
        return
    g = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected.backward(g)
    y.backward(g.float())
    assert (x32.grad.double() - x64.grad).abs().max().item() <= 1e-4 * x64.grad.abs().max().item()
    ours, theirs = fused.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if "running" in key:
            assert (ours[key].double() - value).abs().max().item() <= 1e-5, key


@pytest.mark.parametrize("seed", _SEEDS[::3], ids=[f"{s}-{_kinds(s)}" for s in _SEEDS[::3]])
def test_fused_random_graph_bfloat16_channels_last(seed):
    """The same graphs in bfloat16 on channels_last_3d input (the cpu backend's fast routes),
    eval: against float64 within bfloat16's rounding, and in the layout eager gives."""
    net = _graph(seed)
    reference = copy.deepcopy(net).double()
    eager = copy.deepcopy(net).to(torch.bfloat16)
    fused = videoconv.fuse(net).to(torch.bfloat16)
    x = torch.randn(2, _C, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    x16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        expected = reference(x.double())
        y = fused(x16)
        layout = eager(x16).is_contiguous(memory_format=torch.channels_last_3d)
    assert y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last_3d) == layout
    assert (y.double() - expected).abs().max().item() <= 3e-2 * expected.abs().max().item()
