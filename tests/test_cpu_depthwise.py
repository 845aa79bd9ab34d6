"""The cpu backend's depthwise kernel (csrc/cpu/conv3d_depthwise.cpp): values against the float64
oracle over the edge cases of its tiling (channel counts that are not a multiple of 16, every
register-block width, rows with and without padding, the blocked kernels and the checked path for
the rest), which layers take it, its cache, its errors. The kernel needs AVX-512; elsewhere these
tests skip and oneDNN keeps every depthwise layer (the rule's test still runs)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from videoconv import backends
from videoconv.backends import cpu as cpu_backend
from videoconv.backends.cpu import CpuBackend
from videoconv.ops import conv3d_bn_act

from test_ops import ACTS, _TOL, oracle_conv3d_bn_act

needs_kernel = pytest.mark.skipif(
    bool(CpuBackend.environment_reasons()) or not cpu_backend._has_depthwise_kernel(),
    reason="needs the cpu backend, the videoconv._C extension and a CPU with AVX-512",
)

CL = torch.channels_last_3d
_ids = lambda d: str(d).replace("torch.", "")  # noqa: E731


@pytest.fixture(autouse=True)
def _every_eligible_layer(monkeypatch):
    """Lift the size limit (a speed rule, not a correctness rule) so that every depthwise layer
    here runs the kernel, and start from an empty cache."""
    monkeypatch.delenv("VIDEOCONV_BACKEND", raising=False)
    monkeypatch.setattr(cpu_backend, "DEPTHWISE", True)
    monkeypatch.setattr(cpu_backend, "_DEPTHWISE_MAX_FRAME", 1 << 62)
    cpu_backend.pack_cache.clear()
    yield
    cpu_backend.pack_cache.clear()


def _key(x, w, stride, padding, dilation, fmt=CL):
    return ((x.dtype, x.device, fmt, tuple(w.shape)), tuple(stride), tuple(padding),
            tuple(dilation), w.shape[0], tuple(x.shape))


def _inputs(n, c, size, kernel, stride, padding, dilation, dtype, with_residual, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *size, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=CL)
    w = (torch.randn(c, 1, *kernel, generator=g, dtype=torch.float64) / 3).to(dtype)
    scale = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    shift = torch.randn(c, generator=g, dtype=torch.float64).to(dtype)
    out = [n, c] + [(s + 2 * p - d * (k - 1) - 1) // st + 1
                    for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)]
    residual = (torch.randn(out, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=CL)
                if with_residual else None)
    return x, w, scale, shift, residual


# (N, C, size, kernel, stride, padding, dilation): what each case exercises in the kernel.
CASES = {
    # 16 channels: one group; width 10: two blocks of 5, each with one padded column
    "c16_w10": (1, 16, (3, 4, 10), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    # C 17: the last group is channels 1..16, overlapping the first (recomputed, stored twice)
    "c17_overlap": (2, 17, (2, 3, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    # C 54 (X3D-S stage 1) and width 1 to 9: blocks of 1, 2, ... 8 columns (one block padded on
    # both sides at widths up to 8) and 5 + 4 at 9
    "c54_w1": (1, 54, (2, 2, 1), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    "c54_w3": (1, 54, (2, 3, 3), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    "c54_w8": (1, 54, (3, 2, 8), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    "c54_w9": (1, 54, (2, 3, 9), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    # width 23: blocks of 8, 8, 7, the middle one unpadded
    "c24_w23": (1, 24, (2, 3, 23), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    # stride (1, 2, 2), odd and even widths: the right edge padded or not
    "stride_2_even": (1, 40, (3, 6, 20), (3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1)),
    "stride_2_odd": (2, 32, (2, 7, 13), (3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1)),
    # no padding: every block interior; temporal stride 2
    "unpadded": (1, 20, (5, 6, 12), (3, 3, 3), (2, 1, 1), (0, 0, 0), (1, 1, 1)),
    # X3D's (5, 1, 1) temporal depthwise: the KW = 1 blocks
    "temporal_5": (1, 24, (7, 4, 11), (5, 1, 1), (1, 1, 1), (2, 0, 0), (1, 1, 1)),
    # padding 2 on a 3-wide kernel: two padded columns, the checked path for those blocks
    "pad_2": (1, 16, (2, 4, 9), (3, 3, 3), (1, 1, 1), (1, 2, 2), (1, 1, 1)),
    # kernels and strides the blocks do not cover: the checked path for every column
    "kernel_1x3x5": (1, 33, (2, 6, 14), (1, 3, 5), (1, 1, 3), (0, 1, 2), (1, 1, 1)),
    "dilation_2": (1, 18, (4, 9, 10), (3, 3, 3), (1, 1, 1), (1, 2, 2), (1, 2, 2)),
    "stride_3": (1, 16, (3, 8, 11), (3, 3, 3), (1, 3, 3), (1, 1, 1), (1, 1, 1)),
}


@needs_kernel
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "res"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_oracle(case, dtype, with_residual, act):
    n, c, size, kernel, stride, padding, dilation = CASES[case]
    x, w, scale, shift, residual = _inputs(n, c, size, kernel, stride, padding, dilation, dtype,
                                           with_residual)
    key = _key(x, w, stride, padding, dilation)
    assert cpu_backend._use_depthwise(key)
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, c, act, residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, padding, dilation, c, act, residual)
    assert y.shape == expected.shape and y.dtype == dtype and y.is_contiguous(memory_format=CL)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)
    # and it really ran the kernel: the same bits as calling it with the packed weight
    packed, bias = cpu_backend.pack_cache.get(w, scale, shift, (key, "depthwise"))
    direct = torch.ops.videoconv._conv3d_depthwise_cpu(x, packed, bias, list(stride), list(padding),
                                                       list(dilation), act, residual)
    torch.testing.assert_close(y, direct, atol=0, rtol=0)


@needs_kernel
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_non_finite_values_propagate(dtype, act):
    """A NaN or an infinity in the input reaches exactly the outputs whose taps read it, as in the
    float64 oracle (relu keeps NaN, as torch.relu); a -inf residual too."""
    x, w, scale, shift, residual = _inputs(1, 20, (3, 5, 9), (3, 3, 3), (1, 1, 1), (1, 1, 1),
                                           (1, 1, 1), dtype, True)
    x[0, 3, 1, 2, 0] = float("nan")
    x[0, 7, 2, 4, 8] = float("inf")
    residual[0, 5, 1, 0, 0] = float("-inf")
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, 1, 1, 1, 20, act, residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 20, act, residual)
    assert torch.equal(y.isnan(), expected.isnan()) and y.isnan().any()
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol, equal_nan=True)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_silu_at_its_extremes_matches_torch(dtype):
    """The kernel's Swish divides by a refined reciprocal estimate: over [-30, 30] within float32
    rounding of torch's in float64, and at the extremes torch's own answers: -0 where exp(-u)
    overflows, NaN for -inf and NaN, inf for inf."""
    values = torch.tensor([-float("inf"), float("inf"), float("nan"), -1e30, 1e30, -100.0, -88.0,
                           -20.0, -3.0, -0.5, 0.0, 0.5, 3.0, 20.0, 88.0, 100.0])
    grid = torch.linspace(-30, 30, 16 * 64)
    for u, tol in ((values, None), (grid, 3e-7)):
        x = u.reshape(-1, 16).t().reshape(1, 16, 1, 1, -1).to(dtype).contiguous(memory_format=CL)
        packed = torch.ones(1, 1, 1, 1, 16)
        y = torch.ops.videoconv._conv3d_depthwise_cpu(x, packed, torch.zeros(16), [1, 1, 1],
                                                      [0, 0, 0], [1, 1, 1], "silu", None)
        expected = F.silu(x.double())
        if tol is None:
            assert torch.equal(y.isnan(), expected.isnan())
            assert torch.equal(y.double().isinf(), expected.isinf())
            finite = expected.isfinite()
            torch.testing.assert_close(y.double()[finite], expected.to(dtype).double()[finite],
                                       atol=1e-30, rtol=_TOL[dtype][1])
        else:
            rtol = tol if dtype == torch.float32 else _TOL[dtype][1]
            torch.testing.assert_close(y.double(), expected, atol=1e-6, rtol=rtol)


def test_which_layers_take_it(monkeypatch):
    """The rule: one filter per channel (groups == C_in == C_out), at least 16 channels,
    channels_last_3d, float32 or bfloat16, output frames of at most _DEPTHWISE_MAX_FRAME positions,
    on a CPU that runs the kernel. (The rule only asks whether the kernel runs here: checked on any
    CPU.)"""
    monkeypatch.setattr(cpu_backend, "_has_depthwise_kernel", lambda: True)
    monkeypatch.setattr(cpu_backend, "_DEPTHWISE_MAX_FRAME", 400)
    bf, f32 = torch.bfloat16, torch.float32

    def takes(dtype, c, size, k=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1), fmt=CL,
              groups=None, per_group=1, c_out=None):
        c_out = c if c_out is None else c_out
        key = ((dtype, torch.device("cpu"), fmt, (c_out, per_group) + k), stride, padding,
               (1, 1, 1), c if groups is None else groups, (1, c) + size)
        return cpu_backend._use_depthwise(key)

    assert takes(bf, 216, (13, 10, 10))                   # X3D-S stage 3
    assert takes(bf, 432, (13, 10, 10), stride=(1, 2, 2))  # 5x5 output frames
    assert takes(f32, 108, (13, 20, 20))                  # 400 positions per frame
    assert takes(bf, 108, (13, 40, 40), stride=(1, 2, 2))  # 20x20 after the stride
    assert not takes(bf, 54, (13, 40, 40))                # 1600: oneDNN streams better
    assert not takes(bf, 24, (13, 80, 80), k=(5, 1, 1), padding=(2, 0, 0))
    assert takes(bf, 16, (4, 8, 8))                       # 16 channels: one group
    assert not takes(bf, 8, (4, 8, 8))                    # under one vector of channels
    assert not takes(bf, 64, (4, 8, 8), groups=32, per_group=2)   # not depthwise
    assert not takes(bf, 64, (4, 8, 8), c_out=128)        # a channel multiplier
    assert not takes(bf, 64, (4, 8, 8), fmt=torch.contiguous_format)
    assert not takes(torch.float16, 64, (4, 8, 8))
    monkeypatch.setattr(cpu_backend, "DEPTHWISE", False)
    assert not takes(bf, 216, (13, 10, 10))
    monkeypatch.setattr(cpu_backend, "DEPTHWISE", True)
    monkeypatch.setattr(cpu_backend, "_has_depthwise_kernel", lambda: False)
    assert not takes(bf, 216, (13, 10, 10))


def test_environment_variable_turns_it_off():
    """``VIDEOCONV_CPU_DEPTHWISE=0`` is read at import."""
    code = ("import torch; from videoconv.backends import cpu; "
            "cpu._has_depthwise_kernel = lambda: True; "
            "k = ((torch.bfloat16, torch.device('cpu'), torch.channels_last_3d, (216, 1, 3, 3, 3)), "
            "(1, 1, 1), (1, 1, 1), (1, 1, 1), 216, (1, 216, 13, 10, 10)); "
            "print(cpu.DEPTHWISE, cpu._use_depthwise(k))")
    for value, expected in (("0", "False False"), ("1", "True True")):
        env = dict(os.environ, VIDEOCONV_CPU_DEPTHWISE=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        assert " ".join(out[-2:]) == expected


@needs_kernel
def test_switching_it_off_at_run_time_reuses_no_cached_weight(monkeypatch):
    """The route is part of the pack cache's key: the same weight first through this kernel,
    then (DEPTHWISE off) through oneDNN, then back, each time with the right cached form."""
    x, w, scale, shift, _ = _inputs(1, 32, (2, 6, 6), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1),
                                    torch.float32, False)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 32, "relu", None)
    atol, rtol = _TOL[torch.float32]
    outs, routes = [], []
    for enabled in (True, False, True):
        monkeypatch.setattr(cpu_backend, "DEPTHWISE", enabled)
        with backends.use("cpu"):
            outs.append(conv3d_bn_act(x, w, scale, shift, 1, 1, 1, 32, "relu"))
        routes.append({entry.key[1] for _, entry in cpu_backend.pack_cache._entries.values()})
        torch.testing.assert_close(outs[-1].double(), expected, atol=atol, rtol=rtol)
    assert routes == [{"depthwise"}, {"onednn"}, {"depthwise"}]
    torch.testing.assert_close(outs[2], outs[0], atol=0, rtol=0)


@needs_kernel
def test_repacks_after_weight_or_bn_change():
    """An in-place weight update and a new scale both reach the kernel (no stale packed weight)."""
    x, w, scale, shift, _ = _inputs(1, 24, (2, 4, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1),
                                    torch.float32, False)

    def run():
        with backends.use("cpu"):
            return conv3d_bn_act(x, w, scale, shift, 1, 1, 1, 24, "identity")

    def oracle():
        return oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 24, "identity", None)

    atol, rtol = _TOL[torch.float32]
    torch.testing.assert_close(run().double(), oracle(), atol=atol, rtol=rtol)
    with torch.no_grad():
        w.mul_(-2.0)
    torch.testing.assert_close(run().double(), oracle(), atol=atol, rtol=rtol)
    scale = scale * 3.0
    torch.testing.assert_close(run().double(), oracle(), atol=atol, rtol=rtol)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_fused_module_prepared_call_uses_it(dtype):
    """The eval fast path (a prepared call bound to the input's shape) runs the same kernel,
    residual included, and X3D's Swish."""
    from videoconv.nn import Conv3dBNAct

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(54, 54, 3, stride=(1, 2, 2), padding=1, groups=54, bias=False)
    bn = torch.nn.BatchNorm3d(54)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref = torch.nn.Sequential(conv, bn).eval()
    fused = Conv3dBNAct.from_modules(conv, bn, torch.nn.SiLU()).eval().to(dtype)
    x = torch.randn(2, 54, 3, 9, 9).to(dtype).contiguous(memory_format=CL)
    res = torch.randn(2, 54, 3, 5, 5).to(dtype).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = F.silu(copy.deepcopy(ref).double()(x.double()) + res.double())
        outs = [fused(x, res) for _ in range(3)]  # op, then the prepared call
    atol, rtol = _TOL[dtype]
    for y in outs:
        torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(outs[2], outs[0], atol=0, rtol=0)
    routes = {entry.key[1] for _, entry in cpu_backend.pack_cache._entries.values()}
    assert routes == {"depthwise"}


def _op_args(c=24):
    x = torch.randn(1, c, 2, 5, 5).contiguous(memory_format=CL)
    packed = cpu_backend._depthwise_weight(torch.randn(c, 1, 3, 3, 3, dtype=torch.float64))
    return x, packed, torch.zeros(c)


@needs_kernel
@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(x=a["x"].contiguous()), "channels_last_3d"),
    (lambda a: a.update(x=a["x"][0]), "5-D"),
    (lambda a: a.update(x=a["x"].double()), "float32 or bfloat16"),
    (lambda a: a.update(x=a["x"][:, :8].contiguous(memory_format=CL)), "at least 16 channels"),
    (lambda a: a.update(packed=a["packed"].bfloat16()), "packed contiguous float32"),
    (lambda a: a.update(packed=a["packed"][:1]), "2 groups"),
    (lambda a: a.update(packed=torch.zeros(2, 0, 3, 3, 16)), "empty kernel"),
    (lambda a: a.update(shift=torch.zeros(25)), "shift"),
    (lambda a: a.update(shift=torch.zeros(24, dtype=torch.float64)), "shift"),
    (lambda a: a.update(stride=[1, 0, 1]), "positive"),
    (lambda a: a.update(stride=[1, 1]), "3 values"),
    (lambda a: a.update(padding=[1, -1, 1]), "non-negative"),
    (lambda a: a.update(padding=[0, 0, 0], x=a["x"][:, :, :, :2].contiguous(memory_format=CL)),
     "smaller than the \\(dilated\\) kernel"),
    (lambda a: a.update(residual=torch.zeros(1, 24, 2, 5, 4).contiguous(memory_format=CL)), "residual"),
    (lambda a: a.update(residual=torch.zeros(1, 24, 2, 5, 5)), "residual"),
    (lambda a: a.update(activation="gelu"), "activation"),
])
def test_private_op_names_bad_arguments(change, message):
    """The op checks its own arguments (it is reachable as torch.ops.videoconv.*)."""
    x, packed, shift = _op_args()
    args = dict(x=x, packed=packed, shift=shift, stride=[1, 1, 1], padding=[1, 1, 1],
                activation="relu", residual=None)
    change(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.videoconv._conv3d_depthwise_cpu(args["x"], args["packed"], args["shift"],
                                                  args["stride"], args["padding"], [1, 1, 1],
                                                  args["activation"], args["residual"])


@needs_kernel
def test_empty_batch_gives_empty_output():
    x, packed, shift = _op_args()
    y = torch.ops.videoconv._conv3d_depthwise_cpu(x[:0], packed, shift, [1, 1, 1], [1, 1, 1],
                                                  [1, 1, 1], "relu", None)
    assert y.shape == (0, 24, 2, 5, 5) and y.is_contiguous(memory_format=CL)


def test_packed_weight_layout():
    """Group q holds channels 16 q .. 16 q + 15 as its last dimension, tap-major; the last group of
    a C that is not a multiple of 16 holds the last 16 channels."""
    w = torch.arange(20 * 2 * 3 * 1, dtype=torch.float64).reshape(20, 1, 2, 3, 1)
    packed = cpu_backend._depthwise_weight(w)
    assert packed.shape == (2, 2, 3, 1, 16) and packed.dtype == torch.float32
    assert packed.is_contiguous()
    for q, start in ((0, 0), (1, 4)):
        for lane in range(16):
            assert torch.equal(packed[q, ..., lane], w[start + lane, 0].float())
