"""The reference implementations the model tests compare against, and helpers for comparing.

* :func:`import_torchvision` / :func:`import_pytorchvideo`: import them, on a CPU-only torch too,
  or skip the calling test.
* :func:`randomise_batch_norm`: non-trivial BN parameters and statistics before a comparison.
* :func:`assert_close_rel`: max-abs error relative to the largest magnitude of the reference.

Test modules import these as ``from reference_impls import ...`` (``tests/`` is on ``sys.path``
under pytest's default import mode).
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

__all__ = ["import_torchvision", "import_pytorchvideo", "randomise_batch_norm", "assert_close_rel"]

_TORCHVISION_OPS = ("nms", "qnms")

#: The schema fragment must outlive the import: dropping the Library object removes its ops.
_torchvision_shim = None


def _has_torchvision_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def import_torchvision():
    """``import torchvision``, declaring ``torchvision::nms``/``qnms`` first if need be.

    The torchvision wheel on PyPI is a CUDA build: with a CPU-only torch its C++ extension cannot
    load, and ``import torchvision`` then fails registering fake kernels for ``nms``/``qnms``
    (which it does unconditionally) whose schemas were never defined. Declaring those two schemas
    (never running them) lets the pure-Python parts, the models we compare against, import. They
    are declared only when the real import fails because of them, and only those that nobody
    (torchvision itself, an earlier call) declared already.

    Skips the calling test when torchvision (or the pillow it needs) is not installed.
    """
    global _torchvision_shim
    pytest.importorskip("PIL", reason="torchvision needs pillow")
    try:
        import torchvision

        return torchvision
    except ImportError:
        pytest.skip("torchvision is not installed")
    except RuntimeError as exc:
        if not any(f"torchvision::{name}" in str(exc) for name in _TORCHVISION_OPS):
            raise
    missing = [name for name in _TORCHVISION_OPS if not _has_torchvision_op(name)]
    if missing:
        if _torchvision_shim is None:
            _torchvision_shim = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            _torchvision_shim.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # The failed import left half-initialised torchvision modules behind; import afresh.
    for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[module]
    import torchvision

    return torchvision


def import_pytorchvideo():
    """``import pytorchvideo`` (after :func:`import_torchvision`, which it needs), or skip.

    pytorchvideo's models import torchvision (its heads use ``torchvision.ops``), hence the shim.
    Submodules (``pytorchvideo.models.x3d`` ...) are imported by the caller.
    """
    import_torchvision()
    try:
        import pytorchvideo.models
    except Exception as exc:  # ImportError, or pytorchvideo failing to import in another way
        pytest.skip(f"pytorchvideo is not importable: {type(exc).__name__}: {exc}")
    return pytorchvideo


def randomise_batch_norm(model: nn.Module, seed: int, *, biases: bool = False) -> nn.Module:
    """Random running mean/var, weight and bias of every BatchNorm of ``model``; returns it.

    With fresh BNs (weight 1, bias 0, mean 0, var 1) eval-mode BN is the identity, and swapped,
    mis-ordered or mis-wired BN layers and statistics would go unnoticed. pytorchvideo moreover
    zero-initialises every bottleneck's last BN, which makes all residual branches vanish and a
    comparison against it vacuous.

    ``biases=True`` also randomises the biases of the convolutions and linear layers that have
    one (zero after the usual initialisation).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif biases and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Max-abs error relative to the largest magnitude of ``expected``.

    Relative to the whole tensor's scale, not elementwise: ReLU networks have many exact zeros.
    """
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    error = (actual - expected).abs().max().item()
    assert error <= rtol * scale, f"max |diff| {error:.3g} vs max |expected| {scale:.3g} (rtol {rtol})"
