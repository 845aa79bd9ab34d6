"""benchmarks/winograd_bf16.py's float64 emulation of Winograd convolution (its accuracy figures
are the evidence for the Winograd kernel's float32 products): with unrounded operands every
variant it compares must be the exact convolution, so that the errors it reports come from the
bfloat16 rounding alone."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
import torch.nn.functional as F

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "winograd_bf16.py"
_spec = importlib.util.spec_from_file_location("winograd_bf16", _PATH)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


def _problem(seed=0, c_in=8, c_out=12, size=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c_in, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64)
    xp = F.pad(x, (1, 1, 1, 1))
    return xp, w, F.conv2d(xp[None], w)[0]


@pytest.mark.parametrize("rows, cols", [("F4", "F4"), ("F4", "F2"), ("F2", "F2"), ("F2", "F4")])
def test_unrounded_winograd_is_the_convolution(rows, cols):
    xp, w, exact = _problem()
    spec = {"F4": script._F4, "F2": script._F2}
    y = script.winograd(xp, w, spec[rows], spec[cols], round_v=False, round_u=False)
    assert y.shape == exact.shape
    torch.testing.assert_close(y, exact, atol=1e-11, rtol=1e-11)


def test_unrounded_7x7_winograd_is_the_convolution():
    """F(7x7)'s matrices as the script spells the kernel's (B^T, A^T) with the cpu backend's G:
    exact in float64; in float32 arithmetic off by more than F(4x4), less than bfloat16's
    rounding."""
    xp, w, exact = _problem(size=28)  # whole tiles of both
    y = script.winograd(xp, w, script._F7, script._F7, round_v=False, round_u=False)
    assert y.shape == exact.shape
    torch.testing.assert_close(y, exact, atol=1e-10, rtol=1e-10)
    err = {}
    for name, spec in (("F4", script._F4), ("F7", script._F7)):
        y = script.winograd(xp, w, spec, spec, False, False, arithmetic=torch.float32)
        err[name] = ((y - exact).abs().mean() / exact.abs().mean()).item()
    assert 1e-8 < err["F4"] < err["F7"] < 1e-4, err


def test_rounding_the_operands_is_what_changes_the_result():
    """Rounding V or U to bfloat16 moves F(4x4) further from the exact result than F(2x2)
    (larger transform coefficients), and by more than float64 noise."""
    xp, w, exact = _problem(seed=1)
    scale = exact.abs().mean()
    err = {}
    for name, spec in (("F4", script._F4), ("F2", script._F2)):
        y = script.winograd(xp, w, spec, spec, round_v=True, round_u=True)
        err[name] = ((y - exact).abs().mean() / scale).item()
    assert 1e-4 < err["F2"] < err["F4"] < 1e-1
