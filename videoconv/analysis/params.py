"""Parameter counts."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["count_params"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (buffers such as BN running stats excluded).

    Parameters shared between modules are counted once, as ``model.parameters()`` yields them.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
