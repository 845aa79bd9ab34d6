"""The optional C++ extension: built schemas, Python mirror, and life without it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import videoconv
from videoconv._extension import extension_build_info, extension_error, extension_loaded
from videoconv.ops.schemas import SCHEMAS


def _require_extension():
    if extension_loaded():
        return
    if os.environ.get("VIDEOCONV_REQUIRE_EXTENSION") == "1":
        pytest.fail(f"videoconv._C must be built here but did not load: {extension_error()}")
    pytest.skip(f"videoconv._C not loaded: {extension_error()}")


def test_extension_registers_the_schemas():
    _require_extension()
    for name, schema in SCHEMAS.items():
        op = getattr(torch.ops.videoconv, name).default
        # The C++ declaration and its Python mirror must never drift apart.
        assert str(op._schema) == f"videoconv::{schema}"
    info = extension_build_info()
    assert "compiler=" in info and "cuda=" in info


def test_schemas_exist_on_every_install():
    for name in SCHEMAS:
        assert hasattr(torch.ops.videoconv, name)


_WITHOUT_EXTENSION = r"""
import torch, videoconv
from videoconv._extension import extension_loaded, extension_error
from videoconv.ops.schemas import SCHEMAS
assert not extension_loaded(), "extension should be disabled"
assert "VIDEOCONV_DISABLE_EXTENSION" in extension_error()
for name, schema in SCHEMAS.items():
    assert str(getattr(torch.ops.videoconv, name).default._schema) == "videoconv::" + schema
model = videoconv.models.get_model("r3d_18", num_classes=5).eval()
with torch.no_grad():
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 5)
print("ok")
"""


def _run(code_or_args, **env):
    environment = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable] + code_or_args, capture_output=True, text=True, env=environment, timeout=300
    )


def test_package_works_without_the_extension():
    result = _run(["-c", _WITHOUT_EXTENSION], VIDEOCONV_DISABLE_EXTENSION="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_info_says_when_the_extension_is_absent():
    result = _run(["-m", "videoconv", "info"], VIDEOCONV_DISABLE_EXTENSION="1")
    assert result.returncode == 0, result.stderr
    assert "extension videoconv._C: NOT loaded: disabled by VIDEOCONV_DISABLE_EXTENSION=1" in result.stdout


def test_version():
    assert videoconv.__version__.startswith("0.")
