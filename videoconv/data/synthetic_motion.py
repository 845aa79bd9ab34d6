"""SyntheticMotion: procedurally generated clips whose class is only in the motion.

Each clip shows a few textured objects (squares or disks of random size, colour and texture)
gliding over a static textured background, all in one direction, the class. Everything else is
random per clip: background, number of objects, their appearance, start positions (uniform over
the frame) and speeds (whole pixels per frame). Objects move on a torus: what leaves on one side
comes back on the other, so an object's position in any frame is uniform over the image whatever
the class, and there is no edge where objects pile up or enter.

What this buys: no single frame carries the class (every frame is "background + objects at
uniform random places"), and for the time-reversal pairs (right/left, down/up, and the
diagonals) not even the unordered set of frames does: a clip played backwards is an equally
likely clip of the opposite class, so any model that treats the frames as a set (per-frame 2D
CNN + temporal average, e.g. ``c2d_r18``) is exactly at chance between the two. With 4 or 8
classes the *axis* of motion (horizontal vs vertical) is in principle recoverable from the set
of frames through a non-linear statistic (each object's positions line up along the axis, so
e.g. the time-averaged clip shows the objects smeared along it); the trajectories are kept short
(``max speed * (frames - 1)`` well under ``size``) so that this is weak, and a linear read-out of
single frames or of the time-averaged clip is at chance (see tests/test_data.py).

Classes (``num_classes``): 2 = right, left; 4 = + down, up; 8 = + the four diagonals.

Item ``i`` of a dataset built with ``seed`` and ``split`` is always the same clip: it is drawn
from its own ``torch.Generator`` seeded with a hash of ``(seed, split, i)``; splits and seeds
give disjoint streams. Generation is vectorised (well under a millisecond for 3x8x32x32).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["SyntheticMotion", "DIRECTIONS", "SPLITS"]

#: (name, (dy, dx)) per class index, in pixels per frame for a unit speed. Pairs (2k, 2k+1) are
#: each other's time reversal.
DIRECTIONS: Tuple[Tuple[str, Tuple[int, int]], ...] = (
    ("right", (0, 1)),
    ("left", (0, -1)),
    ("down", (1, 0)),
    ("up", (-1, 0)),
    ("down-right", (1, 1)),
    ("up-left", (-1, -1)),
    ("down-left", (1, -1)),
    ("up-right", (-1, 1)),
)
SPLITS = ("train", "val", "test")
_VALID_NUM_CLASSES = (2, 4, 8)

# Empirical mean/std of the raw clips (measured over 2000 clips of 3x8x32x32, all classes),
# used to normalise them; they depend only weakly on size/frames.
_RAW_MEAN = 0.0
_RAW_STD = 0.81

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of item ``index`` of ``split`` under ``seed`` (a 63-bit hash)."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (SPLITS.index(split) + 1))
    h = _splitmix64(h ^ (index & _MASK64))
    return h & ((1 << 63) - 1)


def _as_range(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a (min, max) pair of ints, got {value!r}")
    if isinstance(value, int):
        lo = hi = value
    else:
        try:
            lo, hi = (int(v) for v in value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an int or a (min, max) pair of ints, got {value!r}") from None
    if lo > hi:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {value!r}")
    return lo, hi


class SyntheticMotion(Dataset):
    """Clips of textured objects moving in one of ``num_classes`` directions; label = direction.

    Args:
        num_samples: number of clips (the dataset's length).
        num_classes: 2 (right, left), 4 (+ down, up) or 8 (+ diagonals).
        frames: T, at least 3.
        size: H = W, at least 16.
        seed: base seed; with ``split`` and the index it fixes every clip.
        split: ``"train"``, ``"val"`` or ``"test"``: disjoint streams of clips.
        num_objects: number of objects per clip, an int or an inclusive (min, max) range.
        object_size: side (squares) / diameter (disks) in pixels, int or (min, max); default
            (size // 5, 3 * size // 8), i.e. 6 to 12 pixels at size 32.
        speed: pixels per frame along each axis, int or (min, max), drawn per object; the
            largest times ``frames - 1`` must stay below ``size`` (no full lap around the
            torus) and each step below ``size / 2`` (so a step has one direction).
        noise: std of the per-frame sensor noise added on top (before normalisation).
        background_contrast: scale of the background's texture (0: a flat colour).
        background_motion: the background moves too (same direction, its own random speed).
        cache: keep each clip once generated (``materialize()`` fills the cache at once).

    Items are ``(clip, label)``: ``clip`` a float32 tensor (3, T, H, W), roughly zero-mean and
    unit-variance; ``label`` an int in ``[0, num_classes)``. Labels are balanced:
    ``label = index % num_classes``.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        num_classes: int = 4,
        frames: int = 8,
        size: int = 32,
        seed: int = 0,
        split: str = "train",
        num_objects: Union[int, Sequence[int]] = (3, 5),
        object_size: Optional[Union[int, Sequence[int]]] = None,
        speed: Union[int, Sequence[int]] = 2,
        noise: float = 0.1,
        background_contrast: float = 0.5,
        background_motion: bool = False,
        cache: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("num_samples", num_samples), ("num_classes", num_classes), ("frames", frames),
                            ("size", size), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if num_classes not in _VALID_NUM_CLASSES:
            raise ValueError(
                f"num_classes must be one of {_VALID_NUM_CLASSES} (2: right/left, 4: + down/up, "
                f"8: + diagonals), got {num_classes}"
            )
        if frames < 3:
            raise ValueError(
                f"frames must be >= 3 for the motion to be visible (the class is the direction of "
                f"motion, seen over at least two consecutive displacements), got {frames}"
            )
        if size < 16:
            raise ValueError(f"size must be >= 16 pixels (objects of a few pixels moving over a "
                             f"background), got {size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        n_lo, n_hi = _as_range(num_objects, "num_objects")
        if n_lo < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects!r}")
        s_lo, s_hi = _as_range(object_size if object_size is not None else (size // 5, size * 3 // 8), "object_size")
        if s_lo < 3 or s_hi > size // 2:
            raise ValueError(
                f"object_size must lie in [3, size // 2 = {size // 2}] pixels, got {(s_lo, s_hi)}"
            )
        v_lo, v_hi = _as_range(speed, "speed")
        if v_lo < 1:
            raise ValueError(f"speed must be >= 1 pixel per frame, got {speed!r}")
        if 2 * v_hi >= size or v_hi * (frames - 1) >= size:
            raise ValueError(
                f"speed up to {v_hi} pixels/frame is too fast for {frames} frames of {size}x{size}: "
                f"need speed < size / 2 (= {size / 2:g}) and speed * (frames - 1) < size "
                f"(got {v_hi * (frames - 1)} >= {size}) so that the motion does not alias or lap "
                f"the frame"
            )
        if not (isinstance(noise, (int, float)) and noise >= 0 and math.isfinite(noise)):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        if not (isinstance(background_contrast, (int, float)) and background_contrast >= 0
                and math.isfinite(background_contrast)):
            raise ValueError(f"background_contrast must be a finite number >= 0, got {background_contrast!r}")

        self.num_samples = num_samples
        self.num_classes = num_classes
        self.frames = frames
        self.size = size
        self.seed = seed
        self.split = split
        self.num_objects = (n_lo, n_hi)
        self.object_size = (s_lo, s_hi)
        self.speed = (v_lo, v_hi)
        self.noise = float(noise)
        self.background_contrast = float(background_contrast)
        self.background_motion = bool(background_motion)
        self.classes: List[str] = [name for name, _ in DIRECTIONS[:num_classes]]
        self._directions = [d for _, d in DIRECTIONS[:num_classes]]
        self._cache: Optional[dict] = {} if cache else None
        coords = torch.arange(size)
        self._coords = coords

    # -- Dataset ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.num_samples

    @property
    def clip_shape(self) -> Tuple[int, int, int, int]:
        return (3, self.frames, self.size, self.size)

    def label_of(self, index: int) -> int:
        return index % self.num_classes

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_samples} clips")
        if self._cache is not None and index in self._cache:
            return self._cache[index], self.label_of(index)
        clip = self.generate(index)
        if self._cache is not None:
            self._cache[index] = clip
        return clip, self.label_of(index)

    def hflip_label_map(self) -> List[int]:
        """Label of each class after a horizontal flip (right <-> left, down-right <-> down-left, ...).

        For ``Video3DAugmentation(label_flip_map=...)``: a mirrored clip moves the mirrored way.
        """
        names = self.classes
        mirrored = [name.replace("left", "@").replace("right", "left").replace("@", "right") for name in names]
        return [names.index(m) for m in mirrored]

    def materialize(self) -> "SyntheticMotion":
        """Generate every clip now and keep them (turns the cache on); returns ``self``."""
        if self._cache is None:
            self._cache = {}
        for index in range(self.num_samples):
            if index not in self._cache:
                self._cache[index] = self.generate(index)
        return self

    def __repr__(self) -> str:
        return (f"SyntheticMotion(num_samples={self.num_samples}, num_classes={self.num_classes}, "
                f"frames={self.frames}, size={self.size}, seed={self.seed}, split={self.split!r})")

    # -- generation -------------------------------------------------------------------------

    def generate(self, index: int) -> torch.Tensor:
        """Clip ``index`` (3, T, H, W), float32, normalised; the same every time."""
        g = torch.Generator().manual_seed(item_seed(self.seed, self.split, index))
        T, S = self.frames, self.size
        dy, dx = self._directions[self.label_of(index)]

        def rand(*shape):
            return torch.rand(shape, generator=g)

        def randn(*shape):
            return torch.randn(shape, generator=g)

        def randint(lo, hi, shape=(1,)):  # inclusive
            return torch.randint(lo, hi + 1, shape, generator=g)

        # Static background: smooth coloured blobs plus fine texture, random contrast.
        coarse = S // 4
        background = F.interpolate(randn(1, 3, coarse, coarse), size=(S, S), mode="bilinear",
                                   align_corners=False)[0]
        background = background * (0.4 + 0.4 * rand(1)) + randn(3, S, S) * (0.3 + 0.3 * rand(1))
        background = self.background_contrast * background + 0.3 * randn(3, 1, 1)
        coords = self._coords
        t = torch.arange(T)
        if self.background_motion:
            speed = int(randint(*self.speed))
            iy = (coords.view(1, S) - dy * speed * t.view(T, 1)) % S  # (T, S)
            ix = (coords.view(1, S) - dx * speed * t.view(T, 1)) % S
            clip = background[:, iy.view(T, S, 1), ix.view(T, 1, S)]  # (3, T, S, S)
        else:
            clip = background.unsqueeze(1).expand(3, T, S, S).clone()
        n_objects = int(randint(*self.num_objects))
        for _ in range(n_objects):
            side = int(randint(*self.object_size))
            speed = int(randint(*self.speed))
            y0, x0 = (int(v) for v in randint(0, S - 1, (2,)))
            # Texture: a colour, a 2-pixel-block pattern and fine noise; high contrast.
            color = randn(3, 1, 1) * 1.0
            blocks = (side + 1) // 2
            pattern = randn(1, 3, blocks, blocks)
            pattern = F.interpolate(pattern, size=(side, side), mode="nearest")[0]
            texture = color + 0.8 * pattern + 0.3 * randn(3, side, side)
            # Top-left corner at each frame, wrapped on the torus.
            py = (y0 + dy * speed * t) % S  # (T,)
            px = (x0 + dx * speed * t) % S
            ry = (coords.view(1, S) - py.view(T, 1)) % S  # (T, S): row offset inside the object
            rx = (coords.view(1, S) - px.view(T, 1)) % S  # (T, S)
            inside_y = ry < side
            inside_x = rx < side
            inside = inside_y.view(T, S, 1) & inside_x.view(T, 1, S)  # (T, S, S)
            if bool(rand(1) < 0.5):  # a disk instead of a square
                c = (side - 1) / 2.0
                r2 = (ry.float() - c).pow(2).view(T, S, 1) + (rx.float() - c).pow(2).view(T, 1, S)
                inside = inside & (r2 <= (side / 2.0) ** 2)
            iy = ry.clamp(max=side - 1).view(T, S, 1).expand(T, S, S)
            ix = rx.clamp(max=side - 1).view(T, 1, S).expand(T, S, S)
            values = texture[:, iy, ix]  # (3, T, S, S)
            clip = torch.where(inside.unsqueeze(0), values, clip)

        if self.noise:
            clip = clip + self.noise * randn(3, T, S, S)
        return ((clip - _RAW_MEAN) / _RAW_STD).to(torch.float32).contiguous()
