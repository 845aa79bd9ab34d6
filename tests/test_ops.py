"""videoconv's operators: values against float64, layouts, gradients, opcheck, compile, export, errors.

The oracle here is computed independently of videoconv: ``F.conv3d`` and the epilogue in float64
on the same (rounded) input values. Shapes come from the zoo's layers (R3D/R(2+1)D stems and
blocks, SlowFast temporal kernels, X3D/CSN depthwise, ResNet shortcuts), shrunk to stay fast.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import videoconv
from videoconv import backends
from videoconv.ops import conv2plus1d_bn_act, conv3d_bn_act

CL = torch.channels_last_3d
LAYOUTS = {"ncdhw": torch.contiguous_format, "cl3d": CL}
ACTS = ("relu", "silu", "identity")
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

#: (dtype, atol, rtol) of an op's output against the float64 oracle, values of magnitude ~1.
#: 16-bit: inputs are rounded first (the oracle sees the same values); the convolution result
#: (and the (2+1)D intermediate) is rounded to the dtype, the epilogue once more.
TOLERANCES = [
    (torch.float64, 1e-10, 1e-10),
    (torch.float32, 1e-4, 1e-4),
    (torch.float16, 5e-3, 5e-3),
    (torch.bfloat16, 4e-2, 2e-2),
]
_TOL = {dtype: (atol, rtol) for dtype, atol, rtol in TOLERANCES}

_ACT64 = {"relu": torch.relu, "silu": F.silu, "identity": lambda u: u}


def _channel(v):
    return v.double().view(1, -1, 1, 1, 1)


def oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, act, residual):
    """float64 ``act(conv3d(x, w) * scale + shift [+ residual])``, independent of videoconv."""
    z = F.conv3d(x.double(), w.double(), None, stride, padding, dilation, groups)
    u = z * _channel(scale) + _channel(shift)
    if residual is not None:
        u = u + residual.double()
    return _ACT64[act](u)


def oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, act, temporal_first, residual):
    st, sh, sw = stride
    pt, ph, pw = padding
    spatial, temporal = ((1, sh, sw), (0, ph, pw)), ((st, 1, 1), (pt, 0, 0))
    first, second = (temporal, spatial) if temporal_first else (spatial, temporal)
    h = oracle_conv3d_bn_act(x, w1, s1, b1, first[0], first[1], 1, 1, act, None)
    return oracle_conv3d_bn_act(h, w2, s2, b2, second[0], second[1], 1, 1, act, residual)


def _out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def _weight(shape, dtype=torch.float64):
    fan_in = shape[1] * shape[2] * shape[3] * shape[4]
    return (torch.randn(shape, dtype=torch.float64) / fan_in**0.5).to(dtype)


def _affine(c, dtype=torch.float64):
    scale = (torch.rand(c, dtype=torch.float64) + 0.5).to(dtype)
    shift = (0.3 * torch.randn(c, dtype=torch.float64)).to(dtype)
    return scale, shift


# name, N, C_in, C_out, (D, H, W), kernel, stride, padding, dilation, groups
CONV_CASES = [
    ("r3d_stem", 1, 3, 8, (5, 11, 11), (3, 7, 7), (1, 2, 2), (1, 3, 3), 1, 1),
    ("r2plus1d_spatial", 2, 4, 6, (3, 7, 9), (1, 3, 3), 1, (0, 1, 1), 1, 1),
    ("temporal_k3_s222", 2, 6, 4, (7, 5, 5), (3, 1, 1), (2, 2, 2), (1, 0, 0), 1, 1),
    ("slowfast_t5", 1, 4, 4, (9, 5, 5), (5, 1, 1), 1, (2, 0, 0), 1, 1),
    ("temporal_k7", 1, 3, 4, (9, 6, 6), (7, 1, 1), 1, (3, 0, 0), 1, 1),
    ("shortcut_1x1x1_s222", 2, 4, 8, (6, 8, 8), (1, 1, 1), (2, 2, 2), 0, 1, 1),
    ("conv333_s222", 1, 4, 6, (7, 9, 9), (3, 3, 3), (2, 2, 2), 1, 1, 1),
    ("spatial_dilation2", 1, 4, 4, (5, 11, 11), (3, 3, 3), 1, (1, 2, 2), (1, 2, 2), 1),
    ("groups2", 2, 4, 6, (5, 7, 7), (3, 3, 3), 1, 1, 1, 2),
    ("depthwise_x3d_s122", 1, 6, 6, (5, 9, 9), (3, 3, 3), (1, 2, 2), 1, 1, 6),
    ("depthwise_t5_odd", 1, 5, 5, (7, 7, 5), (5, 3, 3), 1, (2, 1, 1), 1, 5),
    ("odd_sizes_no_padding", 3, 3, 5, (5, 7, 9), (3, 3, 3), (1, 2, 2), 0, 1, 1),
]


def _conv_case(case, dtype, layout, with_residual):
    _, n, c_in, c_out, (d, h, w), kernel, stride, padding, dilation, groups = case
    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    x = torch.randn(n, c_in, d, h, w, dtype=torch.float64).to(dtype)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    weight = _weight((c_out, c_in // groups) + tuple(kernel), dtype)
    scale, shift = _affine(c_out, dtype)
    out = [n, c_out] + [
        _out_size(s, k, st, p, dl) for s, k, st, p, dl in zip((d, h, w), kernel, stride, padding, dilation)
    ]
    residual = torch.randn(out, dtype=torch.float64).to(dtype) if with_residual else None
    return x, weight, scale, shift, stride, padding, dilation, groups, residual, out


def _check_layout(y, x):
    fmt = backends.output_memory_format(x)
    assert y.is_contiguous(memory_format=fmt), (y.shape, y.stride())


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv3d_bn_act_matches_float64(case, dtype, layout, with_residual, act):
    x, w, scale, shift, stride, padding, dilation, groups, residual, out = _conv_case(
        case, dtype, layout, with_residual
    )
    y = conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, act, residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, act, residual)
    assert list(y.shape) == out and y.dtype == dtype
    if layout == "cl3d":
        assert y.is_contiguous(memory_format=CL)
    else:
        assert y.is_contiguous()
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


# name, N, C_in, C_mid, C_out, (D, H, W), kT, kS, stride, padding, temporal_first
PLUS1D_CASES = [
    ("r2plus1d_block", 1, 4, 6, 5, (5, 7, 7), 3, 3, 1, 1, False),
    ("r2plus1d_down_s222", 2, 4, 6, 8, (6, 9, 9), 3, 3, (2, 2, 2), 1, False),
    ("spatial_s122", 1, 3, 4, 4, (5, 8, 8), 3, 3, (1, 2, 2), 1, False),
    ("stem_k7_t1", 1, 3, 5, 4, (4, 11, 11), 1, 7, (1, 2, 2), (0, 3, 3), False),
    ("temporal_first_t5", 1, 4, 5, 4, (7, 6, 6), 5, 3, 1, (2, 1, 1), True),
    ("temporal_first_s222_odd_nopad", 2, 3, 4, 5, (7, 7, 5), 3, 3, (2, 2, 2), 0, True),
]


def _plus1d_case(case, dtype, layout, with_residual):
    _, n, c_in, c_mid, c_out, (d, h, w), kt, ks, stride, padding, temporal_first = case
    stride, padding = _triple(stride), _triple(padding)
    x = torch.randn(n, c_in, d, h, w, dtype=torch.float64).to(dtype)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    spatial_k, temporal_k = (1, ks, ks), (kt, 1, 1)
    k1, k2 = (temporal_k, spatial_k) if temporal_first else (spatial_k, temporal_k)
    w1 = _weight((c_mid, c_in) + k1, dtype)
    w2 = _weight((c_out, c_mid) + k2, dtype)
    s1, b1 = _affine(c_mid, dtype)
    s2, b2 = _affine(c_out, dtype)
    out = [n, c_out] + [
        _out_size(s, k, st, p) for s, k, st, p in zip((d, h, w), (kt, ks, ks), stride, padding)
    ]
    residual = torch.randn(out, dtype=torch.float64).to(dtype) if with_residual else None
    return x, w1, s1, b1, w2, s2, b2, stride, padding, temporal_first, residual, out


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", PLUS1D_CASES, ids=[c[0] for c in PLUS1D_CASES])
def test_conv2plus1d_bn_act_matches_float64(case, dtype, layout, with_residual, act):
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, out = _plus1d_case(
        case, dtype, layout, with_residual
    )
    y = conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf, residual)
    expected = oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf, residual)
    assert list(y.shape) == out and y.dtype == dtype
    _check_layout(y, x)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("temporal_first", [False, True])
def test_conv2plus1d_is_two_conv3d_bn_act(temporal_first, dtype):
    """The (2+1)D op computes exactly the chain of two conv3d_bn_act ops (intermediate rounded)."""
    case = PLUS1D_CASES[1] if not temporal_first else PLUS1D_CASES[5]
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, _ = _plus1d_case(case, dtype, "cl3d", True)
    st, sh, sw = stride
    pt, ph, pw = padding
    spatial, temporal = ((1, sh, sw), (0, ph, pw)), ((st, 1, 1), (pt, 0, 0))
    first, second = (temporal, spatial) if tf else (spatial, temporal)
    h = conv3d_bn_act(x, w1, s1, b1, first[0], first[1], activation="silu")
    chained = conv3d_bn_act(h, w2, s2, b2, second[0], second[1], activation="silu", residual=residual)
    fused = conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, stride, padding, "silu", tf, residual)
    torch.testing.assert_close(fused, chained, atol=0, rtol=0)


def test_python_arguments_ints_triples_and_aliases():
    x = torch.randn(1, 4, 6, 8, 8)
    w = _weight((4, 4, 3, 3, 3), torch.float32)
    scale, shift = _affine(4, torch.float32)
    a = conv3d_bn_act(x, w, scale, shift, stride=2, padding=1, dilation=1, activation="swish")
    b = conv3d_bn_act(x, w, scale, shift, (2, 2, 2), [1, 1, 1], (1, 1, 1), activation="silu")
    c = torch.ops.videoconv.conv3d_bn_act(x, w, scale, shift, [2, 2, 2], [1, 1, 1], [1, 1, 1], 1, "silu", None)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, c, atol=0, rtol=0)
    assert conv3d_bn_act(x, w, scale, shift, activation="ReLU").min() >= 0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_zero_batch_gives_empty_output(layout):
    x = torch.randn(0, 4, 5, 6, 6).contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
    w = _weight((6, 2, 3, 3, 3), torch.float32).requires_grad_()
    scale, shift = _affine(6, torch.float32)
    y = conv3d_bn_act(x, w, scale, shift, stride=(1, 2, 2), padding=1, groups=2)
    assert y.shape == (0, 6, 5, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape and w.grad.abs().sum() == 0
    w1, w2 = _weight((5, 4, 1, 3, 3), torch.float32), _weight((3, 5, 3, 1, 1), torch.float32)
    (s1, b1), (s2, b2) = _affine(5, torch.float32), _affine(3, torch.float32)
    y = conv2plus1d_bn_act(x.detach(), w1, s1, b1, w2, s2, b2, stride=2, padding=1)
    assert y.shape == (0, 3, 3, 3, 3)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fake_kernels_match_real_size_and_strides(layout):
    from torch._prims_common import check_significant_strides
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w, scale, shift, stride, padding, dilation, groups, residual, _ = _conv_case(
        CONV_CASES[9], torch.float32, layout, True
    )
    args = (x, w, scale, shift, list(stride), list(padding), list(dilation), groups, "relu", residual)
    x2, w1, s1, b1, w2, s2, b2, st2, pd2, tf, r2, _ = _plus1d_case(PLUS1D_CASES[1], torch.float16, layout, True)
    args2 = (x2, w1, s1, b1, w2, s2, b2, list(st2), list(pd2), "relu", tf, r2)
    for op, op_args in [(torch.ops.videoconv.conv3d_bn_act.default, args),
                        (torch.ops.videoconv.conv2plus1d_bn_act.default, args2)]:
        real = op(*op_args)
        with FakeTensorMode() as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in op_args]
            fake = op(*fake_args)
        assert fake.shape == real.shape and fake.dtype == real.dtype
        same, _ = check_significant_strides(real, fake, only_cuda=False)
        assert same, (real.stride(), fake.stride())
        _check_layout(real, op_args[0])


# ----------------------------------------------------------------------------------------------
# gradients


def _req(*tensors):
    return tuple(None if t is None else t.detach().requires_grad_() for t in tensors)


GRAD_CONV_CONFIGS = [
    # kernel, stride, padding, dilation, groups, act, residual, layout
    ((3, 3, 3), (1, 1, 1), 1, 1, 1, "relu", True, "ncdhw"),
    ((3, 3, 3), (1, 2, 2), (1, 2, 2), (1, 2, 2), 2, "silu", False, "cl3d"),
    ((3, 3, 3), (2, 2, 2), 1, 1, 4, "identity", True, "cl3d"),  # depthwise
    ((5, 1, 1), 1, (2, 0, 0), 1, 1, "silu", True, "ncdhw"),
]


@pytest.mark.parametrize("config", GRAD_CONV_CONFIGS, ids=lambda c: f"{c[5]}-g{c[4]}-{c[7]}")
def test_conv3d_bn_act_gradcheck(config):
    kernel, stride, padding, dilation, groups, act, with_res, layout = config
    case = ("g", 2, 4, 4, (5, 6, 6), kernel, stride, padding, dilation, groups)
    x, w, scale, shift, stride, padding, dilation, groups, residual, _ = _conv_case(
        case, torch.float64, layout, with_res
    )
    inputs = _req(x, w, scale, shift, residual)

    def fn(x, w, scale, shift, residual):
        return conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, act, residual)

    assert torch.autograd.gradcheck(fn, inputs)


GRAD_PLUS1D_CONFIGS = [
    # stride, padding, act, temporal_first, residual, layout
    ((1, 1, 1), 1, "relu", False, True, "ncdhw"),
    ((2, 2, 2), 1, "silu", False, False, "cl3d"),
    ((2, 1, 1), (1, 0, 0), "identity", True, True, "cl3d"),
    ((1, 2, 2), 1, "silu", True, True, "ncdhw"),
]


@pytest.mark.parametrize("config", GRAD_PLUS1D_CONFIGS, ids=lambda c: f"{c[2]}-tf{int(c[3])}-{c[5]}")
def test_conv2plus1d_bn_act_gradcheck(config):
    stride, padding, act, tf, with_res, layout = config
    case = ("g", 2, 3, 4, 3, (5, 5, 6), 3, 3, stride, padding, tf)
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, _ = _plus1d_case(
        case, torch.float64, layout, with_res
    )
    inputs = _req(x, w1, s1, b1, w2, s2, b2, residual)

    def fn(x, w1, s1, b1, w2, s2, b2, residual):
        return conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf, residual)

    assert torch.autograd.gradcheck(fn, inputs)


def test_gradgradcheck_silu():
    """The backward is made of differentiable torch ops: second derivatives work too."""
    case = ("g", 1, 2, 2, (3, 4, 4), (3, 3, 3), 1, 1, 1, 1)
    x, w, scale, shift, stride, padding, dilation, groups, residual, _ = _conv_case(
        case, torch.float64, "ncdhw", True
    )

    def fn(x, w, scale, shift, residual):
        return conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, "silu", residual)

    assert torch.autograd.gradgradcheck(fn, _req(x, w, scale, shift, residual))


def _max_rel_err(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 4e-2), (torch.float16, 1e-2)],
                         ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("op", ["conv3d", "conv2plus1d"])
def test_low_precision_gradients_match_float64(op, dtype, tol):
    if op == "conv3d":
        case = ("g", 2, 4, 6, (5, 7, 7), (3, 3, 3), (1, 2, 2), 1, 1, 2)
        x, w, scale, shift, stride, padding, dilation, groups, residual, _ = _conv_case(case, dtype, "cl3d", True)
        inputs = (x, w, scale, shift, residual)

        def fn(x, w, scale, shift, residual):
            return conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, "silu", residual)

        def oracle(x, w, scale, shift, residual):
            return oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, "silu", residual)
    else:
        x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, _ = _plus1d_case(
            PLUS1D_CASES[1], dtype, "cl3d", True
        )
        inputs = (x, w1, s1, b1, w2, s2, b2, residual)

        def fn(x, w1, s1, b1, w2, s2, b2, residual):
            return conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, stride, padding, "relu", tf, residual)

        def oracle(x, w1, s1, b1, w2, s2, b2, residual):
            return oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, "relu", tf, residual)

    ours = _req(*inputs)
    ref = tuple(t.detach().double().requires_grad_() for t in inputs)
    y = fn(*ours)
    grad = torch.randn(y.shape, dtype=torch.float64)
    y.backward(grad.to(dtype))
    oracle(*ref).backward(grad)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.grad.dtype == dtype and a.grad.shape == a.shape
        assert _max_rel_err(a.grad, b.grad) < tol, (i, _max_rel_err(a.grad, b.grad))


# ----------------------------------------------------------------------------------------------
# torch.library.opcheck, torch.compile, torch.export


def _conv_op_args(layout, with_res, act, groups=2, dtype=torch.float32):
    case = ("o", 2, 4, 6, (5, 7, 6), (3, 3, 3), (1, 2, 2), 1, 1, groups)
    x, w, scale, shift, stride, padding, dilation, groups, residual, _ = _conv_case(case, dtype, layout, with_res)
    x, w, scale, shift, residual = _req(x, w, scale, shift, residual)
    return (x, w, scale, shift, list(stride), list(padding), list(dilation), groups, act, residual)


def _plus1d_op_args(layout, with_res, act, tf, dtype=torch.float32):
    case = ("o", 2, 4, 5, 6, (5, 7, 6), 3, 3, (2, 2, 2), 1, tf)
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, _ = _plus1d_case(case, dtype, layout, with_res)
    x, w1, s1, b1, w2, s2, b2, residual = _req(x, w1, s1, b1, w2, s2, b2, residual)
    return (x, w1, s1, b1, w2, s2, b2, list(stride), list(padding), act, tf, residual)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("sample", [(True, "relu"), (False, "silu")], ids=["residual-relu", "plain-silu"])
def test_opcheck_conv3d_bn_act(layout, sample):
    with_res, act = sample
    torch.library.opcheck(torch.ops.videoconv.conv3d_bn_act.default, _conv_op_args(layout, with_res, act))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("sample", [(True, "relu", False), (False, "silu", True)], ids=["residual-relu", "plain-silu-tf"])
def test_opcheck_conv2plus1d_bn_act(layout, sample):
    with_res, act, tf = sample
    torch.library.opcheck(torch.ops.videoconv.conv2plus1d_bn_act.default, _plus1d_op_args(layout, with_res, act, tf))


class _Block(nn.Module):
    """A small residual (2+1)D block followed by a depthwise conv, made of the two ops."""

    def __init__(self, c=4, mid=6):
        super().__init__()
        self.w1 = nn.Parameter(_weight((mid, c, 1, 3, 3), torch.float32))
        self.w2 = nn.Parameter(_weight((c, mid, 3, 1, 1), torch.float32))
        self.wd = nn.Parameter(_weight((c, 1, 3, 3, 3), torch.float32))
        for name, n in [("1", mid), ("2", c), ("d", c)]:
            scale, shift = _affine(n, torch.float32)
            self.register_parameter("s" + name, nn.Parameter(scale))
            self.register_parameter("b" + name, nn.Parameter(shift))

    def forward(self, x):
        y = conv2plus1d_bn_act(x, self.w1, self.s1, self.b1, self.w2, self.s2, self.b2,
                               padding=1, residual=x)
        return conv3d_bn_act(y, self.wd, self.sd, self.bd, stride=(1, 2, 2), padding=1, groups=4,
                             activation="silu")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compile_fullgraph_aot_eager_forward_backward(layout):
    block = _Block()
    x = torch.randn(2, 4, 5, 8, 8).contiguous(memory_format=LAYOUTS[layout])
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = block(xe), compiled(xc)
    torch.testing.assert_close(yc, ye, atol=0, rtol=0)
    _check_layout(yc, x)
    grads_e = torch.autograd.grad(ye.square().sum(), [xe] + list(block.parameters()))
    grads_c = torch.autograd.grad(yc.square().sum(), [xc] + list(block.parameters()))
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compile_inductor_forward():
    block = _Block().eval()
    x = torch.randn(1, 4, 4, 6, 6).contiguous(memory_format=CL)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(block, fullgraph=True, backend="inductor")
        torch.testing.assert_close(compiled(x), block(x), atol=1e-5, rtol=1e-5)


def test_compile_reports_bad_input_at_trace_time():
    w = _weight((4, 4, 3, 3, 3), torch.float32)
    scale, shift = _affine(4, torch.float32)
    fn = torch.compile(lambda x: conv3d_bn_act(x, w, scale, shift), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="Kernel size can't be greater than actual input size"):
        fn(torch.randn(1, 4, 2, 6, 6))


def test_export():
    block = _Block().eval()
    x = torch.randn(2, 4, 5, 8, 8)
    exported = torch.export.export(block, (x,))
    targets = {n.target for n in exported.graph.nodes if n.op == "call_function"}
    assert torch.ops.videoconv.conv3d_bn_act.default in targets
    assert torch.ops.videoconv.conv2plus1d_bn_act.default in targets
    x2 = torch.randn(2, 4, 5, 8, 8)
    torch.testing.assert_close(exported.module()(x2), block(x2), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# bad inputs: each raises, naming the problem


def _conv_base():
    return dict(
        input=torch.randn(2, 4, 5, 6, 6),
        weight=torch.randn(6, 4, 3, 3, 3),
        scale=torch.ones(6),
        shift=torch.zeros(6),
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        activation="relu",
        residual=None,
    )


CONV_BAD = [
    ("input_4d", dict(input=torch.randn(4, 5, 6, 6)), RuntimeError, r"expected a 5-D input \(N, C, D, H, W\), got a 4-D input"),
    ("weight_4d", dict(weight=torch.randn(6, 4, 3, 3)), RuntimeError, "expected a 5-D weight"),
    ("channels", dict(weight=torch.randn(6, 3, 3, 3, 3)), RuntimeError,
     re.escape("expected input[2, 4, 5, 6, 6] to have 3 channels, but got 4 channels instead")),
    ("groups_channels", dict(weight=torch.randn(6, 4, 3, 3, 3), groups=2), RuntimeError,
     "Given groups=2, weight of size .* to have 8 channels, but got 4"),
    ("out_channels_groups", dict(weight=torch.randn(6, 1, 3, 3, 3), scale=torch.ones(6), groups=4), RuntimeError,
     r"out_channels \(weight.shape\[0\] = 6\) must be divisible by groups=4"),
    ("groups_zero", dict(groups=0), ValueError, "groups must be a positive integer, got 0"),
    ("dtype_weight", dict(weight=torch.randn(6, 4, 3, 3, 3, dtype=torch.float16)), RuntimeError,
     "expected all tensors to have the same dtype, got input float32, weight float16"),
    ("dtype_scale", dict(scale=torch.ones(6, dtype=torch.float64)), RuntimeError, "scale float64"),
    ("dtype_residual", dict(residual=torch.zeros(2, 6, 3, 4, 4, dtype=torch.bfloat16)), RuntimeError,
     "same dtype.*residual bfloat16"),
    ("device", dict(weight=torch.randn(6, 4, 3, 3, 3, device="meta")), RuntimeError,
     "expected all tensors to be on the same device, got input on cpu, weight on meta"),
    ("too_small", dict(input=torch.randn(1, 4, 2, 6, 6)), RuntimeError,
     r"padded input size per channel: \(2 x 6 x 6\).*Kernel size can't be greater than actual input size"),
    ("too_small_dilated", dict(dilation=(1, 3, 3)), RuntimeError,
     r"Kernel size \(with dilation \[1, 3, 3\]\): \(3 x 7 x 7\)"),
    ("int_input", dict(input=torch.ones(2, 4, 5, 6, 6, dtype=torch.int64)), RuntimeError,
     "expected a floating-point input .* got int64"),
    ("int_all", dict(input=torch.ones(2, 4, 5, 6, 6, dtype=torch.int32), weight=torch.ones(6, 4, 3, 3, 3, dtype=torch.int32),
                     scale=torch.ones(6, dtype=torch.int32), shift=torch.ones(6, dtype=torch.int32)), RuntimeError,
     "floating-point input .* got int32"),
    ("scale_length", dict(scale=torch.ones(5)), RuntimeError,
     r"scale must be a 1-D tensor with one value per output channel \(6\), got size \[5\]"),
    ("shift_2d", dict(shift=torch.zeros(6, 1)), RuntimeError, r"shift must be a 1-D tensor .* got size \[6, 1\]"),
    ("residual_shape", dict(residual=torch.zeros(2, 6, 3, 4, 5)), RuntimeError,
     re.escape("residual must have the size of the output [2, 6, 3, 4, 4], got [2, 6, 3, 4, 5]")),
    ("activation", dict(activation="gelu"), ValueError, "unknown activation 'gelu'"),
    ("stride_zero", dict(stride=(1, 0, 1)), ValueError, r"stride must be positive, got \[1, 0, 1\]"),
    ("stride_negative", dict(stride=-1), ValueError, "stride must be positive"),
    ("padding_negative", dict(padding=(0, -1, 0)), ValueError, "padding must be non-negative"),
    ("dilation_zero", dict(dilation=0), ValueError, "dilation must be positive"),
    ("stride_length", dict(stride=(1, 2)), ValueError, "stride must be an int or a sequence of 3 ints"),
    ("padding_same", dict(padding="same"), TypeError, "padding modes such as 'same' are not supported"),
    ("zero_channels", dict(input=torch.randn(2, 0, 5, 6, 6)), RuntimeError, "non-batch dimensions to be non-zero"),
    ("zero_depth", dict(input=torch.randn(2, 4, 0, 6, 6), padding=2), RuntimeError, "non-batch dimensions to be non-zero"),
    ("empty_weight", dict(weight=torch.randn(0, 4, 3, 3, 3), scale=torch.ones(0), shift=torch.ones(0)), RuntimeError,
     "weight must not be empty"),
]


@pytest.mark.parametrize("name,change,exc,match", CONV_BAD, ids=[c[0] for c in CONV_BAD])
def test_conv3d_bn_act_rejects(name, change, exc, match):
    kwargs = dict(_conv_base(), **change)
    with pytest.raises(exc, match=match):
        conv3d_bn_act(**kwargs)


def test_integer_like_conv_parameters_are_accepted():
    # numpy integers (pytorchvideo builds conv strides from numpy arrays; nn.Conv3d takes them)
    np = pytest.importorskip("numpy")
    b = _conv_base()
    got = conv3d_bn_act(**dict(b, stride=(np.int64(1), np.int64(2), np.int64(2)), padding=np.int32(1)))
    expected = conv3d_bn_act(**dict(b, stride=(1, 2, 2), padding=1))
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="stride must be an int or a sequence of 3 ints"):
        conv3d_bn_act(**dict(b, stride=(1.0, 2, 2)))


def test_raw_op_validates_too():
    b = _conv_base()
    args = [b["input"], b["weight"], b["scale"], b["shift"]]
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        torch.ops.videoconv.conv3d_bn_act(*args, [1, 1, 1], [0, 0, 0], [1, 1, 1], 1, "tanh", None)
    with pytest.raises(ValueError, match="stride must be positive"):
        torch.ops.videoconv.conv3d_bn_act(*args, [1, 0, 1], [0, 0, 0], [1, 1, 1], 1, "relu", None)
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        torch.ops.videoconv.conv3d_bn_act(*args, [1, 1, 1], [0, 0, 0], [1, 1, 1], -2, "relu", None)


def _plus1d_base():
    return dict(
        input=torch.randn(2, 4, 5, 6, 6),
        w1=torch.randn(5, 4, 1, 3, 3),
        scale1=torch.ones(5),
        shift1=torch.zeros(5),
        w2=torch.randn(6, 5, 3, 1, 1),
        scale2=torch.ones(6),
        shift2=torch.zeros(6),
        stride=1,
        padding=1,
        activation="relu",
        temporal_first=False,
        residual=None,
    )


PLUS1D_BAD = [
    ("input_3d", dict(input=torch.randn(4, 5, 6)), RuntimeError, "expected a 5-D input"),
    ("w1_not_spatial", dict(w1=torch.randn(5, 4, 3, 3, 3)), RuntimeError,
     r"temporal_first=False \(spatial first\), w1 must be a spatial kernel \(C_mid, C_in, 1, kH, kW\)"),
    ("w2_not_temporal", dict(w2=torch.randn(6, 5, 3, 3, 1)), RuntimeError, "w2 must be a temporal kernel"),
    ("temporal_first_w1_spatial", dict(temporal_first=True), RuntimeError,
     r"temporal_first=True, w2 must be a spatial kernel"),
    ("mid_channels", dict(w2=torch.randn(6, 7, 3, 1, 1)), RuntimeError,
     r"w2 of size \[6, 7, 3, 1, 1\], expected intermediate \(output of w1\)\[2, 5, 5, 6, 6\] to have 7 channels"),
    ("in_channels", dict(input=torch.randn(2, 3, 5, 6, 6)), RuntimeError, "expected input.* to have 4 channels, but got 3"),
    ("scale1_length", dict(scale1=torch.ones(6)), RuntimeError, r"scale1 must be a 1-D tensor with one value per intermediate channel \(5\)"),
    ("shift2_length", dict(shift2=torch.ones(5)), RuntimeError, r"shift2 must be a 1-D tensor with one value per output channel \(6\)"),
    ("residual_shape", dict(residual=torch.zeros(2, 6, 5, 6, 5)), RuntimeError, "residual must have the size of the output"),
    ("too_short", dict(input=torch.randn(1, 4, 2, 6, 6), padding=(0, 1, 1)), RuntimeError,
     r"padded intermediate \(output of w1\) size per channel: \(2 x 6 x 6\)"),
    ("dtype_w2", dict(w2=torch.randn(6, 5, 3, 1, 1, dtype=torch.float64)), RuntimeError, "same dtype.*w2 float64"),
    ("int_input", dict(input=torch.ones(2, 4, 5, 6, 6, dtype=torch.uint8)), RuntimeError, "floating-point input"),
    ("stride_zero", dict(stride=(0, 1, 1)), ValueError, "stride must be positive"),
    ("padding_negative", dict(padding=-1), ValueError, "padding must be non-negative"),
    ("activation", dict(activation="tanh"), ValueError, "unknown activation 'tanh'"),
]


@pytest.mark.parametrize("name,change,exc,match", PLUS1D_BAD, ids=[c[0] for c in PLUS1D_BAD])
def test_conv2plus1d_bn_act_rejects(name, change, exc, match):
    kwargs = dict(_plus1d_base(), **change)
    with pytest.raises(exc, match=match):
        conv2plus1d_bn_act(**kwargs)


def test_public_names():
    assert videoconv.ops.conv3d_bn_act is conv3d_bn_act
    assert videoconv.ops.conv2plus1d_bn_act is conv2plus1d_bn_act
    assert set(videoconv.ops.ACTIVATIONS) == {"relu", "silu", "identity"}
    for fn in (conv3d_bn_act, conv2plus1d_bn_act):
        assert "Args:" in fn.__doc__ and "Returns:" in fn.__doc__
