"""The cpu backend's 1x1x1 kernel (csrc/cpu/conv3d_pointwise.cpp): values against the float64
oracle over the edge cases of its tiling (partial micro-tiles and column blocks, odd C_in,
strides, both work splits), which layers take it, its cache, its errors. Both variants: the
AVX-512 one (where the CPU has AVX512-BF16) and the AVX2 one (every other x86-64-v3 CPU; an
AVX-512 CPU runs it with ``_cpu_vector_lanes(8)``)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from videoconv import backends
from videoconv.backends import cpu as cpu_backend
from videoconv.backends.cpu import CpuBackend
from videoconv.ops import conv3d_bn_act

from test_ops import ACTS, _TOL, oracle_conv3d_bn_act

pytestmark = pytest.mark.skipif(
    bool(CpuBackend.environment_reasons()) or not cpu_backend._has_pointwise_kernel(),
    reason="needs the cpu backend, the videoconv._C extension and a CPU with AVX2 + FMA",
)

#: The variants this CPU can run, by the lanes setting that selects them: 0 (automatic: AVX-512
#: where the CPU has AVX512-BF16, else AVX2) and, on an AVX-512 CPU, 8 (AVX2).
VARIANTS = {"auto": 0}
if cpu_backend._has_pointwise_kernel() and cpu_backend._pointwise_variant() == "avx512_bf16":
    VARIANTS["avx2"] = 8

CL = torch.channels_last_3d
_ids = lambda d: str(d).replace("torch.", "")  # noqa: E731


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    """The kernel variant under test, selected through the vector-width switch; restored after."""
    previous = torch.ops.videoconv._cpu_vector_lanes(VARIANTS[request.param])
    yield cpu_backend._pointwise_variant()
    torch.ops.videoconv._cpu_vector_lanes(previous)


@pytest.fixture(autouse=True)
def _every_eligible_layer(monkeypatch):
    """The tests use small shapes: lift the size limits (speed rules, not correctness rules) so
    that every 1x1x1 layer here runs the kernel, and start from an empty cache."""
    monkeypatch.delenv("VIDEOCONV_BACKEND", raising=False)
    monkeypatch.setattr(cpu_backend, "POINTWISE", True)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_MIN_CHANNELS", 1)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_AVX2_MAX_OUTPUT_F32", 1 << 62)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_AVX2_EXPANSION_OUTPUT_BF16", 1 << 62)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_AVX2_BF16_NATIVE_ONEDNN", True)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_MAX_ROWS_F32", 1 << 40)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_MAX_STRIDED_OUTPUT_BF16", 1 << 62)
    monkeypatch.setattr(cpu_backend, "_SMALL_GEMM_ROWS", 0)
    cpu_backend.pack_cache.clear()
    yield
    cpu_backend.pack_cache.clear()


def _key(x, w, stride=(1, 1, 1), padding=(0, 0, 0), groups=1, fmt=CL):
    return ((x.dtype, x.device, fmt, tuple(w.shape)), tuple(stride), tuple(padding), (1, 1, 1),
            groups, tuple(x.shape))


def _out_size(size, stride):
    return [-(-s // st) for s, st in zip(size, stride)]


def _inputs(n, c_in, c_out, size, stride, dtype, with_residual, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, *size, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=CL)
    w = (torch.randn(c_out, c_in, 1, 1, 1, generator=g, dtype=torch.float64) / c_in ** 0.5).to(dtype)
    scale = (torch.rand(c_out, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    shift = torch.randn(c_out, generator=g, dtype=torch.float64).to(dtype)
    out = [n, c_out, *_out_size(size, stride)]
    residual = (torch.randn(out, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=CL)
                if with_residual else None)
    return x, w, scale, shift, residual


# (N, C_in, C_out, size, stride): what each case exercises in the kernel.
CASES = {
    # one partial micro-tile of every width: 7 positions, C_out 5 (one masked vector)
    "tiny": (1, 3, 5, (1, 1, 7), (1, 1, 1)),
    # odd C_in (the bfloat16 kernel's last pair is (x, 0)); C_out 17: a vector of one lane
    "odd_c_in_c_out_17": (2, 33, 17, (2, 3, 5), (1, 1, 1)),
    # C_out 96 = one full 64-wide block and a 32-wide one (micro-tiles 6 x 4 and 12 x 2)
    "two_blocks": (1, 48, 96, (3, 7, 9), (1, 1, 1)),
    # C_out 130: blocks of 64, 64 and 16 (12 x 1); C_out 40 fits 48 (8 x 3)
    "three_blocks": (1, 20, 130, (2, 5, 5), (1, 1, 1)),
    "c_out_40": (1, 16, 40, (2, 6, 6), (1, 1, 1)),
    # > 4 chunks of 192 positions: the work split by chunk, rounded to the thread count
    "many_chunks": (2, 24, 54, (4, 12, 13), (1, 1, 1)),
    # strides: the input positions stepped through (w, h, t, n), odd sizes
    "stride_1_2_2": (2, 32, 24, (3, 9, 7), (1, 2, 2)),
    "stride_2_2_2": (1, 16, 64, (5, 8, 11), (2, 2, 2)),
    "stride_2_big": (2, 40, 70, (6, 30, 29), (2, 2, 2)),
    # one position (a head on a pooled map): the AVX2 kernel's one-row pass, over column blocks
    # of 64, 64, 64 and 16 channels (C_out 200) and of 48 and 32 (C_out 40 and 32)
    "one_row_200": (1, 37, 200, (1, 1, 1), (1, 1, 1)),
    "one_row_40": (1, 24, 40, (1, 1, 1), (1, 1, 1)),
    "one_row_32": (1, 9, 32, (1, 1, 1), (1, 1, 1)),
}


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "res"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_oracle(case, dtype, with_residual, act, variant):
    n, c_in, c_out, size, stride = CASES[case]
    x, w, scale, shift, residual = _inputs(n, c_in, c_out, size, stride, dtype, with_residual)
    assert cpu_backend._use_pointwise(_key(x, w, stride))
    route = cpu_backend._pointwise_route(dtype)
    assert route == ("pointwise-f32" if variant == "avx2" and dtype == torch.bfloat16 else "pointwise")
    zeros = (0, 0, 0)
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, stride, zeros, (1, 1, 1), 1, act, residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, stride, zeros, (1, 1, 1), 1, act, residual)
    assert y.shape == expected.shape and y.dtype == dtype and y.is_contiguous(memory_format=CL)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)
    # and it really ran the kernel: the same bits as calling it with the packed weight
    packed, bias = cpu_backend.pack_cache.get(w, scale, shift, (_key(x, w, stride), route))
    assert packed.dtype == (torch.float32 if route == "pointwise-f32" else dtype)
    direct = torch.ops.videoconv._conv3d_pointwise_cpu(x, packed, bias, list(stride), act, residual)
    torch.testing.assert_close(y, direct, atol=0, rtol=0)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_non_finite_values_propagate(dtype, act, variant):
    """A NaN or an infinity in a position's input reaches every channel of that position as in
    the float64 oracle (relu keeps NaN, as torch.relu); the other positions are untouched."""
    x, w, scale, shift, residual = _inputs(1, 20, 40, (2, 3, 5), (1, 1, 1), dtype, True)
    x[0, 3, 0, 1, 2] = float("nan")
    x[0, 7, 1, 2, 4] = float("inf")
    residual[0, 5, 1, 0, 0] = float("-inf")
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, 1, 0, 1, 1, act, residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, act, residual)
    assert torch.equal(y.isnan(), expected.isnan()) and y.isnan().any()
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol, equal_nan=True)


def test_channels_first_input_keeps_its_layout():
    """An NCDHW input is not this kernel's (the rule asks for channels_last_3d): oneDNN runs
    it, and the output stays NCDHW."""
    x, w, scale, shift, _ = _inputs(1, 32, 48, (2, 5, 5), (1, 1, 1), torch.float32, False)
    x = x.contiguous()
    assert not cpu_backend._use_pointwise(_key(x, w, fmt=torch.contiguous_format))
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, 1, 0, 1, 1, "relu")
    assert y.is_contiguous()
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, "relu", None)
    torch.testing.assert_close(y.double(), expected, atol=_TOL[torch.float32][0], rtol=_TOL[torch.float32][1])


def test_which_layers_take_it(monkeypatch):
    """The AVX-512 variant's speed rule with its real limits: C_in >= 32 (or a tiny,
    small-GEMM-sized one, as Squeeze-and-Excitation's on a pooled map), channels_last_3d, 1x1x1,
    no padding or groups; bfloat16 at any size, except strided ones with more than
    _POINTWISE_MAX_STRIDED_OUTPUT_BF16 output values; float32 up to _POINTWISE_MAX_ROWS_F32
    output positions. (The rule only asks which variant runs: checked on any CPU.)"""
    monkeypatch.setattr(cpu_backend, "_pointwise_variant", lambda: "avx512_bf16")
    monkeypatch.setattr(cpu_backend, "_POINTWISE_MIN_CHANNELS", 32)
    monkeypatch.setattr(cpu_backend, "_SMALL_GEMM_ROWS", 64)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_MAX_ROWS_F32", 2048)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_MAX_STRIDED_OUTPUT_BF16", 500_000)
    bf, f32 = torch.bfloat16, torch.float32

    def takes(dtype, c_in, c_out, size, stride=(1, 1, 1), **kw):
        key = ((dtype, torch.device("cpu"), kw.pop("fmt", CL), (c_out, c_in) + kw.pop("k", (1, 1, 1))),
               stride, kw.pop("padding", (0, 0, 0)), (1, 1, 1), kw.pop("groups", 1), (1, c_in) + size)
        return cpu_backend._use_pointwise(key)

    assert takes(bf, 216, 96, (13, 10, 10))           # X3D-S stage 3 projection
    assert takes(bf, 54, 24, (13, 40, 40))            # X3D-S stage 1 projection
    assert takes(bf, 64, 128, (8, 56, 56), (2, 2, 2))  # R3D-18's first shortcut, 8 frames: 401k
    assert not takes(bf, 64, 128, (16, 56, 56), (2, 2, 2))  # ... at 16 frames: 803k values
    assert takes(bf, 128, 256, (8, 28, 28), (2, 2, 2))  # the next one: 200k
    assert takes(bf, 48, 96, (13, 20, 20), (1, 2, 2))   # X3D-S's stride-2 projection: 125k
    assert takes(bf, 48, 216, (13, 20, 20))             # stride 1: any size (1.1M)
    assert not takes(bf, 24, 54, (13, 80, 80))        # C_in 24: oneDNN streams better
    assert takes(bf, 16, 216, (1, 1, 1))              # SE on a pooled map: any C_in
    assert takes(f32, 8, 54, (1, 1, 1), fmt=torch.contiguous_format)  # one position: any layout
    assert takes(f32, 216, 96, (13, 10, 10))          # 1300 positions
    assert not takes(f32, 54, 24, (13, 40, 40))       # 20800 positions: float32 FMA-bound
    assert takes(f32, 128, 256, (8, 28, 28), (2, 2, 2))  # 784 positions after the stride
    assert not takes(f32, 64, 128, (8, 56, 56), (2, 2, 2))  # 3136 positions
    assert not takes(bf, 64, 64, (4, 8, 8), k=(3, 1, 1))
    assert not takes(bf, 64, 64, (4, 8, 8), padding=(0, 1, 1))
    assert not takes(bf, 64, 64, (4, 8, 8), groups=2)
    assert not takes(bf, 64, 64, (4, 8, 8), fmt=torch.contiguous_format)
    assert not takes(torch.float16, 64, 64, (4, 8, 8))
    monkeypatch.setattr(cpu_backend, "POINTWISE", False)
    assert not takes(bf, 216, 96, (13, 10, 10))


def test_which_layers_take_the_avx2_variant(monkeypatch):
    """The AVX2 variant's rule (videoconv/backends/cpu.py, from benchmarks/pointwise_ab.py):
    float32 up to _POINTWISE_AVX2_MAX_OUTPUT_F32 output values; bfloat16 everywhere except
    stride-1 expansions (C_out >= 2 C_in) with at least _POINTWISE_AVX2_EXPANSION_OUTPUT_BF16 output
    values; the pooled Squeeze-and-Excitation convs at any size; any C_in."""
    monkeypatch.setattr(cpu_backend, "_pointwise_variant", lambda: "avx2")
    monkeypatch.setattr(cpu_backend, "_SMALL_GEMM_ROWS", 64)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_AVX2_MAX_OUTPUT_F32", 300_000)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_AVX2_EXPANSION_OUTPUT_BF16", 500_000)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_AVX2_BF16_NATIVE_ONEDNN", False)
    monkeypatch.setattr(cpu_backend, "_widened", lambda dtype: dtype == torch.bfloat16)
    bf, f32 = torch.bfloat16, torch.float32

    def takes(dtype, c_in, c_out, size, stride=(1, 1, 1), fmt=CL):
        key = ((dtype, torch.device("cpu"), fmt, (c_out, c_in, 1, 1, 1)), stride, (0, 0, 0),
               (1, 1, 1), 1, (1, c_in) + size)
        return cpu_backend._use_pointwise(key)

    assert takes(f32, 216, 96, (13, 10, 10))            # 130k output values
    assert takes(f32, 24, 48, (13, 40, 40), (1, 2, 2))  # 250k after the stride
    assert not takes(f32, 54, 24, (13, 40, 40))         # 499k: output-bound
    assert not takes(f32, 64, 128, (16, 56, 56), (2, 2, 2))  # 803k
    assert takes(bf, 24, 54, (13, 80, 80), (1, 2, 2))   # strided: 1.1M, but no widened input copy
    assert not takes(bf, 24, 54, (13, 40, 40))          # expansion, 1.1M
    assert not takes(bf, 96, 432, (13, 10, 10))         # expansion, 562k
    assert takes(bf, 54, 24, (13, 80, 80))              # projection, 2M: no copies to make
    assert takes(bf, 64, 128, (16, 56, 56), (2, 2, 2))  # R3D-18's first shortcut: strided
    assert takes(bf, 16, 216, (1, 1, 1))                # SE on a pooled map
    assert not takes(bf, 216, 96, (13, 10, 10), fmt=torch.contiguous_format)
    assert not takes(torch.float16, 64, 64, (4, 8, 8))
    # where oneDNN has a bfloat16 convolution of its own (AVX-512 without AVX512-BF16), which
    # the rule was not measured against, it keeps bfloat16 layers; float32 and SE unchanged
    monkeypatch.setattr(cpu_backend, "_widened", lambda dtype: False)
    assert not takes(bf, 216, 96, (13, 10, 10))
    assert takes(bf, 16, 216, (1, 1, 1))
    assert takes(f32, 216, 96, (13, 10, 10))
    monkeypatch.setattr(cpu_backend, "_pointwise_variant", lambda: "")
    assert not takes(bf, 216, 96, (13, 10, 10))


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL], ids=["ncdhw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_pooled_se_convs_take_it_at_any_width(monkeypatch, dtype, layout):
    """Squeeze-and-Excitation's convs on a pooled (N, C, 1, 1, 1) map (both layouts at once)
    take the kernel whatever C_in, in place of the small GEMM, and keep plain strides."""
    monkeypatch.setattr(cpu_backend, "_SMALL_GEMM_ROWS", 64)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_MIN_CHANNELS", 32)
    x, w, scale, shift, residual = _inputs(2, 16, 54, (1, 1, 1), (1, 1, 1), dtype, True)
    x, residual = x.contiguous(memory_format=layout), residual.contiguous(memory_format=layout)
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, 1, 0, 1, 1, "silu", residual)
    (key, route), = [entry.key for _, entry in cpu_backend.pack_cache._entries.values()]
    assert route == cpu_backend._pointwise_route(dtype) and cpu_backend._is_small_gemm(key)
    assert y.stride() == (54, 1, 1, 1, 1)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, "silu", residual)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


def test_environment_variable_turns_it_off():
    """``VIDEOCONV_CPU_POINTWISE=0`` is read at import."""
    code = ("import torch; from videoconv.backends import cpu; "
            "k = ((torch.bfloat16, torch.device('cpu'), torch.channels_last_3d, (96, 216, 1, 1, 1)), "
            "(1, 1, 1), (0, 0, 0), (1, 1, 1), 1, (1, 216, 13, 10, 10)); "
            "print(cpu.POINTWISE, cpu._use_pointwise(k))")
    for value, expected in (("0", "False False"), ("1", "True True")):
        env = dict(os.environ, VIDEOCONV_CPU_POINTWISE=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        assert " ".join(out[-2:]) == expected


def test_switching_it_off_at_run_time_reuses_no_cached_weight(monkeypatch):
    """The route is part of the pack cache's key: the same weight first through this kernel,
    then (POINTWISE off) through oneDNN, then back, each time with the right cached form."""
    x, w, scale, shift, _ = _inputs(1, 48, 40, (2, 6, 6), (1, 1, 1), torch.float32, False)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, "relu", None)
    atol, rtol = _TOL[torch.float32]
    outs = []
    for enabled in (True, False, True):
        monkeypatch.setattr(cpu_backend, "POINTWISE", enabled)
        with backends.use("cpu"):
            outs.append(conv3d_bn_act(x, w, scale, shift, 1, 0, 1, 1, "relu"))
        torch.testing.assert_close(outs[-1].double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(outs[2], outs[0], atol=0, rtol=0)


def test_repacks_after_weight_or_bn_change():
    """An in-place weight update and a new scale both reach the kernel (no stale packed weight)."""
    x, w, scale, shift, _ = _inputs(1, 32, 24, (2, 4, 4), (1, 1, 1), torch.float32, False)

    def run():
        with backends.use("cpu"):
            return conv3d_bn_act(x, w, scale, shift, 1, 0, 1, 1, "identity")

    def oracle():
        return oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, "identity", None)

    atol, rtol = _TOL[torch.float32]
    torch.testing.assert_close(run().double(), oracle(), atol=atol, rtol=rtol)
    with torch.no_grad():
        w.mul_(-2.0)
    torch.testing.assert_close(run().double(), oracle(), atol=atol, rtol=rtol)
    scale = scale * 3.0
    torch.testing.assert_close(run().double(), oracle(), atol=atol, rtol=rtol)


def test_fused_module_prepared_call_uses_it():
    """The eval fast path (a prepared call bound to the input's shape) runs the same kernel,
    residual included."""
    from videoconv.nn import Conv3dBNAct

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(48, 24, 1, stride=(1, 2, 2), bias=False)
    bn = torch.nn.BatchNorm3d(24)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref = torch.nn.Sequential(conv, bn).eval()
    fused = Conv3dBNAct.from_modules(conv, bn, torch.nn.ReLU()).eval()
    x = torch.randn(2, 48, 3, 9, 9).contiguous(memory_format=CL)
    res = torch.randn(2, 24, 3, 5, 5).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = (copy.deepcopy(ref).double()(x.double()) + res.double()).relu()
        outs = [fused(x, res) for _ in range(3)]  # op, then the prepared call
    for y in outs:
        torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], atol=0, rtol=0)
    routes = {entry.key[1] for _, entry in cpu_backend.pack_cache._entries.values()}
    assert routes == {"pointwise"}


def _op_args(dtype=torch.float32, c_in=32, c_out=24):
    x = torch.randn(1, c_in, 2, 3, 3, dtype=dtype).contiguous(memory_format=CL)
    w = torch.randn(c_out, c_in, 1, 1, 1, dtype=torch.float64)
    packed = cpu_backend._pointwise_weight(w, dtype)
    return x, packed, torch.zeros(c_out)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(x=a["x"].contiguous()), "channels_last_3d"),
    (lambda a: a.update(x=a["x"][0]), "5-D"),
    (lambda a: a.update(x=a["x"].double()), "float32 or bfloat16"),
    (lambda a: a.update(packed=a["packed"].bfloat16()), "dtype"),
    (lambda a: a.update(packed=a["packed"][:-1]), "packed weight has"),
    (lambda a: a.update(shift=torch.zeros(40)), "packed weight has"),
    (lambda a: a.update(shift=torch.zeros(24, dtype=torch.float64)), "shift"),
    (lambda a: a.update(shift=torch.zeros(2, 12)), "shift"),
    (lambda a: a.update(stride=[1, 0, 1]), "stride"),
    (lambda a: a.update(stride=[1, 1]), "stride"),
    (lambda a: a.update(residual=torch.zeros(1, 24, 2, 3, 2).contiguous(memory_format=CL)), "residual"),
    (lambda a: a.update(residual=torch.zeros(1, 24, 2, 3, 3)), "residual"),
    (lambda a: a.update(activation="gelu"), "activation"),
])
def test_private_op_names_bad_arguments(change, message):
    """The op checks its own arguments (it is reachable as torch.ops.videoconv.*)."""
    x, packed, shift = _op_args()
    args = dict(x=x, packed=packed, shift=shift, stride=[1, 1, 1], activation="relu", residual=None)
    change(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.videoconv._conv3d_pointwise_cpu(args["x"], args["packed"], args["shift"],
                                                  args["stride"], args["activation"], args["residual"])


def test_empty_batch_gives_empty_output():
    x, packed, shift = _op_args()
    y = torch.ops.videoconv._conv3d_pointwise_cpu(x[:0], packed, shift, [1, 1, 1], "relu", None)
    assert y.shape == (0, 24, 2, 3, 3) and y.is_contiguous(memory_format=CL)


@pytest.mark.skipif(cpu_backend._pointwise_variant() != "avx2",
                    reason="a CPU without AVX512-BF16 (there a bfloat16 packed weight is refused)")
def test_bfloat16_packed_weight_needs_avx512_bf16():
    """Where the CPU has no bfloat16 dot product, a bfloat16 packed weight (the AVX-512 variant's
    layout) is refused with the reason, not computed with another layout's meaning."""
    x, _, shift = _op_args(torch.bfloat16)
    packed = cpu_backend._pointwise_weight(torch.randn(24, 32, 1, 1, 1, dtype=torch.float64),
                                           torch.bfloat16)
    assert packed.dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="AVX512-BF16"):
        torch.ops.videoconv._conv3d_pointwise_cpu(x, packed, shift, [1, 1, 1], "relu", None)
