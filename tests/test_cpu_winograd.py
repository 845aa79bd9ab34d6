"""The cpu backend's Winograd path (csrc/cpu/conv3d_winograd.cpp), F(4x4, 3x3) and bfloat16's
F(7x7, 3x3): values against the float64 oracle over the edge cases of their tilings, which layers
take which, the cache, the errors."""

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
from videoconv.ops import conv2plus1d_bn_act, conv3d_bn_act

from test_ops import ACTS, _TOL, oracle_conv2plus1d, oracle_conv3d_bn_act

pytestmark = pytest.mark.skipif(
    bool(CpuBackend.environment_reasons()) or not cpu_backend._has_winograd_kernel(),
    reason="needs the cpu backend and the videoconv._C extension",
)

CL = torch.channels_last_3d
_ids = lambda d: str(d).replace("torch.", "")  # noqa: E731


@pytest.fixture(autouse=True)
def _every_eligible_layer(monkeypatch):
    """The tests use small shapes: lift the bfloat16 size thresholds (speed rules, not
    correctness rules) so that both dtypes run the kernel, and start from an empty cache.
    bfloat16 runs F(4x4) unless a test asks for F(7x7) (:func:`_tile`)."""
    monkeypatch.delenv("VIDEOCONV_BACKEND", raising=False)
    monkeypatch.setattr(cpu_backend, "WINOGRAD", True)
    monkeypatch.setattr(cpu_backend, "WINOGRAD_7X7", False)
    monkeypatch.setattr(cpu_backend, "_WINOGRAD_MIN_TILES_BF16", 1)
    monkeypatch.setattr(cpu_backend, "_WINOGRAD_MIN_CHANNELS_BF16", 16)
    cpu_backend.pack_cache.clear()
    yield
    cpu_backend.pack_cache.clear()


def _tile(monkeypatch, tile: int) -> None:
    """Make eligible bfloat16 convolutions take F(``tile`` x ``tile``, 3x3) whatever their size."""
    monkeypatch.setattr(cpu_backend, "WINOGRAD_7X7", tile == 7)
    monkeypatch.setattr(cpu_backend, "_WINOGRAD7_MIN_TILES", 1)
    monkeypatch.setattr(cpu_backend, "_WINOGRAD7_MAX_PRODUCTS", float("inf"))


def _key(x, w, padding, stride=(1, 1, 1), dilation=(1, 1, 1), groups=1, fmt=CL):
    return ((x.dtype, x.device, fmt, tuple(w.shape)), tuple(stride), tuple(padding),
            tuple(dilation), groups, tuple(x.shape))


def _inputs(n, c_in, c_out, size, kt, dtype, with_residual, padding, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, *size, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=CL)
    w = (torch.randn(c_out, c_in, kt, 3, 3, generator=g, dtype=torch.float64)
         / (c_in * 9 * kt) ** 0.5).to(dtype)
    scale = (torch.rand(c_out, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    shift = torch.randn(c_out, generator=g, dtype=torch.float64).to(dtype)
    out = [n, c_out, size[0] + 2 * padding[0] - kt + 1, size[1] + 2 * padding[1] - 2,
           size[2] + 2 * padding[2] - 2]
    residual = (torch.randn(out, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=CL)
                if with_residual else None)
    return x, w, scale, shift, residual, out


def _kernel_directly(x, w, scale, shift, padding, act, residual, tile=4):
    folded = w.double() * scale.double().view(-1, 1, 1, 1, 1)
    u = cpu_backend._winograd_weight(folded, tile)
    return torch.ops.videoconv._conv3d_winograd_cpu(x, u, shift.float().contiguous(), list(padding),
                                                    act, residual)


# name, N, C_in, C_out, (D, H, W), kt, padding. Chosen for the tiling's edge cases, of both
# tiles: partial tiles at the right/bottom edge (sizes not multiples of 4 or 7), 1 and 2 pixels
# of spatial padding and none, temporal taps against temporal padding (kt > 2 * pt shortens the
# clip), tiles of one block (64 of 4x4, 32 of 7x7) spanning frames and samples (r3d_333,
# blocks_span_frames: two blocks each, with either tile),
# C_out split into uneven chunks when there are few
# tiles (144 = 9 lane groups over 8 items: chunks of 2, the last of 1), several chunks of
# a 16-wide C_in, and C_out that is not a multiple of 16 (R(2+1)D's 230/460-wide units: U padded,
# the last lane group stored and the residual read with a mask), alone and in an uneven chunk.
WINOGRAD_CASES = [
    ("r2plus1d_spatial", 1, 32, 48, (4, 12, 12), 1, (0, 1, 1)),
    ("r3d_333", 2, 16, 32, (5, 9, 9), 3, (1, 1, 1)),
    ("partial_tiles", 1, 16, 16, (3, 7, 5), 3, (1, 1, 1)),
    ("no_padding_shortens", 2, 16, 32, (6, 10, 7), 3, (0, 0, 0)),
    ("pad2_t5", 1, 16, 16, (7, 6, 6), 5, (1, 2, 2)),
    ("few_tiles_uneven_chunks", 1, 16, 144, (2, 4, 4), 1, (0, 1, 1)),
    ("blocks_span_frames", 3, 48, 16, (3, 13, 11), 3, (1, 1, 1)),
    ("c_out_23", 1, 16, 23, (3, 7, 9), 3, (1, 1, 1)),
    ("c_out_137_uneven_chunks", 1, 32, 137, (2, 4, 4), 1, (0, 1, 1)),
]


# (dtype, tile): float32 has only F(4x4); bfloat16 both.
_DTYPE_TILES = [(torch.float32, 4), (torch.bfloat16, 4), (torch.bfloat16, 7)]
_dtype_tile_ids = [f"{_ids(d)}-F{t}" for d, t in _DTYPE_TILES]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype, tile", _DTYPE_TILES, ids=_dtype_tile_ids)
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=[c[0] for c in WINOGRAD_CASES])
def test_winograd_matches_float64(case, dtype, tile, with_residual, act, monkeypatch):
    _, n, c_in, c_out, size, kt, padding = case
    _tile(monkeypatch, tile)
    x, w, scale, shift, residual, out = _inputs(n, c_in, c_out, size, kt, dtype, with_residual, padding)
    assert cpu_backend._use_winograd(_key(x, w, padding))
    assert cpu_backend._winograd_tile(_key(x, w, padding)) == tile
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, (1, 1, 1), padding, (1, 1, 1), 1, act, residual)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), padding, (1, 1, 1), 1, act, residual)
    assert list(y.shape) == out and y.dtype == dtype and y.is_contiguous(memory_format=CL)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)
    # ... and it is the Winograd kernel with that tile that produced it (bitwise), not oneDNN.
    direct = _kernel_directly(x, w, scale, shift, padding, act, residual, tile)
    torch.testing.assert_close(y, direct, atol=0, rtol=0)


@pytest.mark.parametrize("dtype, tile", _DTYPE_TILES, ids=_dtype_tile_ids)
def test_winograd_is_more_accurate_than_it_needs_to_be(dtype, tile, monkeypatch):
    """A layer of r2plus1d_18's real width (64 -> 144, 1x3x3): the error against float64 stays
    within a few ulps of the dtype at the output's scale (float32: F(4x4, 3x3)'s transforms cost
    about 10x a direct float32 conv's error, still ~1e-5; bfloat16: the products are float32, so
    the error is the output rounding, for F(7x7) too, whose transforms cost ~10x F(4x4)'s error:
    its mean error is within 2% of the rounding's, the float64 result rounded to bfloat16)."""
    _tile(monkeypatch, tile)
    x, w, scale, shift, _, _ = _inputs(1, 64, 144, (2, 28, 28), 1, dtype, False, (0, 1, 1), seed=3)
    assert cpu_backend._winograd_tile(_key(x, w, (0, 1, 1))) == tile
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, "identity", None)
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, "identity", None)
    rel = ((y.double() - expected).abs().max() / expected.abs().max()).item()
    assert rel < (5e-5 if dtype == torch.float32 else 8e-3), rel
    if dtype == torch.bfloat16:
        mean_error = (y.double() - expected).abs().mean()
        rounding = (expected.to(dtype).double() - expected).abs().mean()
        assert mean_error < 1.02 * rounding, (mean_error, rounding)


def test_nan_propagates_like_the_oracle():
    x, w, scale, shift, _, _ = _inputs(1, 16, 16, (3, 8, 8), 3, torch.float32, False, (1, 1, 1))
    x[0, 3, 1, 2, 5] = float("nan")
    for act in ACTS:
        with backends.use("cpu"):
            y = conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, act, None)
        expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, act, None)
        # Winograd spreads a NaN over the whole 4x4 output tile(s) whose 6x6 input patch holds
        # it, a superset of the direct conv's 3x3x3 neighbourhood; never to a finite elsewhere.
        assert torch.isnan(y[torch.isnan(expected)]).all()
        assert torch.isnan(y).sum() <= 3 * 2 * 2 * 16 * 16  # frames x tiles x 4x4 x channels
        finite = ~torch.isnan(y)
        torch.testing.assert_close(y[finite].double(), expected[finite], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, tile", _DTYPE_TILES, ids=_dtype_tile_ids)
def test_conv2plus1d_unit_uses_it_for_the_spatial_conv(dtype, tile, monkeypatch):
    _tile(monkeypatch, tile)
    g = torch.Generator().manual_seed(1)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    x = rand(1, 16, 4, 10, 10).contiguous(memory_format=CL)
    w1, w2 = rand(32, 16, 1, 3, 3, scale=0.1), rand(16, 32, 3, 1, 1, scale=0.1)
    s1, b1, s2, b2 = rand(32).abs() + 0.5, rand(32), rand(16).abs() + 0.5, rand(16)
    assert cpu_backend._use_winograd(_key(x, w1, (0, 1, 1)))
    assert cpu_backend._winograd_tile(_key(x, w1, (0, 1, 1))) == tile
    with backends.use("cpu"):
        y = conv2plus1d_bn_act(x, w1, s1, b1, w2, s2, b2, (1, 1, 1), (1, 1, 1), "relu")
    expected = oracle_conv2plus1d(x, w1, s1, b1, w2, s2, b2, (1, 1, 1), (1, 1, 1), "relu", False, None)
    atol, rtol = _TOL[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)


def test_which_layers_take_it(monkeypatch):
    monkeypatch.setattr(cpu_backend, "_WINOGRAD_MIN_TILES_BF16", 128)
    monkeypatch.setattr(cpu_backend, "_WINOGRAD_MIN_CHANNELS_BF16", 64)
    # bfloat16's own limits hold where oneDNN runs it natively (elsewhere it gets float32's:
    # test_backend_cpu.py::test_bfloat16_winograd_takes_float32_limits_without_onednn_support)
    monkeypatch.setattr(cpu_backend, "_onednn_bf16_native", True)
    f32, bf16 = torch.float32, torch.bfloat16

    def use(dtype, c_in, c_out, size, kernel=(1, 3, 3), padding=(0, 1, 1), n=1, **kw):
        x = torch.empty(n, c_in, *size, dtype=dtype).contiguous(memory_format=kw.pop("fmt", CL))
        w = torch.empty(c_out, c_in // kw.get("groups", 1), *kernel, dtype=dtype)
        fmt = CL if x.is_contiguous(memory_format=CL) and c_in > 1 else torch.contiguous_format
        return cpu_backend._use_winograd(_key(x, w, padding, fmt=fmt, **kw))

    # r2plus1d_18 / r3d_18 at 16x112x112: layer1-2 in both dtypes, layer3 only in float32,
    # layer4 in neither (its transformed weight would be 85 MB).
    assert use(bf16, 64, 144, (16, 56, 56)) and use(f32, 64, 144, (16, 56, 56))
    assert use(bf16, 64, 64, (16, 56, 56), (3, 3, 3), (1, 1, 1))
    assert use(bf16, 128, 288, (8, 28, 28))
    assert not use(bf16, 256, 256, (4, 14, 14), (3, 3, 3), (1, 1, 1))  # 64 tiles: 0.86x measured
    assert use(f32, 256, 256, (4, 14, 14), (3, 3, 3), (1, 1, 1))
    assert not use(f32, 512, 1152, (2, 7, 7))  # 85 MB of transformed weight
    # the downsampling blocks' second units (C_out 230, 460 padded to 240, 464); 921 -> 928
    # makes 34 MB of transformed weight, over the limit
    assert use(bf16, 128, 230, (8, 28, 28)) and use(f32, 128, 230, (8, 28, 28))
    assert use(f32, 256, 460, (4, 14, 14)) and not use(bf16, 256, 460, (4, 14, 14))
    assert not use(f32, 256, 921, (4, 14, 14))
    assert use(f32, 16, 1, (2, 8, 8))
    assert not use(bf16, 32, 64, (16, 56, 56))  # bfloat16 needs >= 64 channels
    # not the kernel's shape or layout
    assert not use(f32, 64, 64, (8, 28, 28), stride=(1, 2, 2))
    assert not use(f32, 64, 64, (8, 28, 28), dilation=(1, 2, 2), padding=(0, 2, 2))
    assert not use(f32, 64, 64, (8, 28, 28), groups=2)
    assert not use(f32, 64, 64, (8, 28, 28), groups=64)
    assert not use(f32, 64, 64, (8, 28, 28), kernel=(1, 5, 5), padding=(0, 2, 2))
    assert not use(f32, 64, 64, (8, 28, 28), fmt=torch.contiguous_format)
    assert not use(f32, 24, 64, (8, 28, 28))  # C_in not a multiple of 16
    assert not use(f32, 64, 64, (8, 28, 28), padding=(0, 3, 3))
    monkeypatch.setattr(cpu_backend, "WINOGRAD", False)
    assert not use(f32, 64, 144, (16, 56, 56))


def test_which_tile_bfloat16_takes(monkeypatch):
    """F(7x7) for bfloat16 where it does at most 0.8x F(4x4)'s products over >= 128 tiles of 7x7
    and its transformed weight fits the limit; F(4x4) otherwise, and always for float32."""
    monkeypatch.setattr(cpu_backend, "WINOGRAD_7X7", True)
    f32, bf16 = torch.float32, torch.bfloat16

    def tile(dtype, c_in, c_out, size, kernel=(1, 3, 3), padding=(0, 1, 1)):
        x = torch.empty(1, c_in, *size, dtype=dtype).contiguous(memory_format=CL)
        w = torch.empty(c_out, c_in, *kernel, dtype=dtype)
        key = _key(x, w, padding)
        assert cpu_backend._use_winograd(key)
        return cpu_backend._winograd_tile(key)

    # r2plus1d_18 / r3d_18 layer1 and layer2: 56 and 28 are multiples of 7 (1024 and 128 tiles)
    assert tile(bf16, 64, 144, (16, 56, 56)) == 7 and tile(f32, 64, 144, (16, 56, 56)) == 4
    assert tile(bf16, 64, 64, (16, 56, 56), (3, 3, 3), (1, 1, 1)) == 7
    assert tile(bf16, 128, 288, (8, 28, 28)) == 7 and tile(bf16, 128, 230, (8, 28, 28)) == 7
    assert tile(bf16, 128, 288, (7, 28, 28)) == 4  # 112 tiles of 7x7: too few
    # 20x20: 9 tiles of 7x7 (729 products) against 25 of 4x4 (900): 0.81 > 0.8
    assert tile(bf16, 64, 64, (64, 20, 20)) == 4
    assert tile(bf16, 64, 64, (64, 21, 21)) == 7  # 9 against 36 tiles: 0.56
    # 81 planes of 256 x 464 floats: 38 MB, over the limit that the 36 planes (17 MB) are within
    assert tile(bf16, 256, 464, (8, 28, 28)) == 4
    monkeypatch.setattr(cpu_backend, "WINOGRAD_7X7", False)
    assert tile(bf16, 64, 144, (16, 56, 56)) == 4


def test_environment_variable_turns_it_off():
    code = ("from videoconv.backends import cpu; import torch; "
            "k = ((torch.float32, torch.device('cpu'), torch.channels_last_3d, (64, 64, 1, 3, 3)), "
            "(1, 1, 1), (0, 1, 1), (1, 1, 1), 1, (1, 64, 8, 28, 28)); "
            "print(cpu.WINOGRAD, cpu._use_winograd(k))")
    for value, expected in (("0", "False False"), ("1", "True True")):
        env = dict(os.environ, VIDEOCONV_CPU_WINOGRAD=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True)
        assert out.stdout.split("\n")[-2].strip() == expected, out.stdout + out.stderr


def test_environment_variable_keeps_bfloat16_on_4x4_tiles():
    code = ("from videoconv.backends import cpu; import torch; "
            "k = ((torch.bfloat16, torch.device('cpu'), torch.channels_last_3d, (144, 64, 1, 3, 3)), "
            "(1, 1, 1), (0, 1, 1), (1, 1, 1), 1, (1, 64, 16, 56, 56)); "
            "print(cpu.WINOGRAD_7X7, cpu._winograd_tile(k))")
    for value, expected in (("0", "False 4"), ("1", "True 7")):
        env = dict(os.environ, VIDEOCONV_CPU_WINOGRAD_7X7=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True)
        assert out.stdout.split("\n")[-2].strip() == expected, out.stdout + out.stderr


def test_ncdhw_input_gives_the_same_values_through_onednn():
    x, w, scale, shift, _, _ = _inputs(1, 16, 32, (3, 9, 9), 3, torch.float32, False, (1, 1, 1))
    with backends.use("cpu"):
        y_cl = conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "relu", None)
        y_nc = conv3d_bn_act(x.contiguous(), w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "relu", None)
    assert y_nc.is_contiguous() and y_cl.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y_cl, y_nc, atol=1e-5, rtol=1e-5)


def test_cache_sees_weight_and_scale_changes():
    x, w, scale, shift, _, _ = _inputs(1, 16, 16, (3, 8, 8), 3, torch.float32, False, (1, 1, 1))

    def run():
        with backends.use("cpu"):
            return conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "identity", None)

    def oracle():
        return oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "identity", None)

    first = run()
    misses = cpu_backend.pack_cache.misses
    torch.testing.assert_close(run(), first, atol=0, rtol=0)
    assert cpu_backend.pack_cache.misses == misses  # the transformed weight was reused
    with torch.no_grad():
        w.mul_(-2.0)
    atol, rtol = _TOL[torch.float32]
    torch.testing.assert_close(run().double(), oracle(), atol=atol, rtol=rtol)
    scale = scale * 3.0
    torch.testing.assert_close(run().double(), oracle(), atol=atol, rtol=rtol)


def test_switching_it_off_at_run_time_reuses_no_cached_weight(monkeypatch):
    """The route is part of the pack cache's key: the same weight first through Winograd, then
    (WINOGRAD off) through oneDNN, then back, each time with the right cached form."""
    x, w, scale, shift, _, _ = _inputs(1, 16, 16, (3, 8, 8), 3, torch.float32, False, (1, 1, 1))
    expected = oracle_conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "relu", None)
    atol, rtol = _TOL[torch.float32]
    outs = []
    for enabled in (True, False, True):
        monkeypatch.setattr(cpu_backend, "WINOGRAD", enabled)
        with backends.use("cpu"):
            outs.append(conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "relu", None))
        torch.testing.assert_close(outs[-1].double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(outs[2], outs[0], atol=0, rtol=0)
    assert not torch.equal(outs[1], outs[0])  # oneDNN's rounding differs from Winograd's


def test_switching_tiles_at_run_time_reuses_no_cached_weight(monkeypatch):
    """bfloat16 through F(7x7), then (WINOGRAD_7X7 off) F(4x4), then F(7x7) again: each call is
    bitwise the kernel with its own transformed weight (the route is part of the cache's key)."""
    _tile(monkeypatch, 7)
    x, w, scale, shift, _, _ = _inputs(1, 16, 32, (3, 15, 15), 3, torch.bfloat16, False, (1, 1, 1))
    for tile in (7, 4, 7):
        monkeypatch.setattr(cpu_backend, "WINOGRAD_7X7", tile == 7)
        with backends.use("cpu"):
            y = conv3d_bn_act(x, w, scale, shift, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "relu", None)
        direct = _kernel_directly(x, w, scale, shift, (1, 1, 1), "relu", None, tile)
        torch.testing.assert_close(y, direct, atol=0, rtol=0)
    assert not torch.equal(_kernel_directly(x, w, scale, shift, (1, 1, 1), "relu", None, 4), y)


def test_fused_module_prepared_call_uses_it():
    """The eval fast path (a prepared call bound to the input's shape) runs the same kernel."""
    from videoconv.nn import Conv3dBNAct

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 32, (3, 3, 3), padding=1, bias=False)
    bn = torch.nn.BatchNorm3d(32)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref = torch.nn.Sequential(conv, bn, torch.nn.ReLU()).eval()
    fused = Conv3dBNAct.from_modules(conv, bn, torch.nn.ReLU()).eval()
    x = torch.randn(2, 16, 4, 10, 10).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = copy.deepcopy(ref).double()(x.double())
        outs = [fused(x) for _ in range(3)]  # op, then the prepared call
    for y in outs:
        torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], atol=0, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(input=a["input"].contiguous()), "channels_last_3d"),
        (lambda a: a.update(input=a["input"].to(torch.float64)), "float32 or bfloat16"),
        (lambda a: a.update(U=a["U"][:, :, :8].contiguous()), "input channels"),
        (lambda a: a.update(U=a["U"].double()), "float32"),
        (lambda a: a.update(shift=torch.zeros(32)), "length of shift"),
        (lambda a: a.update(shift=a["shift"].view(4, 4)), "shift must be"),
        (lambda a: a.update(activation="gelu"), "unknown activation"),
        (lambda a: a.update(residual=torch.zeros(1)), "residual"),
        (lambda a: a.update(input=a["input"][..., :2, :2].contiguous(memory_format=CL),
                            padding=[1, 0, 0]), "smaller than the kernel"),
        (lambda a: a.update(U=a["U"][:, :25].contiguous()), "36 or 81"),
        # F(7x7)'s transformed weight with a float32 input
        (lambda a: a.update(U=cpu_backend._winograd_weight(a["w"], 7)), "bfloat16 tensors only"),
    ],
    ids=["ncdhw", "float64", "channels", "u_dtype", "shift_length", "shift_2d", "activation",
         "residual", "too_small", "u_planes", "tile7_float32"],
)
def test_private_op_errors_name_the_problem(change, message):
    x, w, scale, shift, _, _ = _inputs(1, 16, 16, (3, 8, 8), 3, torch.float32, False, (1, 1, 1))
    args = dict(input=x, U=cpu_backend._winograd_weight(w.double()), shift=shift.float(),
                padding=[1, 1, 1], activation="relu", residual=None, w=w.double())
    change(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.videoconv._conv3d_winograd_cpu(args["input"], args["U"], args["shift"],
                                                 args["padding"], args["activation"], args["residual"])
