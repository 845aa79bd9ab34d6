"""Loading of the optional C++/CUDA extension ``videoconv._C``.

The extension only registers operator schemas and device kernels with the dispatcher; nothing in
Python calls into it directly. When it is missing (not built, built against another torch, or
disabled with ``VIDEOCONV_DISABLE_EXTENSION=1``) the package still imports: the schemas are then
declared from Python (videoconv/ops/schemas.py) and ``videoconv info`` says why the extension is
absent.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["extension_loaded", "extension_error", "extension_build_info"]

_loaded = False
_error: Optional[str] = None


def _load() -> None:
    global _loaded, _error
    if os.environ.get("VIDEOCONV_DISABLE_EXTENSION", "0") == "1":
        _error = "disabled by VIDEOCONV_DISABLE_EXTENSION=1"
        return
    try:
        import torch  # noqa: F401  (the extension links against libtorch; load it first)

        from . import _C  # noqa: F401
    except ImportError as exc:  # not built, or an ABI mismatch with the installed torch
        _error = f"{type(exc).__name__}: {exc}"
    else:
        _loaded = True


def extension_loaded() -> bool:
    """Whether ``videoconv._C`` was imported (its schemas and kernels are registered)."""
    return _loaded


def extension_error() -> Optional[str]:
    """Why the extension is not loaded, or None if it is."""
    return _error


def extension_build_info() -> Optional[str]:
    """Compiler/CUDA/OpenMP the extension was built with, or None without the extension."""
    if not _loaded:
        return None
    import torch

    return torch.ops.videoconv._build_info()


_load()
