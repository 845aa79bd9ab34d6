"""`videoconv check`: the numerical-equivalence matrix per backend and the ahead-of-time kernel
builds (the Triton kernels for sm_80/sm_90; the CUDA sources are covered in
tests/test_cuda_sources.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from videoconv import check


def _cli(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "videoconv", "check", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_matrix_covers_what_the_issue_lists():
    cases = check.cases()
    conv = [c for c in cases if c.op == "conv3d_bn_act"]
    assert {c.stride for c in conv} >= {(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 1, 1)}
    assert {c.kernel[0] for c in conv} >= {1, 3, 5, 7}
    assert any(c.dilation[1] == 2 for c in conv)
    assert {1, 2} <= {c.groups for c in conv} and any(c.groups == c.cin > 2 for c in conv)
    assert {c.activation for c in cases} == {"relu", "silu", "identity"}
    assert {c.channels_last for c in cases} == {True, False}
    assert any(c.residual for c in cases)
    # the cpu backend's Winograd kernel, with a C_out it has to pad
    assert any(c.cin % 16 == 0 and c.cout % 16 and c.kernel[1:] == (3, 3) and c.groups == 1
               and set(c.stride) == {1} for c in conv)
    # the cpu backend's 1x1x1 kernel, strided, with a C_out it has to mask
    assert any(c.kernel == (1, 1, 1) and c.cin >= 32 and c.cout % 16 and c.stride != (1, 1, 1)
               and c.groups == 1 for c in conv)
    plus = [c for c in cases if c.op == "conv2plus1d_bn_act"]
    assert {c.temporal_first for c in plus} == {True, False} and any(c.cmid % 8 for c in plus)


def test_check_passes_for_cpu_and_reference_and_catches_a_wrong_backend(monkeypatch):
    results = check.run_check(["cpu", "reference"], quick=True)
    assert results and all(r.ok for r in results), check.summarize(results)
    assert {r.dtype for r in results if r.backend == "cpu"} == {"float32", "bfloat16"}
    # a backend that is off by a little is reported as failing, with its error
    from videoconv.backends import cpu as cpu_backend

    real = cpu_backend._prepare

    def off_by_a_little(*args, **kwargs):  # both the op's calls and its prepared calls use it
        call = real(*args, **kwargs)
        return lambda x, residual: call(x, residual) * 1.001

    monkeypatch.setattr(cpu_backend, "_prepare", off_by_a_little)
    bad = check.run_check(["cpu"], quick=True, dtypes=("float32",))
    assert not any(r.ok for r in bad if r.error is not None and not r.case.startswith("stats"))
    assert "FAIL" in check.summarize(bad)


def test_check_covers_the_statistics_op_and_catches_wrong_statistics(monkeypatch):
    stats_cases = [c for c in check.cases() if c.op == "conv3d_bn_stats"]
    assert {c.groups > 1 for c in stats_cases} == {True, False}
    assert {c.channels_last for c in stats_cases} == {True, False}
    results = check.run_check(["cpu", "reference"], quick=True)
    stats = [r for r in results if r.case.startswith("stats")]
    assert {r.backend for r in stats} == {"cpu", "reference"} and all(r.ok for r in stats)

    import torch
    from videoconv.backends import cpu as cpu_backend

    real = torch.ops.videoconv._channel_stats_cpu

    class _WrongVariance:  # the output is right; the variance is 0.1% off
        def __call__(self, z):
            mean, var = real(z)
            return mean, var * 1.001

    monkeypatch.setattr(cpu_backend.torch.ops.videoconv, "_channel_stats_cpu", _WrongVariance(),
                        raising=False)
    bad = [r for r in check.run_check(["cpu"], quick=True, dtypes=("float32",))
           if r.case.startswith("stats")]
    assert bad and not any(r.ok for r in bad)


@pytest.mark.triton
def test_cli_check_triton_quick():
    # the Triton backend through the interpreter (no GPU) or on the GPU
    result = _cli("--backend", "triton", "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| triton | float32 |" in result.stdout and "PASS" in result.stdout


@pytest.mark.cuda
def test_every_backend_on_the_gpu_matches_float64():
    results = check.run_check(device="cuda")
    assert {r.backend for r in results} >= {"triton", "reference"}
    assert all(r.ok for r in results), check.summarize(results)


def test_cli_check_compile_builds_triton_kernels_without_spills():
    # The CLI path: the stem variants of three kernel modules (conv3d_bn_act, the statistics op,
    # conv2plus1d_bn_act), ~15 s; each module's own test compiles all its variants, the depthwise
    # ones included (naming a depthwise variant here cost another ~65 s of CI for nothing new).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = _cli("--compile", "--arch", "sm_80,sm_90", "--kernel", "stem", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| triton |" in result.stdout and "sm_90" in result.stdout and "all ok" in result.stdout
