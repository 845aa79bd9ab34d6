"""The `videoconv` command: info and flops (bench is exercised by CI's `make bench-smoke`)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch


def videoconv(*args):
    return subprocess.run(
        [sys.executable, "-m", "videoconv", *args], capture_output=True, text=True, timeout=300
    )


def test_info_lists_versions_devices_extension_and_backends():
    result = videoconv("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"torch     {torch.__version__}" in out
    assert "devices:" in out and "cpu:" in out
    assert "extension videoconv._C:" in out
    if "videoconv._C: loaded" in out:  # and which 1x1x1 kernel variant this CPU runs
        from videoconv.backends import cpu as cpu_backend

        variant = cpu_backend._pointwise_variant()
        assert f"cpu 1x1x1 kernel: {variant or 'none'}" in out
    assert "backends (in priority order):" in out
    assert "reference  can run" in out


def test_info_marks_a_forced_backend():
    result = subprocess.run(
        [sys.executable, "-m", "videoconv", "info"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, VIDEOCONV_BACKEND="reference"),
    )
    assert "reference  can run (forced)" in result.stdout


def test_flops_prints_the_per_layer_table_and_total():
    result = videoconv("flops", "r3d_18")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "input 1x3x16x112x112" in out
    assert "stem.0" in out and "layer4.1.conv2.0" in out
    assert "total: 40.70 GMACs" in out
    assert "params: 33,371,472" in out
    assert "saved activations" in out


def test_flops_with_an_explicit_input():
    result = videoconv("flops", "r2plus1d_18", "--input", "2x3x8x112x112")
    assert result.returncode == 0, result.stderr
    # Half the frames and twice the batch: the same MACs as the standard clip.
    assert "total: 40.52 GMACs" in result.stdout


def test_flops_of_an_unknown_model_lists_the_known_ones():
    result = videoconv("flops", "resnet50")
    assert result.returncode == 2
    assert "unknown model 'resnet50'" in result.stderr and "r3d_18" in result.stderr


def test_flops_with_a_bad_clip_says_what_is_wrong():
    result = videoconv("flops", "r3d_18", "--input", "1x4x16x112x112")
    assert result.returncode == 2
    assert "expects 3 input channels" in result.stderr
