"""Batched clip augmentation on whatever device the batch lives on.

:class:`Video3DAugmentation` takes a batch ``(N, C, T, H, W)`` and, per clip, draws a temporal
crop, a spatial crop (optionally a random-resized crop: scale and aspect jitter), and a
horizontal flip. The per-clip parameters are small tensors; the pixels move in one gather
(integer crops, flips folded into the indices) or one ``grid_sample`` (resized crops, with a
per-clip affine grid), so there are no Python loops over clips or pixels and the same code runs
on CPU and GPU.

Horizontal flips and labels: a mirrored clip of "moving right" is a clip of "moving left". For
a direction-of-motion task (``SyntheticMotion``), either turn flips off (``flip_p=0``, what the
``smoke`` preset does) or give ``label_flip_map`` (``SyntheticMotion.hflip_label_map()``) and
pass ``labels=`` so flipped clips get the mirrored label. For ordinary action recognition
(flipping does not change the class) leave ``label_flip_map=None``.

Randomness: pass a ``torch.Generator``; the same seed gives the same output (parameters are
drawn on the generator's device, CPU when none is given, then moved to the batch's device).
In ``eval()`` mode the module is deterministic: temporal and spatial center crops, no flip.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Video3DAugmentation"]


def _pair(value, name: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be None, an int or an (H, W) pair, got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return h, w


class Video3DAugmentation(nn.Module):
    """Random temporal crop, spatial (resized) crop and horizontal flip of a clip batch.

    Args:
        frames: T of the output (random temporal window); ``None`` keeps all frames.
        size: output (H, W) or an int for square; ``None`` keeps the input's size.
        flip_p: probability of a horizontal flip per clip (0 disables flips).
        scale: ``None`` for plain crops of ``size`` pixels; or ``(min, max)`` area fractions of
            the input frame for a random-resized crop (Inception style), resized to ``size``
            with bilinear ``grid_sample``.
        ratio: aspect-ratio range (w / h) of the resized crop, log-uniform.
        label_flip_map: label of the mirrored clip for each label (a sequence indexed by label,
            or a mapping; labels missing from a mapping stay). Needs ``labels=`` at call time.

    Call: ``aug(clips)`` -> clips, or ``aug(clips, labels)`` -> ``(clips, labels)``; keyword
    ``generator`` for reproducible draws.
    """

    def __init__(
        self,
        frames: Optional[int] = None,
        size: Optional[Union[int, Sequence[int]]] = None,
        flip_p: float = 0.5,
        scale: Optional[Sequence[float]] = None,
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        label_flip_map: Optional[Union[Sequence[int], Mapping[int, int]]] = None,
    ) -> None:
        super().__init__()
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise ValueError(f"frames must be None or an int >= 1, got {frames!r}")
        if not 0.0 <= float(flip_p) <= 1.0:
            raise ValueError(f"flip_p must be a probability in [0, 1], got {flip_p!r}")
        if scale is not None:
            lo, hi = (float(v) for v in scale)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"scale must be (min, max) area fractions with 0 < min <= max <= 1, got {scale!r}")
            scale = (lo, hi)
        r_lo, r_hi = (float(v) for v in ratio)
        if not 0.0 < r_lo <= r_hi:
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {ratio!r}")
        self.frames = frames
        self.size = _pair(size, "size")
        self.flip_p = float(flip_p)
        self.scale = scale
        self.ratio = (r_lo, r_hi)
        self.label_flip_map: Optional[Dict[int, int]] = None
        if label_flip_map is not None:
            if isinstance(label_flip_map, Mapping):
                self.label_flip_map = {int(k): int(v) for k, v in label_flip_map.items()}
            else:
                self.label_flip_map = {i: int(v) for i, v in enumerate(label_flip_map)}

    def extra_repr(self) -> str:
        return (f"frames={self.frames}, size={self.size}, flip_p={self.flip_p}, scale={self.scale}, "
                f"ratio={self.ratio}, label_flip_map={self.label_flip_map}")

    # -- checks -----------------------------------------------------------------------------

    def _check(self, x: torch.Tensor) -> Tuple[int, int, int]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Video3DAugmentation expects a tensor batch (N, C, T, H, W), got {type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(
                f"Video3DAugmentation expects a 5-D batch (N, C, T, H, W); got a {x.dim()}-D tensor of "
                f"shape {tuple(x.shape)} (add the batch dimension with clip.unsqueeze(0))"
            )
        _, _, t, h, w = x.shape
        frames = self.frames or t
        out_h, out_w = self.size or (h, w)
        if t < frames:
            raise ValueError(
                f"the clip has T={t} frames but the temporal crop needs frames={frames} "
                f"(batch shape {tuple(x.shape)})"
            )
        if self.scale is None and (h < out_h or w < out_w):
            raise ValueError(
                f"the frames are {h}x{w} (HxW) but the spatial crop needs at least {out_h}x{out_w} "
                f"(batch shape {tuple(x.shape)}); use a smaller size, or scale=(min, max) to resize"
            )
        return frames, out_h, out_w

    # -- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None):
        frames, out_h, out_w = self._check(x)
        n, c, t, h, w = x.shape
        device = x.device
        if self.label_flip_map is not None and self.training and self.flip_p > 0 and labels is None:
            raise ValueError(
                "label_flip_map is set but no labels were passed: call aug(clips, labels) so that "
                "flipped clips get their mirrored labels (or set flip_p=0)"
            )

        if not self.training:
            t0 = (t - frames) // 2
            out = x[:, :, t0:t0 + frames]
            if (h, w) != (out_h, out_w):
                if self.scale is None:
                    y0, x0 = (h - out_h) // 2, (w - out_w) // 2
                    out = out[..., y0:y0 + out_h, x0:x0 + out_w]
                else:
                    out = self._resize_frames(out, out_h, out_w)
            return out if labels is None else (out, labels)

        # Per-clip parameters, drawn in a fixed order on the generator's device.
        gen_device = generator.device if generator is not None else torch.device("cpu")

        def uniform(*shape):
            return torch.rand(shape, generator=generator, device=gen_device).to(device)

        u_t = uniform(n)
        u_flip = uniform(n)
        t_start = torch.clamp((u_t * (t - frames + 1)).long(), max=t - frames)
        flip = u_flip < self.flip_p

        if self.scale is None:
            u_y, u_x = uniform(n), uniform(n)
            y_start = torch.clamp((u_y * (h - out_h + 1)).long(), max=h - out_h)
            x_start = torch.clamp((u_x * (w - out_w + 1)).long(), max=w - out_w)
            out = self._gather(x, t_start, y_start, x_start, flip, frames, out_h, out_w)
        else:
            u_area, u_ratio, u_cy, u_cx = uniform(n), uniform(n), uniform(n), uniform(n)
            out = self._resized_crop(x, t_start, flip, frames, out_h, out_w, u_area, u_ratio, u_cy, u_cx)

        if labels is None:
            return out
        labels = torch.as_tensor(labels, device=device)
        if self.label_flip_map is not None:
            mapped = labels.clone()
            for src, dst in self.label_flip_map.items():
                mapped = torch.where(flip & (labels == src), torch.full_like(labels, dst), mapped)
            labels = mapped
        return out, labels

    # -- pieces -----------------------------------------------------------------------------

    @staticmethod
    def _keep_layout(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            return out.contiguous(memory_format=torch.channels_last_3d)
        return out.contiguous()

    def _gather(self, x, t_start, y_start, x_start, flip, frames, out_h, out_w):
        """Integer crops (and flips) of every clip in one advanced-indexing gather."""
        n = x.shape[0]
        device = x.device
        ar_t = torch.arange(frames, device=device)
        ar_y = torch.arange(out_h, device=device)
        ar_x = torch.arange(out_w, device=device)
        n_idx = torch.arange(n, device=device).view(n, 1, 1, 1)
        t_idx = (t_start.view(n, 1) + ar_t).view(n, frames, 1, 1)
        y_idx = (y_start.view(n, 1) + ar_y).view(n, 1, out_h, 1)
        cols = torch.where(flip.view(n, 1), ar_x.flip(0), ar_x)
        x_idx = (x_start.view(n, 1) + cols).view(n, 1, 1, out_w)
        out = x.permute(0, 2, 3, 4, 1)[n_idx, t_idx, y_idx, x_idx]  # (N, T', H', W', C)
        return self._keep_layout(out.permute(0, 4, 1, 2, 3), x)

    def _temporal_crop(self, x, t_start, frames):
        n, c, t, h, w = x.shape
        t_idx = t_start.view(n, 1) + torch.arange(frames, device=x.device)  # (N, T')
        index = t_idx.view(n, 1, frames, 1, 1).expand(n, c, frames, h, w)
        return torch.gather(x, 2, index)

    def _resized_crop(self, x, t_start, flip, frames, out_h, out_w, u_area, u_ratio, u_cy, u_cx):
        """Random-resized crops: one affine grid per clip, bilinear ``grid_sample`` per frame."""
        if not x.is_floating_point():
            raise TypeError(f"scale jitter resamples pixels and needs a floating-point batch, got {x.dtype}")
        n, c, t, h, w = x.shape
        clips = self._temporal_crop(x, t_start, frames)
        lo, hi = self.scale
        area = (lo + (hi - lo) * u_area) * (h * w)
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * u_ratio
        r = torch.exp(log_r)
        crop_w = torch.sqrt(area * r).clamp(1.0, float(w))
        crop_h = torch.sqrt(area / r).clamp(1.0, float(h))
        cy = crop_h / 2 + u_cy * (h - crop_h)
        cx = crop_w / 2 + u_cx * (w - crop_w)
        sx = (crop_w / w) * torch.where(flip, -1.0, 1.0).to(crop_w)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=torch.float32)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = 2 * cx / w - 1
        theta[:, 1, 1] = crop_h / h
        theta[:, 1, 2] = 2 * cy / h - 1
        theta = theta.repeat_interleave(frames, dim=0)  # one per frame, (N*T', 2, 3)
        frames_2d = clips.permute(0, 2, 1, 3, 4).reshape(n * frames, c, h, w)
        grid = F.affine_grid(theta.to(x.dtype), (n * frames, c, out_h, out_w), align_corners=False)
        out = F.grid_sample(frames_2d, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out.view(n, frames, c, out_h, out_w).permute(0, 2, 1, 3, 4)
        return self._keep_layout(out, x)

    def _resize_frames(self, clips, out_h, out_w):
        n, c, t, h, w = clips.shape
        frames_2d = clips.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        out = F.interpolate(frames_2d, size=(out_h, out_w), mode="bilinear", align_corners=False)
        return out.view(n, t, c, out_h, out_w).permute(0, 2, 1, 3, 4).contiguous()
