"""The CPU kernels on tensors of more than 2**31 elements: every index and offset must be 64-bit.

Each test builds an input of just over 2**31 elements (4.3 GB in bfloat16) that is zero except
for random values in three windows: at the start, across element 2**31 (where a 32-bit offset
wraps) and at the end; runs one kernel of the ``cpu`` backend on it, through the public op
(the BatchNorm statistics pass, which has none, through its private one); and
checks the windows' outputs against the float64 oracle, plus a sample of the zero region (which
a wrapped offset would have written into, or read instead of a window). The output of the
convolutions is as large as the input, so output offsets cross 2**31 too.

About 9 GB of memory each, and a few seconds: skipped where the memory is not free (the reason
says how much was available).
"""

from __future__ import annotations

import gc

import pytest
import torch

from videoconv import backends
from videoconv.backends import cpu as cpu_backend
from videoconv.backends.cpu import CpuBackend
from videoconv.ops import channel_mean, conv3d_bn_act, scale_act

from test_ops import _TOL, oracle_conv3d_bn_act

pytestmark = pytest.mark.skipif(
    bool(CpuBackend.environment_reasons()) or not cpu_backend._has_pointwise_kernel()
    or not cpu_backend._has_winograd_kernel(),
    reason="needs the cpu backend and the videoconv._C extension (with the 1x1x1 kernel)",
)

CL = torch.channels_last_3d
BF16 = torch.bfloat16
LIMIT = 2 ** 31
WINDOW = 256  # positions per window


def _need_memory(gigabytes: float) -> None:
    """Skip unless about ``gigabytes`` (plus a margin) of memory is available now."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024 / 2 ** 30
    except (OSError, KeyError, ValueError):
        pytest.skip("cannot tell how much memory is free (no /proc/meminfo)")
    if available < gigabytes + 2:
        pytest.skip(f"needs ~{gigabytes + 2:.0f} GB of free memory, {available:.1f} GB available")


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    gc.collect()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A one-sample tensor's (positions, channels) view, channels_last_3d or NCDHW: no copy."""
    assert t.shape[0] == 1
    if t.is_contiguous(memory_format=CL):
        return t.permute(0, 2, 3, 4, 1).reshape(-1, t.shape[1])
    assert t.is_contiguous()
    return t.reshape(t.shape[1], -1).t()


def _windows(positions: int, channels: int):
    """Position ranges at the start, around the first position with an element offset of
    2**31 or more, and at the end."""
    boundary = -(-LIMIT // channels)
    assert WINDOW <= boundary <= positions - WINDOW, "the tensor must span 2**31 elements"
    return [(0, WINDOW), (boundary - WINDOW, boundary + WINDOW), (positions - WINDOW, positions)]


def _window_values(channels: int, windows, offset: float = 0.0, seed: int = 0):
    """The (positions, channels) bfloat16 values of each window: normal, plus ``offset``."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(hi - lo, channels, generator=g) + offset).to(BF16) for lo, hi in windows]


def _sparse_input(shape, windows, offset: float = 0.0, layout=CL):
    """A bfloat16 tensor of ``shape`` in ``layout``: zeros, and :func:`_window_values` in the
    position windows."""
    x = torch.zeros(shape, dtype=BF16).contiguous(memory_format=layout)
    rows = _rows(x)
    for (lo, hi), values in zip(windows, _window_values(shape[1], windows, offset)):
        rows[lo:hi] = values
    return x


def _zero_sample(positions: int, windows, reach: int = 0, count: int = 4096):
    """Positions (seeded) more than ``reach`` positions away from every window: their input,
    and for a convolution of that reach their whole receptive field, is zero."""
    g = torch.Generator().manual_seed(1)
    sample = torch.randint(0, positions, (count,), generator=g)
    keep = torch.ones(count, dtype=torch.bool)
    for lo, hi in windows:
        keep &= (sample < lo - reach) | (sample >= hi + reach)
    return sample[keep]


def test_pointwise_kernel_past_2_31_elements(monkeypatch):
    """The 1x1x1 kernel (csrc/cpu/conv3d_pointwise.cpp): 32 -> 32 channels on 67.2 M positions,
    2.15e9 elements in and out."""
    _need_memory(9)
    monkeypatch.delenv("VIDEOCONV_BACKEND", raising=False)
    # The speed limits lifted (as in test_cpu_pointwise.py), so that any CPU with a variant of
    # the kernel runs it here.
    monkeypatch.setattr(cpu_backend, "POINTWISE", True)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_AVX2_BF16_NATIVE_ONEDNN", True)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_AVX2_EXPANSION_OUTPUT_BF16", 1 << 62)
    monkeypatch.setattr(cpu_backend, "_POINTWISE_MAX_STRIDED_OUTPUT_BF16", 1 << 62)
    shape = (1, 32, 2, 8192, 4100)
    positions = 2 * 8192 * 4100
    windows = _windows(positions, 32)
    x = _sparse_input(shape, windows)
    assert x.numel() > LIMIT
    g = torch.Generator().manual_seed(2)
    w = (torch.randn(32, 32, 1, 1, 1, generator=g) / 32 ** 0.5).to(BF16)
    scale = (torch.rand(32, generator=g) + 0.5).to(BF16)
    shift = torch.randn(32, generator=g).to(BF16)
    key = ((BF16, x.device, CL, tuple(w.shape)), (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, tuple(shape))
    assert cpu_backend._use_pointwise(key), "this shape must take the 1x1x1 kernel"
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, activation="relu")
    assert y.shape == x.shape and y.is_contiguous(memory_format=CL)
    x_rows, y_rows = _rows(x), _rows(y)
    atol, rtol = _TOL[BF16]
    for lo, hi in windows:
        # The oracle on the window's positions, laid out as one row of a 5-D input.
        window = x_rows[lo:hi].t().reshape(1, 32, 1, 1, hi - lo)
        expected = oracle_conv3d_bn_act(window, w, scale, shift, (1, 1, 1), (0, 0, 0),
                                        (1, 1, 1), 1, "relu", None)
        actual = y_rows[lo:hi].t().reshape(expected.shape)
        torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=rtol,
                                   msg=lambda m: f"positions {lo}..{hi}: {m}")
    zeros = _zero_sample(positions, windows)
    expected = torch.relu(shift.double()).expand(len(zeros), 32)
    torch.testing.assert_close(y_rows[zeros].double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("tile", [4, 7])
def test_winograd_kernel_past_2_31_elements(tile, monkeypatch):
    """The Winograd kernel (csrc/cpu/conv3d_winograd.cpp), F(4x4, 3x3) and F(7x7, 3x3): a 16 ->
    16 1x3x3 convolution on 2 x 8192 x 8200 positions, 2.15e9 elements in and out. The windows
    are whole image rows (a 3x3 output reads its neighbour rows)."""
    _need_memory(9)
    monkeypatch.delenv("VIDEOCONV_BACKEND", raising=False)
    monkeypatch.setattr(cpu_backend, "WINOGRAD", True)
    monkeypatch.setattr(cpu_backend, "WINOGRAD_7X7", tile == 7)
    monkeypatch.setattr(cpu_backend, "_WINOGRAD_MIN_CHANNELS_BF16", 16)
    monkeypatch.setattr(cpu_backend, "_WINOGRAD7_MIN_TILES", 1)
    monkeypatch.setattr(cpu_backend, "_WINOGRAD7_MAX_PRODUCTS", float("inf"))
    frames, h, w_size = 2, 8192, 8200
    shape = (1, 16, frames, h, w_size)
    positions = frames * h * w_size
    # Whole rows: (frame, first row, rows): the first rows, the rows around element 2**31 (frame
    # 1, row 8176, column 128) and the last rows.
    bands = [(0, 0, 3), (1, 8174, 5), (1, h - 3, 3)]
    row_windows = [((f * h + r) * w_size, (f * h + r + n) * w_size) for f, r, n in bands]
    x = _sparse_input(shape, row_windows)
    assert x.numel() > LIMIT and (LIMIT // 16) in range(*row_windows[1])
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(16, 16, 1, 3, 3, generator=g) / (16 * 9) ** 0.5).to(BF16)
    scale = (torch.rand(16, generator=g) + 0.5).to(BF16)
    shift = torch.randn(16, generator=g).to(BF16)
    padding = (0, 1, 1)
    key = ((BF16, x.device, CL, tuple(w.shape)), (1, 1, 1), padding, (1, 1, 1), 1, tuple(shape))
    assert cpu_backend._use_winograd(key) and cpu_backend._winograd_tile(key) == tile
    with backends.use("cpu"):
        y = conv3d_bn_act(x, w, scale, shift, padding=padding, activation="relu")
    assert y.shape == x.shape and y.is_contiguous(memory_format=CL)
    atol, rtol = _TOL[BF16]
    for f, r, n in bands:
        # The band with two zero rows each side where there are any: the oracle's zero padding
        # is then what the real neighbours hold.
        lo, hi = max(0, r - 2), min(h, r + n + 2)
        expected = oracle_conv3d_bn_act(x[:, :, f:f + 1, lo:hi], w, scale, shift, (1, 1, 1),
                                        padding, (1, 1, 1), 1, "relu", None)
        torch.testing.assert_close(y[:, :, f:f + 1, lo:hi].double(), expected, atol=atol,
                                   rtol=rtol, msg=lambda m: f"frame {f}, rows {lo}..{hi}: {m}")
    zeros = _zero_sample(positions, row_windows, reach=2 * w_size)  # a row's neighbours
    expected = torch.relu(shift.double()).expand(len(zeros), 16)
    torch.testing.assert_close(_rows(y)[zeros].double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("layout", [CL, torch.contiguous_format], ids=["cl", "ncdhw"])
def test_squeeze_excitation_kernels_past_2_31_elements(layout):
    """``channel_mean`` and ``scale_act`` (csrc/cpu/squeeze_excitation.cpp) on 16 channels of
    2 x 8192 x 8200 positions, 2.15e9 elements, in both layouts they take (NCDHW: one
    channel's plane is 134 M values)."""
    _need_memory(9)
    shape = (1, 16, 2, 8192, 8200)
    positions = 2 * 8192 * 8200
    windows = _windows(positions, 16)
    # Values around 3, so that each channel's mean is far from zero (and the check relative).
    x = _sparse_input(shape, windows, offset=3.0, layout=layout)
    assert x.numel() > LIMIT
    values = [v.double() for v in _window_values(16, windows, offset=3.0)]
    with backends.use("cpu"):
        mean = channel_mean(x)
    assert mean.shape == (1, 16, 1, 1, 1)
    expected = sum(v.sum(0) for v in values) / positions
    torch.testing.assert_close(mean.double().flatten(), expected, atol=0, rtol=1e-2)
    g = torch.Generator().manual_seed(4)
    s = (torch.rand(1, 16, 1, 1, 1, generator=g) + 0.5).to(BF16)
    with backends.use("cpu"):
        y = scale_act(x, s, "silu")
    assert y.shape == x.shape and y.is_contiguous(memory_format=layout)
    y_rows = _rows(y)
    atol, rtol = _TOL[BF16]
    for (lo, hi), v in zip(windows, values):
        torch.testing.assert_close(y_rows[lo:hi].double(),
                                   torch.nn.functional.silu(v * s.double().flatten()),
                                   atol=atol, rtol=rtol, msg=lambda m: f"positions {lo}..{hi}: {m}")
    assert (y_rows[_zero_sample(positions, windows)] == 0).all()


@pytest.mark.parametrize("layout", [CL, torch.contiguous_format], ids=["cl", "ncdhw"])
def test_channel_stats_kernel_past_2_31_elements(layout):
    """The statistics pass of training-mode BatchNorm (csrc/cpu/conv3d_bn_stats.cpp) on 16
    channels of 134 M positions, 2.15e9 elements, in both layouts: float64 mean and variance.
    Its sums are float32 within blocks, which on this mostly-zero map are off by up to ~1e-5
    relative (the same on a 64x64 map with the same pattern: not a matter of size), hence 1e-4;
    a wrapped offset reads or writes the wrong values (or crashes), far outside it."""
    _need_memory(5)
    shape = (1, 16, 2, 8192, 8200)
    positions = 2 * 8192 * 8200
    windows = _windows(positions, 16)
    z = _sparse_input(shape, windows, offset=3.0, layout=layout)
    rows = torch.cat(_window_values(16, windows, offset=3.0)).double()
    mean, var = torch.ops.videoconv._channel_stats_cpu(z)
    assert mean.dtype == var.dtype == torch.float64
    expected_mean = rows.sum(0) / positions
    expected_var = (rows ** 2).sum(0) / positions - expected_mean ** 2
    torch.testing.assert_close(mean, expected_mean, atol=0, rtol=1e-4)
    torch.testing.assert_close(var, expected_var, atol=0, rtol=1e-4)
