"""The ``cpu`` backend (oneDNN fused pointwise conv, prepacked BN-folded weight): values against the
float64 oracle over test_ops' shape matrix, layouts, the packed-weight cache, refusals, selection."""

from __future__ import annotations

import gc

import pytest
import torch

from videoconv import backends
from videoconv.backends import NotSupportedError, ReferenceBackend
from videoconv.backends import cpu as cpu_backend
from videoconv.backends.cpu import CpuBackend
from videoconv.ops import conv2plus1d_bn_act, conv3d_bn_act

from reference_impls import assert_close_rel
from test_ops import (  # shape tables and the float64 oracle, shared with test_ops
    ACTS,
    CONV_CASES,
    LAYOUTS,
    PLUS1D_CASES,
    _TOL,
    _check_layout,
    _conv_case,
    _plus1d_case,
    oracle_conv2plus1d,
    oracle_conv3d_bn_act,
)

pytestmark = pytest.mark.skipif(
    bool(CpuBackend.environment_reasons()), reason="; ".join(CpuBackend.environment_reasons())
)

CPU_DTYPES = (torch.float32, torch.bfloat16)
_ids = lambda d: str(d).replace("torch.", "")  # noqa: E731


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv("VIDEOCONV_BACKEND", raising=False)
    yield


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv3d_bn_act_matches_float64(case, dtype, layout, with_residual, act):
    _check_conv_case_on_cpu(case, dtype, layout, with_residual, act)


def _check_conv_case_on_cpu(case, dtype, layout, with_residual, act):
    x, w, scale, shift, stride, padding, dilation, groups, residual, out = _conv_case(
        case, dtype, layout, with_residual
    )
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, act, residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, act, residual)
    assert list(y.shape) == out and y.dtype == dtype
    _check_layout(y, x)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


# Squeeze-and-Excitation convs on a pooled input, a 1x1x1 head, and one just past the small-GEMM
# threshold (65 rows: oneDNN again): (N, C_in, C_out, (D, H, W))
SMALL_GEMM_CASES = [("se_pooled", 2, 48, 8, (1, 1, 1)), ("head_2x2x2", 2, 16, 24, (2, 2, 2)),
                    ("just_past_rows", 1, 8, 12, (1, 5, 13)), ("wide_head", 1, 432, 320, (1, 1, 1))]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
@pytest.mark.parametrize("case", SMALL_GEMM_CASES, ids=[c[0] for c in SMALL_GEMM_CASES])
def test_small_1x1x1_convs_match_float64(case, dtype, layout, with_residual, act):
    """Tiny 1x1x1 convs run as one small GEMM (cpu._is_small_gemm), the rest on oneDNN: both
    against the float64 oracle, in both layouts, with and without a residual."""
    _, n, cin, cout, size = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, cin, *size, generator=g, dtype=torch.float64).to(dtype)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    w = (torch.randn(cout, cin, 1, 1, 1, generator=g, dtype=torch.float64) * cin ** -0.5).to(dtype)
    scale = (torch.rand(cout, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    shift = torch.randn(cout, generator=g, dtype=torch.float64).to(dtype)
    residual = None
    if with_residual:
        residual = torch.randn(n, cout, *size, generator=g, dtype=torch.float64).to(dtype)
        residual = residual.contiguous(memory_format=LAYOUTS[layout])
    key = ((dtype, x.device, backends.output_memory_format(x), tuple(w.shape)), (1, 1, 1),
           (0, 0, 0), (1, 1, 1), 1, tuple(x.shape))
    rows = n * size[0] * size[1] * size[2]
    small = rows <= cpu_backend._SMALL_GEMM_ROWS and rows * cin * cout <= cpu_backend._SMALL_GEMM_MACS
    assert cpu_backend._is_small_gemm(key) == small
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, activation=act, residual=residual)
        again = conv3d_bn_act(x, w, scale, shift, activation=act, residual=residual)  # cached weight
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, act,
                                    residual)
    assert y.shape == expected.shape and y.dtype == dtype
    _check_layout(y, x)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)
    assert torch.equal(again, y)


# oneDNN's convolution with a prepacked weight returned garbage (off by the largest output, up to
# inf and NaN, different from run to run) on degenerate shapes (cpu._onednn_unsafe): bfloat16
# with one input channel per group on one input frame, and a single output column from a strided
# W. Neighbours that were right stay in the grid, so that a wider failure shows up here too.
# (C_in, groups, C_out, (D, H, W), kernel, stride, padding)
DEGENERATE_CASES = [
    # one input channel per group, one frame
    (1, 1, 32, (1, 9, 9), (3, 3, 3), 1, (1, 1, 1)), (1, 1, 32, (1, 14, 14), (5, 1, 5), 1, (2, 0, 2)),
    (1, 1, 32, (1, 1, 9), (3, 1, 3), 1, (1, 0, 1)), (1, 1, 32, (1, 2, 2), (5, 5, 5), 1, (2, 2, 2)),
    (1, 1, 32, (1, 16, 16), (3, 7, 7), (1, 2, 2), (1, 3, 3)), (1, 1, 1, (1, 9, 7), (3, 3, 5), 1, (2, 1, 0)),
    (24, 24, 48, (1, 9, 7), (3, 3, 5), 1, (2, 1, 0)), (8, 8, 24, (1, 9, 7), (3, 1, 3), 1, (1, 0, 1)),
    (2, 2, 4, (1, 6, 8), (3, 3, 3), 1, (1, 1, 1)), (32, 32, 32, (1, 9, 9), (3, 3, 3), 1, (1, 1, 1)),
    # one output column from a strided W (float32 too)
    (1, 1, 16, (1, 6, 1), (1, 1, 3), (1, 1, 2), (0, 0, 1)), (1, 1, 16, (2, 6, 1), (3, 3, 3), (1, 1, 2), (1, 1, 1)),
    (1, 1, 16, (1, 7, 3), (1, 1, 3), (1, 1, 2), (0, 0, 0)), (16, 1, 16, (2, 5, 3), (3, 3, 3), (1, 1, 2), (1, 1, 0)),
    # right before the fix too
    (1, 1, 32, (1, 9, 9), (3, 3, 1), 1, (1, 1, 0)), (1, 1, 32, (2, 9, 9), (3, 3, 3), 1, (1, 1, 1)),
    (2, 1, 32, (1, 9, 9), (3, 3, 3), 1, (1, 1, 1)), (3, 1, 32, (1, 16, 16), (3, 7, 7), 1, (1, 3, 3)),
    (24, 24, 48, (2, 9, 7), (3, 3, 5), 1, (2, 1, 0)), (16, 1, 16, (2, 5, 8), (3, 3, 3), (1, 1, 2), (1, 1, 1)),
]


def _case_id(case):
    c_in, groups, c_out, size, kernel, stride, _ = case
    return "{}to{}g{}-{}-k{}-s{}".format(c_in, c_out, groups, "x".join(map(str, size)),
                                         "x".join(map(str, kernel)), stride if isinstance(stride, int)
                                         else "x".join(map(str, stride)))


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
@pytest.mark.parametrize("case", DEGENERATE_CASES, ids=_case_id)
def test_onednn_degenerate_shapes(case, dtype, layout, with_residual):
    c_in, groups, c_out, size, kernel, stride, padding = case
    stride = (stride,) * 3 if isinstance(stride, int) else stride
    gen = torch.Generator().manual_seed(0)
    fmt = LAYOUTS[layout]
    x = torch.randn(2, c_in, *size, generator=gen).to(dtype).contiguous(memory_format=fmt)
    fan_in = c_in // groups * kernel[0] * kernel[1] * kernel[2]
    w = (torch.randn(c_out, c_in // groups, *kernel, generator=gen) / fan_in ** 0.5).to(dtype)
    scale = (torch.rand(c_out, generator=gen) + 0.5).to(dtype)
    shift = torch.randn(c_out, generator=gen).to(dtype)
    out = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(size, padding, kernel, stride)]
    residual = (torch.randn(2, c_out, *out, generator=gen).to(dtype).contiguous(memory_format=fmt)
                if with_residual else None)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, 1, groups, "relu",
                                    residual)
    atol, rtol = _TOL[dtype]
    # The failure read uninitialised memory: several calls, each through a freshly packed weight.
    for _ in range(3):
        cpu_backend.pack_cache.clear()
        with backends.use("cpu"):
            y = conv3d_bn_act(x, w, scale, shift, stride, padding, 1, groups, "relu", residual)
        assert list(y.shape) == [2, c_out] + out
        _check_layout(y, x)
        torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


# The training path's convolution (conv3d_bn_stats: oneDNN with the plain weight) was wrong on
# some of them too: depthwise with two outputs per group on channels_last_3d, one output column.
DEGENERATE_TRAINING_CASES = [
    (8, 8, 16, (1, 6, 6), (3, 3, 3), 1, (1, 1, 1)), (8, 8, 16, (1, 6, 1), (1, 3, 3), (1, 1, 2), (0, 1, 1)),
    (2, 2, 4, (1, 6, 1), (1, 1, 3), (1, 1, 2), (0, 0, 1)), (1, 1, 16, (2, 6, 1), (3, 3, 3), (1, 1, 2), (1, 1, 1)),
    # right before the fix too
    (8, 8, 16, (2, 6, 6), (1, 3, 3), 1, (0, 1, 1)),
]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
@pytest.mark.parametrize("case", DEGENERATE_TRAINING_CASES, ids=_case_id)
def test_onednn_degenerate_shapes_in_training(case, dtype, layout):
    """Train-mode BatchNorm (videoconv.ops.conv3d_bn_stats underneath): output and running
    statistics against the float64 chain."""
    import copy

    from videoconv.nn import Conv3dBNAct

    c_in, groups, c_out, size, kernel, stride, padding = case
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
    bn = torch.nn.BatchNorm3d(c_out)
    chain = copy.deepcopy(torch.nn.Sequential(conv, bn, torch.nn.ReLU())).double().train()
    module = Conv3dBNAct.from_modules(conv, bn, "relu").train().to(dtype)
    x = torch.randn(4, c_in, *size)
    with backends.use("cpu"):
        y = module(x.to(dtype).contiguous(memory_format=LAYOUTS[layout]))
    expected = chain(x.double())
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(module.bn.running_mean.double(), chain[1].running_mean,
                               atol=atol, rtol=rtol)
    torch.testing.assert_close(module.bn.running_var.double(), chain[1].running_var,
                               atol=atol, rtol=rtol)


# ATen's bfloat16 weight gradient (oneDNN's jit_bf16 backward-weights kernel) was garbage on
# some convolutions whose kernel is longer than the input in one dimension
# (cpu._weight_grad_unsafe), e.g. R3D-18's last stage at 16 frames (3x3x3 on 2 frames).
# (c_in, groups, c_out, size, kernel, stride, padding, dilation); the first seven were wrong in
# bfloat16 channels_last_3d before the fix.
LONG_KERNEL_CASES = [
    (16, 1, 16, (2, 7, 7), (3, 3, 3), 1, (1, 1, 1), 1),
    (3, 1, 4, (4, 6, 8), (5, 1, 1), 1, (2, 0, 0), 1),
    (8, 8, 16, (2, 6, 1), (3, 3, 3), (1, 2, 2), (1, 1, 1), 1),
    (3, 3, 3, (2, 6, 1), (3, 3, 3), (1, 2, 2), (1, 1, 1), 1),
    (8, 8, 8, (4, 6, 1), (1, 3, 3), (1, 2, 2), (0, 1, 1), 1),
    (48, 2, 8, (13, 2, 14), (1, 7, 7), (1, 2, 1), (0, 3, 3), 1),
    (24, 1, 32, (2, 5, 5), (3, 3, 3), (1, 2, 1), (1, 1, 2), (1, 1, 2)),
    # right before the fix too: in the class, and just outside it
    (64, 1, 64, (1, 7, 7), (3, 3, 3), 1, (1, 1, 1), 1),
    (16, 1, 16, (3, 7, 7), (3, 3, 3), 1, (1, 1, 1), 1),
]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
@pytest.mark.parametrize("case", LONG_KERNEL_CASES, ids=lambda c: _case_id(c[:7]))
def test_bf16_weight_gradient_with_kernel_longer_than_input(case, dtype, layout, mode, backend):
    """Input and weight gradients against float64 on the same (rounded) values, through a
    Conv3dBNAct in train mode (conv3d_bn_stats's autograd) and in eval mode (the fused op's),
    forward and backward on the cpu backend or on the reference one (the oracle: plain ATen
    calls, whose bfloat16 weight gradient is wrong here, and which computes that one in float32
    too)."""
    import copy

    from videoconv.nn import Conv3dBNAct

    c_in, groups, c_out, size, kernel, stride, padding, dilation = case
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=False)
    bn = torch.nn.BatchNorm3d(c_out)
    with torch.no_grad():
        conv.weight.copy_(conv.weight.to(dtype))  # the float64 chain gets the rounded values
    x = torch.randn(2, c_in, *size).to(dtype)
    chain = copy.deepcopy(torch.nn.Sequential(conv, bn, torch.nn.ReLU())).double()
    module = Conv3dBNAct.from_modules(conv, bn, "relu").to(dtype)
    chain.train(mode == "train")
    module.train(mode == "train")
    x64 = x.double().requires_grad_()
    expected = chain(x64)
    grad = torch.randn(expected.shape)
    expected.backward(grad.double())
    ref_x, ref_w = x64.grad, chain[0].weight.grad
    # The failure read uninitialised memory: several calls.
    for _ in range(3):
        xin = x.clone(memory_format=LAYOUTS[layout]).requires_grad_()
        module.zero_grad()
        with backends.use(backend):
            y = module(xin)
            y.backward(grad.to(dtype).contiguous(memory_format=LAYOUTS[layout]))
        for got, want in ((xin.grad, ref_x), (module.conv.weight.grad, ref_w)):
            assert got.dtype == dtype
            assert_close_rel(got.double(), want, 3e-2 if dtype == torch.bfloat16 else 1e-4)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bf16_weight_gradients_of_a_unit_on_two_frames(layout, backend):
    """A train-mode (2+1)D unit on 2 frames (R(2+1)D-18's last stage at 16 frames): its temporal
    conv's 3x1x1 kernel is longer than the input; that weight gradient was ~1e31 off."""
    import copy

    from videoconv.nn import Conv2Plus1dBNAct

    torch.manual_seed(0)
    unit = Conv2Plus1dBNAct(16, 24, 16, 3, 1, 1).train()
    with torch.no_grad():
        for p in unit.parameters():
            p.copy_(p.to(torch.bfloat16))  # the float64 unit gets the rounded values
    reference = copy.deepcopy(unit).double()
    x = torch.randn(2, 16, 2, 7, 7).to(torch.bfloat16)
    expected = reference(x.double())
    grad = torch.randn(expected.shape)
    expected.backward(grad.double())
    unit = unit.to(torch.bfloat16)
    with backends.use(backend):
        y = unit(x.contiguous(memory_format=LAYOUTS[layout]))
        y.backward(grad.to(torch.bfloat16))
    for name in ("conv1.weight", "conv2.weight"):
        got = unit.get_parameter(name).grad.double()
        want = reference.get_parameter(name).grad
        assert (got - want).norm() / want.norm() < 0.1, name


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
@pytest.mark.parametrize("case", PLUS1D_CASES, ids=[c[0] for c in PLUS1D_CASES])
def test_conv2plus1d_bn_act_matches_float64(case, dtype, layout, with_residual, act):
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, out = _plus1d_case(
        case, dtype, layout, with_residual
    )
    with backends.use("cpu"):
        y = conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf, residual)
    expected = oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf, residual)
    assert list(y.shape) == out and y.dtype == dtype
    _check_layout(y, x)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
def test_odd_layouts_in(dtype):
    """C == 1 (both layouts at once), a non-dense input, a residual in the other layout."""
    w = torch.randn(4, 1, 3, 3, 3).to(dtype)
    s, b = torch.rand(4).to(dtype) + 0.5, torch.randn(4).to(dtype)
    x1 = torch.randn(2, 1, 5, 6, 6).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    x2 = torch.randn(2, 2, 5, 6, 12).to(dtype)[:, :1, :, :, ::2]  # neither layout
    for x in (x1, x2):
        res = torch.randn(2, 4, 5, 6, 6).to(dtype).contiguous(memory_format=torch.channels_last_3d)
        with backends.use("cpu"):
            y = conv3d_bn_act(x, w, s, b, padding=1, activation="silu", residual=res)
        _check_layout(y, x)
        expected = oracle_conv3d_bn_act(x, w, s, b, (1,) * 3, (1,) * 3, (1,) * 3, 1, "silu", res)
        torch.testing.assert_close(y.double(), expected, atol=_TOL[dtype][0], rtol=_TOL[dtype][1])


def test_conv2plus1d_is_two_conv3d_bn_act_on_cpu():
    case = PLUS1D_CASES[1]
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, _ = _plus1d_case(
        case, torch.bfloat16, "ncdhw", True
    )
    with backends.use("cpu"):
        h = conv3d_bn_act(x, w1, s1, b1, (1, 2, 2), (0, 1, 1), activation="relu")
        chained = conv3d_bn_act(h, w2, s2, b2, (2, 1, 1), (1, 0, 0), activation="relu",
                                residual=residual)
        fused = conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, stride, padding, "relu", tf, residual)
    torch.testing.assert_close(fused, chained, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# the packed-weight cache


def _args(dtype=torch.float32, c_out=6):
    x = torch.randn(2, 4, 5, 7, 7).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    w = (torch.randn(c_out, 4, 3, 3, 3) / 10).to(dtype)
    s, b = (torch.rand(c_out) + 0.5).to(dtype), torch.randn(c_out).to(dtype)
    return x, w, s, b


def _run(x, w, s, b, **kw):
    with backends.use("cpu"):
        return conv3d_bn_act(x, w, s, b, padding=1, **kw)


def _oracle(x, w, s, b, act="relu"):
    return oracle_conv3d_bn_act(x, w, s, b, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, act, None)


def _assert_oracle(y, x, w, s, b):
    atol, rtol = _TOL[y.dtype]
    torch.testing.assert_close(y.double(), _oracle(x, w, s, b), atol=atol, rtol=rtol)


def test_cache_hit_gives_the_same_result():
    import importlib

    x, w, s, b = _args()
    cache = cpu_backend.pack_cache
    y1 = _run(x, w, s, b)
    hits = cache.hits
    # The operator's own prepared calls (tests/test_op_prepared_calls.py) would answer first.
    importlib.import_module("videoconv.ops.conv3d_bn_act").PREPARED_CALLS.clear()
    y2 = _run(x, w, s, b)
    assert cache.hits == hits + 1
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    _assert_oracle(y2, x, w, s, b)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
def test_cache_sees_in_place_changes(dtype):
    x, w, s, b = _args(dtype)
    y1 = _run(x, w, s, b)
    with torch.no_grad():
        w.mul_(-1.5)  # bumps w._version
    y2 = _run(x, w, s, b)
    _assert_oracle(y2, x, w, s, b)
    assert not torch.equal(y1, y2)
    w.copy_(torch.randn_like(w) / 10)
    _assert_oracle(_run(x, w, s, b), x, w, s, b)
    # scale/shift are compared by value: in-place changes and fresh tensors are both seen
    s.mul_(2)
    _assert_oracle(_run(x, w, s, b), x, w, s, b)
    b2 = b + 1
    _assert_oracle(_run(x, w, s, b2), x, w, s, b2)
    # a different input size or layout: packed again for it
    x3 = torch.randn(1, 4, 3, 9, 5).to(dtype)
    _assert_oracle(_run(x3, w, s, b), x3, w, s, b)
    _assert_oracle(_run(x, w, s, b), x, w, s, b)


def test_distinct_weights_do_not_collide():
    x, w1, s, b = _args()
    w2 = w1.clone() * -1
    w3 = w1.clone()[:, :, :, :, [2, 1, 0]]  # same shape, another storage
    outs = [_run(x, w, s, b) for w in (w1, w2, w3, w1, w2, w3)]
    for y, w in zip(outs, (w1, w2, w3) * 2):
        _assert_oracle(y, x, w, s, b)
    assert not torch.equal(outs[0], outs[1])


def test_cache_entries_die_with_the_weight():
    cache = cpu_backend.pack_cache
    gc.collect()
    before = len(cache)
    x, w, s, b = _args()
    _run(x, w, s, b)
    assert len(cache) == before + 1
    _run(x, w, s, b)
    assert len(cache) == before + 1  # one entry per weight
    del w
    gc.collect()
    assert len(cache) == before


def test_training_loop_with_parameters():
    """Parameters through autograd + optimizer steps: every forward uses the current weight."""
    x, w, s, b = _args()
    w = torch.nn.Parameter(w)
    opt = torch.optim.SGD([w], lr=0.5)
    for _ in range(3):
        y = _run(x, w, s, b)
        _assert_oracle(y.detach(), x, w.detach(), s, b)
        opt.zero_grad()
        y.square().mean().backward()
        opt.step()
    _assert_oracle(_run(x, w, s, b).detach(), x, w.detach(), s, b)


def test_storage_swapped_through_data_is_repacked():
    """``w.data = ...`` (what ``Module.to()`` does) gives the same tensor, with the same version,
    a new storage, which may be allocated where the old one was (a 442 KB weight rounded to
    bfloat16 and back lands there in glibc's malloc). The cache must repack: before, it handed
    back the old packed weight (an error of up to ~4e-3 here)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 64, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last_3d)
    w = torch.nn.Parameter(torch.randn(64, 64, 3, 3, 3, generator=g) / 1728 ** 0.5,
                           requires_grad=False)
    s, b = torch.full((64,), 0.5), torch.full((64,), 0.25)
    _run(x, w, s, b)
    version, misses = w._version, cpu_backend.pack_cache.misses
    w.data = w.data.to(torch.bfloat16).float()
    assert w._version == version
    y = _run(x, w, s, b)
    assert cpu_backend.pack_cache.misses == misses + 1
    torch.testing.assert_close(y.double(), _oracle(x, w, s, b), atol=1e-5, rtol=1e-5)


def test_inference_mode_tensors_are_not_cached():
    """An inference-tensor weight has no version counter: it is packed again on every call
    (so an in-place change is seen), and the backend says why that call is slow."""
    with torch.inference_mode():
        x, w, s, b = _args()
        cache = cpu_backend.pack_cache
        with pytest.warns(cpu_backend.RepackingWarning, match="inference tensor.*videoconv.fuse"):
            y = _run(x, w, s, b)
        w.mul_(2)
        with pytest.warns(cpu_backend.RepackingWarning):
            y2 = _run(x, w, s, b)
        # (not len(cache): other tests' entries die with their weights whenever gc runs)
        assert all(ref() is not w for ref, _ in cache._entries.values())
    _assert_oracle(y2, x, w, s, b)
    assert not torch.equal(y, y2)


# ----------------------------------------------------------------------------------------------
# refusals and selection


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=_ids)
def test_forced_cpu_refuses_other_dtypes(dtype):
    x, w, s, b = _args(dtype)
    with backends.use("cpu"), pytest.raises(NotSupportedError) as info:
        _run(x, w, s, b)
    message = str(info.value)
    assert "videoconv backend 'cpu' (forced by use()) cannot run conv3d_bn_act" in message
    assert f"dtype {_ids(dtype)} is not supported (supports bfloat16, float32)" in message


def test_automatic_selection():
    assert backends.names()[:1] == ["cpu"] and backends.names()[-1] == "reference"
    assert backends.available()["cpu"] == []
    for dtype, expected in [(torch.float32, CpuBackend), (torch.bfloat16, CpuBackend),
                            (torch.float64, ReferenceBackend), (torch.float16, ReferenceBackend)]:
        x, w, s, b = _args(dtype)
        for op in backends.OPS:
            got = backends.select_backend(op, input=x, weight=w, groups=1, activation="silu",
                                          residual=None)
            assert got is expected, (op, dtype, got)
    reasons = CpuBackend.not_supported_reasons("conv3d_bn_act", input=torch.randn(1, 2, 3, 4, 5))
    assert reasons == []


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_strided_view_input_keeps_its_layout(backend):
    clip = torch.randn(1, 4, 8, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    x = clip[:, :, ::2]  # neither contiguous nor channels_last_3d-dense
    w, scale, shift = torch.randn(5, 4, 3, 3, 3), torch.rand(5) + 0.5, torch.randn(5)
    with backends.use(backend):
        y = conv3d_bn_act(x, w, scale, shift, padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    expected = torch.relu(torch.nn.functional.conv3d(x.double(), w.double(), padding=1)
                          * scale.double().view(1, -1, 1, 1, 1) + shift.double().view(1, -1, 1, 1, 1))
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def _onednn_without_bfloat16(monkeypatch):
    """The cpu backend as on a CPU where oneDNN has no bfloat16 convolution (AVX2 only, e.g. AMD
    Zen 3): the oneDNN route computes bfloat16 in float32, and Winograd takes float32's limits."""
    monkeypatch.setattr(cpu_backend, "_onednn_bf16_native", False)
    cpu_backend.pack_cache.clear()
    yield
    cpu_backend.pack_cache.clear()


def _routes():
    return {entry.key[1] for _, entry in cpu_backend.pack_cache._entries.values()}


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_bfloat16_without_onednn_support_matches_float64(case, layout, with_residual, act,
                                                         _onednn_without_bfloat16):
    """bfloat16 where oneDNN cannot run it: float32 products, one rounding, the input's layout;
    no bfloat16 tensor ever reaches oneDNN (which would raise 'bf16 path needs the cpu support
    ...' there)."""
    _check_conv_case_on_cpu(case, torch.bfloat16, layout, with_residual, act)
    assert "onednn" not in _routes()  # never a bfloat16 weight packed for oneDNN


def test_bfloat16_without_onednn_support_widens_exactly(_onednn_without_bfloat16):
    """The widened route is the float32 computation on the bfloat16-rounded folded weight,
    rounded once: bit-equal to doing that by hand through the same oneDNN call."""
    g = torch.Generator().manual_seed(3)
    cl = torch.channels_last_3d
    x = torch.randn(2, 24, 5, 9, 9, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)
    w = (torch.randn(24, 1, 3, 3, 3, generator=g) * 0.2).to(torch.bfloat16)  # depthwise
    scale = (torch.rand(24, generator=g) + 0.5).to(torch.bfloat16)
    shift = torch.randn(24, generator=g).to(torch.bfloat16)
    res = torch.randn(2, 24, 5, 9, 9, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, padding=(1, 1, 1), groups=24, activation="relu",
                          residual=res)
    assert _routes() == {"onednn-f32"}
    folded = (w.double() * scale.double().view(-1, 1, 1, 1, 1)).to(torch.bfloat16).float()
    z = torch.nn.functional.conv3d(x.float(), folded, shift.float(), padding=1, groups=24)
    by_hand = torch.relu(z + res.float()).to(torch.bfloat16)
    torch.testing.assert_close(y.float(), by_hand.float(), atol=1e-6, rtol=8e-3)  # 1 bf16 ulp
    assert (y != by_hand).float().mean() < 0.01  # the same values but for summation order


def test_bfloat16_winograd_takes_float32_limits_without_onednn_support(monkeypatch):
    """With native bfloat16, small-channel layers stay on oneDNN (its bfloat16 rate wins);
    without it oneDNN runs at the float32 rate and the Winograd kernel's float32 limits apply."""
    key = ((torch.bfloat16, torch.device("cpu"), torch.channels_last_3d, (48, 32, 1, 3, 3)),
           (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, (1, 32, 4, 8, 8))
    if not cpu_backend._has_winograd_kernel():
        pytest.skip("the videoconv._C extension is not loaded")
    monkeypatch.setattr(cpu_backend, "WINOGRAD", True)
    monkeypatch.setattr(cpu_backend, "_onednn_bf16_native", True)
    assert not cpu_backend._use_winograd(key)
    monkeypatch.setattr(cpu_backend, "_onednn_bf16_native", False)
    assert cpu_backend._use_winograd(key)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bfloat16_statistics_without_onednn_support(layout, _onednn_without_bfloat16):
    """Training-mode BatchNorm's conv + statistics in bfloat16 where oneDNN cannot: z is the
    float32 convolution rounded once to bfloat16, the statistics are z's."""
    from videoconv.ops import conv3d_bn_stats

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 16, 4, 8, 8, generator=g).to(torch.bfloat16)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    w = (torch.randn(32, 16, 3, 3, 3, generator=g) * 0.1).to(torch.bfloat16)
    with backends.use("cpu"):
        z, mean, var = conv3d_bn_stats(x, w, stride=(1, 1, 1), padding=(1, 1, 1),
                                       dilation=(1, 1, 1), groups=1)
    expected = torch.nn.functional.conv3d(x.double(), w.double(), padding=1)
    assert z.dtype == torch.bfloat16
    _check_layout(z, x)
    torch.testing.assert_close(z.double(), expected, atol=_TOL[torch.bfloat16][0],
                               rtol=_TOL[torch.bfloat16][1])
    zd = z.double()
    torch.testing.assert_close(mean.double(), zd.mean((0, 2, 3, 4)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var.double(), zd.var((0, 2, 3, 4), unbiased=False), atol=1e-5,
                               rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# temporal (kt, 1, 1) convolutions as 2-D (kt, 1) convolutions over (D, H*W) (route "onednn-2d")

# (name, N, C_in, C_out, (D, H, W), kt, temporal stride, temporal padding, temporal dilation)
TEMPORAL_2D_CASES = [
    ("r2plus1d_t3", 2, 16, 24, (6, 5, 7), 3, 1, 1, 1),
    ("downsample_s2_odd_cout", 1, 24, 20, (9, 4, 3), 3, 2, 1, 1),
    ("slowfast_t5_dilated", 1, 8, 8, (11, 3, 3), 5, 1, 4, 2),
    ("unpadded_single_row", 2, 8, 5, (5, 1, 6), 3, 1, 0, 1),
]


@pytest.fixture
def _fresh_pack_cache():
    cpu_backend.pack_cache.clear()
    yield
    cpu_backend.pack_cache.clear()


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("residual_add", [None, "sum", "binary"],
                         ids=["plain", "residual_sum", "residual_binary"])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=_ids)
@pytest.mark.parametrize("case", TEMPORAL_2D_CASES, ids=[c[0] for c in TEMPORAL_2D_CASES])
def test_temporal_convs_run_as_2d_and_match_float64(case, dtype, residual_add, act,
                                                    _fresh_pack_cache, monkeypatch):
    """The (D, H*W) view: input, residual and output are views of the channels_last_3d tensors,
    the result is the 3-D convolution's (against float64), in channels_last_3d; the residual is
    added by oneDNN's sum post-op into a copy of it (the default) or by the binary add post-op
    (``TEMPORAL_2D_SUM`` off), and the caller's tensor is left as it was."""
    monkeypatch.setattr(cpu_backend, "TEMPORAL_2D_SUM", residual_add != "binary")
    if cpu_backend._widened(dtype):
        pytest.skip("oneDNN has no bfloat16 convolution on this CPU (the widened route runs)")
    _, n, c_in, c_out, (d, h, w), kt, st, pt, dt = case
    g = torch.Generator().manual_seed(5)
    cl = torch.channels_last_3d
    x = torch.randn(n, c_in, d, h, w, generator=g).to(dtype).contiguous(memory_format=cl)
    wt = (torch.randn(c_out, c_in, kt, 1, 1, generator=g) / kt).to(dtype)
    scale = (torch.rand(c_out, generator=g) + 0.5).to(dtype)
    shift = torch.randn(c_out, generator=g).to(dtype)
    d_out = (d + 2 * pt - dt * (kt - 1) - 1) // st + 1
    residual = (torch.randn(n, c_out, d_out, h, w, generator=g).to(dtype)
                .contiguous(memory_format=cl) if residual_add else None)
    stride, padding, dilation = (st, 1, 1), (pt, 0, 0), (dt, 1, 1)
    residual_before = None if residual is None else residual.clone()
    with backends.use("cpu"):
        y = conv3d_bn_act(x, wt, scale, shift, stride, padding, dilation, 1, act, residual)
    assert _routes() == {"onednn-2d"}
    if residual is not None:  # oneDNN's sum post-op accumulates into a copy, not into it
        assert torch.equal(residual, residual_before)
    assert list(y.shape) == [n, c_out, d_out, h, w] and y.dtype == dtype
    assert y.is_contiguous(memory_format=cl)
    expected = oracle_conv3d_bn_act(x, wt, scale, shift, stride, padding, dilation, 1, act,
                                    residual)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


def test_temporal_2d_sum_leaves_an_ncdhw_residual_alone(_fresh_pack_cache):
    """A residual in another layout is converted to channels_last_3d (a new tensor, which the sum
    post-op then writes without a second copy): the caller's tensor is unchanged, the result is
    the float64 one."""
    g = torch.Generator().manual_seed(7)
    cl = torch.channels_last_3d
    x = torch.randn(2, 16, 6, 5, 7, generator=g).contiguous(memory_format=cl)
    wt = torch.randn(24, 16, 3, 1, 1, generator=g) / 3
    scale, shift = torch.rand(24, generator=g) + 0.5, torch.randn(24, generator=g)
    residual = torch.randn(2, 24, 6, 5, 7, generator=g)  # NCDHW
    residual_before = residual.clone()
    args = (x, wt, scale, shift, (1, 1, 1), (1, 0, 0), (1, 1, 1), 1, "relu", residual)
    with backends.use("cpu"):
        y = conv3d_bn_act(*args)
    assert _routes() == {"onednn-2d"} and cpu_backend.TEMPORAL_2D_SUM
    assert torch.equal(residual, residual_before)
    torch.testing.assert_close(y.double(), oracle_conv3d_bn_act(*args), atol=_TOL[torch.float32][0],
                               rtol=_TOL[torch.float32][1])


def test_temporal_2d_route_in_modules_and_2plus1d_units(_fresh_pack_cache):
    """The prepared call of an eval Conv3dBNAct and the second conv of a (2+1)D unit take the
    route, and give the float64 module chain's result."""
    import torch.nn as nn

    from videoconv.nn import Conv2Plus1dBNAct, Conv3dBNAct

    torch.manual_seed(7)
    cl = torch.channels_last_3d
    conv = nn.Conv3d(16, 24, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0), bias=False)
    bn = nn.BatchNorm3d(24)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    chain = nn.Sequential(conv, bn, nn.ReLU()).eval()
    fused = Conv3dBNAct.from_modules(conv, bn, nn.ReLU()).eval()
    unit_chain = nn.Sequential(
        nn.Conv3d(16, 32, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(32), nn.ReLU(),
        nn.Conv3d(32, 16, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(16), nn.ReLU(),
    ).eval()
    unit = Conv2Plus1dBNAct.from_modules(*unit_chain).eval()
    x = torch.randn(2, 16, 8, 6, 6).contiguous(memory_format=cl)
    with torch.no_grad(), backends.use("cpu"):
        for _ in range(2):  # the second call runs the prepared call
            y = fused(x)
            z = unit(x)
        expected_y = chain.double()(x.double())
        expected_z = unit_chain.double()(x.double())
    assert "onednn-2d" in _routes()
    assert y.is_contiguous(memory_format=cl) and z.is_contiguous(memory_format=cl)
    torch.testing.assert_close(y.double(), expected_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z.double(), expected_z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weight, stride, padding, dilation, groups, fmt, expected", [
    ((24, 16, 3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1), 1, "cl3d", True),
    ((24, 16, 5, 1, 1), (2, 1, 1), (4, 0, 0), (2, 1, 1), 1, "cl3d", True),
    ((24, 16, 3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1), 1, "ncdhw", False),  # not a 2-D view
    ((24, 16, 3, 1, 1), (1, 2, 2), (1, 0, 0), (1, 1, 1), 1, "cl3d", False),  # spatial stride
    ((24, 16, 3, 1, 1), (1, 1, 1), (1, 1, 0), (1, 1, 1), 1, "cl3d", False),  # would pad the row
    ((24, 8, 3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1), 2, "cl3d", False),   # grouped: unmeasured
    ((16, 1, 3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1), 16, "cl3d", False),  # depthwise
    ((24, 16, 1, 1, 1), (2, 1, 1), (0, 0, 0), (1, 1, 1), 1, "cl3d", False),  # 1x1x1
    ((24, 16, 1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, "cl3d", False),  # spatial
])
def test_which_convs_run_as_2d(weight, stride, padding, dilation, groups, fmt, expected,
                               monkeypatch):
    monkeypatch.setattr(cpu_backend, "TEMPORAL_2D", True)
    key = ((torch.float32, torch.device("cpu"), LAYOUTS[fmt], weight), stride, padding, dilation,
           groups, (2, 16, 8, 6, 6))
    assert cpu_backend._use_temporal_2d(key) is expected
    monkeypatch.setattr(cpu_backend, "TEMPORAL_2D", False)
    assert not cpu_backend._use_temporal_2d(key)
