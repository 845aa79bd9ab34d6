"""Input validation shared by the zoo.

PyTorch's own errors for a bad clip come from deep inside a layer ("Kernel size can't be greater
than actual input size", "expected input[1, 4, ...] to have 3 channels") and do not say what the
*model* expected. Each model checks its clip once, at the top of ``forward``, and says so in terms
of the clip: rank, channels, frames, spatial size.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["check_video_input"]


def check_video_input(
    x: torch.Tensor,
    model: str,
    *,
    in_channels: int,
    min_frames: int = 1,
    min_size: int = 1,
    frames_multiple_of: int = 1,
    exact_size: Optional[Tuple[int, int, int]] = None,
) -> None:
    """Raise ``ValueError`` naming the problem if ``x`` is not a clip ``model`` can take.

    Args:
        x: the clip, (N, C, T, H, W).
        model: name used in the message.
        in_channels: C the first layer was built for.
        min_frames: smallest T (fixed-size temporal pooling, lateral connections).
        min_size: smallest H and W.
        frames_multiple_of: T must be a multiple of this (SlowFast's alpha).
        exact_size: (T, H, W) when the network only takes one size (C3D's fully connected head).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model} expects a torch.Tensor clip, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(
            f"{model} expects a 5-D clip (N, C, T, H, W); got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}"
        )
    n, c, t, h, w = x.shape
    if c != in_channels:
        raise ValueError(
            f"{model} expects {in_channels} input channels (N, C, T, H, W with C={in_channels}); "
            f"got C={c} in a clip of shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{model} expects a floating-point clip, got dtype {x.dtype}")
    if exact_size is not None and (t, h, w) != tuple(exact_size):
        et, eh, ew = exact_size
        raise ValueError(
            f"{model} only takes clips of {et} frames of {eh}x{ew} (its fully connected head is "
            f"sized for them); got {t} frames of {h}x{w}"
        )
    if t < min_frames:
        raise ValueError(
            f"{model} needs at least {min_frames} frames (its temporal pooling and striding "
            f"reduce the clip by that much); got a clip of {t} frames, shape {tuple(x.shape)}"
        )
    if t % frames_multiple_of:
        raise ValueError(
            f"{model} needs a number of frames divisible by {frames_multiple_of}; got {t}"
        )
    if h < min_size or w < min_size:
        raise ValueError(
            f"{model} needs frames of at least {min_size}x{min_size} pixels; got {h}x{w}"
        )
