"""The CUDA C++ kernels (csrc/cuda) through their private ops, against the float64 oracle.

Needs a GPU and a CUDA build of the extension: without a GPU the ``cuda`` mark skips the module
(tests/conftest.py); with a GPU but without the kernels registered (extension built for the CPU)
the tests skip saying so, unless ``VIDEOCONV_REQUIRE_EXTENSION=1`` makes that a failure.

Covered: ``_conv3d_bn_act_cuda`` (CUTLASS implicit GEMM: aligned, channel-padded stem, scalar
epilogue for odd C_out, grouped launches; depthwise routed to the direct kernel),
``_depthwise_conv3d_bn_act_cuda`` and ``_depthwise_conv3d_backward_cuda`` (values, output_mask,
bitwise determinism of grad_weight), ``_conv2plus1d_bn_act_cuda`` (both orders, strides, odd
widths); the layout contract; and that the plan (``videoconv::_cuda_plan``) refuses exactly what
the launchers refuse.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from videoconv.backends import cuda_plan

from test_ops import (  # shape tables and the float64 oracle shared with test_ops
    ACTS,
    CONV_CASES,
    LAYOUTS,
    PLUS1D_CASES,
    _affine,
    _conv_case,
    _plus1d_case,
    _weight,
    oracle_conv2plus1d,
    oracle_conv3d_bn_act,
)

pytestmark = pytest.mark.cuda

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ids = lambda d: str(d).replace("torch.", "")  # noqa: E731

#: Largest |error| over the output's largest |value|. float32 runs the CUTLASS path in TF32
#: (10-bit mantissa: ~1e-3 relative per product); the direct kernels compute exact float32.
REL_TOL_TENSOR_CORE = {torch.float32: 5e-3, torch.float16: 5e-3, torch.bfloat16: 3e-2}
REL_TOL_DIRECT = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}

_OPS = (
    "videoconv::_conv3d_bn_act_cuda",
    "videoconv::_depthwise_conv3d_bn_act_cuda",
    "videoconv::_depthwise_conv3d_backward_cuda",
    "videoconv::_conv2plus1d_bn_act_cuda",
)


def _registered(name: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
    except RuntimeError:
        return False


@pytest.fixture(autouse=True)
def _cuda_kernels():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    missing = [name for name in _OPS if not _registered(name)]
    if missing:
        if os.environ.get("VIDEOCONV_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"CUDA kernels not registered: {missing}")
        pytest.skip(f"videoconv._C was built without CUDA kernels ({missing[0]} has no CUDA kernel)")
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the kernels need compute capability 8.0 or newer")


def _cuda(*tensors):
    return tuple(None if t is None else t.cuda() for t in tensors)


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def _check_layout(y, x):
    if x.is_contiguous():
        assert y.is_contiguous(), y.stride()
    else:
        assert y.is_contiguous(memory_format=torch.channels_last_3d), y.stride()


def _run_conv(x, w, scale, shift, stride, padding, dilation, groups, act, residual):
    return torch.ops.videoconv._conv3d_bn_act_cuda(
        x, w, scale, shift, list(stride), list(padding), list(dilation), groups, act, residual, True)


# ---------------------------------------------------------------------------------------------
# conv3d_bn_act


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv3d_bn_act_matches_float64(case, dtype, layout, with_residual, act):
    x, w, scale, shift, stride, padding, dilation, groups, residual, out = _conv_case(
        case, dtype, layout, with_residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, act,
                                    residual).cuda()
    x, w, scale, shift, residual = _cuda(x, w, scale, shift, residual)
    plan = cuda_plan.plan_conv3d(x, w, stride, padding, dilation, groups, residual, allow_tf32=True)
    if not plan.ok:
        # The plan and the launcher refuse the same problems, with the same reasons.
        with pytest.raises(RuntimeError, match="cannot run"):
            _run_conv(x, w, scale, shift, stride, padding, dilation, groups, act, residual)
        return
    y = _run_conv(x, w, scale, shift, stride, padding, dilation, groups, act, residual)
    assert list(y.shape) == out and y.dtype == dtype and y.is_cuda
    _check_layout(y, x)
    tol = (REL_TOL_DIRECT if plan.kernel == "depthwise_direct" else REL_TOL_TENSOR_CORE)[dtype]
    assert _rel_err(y, expected) < tol, (plan.kernel, _rel_err(y, expected))


# Shapes that exercise several CUTLASS tiles, K-loop iterations and the alignment fallbacks.
# name, N, C_in, C_out, (D, H, W), kernel, stride, padding, dilation, groups
LARGE_CASES = [
    ("r3d_layer_aligned", 2, 64, 128, (8, 20, 20), (3, 3, 3), 1, 1, 1, 1),
    ("r3d_down_s222", 2, 64, 128, (8, 20, 20), (3, 3, 3), 2, 1, 1, 1),
    ("narrow_tile_c_out_64", 2, 64, 64, (4, 16, 16), (1, 1, 1), 1, 0, 1, 1),
    ("stem_c_in_3_padded", 2, 3, 64, (8, 40, 40), (3, 7, 7), (1, 2, 2), (1, 3, 3), 1, 1),
    ("odd_c_out_921_scalar_epilogue", 1, 64, 921, (2, 7, 7), (3, 1, 1), 1, (1, 0, 0), 1, 1),
    ("odd_c_in_230_padded", 1, 230, 64, (4, 9, 9), (1, 3, 3), 1, (0, 1, 1), 1, 1),
    ("grouped_4x16", 2, 64, 128, (4, 12, 12), (3, 3, 3), 1, 1, 1, 4),
    ("dilated", 1, 32, 48, (6, 15, 15), (3, 3, 3), 1, (1, 2, 2), (1, 2, 2), 1),
    ("x3d_depthwise_vec", 2, 48, 48, (6, 17, 17), (3, 3, 3), (1, 2, 2), 1, 1, 48),
]


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", LARGE_CASES, ids=[c[0] for c in LARGE_CASES])
def test_conv3d_bn_act_larger_shapes(case, dtype, layout, with_residual):
    x, w, scale, shift, stride, padding, dilation, groups, residual, out = _conv_case(
        case, dtype, layout, with_residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, groups, "silu",
                                    residual).cuda()
    x, w, scale, shift, residual = _cuda(x, w, scale, shift, residual)
    plan = cuda_plan.plan_conv3d(x, w, stride, padding, dilation, groups, residual, allow_tf32=True)
    assert plan.ok, plan.reasons
    y = _run_conv(x, w, scale, shift, stride, padding, dilation, groups, "silu", residual)
    assert list(y.shape) == out
    _check_layout(y, x)
    tol = (REL_TOL_DIRECT if plan.kernel == "depthwise_direct" else REL_TOL_TENSOR_CORE)[dtype]
    assert _rel_err(y, expected) < tol, (plan.kernel, _rel_err(y, expected))


def test_conv3d_refusals_are_readable():
    x = torch.randn(1, 8, 4, 8, 8, device="cuda", dtype=torch.float64)
    w = torch.randn(8, 8, 3, 3, 3, device="cuda", dtype=torch.float64)
    s = torch.ones(8, device="cuda", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float64"):
        _run_conv(x, w, s, s, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "relu", None)
    x, w, s = x.float(), w.float(), s.float()
    with pytest.raises(RuntimeError, match="TF32"):
        torch.ops.videoconv._conv3d_bn_act_cuda(x, w, s, s, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1,
                                                "relu", None, False)
    bad_residual = torch.randn(1, 8, 4, 8, 7, device="cuda")
    with pytest.raises(RuntimeError, match="residual"):
        _run_conv(x, w, s, s, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "relu", bad_residual)


def test_conv3d_on_a_misaligned_view():
    # A channels_last_3d view starting one element in: the launcher copies it to an aligned
    # buffer rather than issuing misaligned 128-bit loads.
    base = torch.randn(2 * 16 * 4 * 8 * 8 + 1, device="cuda", dtype=torch.float16)
    x = base[1:].view(2, 4, 8, 8, 16).permute(0, 4, 1, 2, 3)
    assert x.is_contiguous(memory_format=torch.channels_last_3d) and x.data_ptr() % 16 != 0
    w = _weight((16, 16, 3, 3, 3), torch.float16).cuda()
    scale, shift = (t.cuda() for t in _affine(16, torch.float16))
    y = _run_conv(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "relu", None)
    expected = oracle_conv3d_bn_act(x.cpu(), w.cpu(), scale.cpu(), shift.cpu(), (1, 1, 1),
                                    (1, 1, 1), (1, 1, 1), 1, "relu", None).cuda()
    assert _rel_err(y, expected) < REL_TOL_TENSOR_CORE[torch.float16]


# ---------------------------------------------------------------------------------------------
# depthwise forward and backward

# name, N, C, (D, H, W), kernel, stride, padding, dilation
DEPTHWISE_CASES = [
    ("x3d_s111", 2, 48, (6, 9, 9), (3, 3, 3), 1, 1, 1),
    ("x3d_s122", 2, 64, (5, 11, 11), (3, 3, 3), (1, 2, 2), 1, 1),
    ("csn_s222", 1, 32, (7, 9, 9), (3, 3, 3), 2, 1, 1),
    ("odd_c5_t5", 1, 5, (7, 7, 5), (5, 3, 3), 1, (2, 1, 1), 1),
    ("dilated_c24", 1, 24, (6, 12, 12), (3, 3, 3), 1, (1, 2, 2), (1, 2, 2)),
    ("many_depths_c8", 1, 8, (20, 6, 6), (3, 3, 3), (2, 1, 1), 1, 1),
]


def _depthwise_inputs(case, dtype, layout):
    _, n, c, (d, h, w), kernel, stride, padding, dilation = case
    t3 = lambda v: (v,) * 3 if isinstance(v, int) else tuple(v)  # noqa: E731
    x = torch.randn(n, c, d, h, w, dtype=torch.float64).to(dtype).contiguous(
        memory_format=LAYOUTS[layout])
    weight = _weight((c, 1) + tuple(kernel), dtype)
    return x, weight, t3(stride), t3(padding), t3(dilation)


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=[c[0] for c in DEPTHWISE_CASES])
def test_depthwise_forward_matches_float64(case, dtype, layout, with_residual):
    x, w, stride, padding, dilation = _depthwise_inputs(case, dtype, layout)
    c = x.shape[1]
    scale, shift = _affine(c, dtype)
    z = F.conv3d(x.double(), w.double(), None, stride, padding, dilation, c)
    residual = torch.randn(z.shape, dtype=torch.float64).to(dtype) if with_residual else None
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, c, "relu",
                                    residual).cuda()
    x, w, scale, shift, residual = _cuda(x, w, scale, shift, residual)
    y = torch.ops.videoconv._depthwise_conv3d_bn_act_cuda(
        x, w, scale, shift, list(stride), list(padding), list(dilation), "relu", residual)
    _check_layout(y, x)
    assert _rel_err(y, expected) < REL_TOL_DIRECT[dtype]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=[c[0] for c in DEPTHWISE_CASES])
def test_depthwise_backward_matches_float64(case, dtype, layout):
    x, w, stride, padding, dilation = _depthwise_inputs(case, dtype, layout)
    c = x.shape[1]
    z = F.conv3d(x.double(), w.double(), None, stride, padding, dilation, c)
    grad = torch.randn(z.shape, dtype=torch.float64).to(dtype)
    exp_dx, exp_dw, _ = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), w.double(), None, list(stride), list(padding), list(dilation),
        False, [0, 0, 0], c, [True, True, False])
    x, w, grad = _cuda(x, w, grad)
    dx, dw = torch.ops.videoconv._depthwise_conv3d_backward_cuda(
        grad, x, w, list(stride), list(padding), list(dilation), [True, True])
    assert dx.shape == x.shape and dw.shape == w.shape
    assert dx.dtype == dtype and dw.dtype == dtype
    _check_layout(dx, x)
    # grad_weight sums N*Z*P*Q products per entry: compare relative to its largest entry.
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    assert _rel_err(dx, exp_dx.cuda()) < tol
    assert _rel_err(dw, exp_dw.cuda()) < tol


def test_depthwise_backward_is_deterministic_and_honours_the_mask():
    x, w, stride, padding, dilation = _depthwise_inputs(DEPTHWISE_CASES[1], torch.float32, "cl3d")
    x, w = _cuda(x, w)
    z_shape = F.conv3d(x, w, None, stride, padding, dilation, x.shape[1]).shape
    grad = torch.randn(z_shape, device="cuda")
    args = (grad, x, w, list(stride), list(padding), list(dilation))
    first = torch.ops.videoconv._depthwise_conv3d_backward_cuda(*args, [True, True])
    second = torch.ops.videoconv._depthwise_conv3d_backward_cuda(*args, [True, True])
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    dx_only = torch.ops.videoconv._depthwise_conv3d_backward_cuda(*args, [True, False])
    assert dx_only[1].numel() == 0 and torch.equal(dx_only[0], first[0])
    dw_only = torch.ops.videoconv._depthwise_conv3d_backward_cuda(*args, [False, True])
    assert dw_only[0].numel() == 0 and torch.equal(dw_only[1], first[1])


# ---------------------------------------------------------------------------------------------
# conv2plus1d_bn_act


def _run_plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf, residual):
    return torch.ops.videoconv._conv2plus1d_bn_act_cuda(
        x, w1, s1, b1, w2, s2, b2, list(stride), list(padding), act, tf, residual)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", PLUS1D_CASES, ids=[c[0] for c in PLUS1D_CASES])
def test_conv2plus1d_matches_float64(case, dtype, layout, with_residual, act):
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, out = _plus1d_case(
        case, dtype, layout, with_residual)
    expected = oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf,
                                  residual).cuda()
    x, w1, s1, b1, w2, s2, b2, residual = _cuda(x, w1, s1, b1, w2, s2, b2, residual)
    plan = cuda_plan.plan_conv2plus1d(x, w1, w2, stride, padding, tf, residual)
    assert plan.ok, plan.reasons
    y = _run_plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf, residual)
    assert list(y.shape) == out and y.dtype == dtype
    _check_layout(y, x)
    # The intermediate is rounded to the dtype (as the eager chain stores it), the oracle keeps
    # float64: 16-bit tolerances cover one extra rounding.
    assert _rel_err(y, expected) < REL_TOL_DIRECT[dtype] * (1 if dtype == torch.float32 else 2)


# name, N, C_in, C_mid, C_out, (D, H, W), kT, kS, stride, padding, temporal_first
PLUS1D_LARGE = [
    ("r2plus1d_layer1_like", 2, 16, 36, 24, (8, 20, 20), 3, 3, 1, 1, False),
    ("r2plus1d_down_like", 2, 16, 45, 32, (8, 20, 20), 3, 3, 2, 1, False),
    ("odd_cmid_230", 1, 8, 230, 16, (4, 10, 10), 3, 3, 1, 1, False),
    ("temporal_first_wide", 2, 24, 40, 48, (8, 14, 14), 3, 3, (1, 2, 2), 1, True),
    ("cout_tiles_300", 1, 8, 12, 300, (4, 6, 6), 3, 3, 1, 1, False),
]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", PLUS1D_LARGE, ids=[c[0] for c in PLUS1D_LARGE])
def test_conv2plus1d_larger_shapes(case, dtype, layout):
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, out = _plus1d_case(
        case, dtype, layout, True)
    expected = oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, "relu", tf,
                                  residual).cuda()
    x, w1, s1, b1, w2, s2, b2, residual = _cuda(x, w1, s1, b1, w2, s2, b2, residual)
    y = _run_plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, "relu", tf, residual)
    assert list(y.shape) == out
    _check_layout(y, x)
    assert _rel_err(y, expected) < REL_TOL_DIRECT[dtype] * (1 if dtype == torch.float32 else 2)
