"""The direct CUDA kernels, run on the CPU under an emulation of the CUDA execution model.

tests/emulation/emulated_ops.cpp compiles csrc/cuda/depthwise_conv3d_kernels.cuh and
csrc/cuda/conv2plus1d_kernels.cuh as host C++ (tests/emulation/cuda_emulation.h: one block at a
time, 256 std::threads per block, a std::barrier for __syncthreads, shared memory poisoned with
NaNs before every block) and runs them through the same host-side preparation as the CUDA ops.
The results are compared with the float64 oracle.

This checks, without a GPU, the kernels' index arithmetic (halos, the depth ring, strides,
dilation, channel tails, vector and scalar paths), their barrier structure, their epilogues and
the tile plans they are launched with. It cannot check what only hardware shows (timing,
registers, coalescing); the CUTLASS kernel (tensor-core PTX) is not emulated. Small num_sms
values force the z-chunking and grad_weight chunking paths.

Needs a C++20 compiler and the CUDA toolkit's headers (cuda_fp16.h); skips without them. The
one-time build takes about a minute.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch
import torch.nn.functional as F

from videoconv import cuda_sources

from test_ops import LAYOUTS, PLUS1D_CASES, _affine, _plus1d_case, _weight
from test_ops import oracle_conv2plus1d, oracle_conv3d_bn_act

HERE = os.path.dirname(os.path.abspath(__file__))
REL_TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ids = lambda d: str(d).replace("torch.", "")  # noqa: E731


def _cuda_include_dir():
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    nvcc = cuda_sources.find_nvcc()
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    candidates.append("/usr/local/cuda/include")
    for c in candidates:
        if os.path.isfile(os.path.join(c, "cuda_fp16.h")):
            return c
    return None


@pytest.fixture(scope="module")
def emu():
    include = _cuda_include_dir()
    if include is None:
        pytest.skip("the CUDA toolkit's headers (cuda_fp16.h) are not installed")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")
    from torch.utils.cpp_extension import load

    # A fixed directory: re-runs rebuild only what changed (ninja tracks the headers).
    build_dir = os.path.join(tempfile.gettempdir(), "videoconv_cuda_emulation")
    os.makedirs(build_dir, exist_ok=True)
    load(
        name="videoconv_cuda_emulation",
        sources=[os.path.join(HERE, "emulation", "emulated_ops.cpp")],
        extra_include_paths=[os.path.join(cuda_sources.repo_root(), "csrc"),
                             os.path.join(HERE, "emulation"), include],
        extra_cflags=["-O2", "-pthread"],
        extra_ldflags=["-pthread"],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.videoconv_emu


def _rel_err(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def _check_layout(y, x):
    if x.is_contiguous():
        assert y.is_contiguous()
    else:
        assert y.is_contiguous(memory_format=torch.channels_last_3d)


def _t3(v):
    return (v,) * 3 if isinstance(v, int) else tuple(v)


# name, N, C, (D, H, W), kernel, stride, padding, dilation
DEPTHWISE_CASES = [
    ("x3d_s111_vec", 1, 16, (4, 6, 7), (3, 3, 3), 1, 1, 1),
    ("x3d_s122_vec", 2, 16, (5, 9, 9), (3, 3, 3), (1, 2, 2), 1, 1),
    ("s222_two_channel_blocks", 1, 72, (5, 6, 6), (3, 3, 3), 2, 1, 1),
    ("odd_c5_t5_scalar", 1, 5, (7, 5, 4), (5, 3, 3), 1, (2, 1, 1), 1),
    ("dilated", 1, 8, (6, 9, 9), (3, 3, 3), 1, (1, 2, 2), (1, 2, 2)),
    ("depth_stride2_ring", 1, 8, (11, 4, 4), (3, 3, 3), (2, 1, 1), 1, 1),
    ("no_padding_t1", 2, 12, (3, 7, 6), (1, 3, 3), 1, 0, 1),
]


def _depthwise_inputs(case, dtype, layout):
    _, n, c, (d, h, w), kernel, stride, padding, dilation = case
    x = torch.randn(n, c, d, h, w, dtype=torch.float64).to(dtype)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    weight = _weight((c, 1) + tuple(kernel), dtype)
    return x, weight, _t3(stride), _t3(padding), _t3(dilation)


@pytest.mark.parametrize("num_sms", [132, 1])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=[c[0] for c in DEPTHWISE_CASES])
def test_depthwise_forward(emu, case, dtype, layout, with_residual, num_sms):
    x, w, stride, padding, dilation = _depthwise_inputs(case, dtype, layout)
    c = x.shape[1]
    scale, shift = _affine(c, dtype)
    z_shape = F.conv3d(x.double(), w.double(), None, stride, padding, dilation, c).shape
    residual = torch.randn(z_shape, dtype=torch.float64).to(dtype) if with_residual else None
    act = "silu" if with_residual else "relu"
    y = emu.depthwise_forward(x, w, scale, shift, list(stride), list(padding), list(dilation), act,
                              residual, num_sms)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, c, act, residual)
    assert y.shape == expected.shape and y.dtype == dtype
    _check_layout(y, x)
    assert _rel_err(y, expected) < REL_TOL[dtype]


@pytest.mark.parametrize("num_sms", [132, 2])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=[c[0] for c in DEPTHWISE_CASES])
def test_depthwise_backward(emu, case, dtype, layout, num_sms):
    x, w, stride, padding, dilation = _depthwise_inputs(case, dtype, layout)
    c = x.shape[1]
    z_shape = F.conv3d(x.double(), w.double(), None, stride, padding, dilation, c).shape
    grad = torch.randn(z_shape, dtype=torch.float64).to(dtype)
    exp_dx, exp_dw, _ = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), w.double(), None, list(stride), list(padding), list(dilation),
        False, [0, 0, 0], c, [True, True, False])
    dx, dw = emu.depthwise_backward(grad, x, w, list(stride), list(padding), list(dilation),
                                    [True, True], num_sms)
    assert dx.shape == x.shape and dw.shape == w.shape and dx.dtype == dtype
    _check_layout(dx, x)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    assert _rel_err(dx, exp_dx) < tol
    assert _rel_err(dw, exp_dw) < tol


def test_depthwise_backward_mask_and_determinism(emu):
    x, w, stride, padding, dilation = _depthwise_inputs(DEPTHWISE_CASES[1], torch.float32, "cl3d")
    z_shape = F.conv3d(x, w, None, stride, padding, dilation, x.shape[1]).shape
    grad = torch.randn(z_shape)
    args = (grad, x, w, list(stride), list(padding), list(dilation))
    both = emu.depthwise_backward(*args, [True, True], 3)
    again = emu.depthwise_backward(*args, [True, True], 3)
    assert torch.equal(both[0], again[0]) and torch.equal(both[1], again[1])
    dx_only = emu.depthwise_backward(*args, [True, False], 3)
    assert dx_only[1].numel() == 0 and torch.equal(dx_only[0], both[0])
    dw_only = emu.depthwise_backward(*args, [False, True], 3)
    assert dw_only[0].numel() == 0 and torch.equal(dw_only[1], both[1])


def test_depthwise_refusals_are_readable(emu):
    x = torch.randn(1, 4, 4, 6, 6)
    w = torch.randn(8, 1, 3, 3, 3)  # channel multiplier 2
    s = torch.ones(8)
    with pytest.raises(RuntimeError, match="channel multiplier"):
        emu.depthwise_forward(x, w, s, s, [1, 1, 1], [1, 1, 1], [1, 1, 1], "relu", None, 132)
    w = torch.randn(4, 1, 3, 3, 3)
    with pytest.raises(RuntimeError, match="residual"):
        emu.depthwise_forward(x, w, s[:4], s[:4], [1, 1, 1], [1, 1, 1], [1, 1, 1], "relu",
                              torch.randn(1, 4, 4, 6, 5), 132)
    with pytest.raises(RuntimeError, match="float64"):
        emu.depthwise_forward(x.double(), w.double(), s[:4].double(), s[:4].double(), [1, 1, 1],
                              [1, 1, 1], [1, 1, 1], "relu", None, 132)


# name, N, C_in, C_mid, C_out, (D, H, W), kT, kS, stride, padding, temporal_first
PLUS1D_EXTRA = [
    ("odd_widths", 1, 5, 23, 13, (5, 6, 7), 3, 3, 1, 1, False),
    ("cin_chunks_and_cout_tiles", 1, 20, 9, 70, (3, 5, 5), 3, 3, 1, 1, False),
    ("temporal_first_s122", 2, 6, 10, 12, (6, 9, 8), 3, 3, (1, 2, 2), 1, True),
]


@pytest.mark.parametrize("num_sms", [132, 1])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", PLUS1D_CASES + PLUS1D_EXTRA,
                         ids=[c[0] for c in PLUS1D_CASES + PLUS1D_EXTRA])
def test_conv2plus1d(emu, case, dtype, with_residual, num_sms):
    layout = "cl3d" if with_residual else "ncdhw"
    x, w1, s1, b1, w2, s2, b2, stride, padding, tf, residual, out = _plus1d_case(
        case, dtype, layout, with_residual)
    act = "silu" if with_residual else "relu"
    y = emu.conv2plus1d(x, w1, s1, b1, w2, s2, b2, list(stride), list(padding), act, tf, residual,
                        num_sms)
    expected = oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, stride, padding, act, tf, residual)
    assert list(y.shape) == out and y.dtype == dtype
    _check_layout(y, x)
    assert _rel_err(y, expected) < REL_TOL[dtype] * (1 if dtype == torch.float32 else 2)


# ---------------------------------------------------------------------------------------------
# the statistics pass of the cuda backend's conv3d_bn_stats (csrc/cuda/channel_stats_kernels.cuh)

# name, (N, C, D, H, W): tails in every blocking (rows not a multiple of 128, channels not of
# 32, planes not of 4096), several row and channel blocks, several chunks per plane.
STATS_CASES = [
    ("tiny", (1, 3, 2, 3, 3)),
    ("row_and_channel_tails", (2, 37, 3, 7, 9)),
    ("several_blocks", (2, 70, 4, 9, 10)),
    ("planes_with_chunks", (2, 5, 5, 31, 33)),
]


def _stats_oracle(z):
    zd = z.double()
    return zd.mean(dim=(0, 2, 3, 4)), zd.var(dim=(0, 2, 3, 4), unbiased=False)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("case", STATS_CASES, ids=[c[0] for c in STATS_CASES])
def test_channel_stats(emu, case, dtype, layout):
    _, shape = case
    z = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(dtype)
    z = z.contiguous(memory_format=LAYOUTS[layout])
    mean, var = emu.channel_stats(z)
    exp_mean, exp_var = _stats_oracle(z)  # the statistics of the values as stored
    assert mean.dtype == var.dtype == torch.float64 and mean.shape == (shape[1],)
    # float32 accumulation over at most a few thousand values, merged in float64
    assert (mean - exp_mean).abs().max().item() < 1e-5 * exp_var.sqrt().max().item()
    assert ((var - exp_var).abs() / exp_var).max().item() < 1e-5


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_channel_stats_large_mean_no_cancellation(emu, layout):
    """mean 1e4, std 1: a float32 sum-of-squares formula would lose every digit of the
    variance; centring per thread keeps it to float32 rounding of the values themselves."""
    z = (torch.randn(2, 40, 3, 9, 9, dtype=torch.float64) + 1e4).float()
    z = z.contiguous(memory_format=LAYOUTS[layout])
    mean, var = emu.channel_stats(z)
    exp_mean, exp_var = _stats_oracle(z)
    assert (mean - exp_mean).abs().max().item() < 1e-6 * 1e4
    assert ((var - exp_var).abs() / exp_var).max().item() < 1e-3


def test_channel_stats_deterministic_and_matches_the_cpu_pass(emu):
    z = torch.randn(2, 48, 4, 11, 12).contiguous(memory_format=torch.channels_last_3d)
    a, b = emu.channel_stats(z), emu.channel_stats(z)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    if hasattr(torch.ops.videoconv, "_channel_stats_cpu"):
        cpu_mean, cpu_var = torch.ops.videoconv._channel_stats_cpu(z)
        torch.testing.assert_close(a[0], cpu_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(a[1], cpu_var, rtol=1e-6, atol=0)


def test_channel_stats_empty_and_errors(emu):
    mean, var = emu.channel_stats(torch.randn(0, 4, 2, 3, 3))
    assert mean.shape == (4,) and torch.isnan(mean).all() and torch.isnan(var).all()
    with pytest.raises(RuntimeError, match="5-D"):
        emu.channel_stats(torch.randn(4, 3, 3))
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        emu.channel_stats(torch.randn(1, 2, 2, 2, 2, dtype=torch.float64))
