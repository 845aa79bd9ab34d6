"""The ``cpu`` backend on randomly drawn convolutions, against the float64 oracle.

The backend picks one of several routes per convolution (oneDNN with a prepacked weight, its
2-D view of temporal convs, a float32 fallback, Winograd, the 1x1x1 kernel, a small GEMM) from
rules on the shape, and the fixed tables of test_backend_cpu.py cannot cover every combination
of those rules with strides, dilations, groups, odd sizes, layouts and residuals. These draw the
combinations instead (a fixed seed per case, so a failure names a case that reproduces), through
the op and through the module's prepared call. Such a sweep found the first of the shapes
``cpu._onednn_unsafe`` now routes around (oneDNN returned garbage for one input channel and
one input frame).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

from videoconv import backends
from videoconv.backends.cpu import CpuBackend
from videoconv.nn import Conv2Plus1dBNAct, Conv3dBNAct
from videoconv.ops import conv2plus1d_bn_act, conv3d_bn_act

from reference_impls import randomise_batch_norm
from test_ops import _TOL, _check_layout, oracle_conv2plus1d, oracle_conv3d_bn_act

pytestmark = pytest.mark.skipif(
    bool(CpuBackend.environment_reasons()), reason="; ".join(CpuBackend.environment_reasons())
)

_LAYOUTS = (torch.contiguous_format, torch.channels_last_3d)
_ACTS = ("relu", "silu", "identity")
_ACT_MODULES = {"relu": nn.ReLU, "silu": nn.SiLU, "identity": nn.Identity}


def _out(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _check_outputs(outputs, x, expected, out, atol, rtol):
    """The op's output and the module's (direct, then prepared): size, dtype, layout, values."""
    for y in outputs:
        assert list(y.shape) == out and y.dtype == x.dtype
        _check_layout(y, x)
        torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


def _conv_config(seed: int) -> dict:
    """One convolution: the channel counts, kernels and sizes of video models (stems with 1 or 3
    channels, depthwise, grouped, 1x1x1, temporal and spatial kernels), drawn so that each
    route's rules are met and missed."""
    rng = random.Random(seed)
    kind = rng.choice(["dense", "dense", "dense", "depthwise", "grouped", "pointwise", "pooled",
                       "winograd"])
    c_in = rng.choice([1, 3, 8, 16, 24, 32, 48, 64])
    if kind == "depthwise":
        groups, c_out = c_in, c_in * rng.choice([1, 1, 2])
    elif kind == "grouped" and c_in % 2 == 0:
        groups, c_out = 2, 2 * rng.choice([4, 8, 16])
    else:
        groups, c_out = 1, rng.choice([1, 4, 16, 17, 32, 48, 64, 96])
    if kind in ("pointwise", "pooled"):
        kernel = (1, 1, 1)
    elif kind == "winograd":  # (kt, 3, 3), stride 1, C_in a multiple of 16: _use_winograd
        c_in, kernel = rng.choice([16, 32, 64]), (rng.choice([1, 3]), 3, 3)
    else:
        kernel = (rng.choice([1, 1, 3, 5]), rng.choice([1, 3, 3, 7]), rng.choice([1, 3, 3, 5]))
    stride = (rng.choice([1, 1, 2]), rng.choice([1, 2]), rng.choice([1, 2]))
    dilation = (rng.choice([1, 1, 2]), rng.choice([1, 1, 2]), 1)
    if kind in ("winograd", "pooled"):
        stride = dilation = (1, 1, 1)
    padding = tuple(rng.choice([0, k // 2 * d, k // 2 * d + 1]) for k, d in zip(kernel, dilation))
    n = rng.choice([1, 1, 2])
    size = (rng.choice([1, 2, 4, 7, 8]), rng.choice([1, 5, 7, 9, 14, 16, 28]),
            rng.choice([5, 7, 9, 14, 16, 28]))
    if kind == "pooled":  # Squeeze-and-Excitation's convs and heads: _is_small_gemm
        size = rng.choice([(1, 1, 1), (1, 2, 2), (2, 2, 2)])
    # The smallest legal input where the draw is too small for the (dilated) kernel.
    size = tuple(max(s, d * (k - 1) + 1 - 2 * p) for s, k, d, p in zip(size, kernel, dilation, padding))
    return dict(dtype=rng.choice([torch.float32, torch.bfloat16]), layout=rng.choice(_LAYOUTS),
                n=n, c_in=c_in, c_out=c_out, groups=groups, kernel=kernel, stride=stride,
                padding=padding, dilation=dilation, size=size, act=rng.choice(_ACTS),
                residual=rng.random() < 0.35, bias=rng.random() < 0.5)


def _conv_id(seed: int) -> str:
    c = _conv_config(seed)
    return "{}-{}to{}g{}-k{}-s{}-p{}-d{}-{}-{}{}".format(
        seed, c["c_in"], c["c_out"], c["groups"], "".join(map(str, c["kernel"])),
        "".join(map(str, c["stride"])), "".join(map(str, c["padding"])),
        "".join(map(str, c["dilation"])), "x".join(map(str, c["size"])),
        str(c["dtype"]).replace("torch.", ""), "-res" if c["residual"] else "")


_CONV_SEEDS = range(240)


@pytest.mark.parametrize("seed", _CONV_SEEDS, ids=[_conv_id(s) for s in _CONV_SEEDS])
def test_random_conv3d_bn_act_matches_float64(seed):
    c = _conv_config(seed)
    dtype, fmt = c["dtype"], c["layout"]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(c["n"], c["c_in"], *c["size"], generator=gen).to(dtype).contiguous(memory_format=fmt)
    conv = nn.Conv3d(c["c_in"], c["c_out"], c["kernel"], c["stride"], c["padding"], c["dilation"],
                     c["groups"], bias=c["bias"])
    bn = randomise_batch_norm(nn.BatchNorm3d(c["c_out"]), seed)
    out = [c["n"], c["c_out"]] + [_out(s, k, st, p, d) for s, k, st, p, d in zip(
        c["size"], c["kernel"], c["stride"], c["padding"], c["dilation"])]
    residual = (torch.randn(out, generator=gen).to(dtype).contiguous(memory_format=fmt)
                if c["residual"] else None)
    module = Conv3dBNAct.from_modules(conv, bn, _ACT_MODULES[c["act"]]()).eval().to(dtype)
    scale, shift = (t.to(dtype) for t in module.folded())
    w = conv.weight.detach().to(dtype)

    expected = oracle_conv3d_bn_act(x, w, scale, shift, c["stride"], c["padding"], c["dilation"],
                                    c["groups"], c["act"], residual)
    atol, rtol = _TOL[dtype]
    with backends.use("cpu"), torch.inference_mode():
        y = conv3d_bn_act(x, w, scale, shift, c["stride"], c["padding"], c["dilation"],
                          c["groups"], c["act"], residual)
        # The module: a direct call, then its prepared call (the second).
        through_module = [module(x, residual) for _ in range(2)]
    _check_outputs([y] + through_module, x, expected, out, atol, rtol)


def _unit_config(seed: int) -> dict:
    rng = random.Random(10_000 + seed)
    kt, kh = rng.choice([1, 3, 5]), rng.choice([1, 3, 5, 7])
    stride = (rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2]))
    padding = (rng.choice([0, kt // 2]), rng.choice([0, kh // 2]), rng.choice([0, kh // 2]))
    size = (rng.choice([1, 3, 4, 8]), rng.choice([7, 9, 14, 16]), rng.choice([7, 9, 14, 16]))
    size = (max(size[0], kt - 2 * padding[0]),) + tuple(
        max(s, kh - 2 * p) for s, p in zip(size[1:], padding[1:]))
    return dict(dtype=rng.choice([torch.float32, torch.bfloat16]), layout=rng.choice(_LAYOUTS),
                n=rng.choice([1, 2]), c_in=rng.choice([1, 3, 16, 32, 64]),
                c_mid=rng.choice([8, 16, 45, 64, 144]), c_out=rng.choice([16, 32, 64]),
                kt=kt, kh=kh, stride=stride, padding=padding, size=size,
                act=rng.choice(("relu", "silu")), temporal_first=rng.random() < 0.3,
                residual=rng.random() < 0.4)


def _unit_id(seed: int) -> str:
    c = _unit_config(seed)
    return "{}-{}to{}to{}-kt{}kh{}-s{}-p{}-{}-{}{}{}".format(
        seed, c["c_in"], c["c_mid"], c["c_out"], c["kt"], c["kh"], "".join(map(str, c["stride"])),
        "".join(map(str, c["padding"])), "x".join(map(str, c["size"])),
        str(c["dtype"]).replace("torch.", ""), "-tfirst" if c["temporal_first"] else "",
        "-res" if c["residual"] else "")


_UNIT_SEEDS = range(60)


@pytest.mark.parametrize("seed", _UNIT_SEEDS, ids=[_unit_id(s) for s in _UNIT_SEEDS])
def test_random_conv2plus1d_bn_act_matches_float64(seed):
    c = _unit_config(seed)
    dtype, fmt = c["dtype"], c["layout"]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    st, sh, sw = c["stride"]
    pt, ph, pw = c["padding"]
    spatial = nn.Conv3d(c["c_in"] if not c["temporal_first"] else c["c_mid"],
                        c["c_mid"] if not c["temporal_first"] else c["c_out"],
                        (1, c["kh"], c["kh"]), (1, sh, sw), (0, ph, pw), bias=False)
    temporal = nn.Conv3d(c["c_mid"] if not c["temporal_first"] else c["c_in"],
                         c["c_out"] if not c["temporal_first"] else c["c_mid"],
                         (c["kt"], 1, 1), (st, 1, 1), (pt, 0, 0), bias=False)
    conv1, conv2 = (temporal, spatial) if c["temporal_first"] else (spatial, temporal)
    bn1, bn2 = nn.BatchNorm3d(c["c_mid"]), nn.BatchNorm3d(c["c_out"])
    randomise_batch_norm(bn1, seed)
    randomise_batch_norm(bn2, seed + 1)
    act = _ACT_MODULES[c["act"]]
    module = Conv2Plus1dBNAct.from_modules(conv1, bn1, act(), conv2, bn2, act()).eval().to(dtype)
    x = torch.randn(c["n"], c["c_in"], *c["size"], generator=gen).to(dtype).contiguous(memory_format=fmt)
    out = [c["n"], c["c_out"], _out(c["size"][0], c["kt"], st, pt),
           _out(c["size"][1], c["kh"], sh, ph), _out(c["size"][2], c["kh"], sw, pw)]
    residual = (torch.randn(out, generator=gen).to(dtype).contiguous(memory_format=fmt)
                if c["residual"] else None)
    s1, b1, s2, b2 = (t.to(dtype) for t in module.folded())
    w1, w2 = conv1.weight.detach().to(dtype), conv2.weight.detach().to(dtype)

    expected = oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, c["stride"], c["padding"], c["act"],
                                  c["temporal_first"], residual)
    # The oracle keeps the intermediate in float64; the op rounds it to the dtype once.
    atol, rtol = _TOL[dtype]
    atol, rtol = (2 * atol, 2 * rtol) if dtype == torch.bfloat16 else (atol, rtol)
    with backends.use("cpu"), torch.inference_mode():
        y = conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, c["stride"], c["padding"], c["act"],
                               c["temporal_first"], residual)
        through_module = [module(x, residual) for _ in range(2)]
    _check_outputs([y] + through_module, x, expected, out, atol, rtol)
