"""The Triton depthwise Conv3d + BN + activation kernels
(videoconv/triton/depthwise_conv3d_bn_act.py).

Without a GPU these run under ``TRITON_INTERPRET=1`` (set by tests/conftest.py, or on the command
line) on CPU tensors, on tiny shapes. The forward is compared with the float64 reference backend,
the backward with ``aten.convolution_backward`` in float64, each relative to the largest
magnitude of the reference, over the kernels that matter (3x3x3, 5x1x1, 3x1x1, 1x3x3), strides
1, (1,2,2) and (2,2,2), dilation, general padding, odd channel counts and sizes, both layouts,
residual or not, every activation and float32/float16/bfloat16. The last test compiles the
kernels ahead of time for sm_80 and sm_90 and checks that none spills.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

pytestmark = pytest.mark.triton

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not _INTERPRET and not torch.cuda.is_available():
    pytest.skip("needs TRITON_INTERPRET=1 or a CUDA GPU", allow_module_level=True)

from videoconv.backends import reference  # noqa: E402
from videoconv.triton import depthwise_conv3d_bn_act as dw  # noqa: E402

DEVICE = "cpu" if _INTERPRET else "cuda"
CL = torch.channels_last_3d
# max |error| / max |reference| allowed, per dtype
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}
ACTIVATIONS = ("relu", "silu", "identity")

# (kernel, stride, dilation): the X3D / CSN / MViT-pooling shapes, strided and dilated.
GEOMETRIES = [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((3, 3, 3), (1, 2, 2), (1, 1, 1)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((5, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((5, 1, 1), (1, 2, 2), (1, 1, 1)),
    ((3, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((3, 1, 1), (2, 2, 2), (1, 1, 1)),
    ((1, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((1, 3, 3), (1, 2, 2), (1, 1, 1)),
    ((3, 3, 3), (1, 1, 1), (1, 2, 2)),
]
# (N, C, D, H, W), cycled through the cases: odd and even channel counts and sizes.
SIZES = [(2, 12, 4, 7, 9), (1, 7, 5, 6, 5), (2, 24, 3, 5, 8), (1, 5, 6, 9, 7)]


def _geometry_id(g):
    k, s, d = g
    return "k{}_s{}_d{}".format(*("x".join(map(str, t)) for t in (k, s, d)))


def _make(size, kernel, dtype, channels_last, mult=1, residual=False, stride=(1, 1, 1),
          padding=(0, 0, 0), dilation=(1, 1, 1)):
    n, c, d, h, w = size
    x = torch.randn(size, device=DEVICE).to(dtype)
    if channels_last:
        x = x.to(memory_format=CL)
    weight = (torch.randn(c * mult, 1, *kernel, device=DEVICE) / kernel[0]).to(dtype)
    scale = (torch.rand(c * mult, device=DEVICE) + 0.5).to(dtype)
    shift = torch.randn(c * mult, device=DEVICE).to(dtype)
    res = None
    if residual:
        out = [(i + 2 * p - dl * (k - 1) - 1) // s + 1
               for i, k, s, p, dl in zip((d, h, w), kernel, stride, padding, dilation)]
        res = torch.randn(n, c * mult, *out, device=DEVICE).to(dtype)
        if channels_last:
            res = res.to(memory_format=CL)
    return x, weight, scale, shift, res


def _assert_close_rel(actual, expected, tol, what=""):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), what
    err = (actual.double() - expected.double()).abs().max().item()
    ref = expected.abs().max().item()
    assert err <= tol * max(ref, 1e-6), f"{what}: max abs error {err:.3g}, max |ref| {ref:.3g}"


def _check_forward(x, weight, scale, shift, res, stride, padding, dilation, activation):
    y = dw.depthwise_conv3d_bn_act(x, weight, scale, shift, stride, padding, dilation,
                                   activation, res)
    expected = reference.conv3d_bn_act(
        input=x.double(), weight=weight.double(), scale=scale.double(), shift=shift.double(),
        stride=stride, padding=padding, dilation=dilation, groups=x.shape[1],
        activation=activation, residual=None if res is None else res.double())
    assert y.dtype == x.dtype
    want_cl = x.is_contiguous(memory_format=CL) and not x.is_contiguous()
    assert y.is_contiguous(memory_format=CL if want_cl else torch.contiguous_format)
    _assert_close_rel(y, expected, TOL[x.dtype], "forward")
    return y


def _check_backward(x, weight, stride, padding, dilation, grad_z=None, mask=(True, True)):
    if grad_z is None:
        z = torch.nn.functional.conv3d(x.double(), weight.double(), None, stride, padding,
                                       dilation, x.shape[1])
        grad_z = torch.randn(z.shape, device=DEVICE).to(x.dtype)
        if x.is_contiguous(memory_format=CL):
            grad_z = grad_z.to(memory_format=CL)
    gi, gw = dw.depthwise_conv3d_backward(grad_z, x, weight, stride, padding, dilation, mask)
    ref_gi, ref_gw, _ = torch.ops.aten.convolution_backward(
        grad_z.double(), x.double(), weight.double(), None, list(stride), list(padding),
        list(dilation), False, [0, 0, 0], x.shape[1], [True, True, False])
    tol = TOL[x.dtype]
    if mask[0]:
        assert gi.dtype == x.dtype
        want_cl = x.is_contiguous(memory_format=CL) and not x.is_contiguous()
        assert gi.is_contiguous(memory_format=CL if want_cl else torch.contiguous_format)
        _assert_close_rel(gi, ref_gi, tol, "grad_input")
    else:
        assert gi is None
    if mask[1]:
        assert gw.dtype == weight.dtype and gw.shape == weight.shape
        _assert_close_rel(gw, ref_gw, tol, "grad_weight")
    else:
        assert gw is None
    return gi, gw


def _padding(kernel, dilation):
    return tuple(d * (k // 2) for k, d in zip(kernel, dilation))


# ----------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "ncdhw"])
@pytest.mark.parametrize("index,geometry", list(enumerate(GEOMETRIES)),
                         ids=[_geometry_id(g) for g in GEOMETRIES])
def test_forward_float32(index, geometry, channels_last):
    kernel, stride, dilation = geometry
    padding = _padding(kernel, dilation)
    activation = ACTIVATIONS[index % 3]
    args = _make(SIZES[index % len(SIZES)], kernel, torch.float32, channels_last,
                 residual=index % 2 == 0, stride=stride, padding=padding, dilation=dilation)
    _check_forward(*args, stride, padding, dilation, activation)


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "ncdhw"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_forward_half_precision(dtype, activation, channels_last):
    kernel, stride, padding = (3, 3, 3), (1, 2, 2), (1, 1, 1)
    residual = activation != "silu" or channels_last
    args = _make((2, 24, 4, 7, 6), kernel, dtype, channels_last, residual=residual,
                 stride=stride, padding=padding)
    _check_forward(*args, stride, padding, (1, 1, 1), activation)


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "ncdhw"])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((3, 3, 3), (2, 1, 2), (0, 1, 2), (2, 1, 1)),
    ((3, 5, 5), (1, 2, 2), (1, 2, 2), (1, 1, 1)),  # 75 taps: the temporal loop
    ((2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1)),  # even kernel, no padding
])
def test_forward_general_conv_parameters(kernel, stride, padding, dilation, channels_last):
    args = _make((1, 6, 6, 7, 8), kernel, torch.float32, channels_last, residual=True,
                 stride=stride, padding=padding, dilation=dilation)
    _check_forward(*args, stride, padding, dilation, "silu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "ncdhw"])
def test_forward_channel_multiplier(channels_last, dtype):
    kernel, stride, padding = (3, 3, 3), (1, 2, 2), (1, 1, 1)
    args = _make((2, 5, 4, 7, 6), kernel, dtype, channels_last, mult=3, residual=True,
                 stride=stride, padding=padding)
    _check_forward(*args, stride, padding, (1, 1, 1), "relu")


def test_forward_mixed_layouts():
    """A channels_last input with an NCDHW residual and a channels_last weight."""
    kernel, stride, padding = (3, 3, 3), (1, 1, 1), (1, 1, 1)
    x, weight, scale, shift, res = _make((2, 8, 4, 5, 6), kernel, torch.float32, True,
                                         residual=True, stride=stride, padding=padding)
    y = _check_forward(x, weight.to(memory_format=CL), scale, shift, res.contiguous(), stride,
                       padding, (1, 1, 1), "relu")
    assert y.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("dtype,channels,offset,expected_vec", [
    (torch.bfloat16, 24, 0, 8),
    (torch.bfloat16, 12, 0, 4),
    (torch.float32, 12, 0, 4),
    (torch.float32, 10, 0, 2),
    (torch.float16, 7, 0, 1),
    (torch.bfloat16, 16, 1, 1),  # an input one element into its storage: misaligned
])
def test_forward_vector_width(dtype, channels, offset, expected_vec):
    """The launcher's VEC (16-byte vectors where alignment allows) and the results with it."""
    kernel, stride, padding = (3, 3, 3), (1, 2, 2), (1, 1, 1)
    x, weight, scale, shift, _ = _make((1, channels, 3, 6, 5), kernel, dtype, True,
                                       stride=stride, padding=padding)
    if offset:
        buf = torch.empty(x.numel() + offset, dtype=dtype, device=DEVICE)
        x = buf[offset:].view(1, 3, 6, 5, channels).copy_(x.permute(0, 2, 3, 4, 1))
        x = x.permute(0, 4, 1, 2, 3)
        assert x.is_contiguous(memory_format=CL)
    y = _check_forward(x, weight, scale, shift, None, stride, padding, (1, 1, 1), "relu")
    assert dw._vector_width([x, y], [], [channels]) == expected_vec


# ----------------------------------------------------------------------------------------------
# backward

_BWD_SIZES = [(2, 12, 4, 6, 7), (1, 7, 5, 5, 6), (1, 16, 3, 7, 5)]


# Every geometry in channels_last; in NCDHW (slower to interpret) the strided and dilated ones.
_BWD_CASES = ([(i, g, True) for i, g in enumerate(GEOMETRIES)]
              + [(i, GEOMETRIES[i], False) for i in (1, 2, 4, 6, 9)])


@pytest.mark.parametrize("index,geometry,channels_last", _BWD_CASES,
                         ids=[f"{_geometry_id(g)}-{'cl' if cl else 'ncdhw'}"
                              for _, g, cl in _BWD_CASES])
def test_backward_float32(index, geometry, channels_last):
    kernel, stride, dilation = geometry
    padding = _padding(kernel, dilation)
    x, weight, *_ = _make(_BWD_SIZES[index % len(_BWD_SIZES)], kernel, torch.float32,
                          channels_last)
    _check_backward(x, weight, stride, padding, dilation)


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "ncdhw"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_backward_half_precision(dtype, channels_last):
    kernel, stride, padding = (3, 3, 3), (1, 2, 2), (1, 1, 1)
    x, weight, *_ = _make((1, 16, 4, 7, 6), kernel, dtype, channels_last)
    _check_backward(x, weight, stride, padding, (1, 1, 1))


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "ncdhw"])
def test_backward_channel_multiplier(channels_last):
    kernel, stride, padding = (3, 1, 1), (2, 2, 2), (1, 0, 0)
    x, weight, *_ = _make((2, 5, 5, 6, 7), kernel, torch.float32, channels_last, mult=2)
    _check_backward(x, weight, stride, padding, (1, 1, 1))


def test_backward_general_conv_parameters():
    kernel, stride, padding, dilation = (3, 3, 3), (2, 1, 2), (0, 1, 2), (2, 1, 1)
    x, weight, *_ = _make((1, 6, 7, 6, 7), kernel, torch.float32, True)
    _check_backward(x, weight, stride, padding, dilation)


def test_backward_output_mask_and_grad_z_layout():
    """Only what output_mask asks for; grad_z in another layout than the input."""
    kernel, stride, padding = (1, 3, 3), (1, 2, 2), (0, 1, 1)
    x, weight, *_ = _make((2, 8, 3, 7, 6), kernel, torch.float32, True)
    grad_z = torch.randn(2, 8, 3, 4, 3, device=DEVICE)  # NCDHW, input channels_last
    _check_backward(x, weight, stride, padding, (1, 1, 1), grad_z=grad_z, mask=(True, False))
    _check_backward(x, weight, stride, padding, (1, 1, 1), grad_z=grad_z, mask=(False, True))


@pytest.mark.parametrize("target", [1, 10 ** 6], ids=["one_chunk", "one_tile_per_chunk"])
def test_weight_grad_chunking_is_deterministic(monkeypatch, target):
    """The two-stage reduction is right whatever the chunking, and bitwise reproducible."""
    monkeypatch.setattr(dw, "_WGRAD_TARGET_PROGRAMS", target)
    kernel, stride, padding = (3, 1, 1), (1, 1, 1), (1, 0, 0)
    x, weight, *_ = _make((2, 12, 5, 9, 8), kernel, torch.float32, True)
    block_p, block_c, _ = dw._WGRAD_TILE_CL
    n_tiles = -(-(2 * 5 * 9 * 8) // block_p)
    chunks, tiles_per_chunk = dw._weight_grad_chunks(n_tiles, 3 * -(-12 // block_c))
    assert (chunks, tiles_per_chunk) == ((1, n_tiles) if target == 1 else (n_tiles, 1))
    grad_z = torch.randn(2, 12, 5, 9, 8, device=DEVICE).to(memory_format=CL)
    _, gw1 = _check_backward(x, weight, stride, padding, (1, 1, 1), grad_z=grad_z,
                             mask=(False, True))
    _, gw2 = dw.depthwise_conv3d_backward(grad_z, x, weight, stride, padding, (1, 1, 1),
                                          (False, True))
    assert torch.equal(gw1, gw2)


# ----------------------------------------------------------------------------------------------
# what is supported


def test_not_supported_reasons():
    x = torch.randn(1, 8, 3, 4, 4, device=DEVICE)
    conv = dict(stride=(1, 1, 1), padding=(1, 1, 1), dilation=(1, 1, 1))
    w = torch.randn(8, 1, 3, 3, 3, device=DEVICE)
    assert dw.not_supported_reasons(x, w, groups=8, **conv) == []
    assert dw.not_supported_reasons(x, torch.randn(16, 1, 3, 3, 3, device=DEVICE), groups=8,
                                    **conv) == []  # channel multiplier 2
    reasons = dw.not_supported_reasons(x, torch.randn(8, 8, 3, 3, 3, device=DEVICE), groups=1,
                                       **conv)
    assert any("depthwise" in r for r in reasons)
    reasons = dw.not_supported_reasons(x, torch.randn(8, 2, 3, 3, 3, device=DEVICE), groups=4,
                                       **conv)
    assert any("depthwise" in r for r in reasons)
    reasons = dw.not_supported_reasons(x.double(), w.double(), groups=8, **conv)
    assert any("float64" in r for r in reasons)


# ----------------------------------------------------------------------------------------------
# ahead-of-time compilation


def test_aot_compile_sm80_sm90_without_spills():
    from videoconv.triton.aot import compile_all_in_subprocess

    variants = dw.aot_variants()
    assert len({v.name for v in variants}) == len(variants)
    reports = compile_all_in_subprocess(["sm_80", "sm_90"], modules=[dw.__name__])
    assert len(reports) == 2 * len(variants)
    bad = [r for r in reports if not r.ok]
    assert not bad, "\n".join(f"{r.name} {r.arch}: error={r.error} spills="
                              f"{r.spill_stores}/{r.spill_loads} regs={r.registers}" for r in bad)
    assert all(r.registers for r in reports)
