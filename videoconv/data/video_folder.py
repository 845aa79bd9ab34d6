"""VideoFolder: real videos laid out as ``root/<class>/<video>`` (UCF101 / HMDB51 style).

Decoding uses PyAV (``pip install av``), imported only when a video is read. Each item is one
clip of ``frames`` frames, resized to ``size`` and normalised with the Kinetics mean/std that
torchvision's video models use: ``(clip (3, T, H, W) float32, label int)``.

Splits: with ``split=None`` every video under ``root`` is used. With ``split="train"`` /
``"val"`` / ``"test"``, ``root/<split>/<class>/<video>`` is used when that folder exists;
otherwise (``train``/``val`` only) each class's videos, sorted by name, are split so that the
last ``val_fraction`` of them are validation (for UCF101's ``v_<Class>_gXX_cYY`` names these are
whole groups, so the same actor/scene is not in both). The class list is the sorted union of
the class folders of all splits, so labels agree between splits.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["VideoFolder", "VideoDecodeError", "VIDEO_EXTENSIONS", "KINETICS_MEAN", "KINETICS_STD"]

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv",
                    ".wmv", ".gif")
#: torchvision's normalisation for its Kinetics-400 video models.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
SAMPLINGS = ("uniform", "random", "center")
_SPLITS = ("train", "val", "test")


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded."""


def _import_av():
    try:
        import av  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching sys.modules
        raise ImportError(
            "VideoFolder decodes videos with PyAV, which is not installed: pip install av"
        ) from exc
    return av


def _list_classes(directory: str) -> List[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _list_videos(directory: str, extensions: Tuple[str, ...]) -> List[str]:
    return sorted(
        e.name for e in os.scandir(directory)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(extensions)
    )


class VideoFolder(Dataset):
    """Clips from ``root/<class>/<video file>``; ``classes`` sorted by folder name.

    Args:
        root: the dataset folder.
        frames: T, frames per clip.
        size: an int (resize the shorter side to ``resize``, then center-crop ``size x size``)
            or ``(H, W)`` (resize to exactly that).
        resize: shorter side before the center crop of an int ``size`` (default ``size``);
            e.g. ``size=112, resize=128`` is the usual evaluation crop.
        split: ``None`` (all videos), ``"train"``, ``"val"`` or ``"test"`` (see the module doc).
        sampling: ``"uniform"`` (``frames`` frames spread evenly over the whole video),
            ``"random"`` (a window of ``frames`` frames ``frame_stride`` apart at a random start;
            uses torch's global RNG, which DataLoader seeds per worker) or ``"center"`` (that
            window in the middle, deterministic: the evaluation counterpart of ``"random"``).
        frame_stride: step between the frames of a window (``random`` / ``center``).
        transform: optional callable applied to the finished clip (3, T, H, W).
        normalize: subtract the Kinetics mean and divide by its std (else values in [0, 1]).
        val_fraction: share of each class held out as ``"val"`` when ``root/val`` does not exist.
        extensions: file endings counted as videos (case-insensitive).
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        frames: int = 16,
        size: Union[int, Sequence[int]] = 112,
        resize: Optional[int] = None,
        split: Optional[str] = None,
        sampling: str = "uniform",
        frame_stride: int = 1,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        normalize: bool = True,
        val_fraction: float = 0.2,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
    ) -> None:
        super().__init__()
        root = os.fspath(root)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        if isinstance(size, int) and not isinstance(size, bool):
            if size < 1:
                raise ValueError(f"size must be >= 1, got {size}")
            out_size: Union[int, Tuple[int, int]] = size
        else:
            try:
                h, w = (int(v) for v in size)
            except (TypeError, ValueError):
                raise ValueError(f"size must be an int or an (H, W) pair, got {size!r}") from None
            if h < 1 or w < 1:
                raise ValueError(f"size must be positive, got {size!r}")
            out_size = (h, w)
            if resize is not None:
                raise ValueError("resize applies to an int size (shorter side, then center crop); "
                                 f"got size={size!r} and resize={resize!r}")
        if resize is not None:
            if isinstance(resize, bool) or not isinstance(resize, int) or resize < out_size:
                raise ValueError(f"resize must be an int >= size ({out_size}), got {resize!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if isinstance(frame_stride, bool) or not isinstance(frame_stride, int) or frame_stride < 1:
            raise ValueError(f"frame_stride must be an int >= 1, got {frame_stride!r}")
        if split is not None and split not in _SPLITS:
            raise ValueError(f"split must be None or one of {_SPLITS}, got {split!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"video folder root {root!r} does not exist or is not a directory")

        self.root = root
        self.frames = frames
        self.size = out_size
        self.resize = resize if resize is not None else (out_size if isinstance(out_size, int) else None)
        self.split = split
        self.sampling = sampling
        self.frame_stride = frame_stride
        self.transform = transform
        self.normalize = normalize
        self.val_fraction = float(val_fraction)
        self.extensions = tuple(e.lower() for e in extensions)

        split_dirs = {s: os.path.join(root, s) for s in _SPLITS if os.path.isdir(os.path.join(root, s))}
        if split is not None and split in split_dirs:
            # root/<split>/<class>/...: classes from every split folder, so labels agree.
            self.classes = sorted({c for d in split_dirs.values() for c in _list_classes(d)})
            class_root = split_dirs[split]
            holdout = None
        else:
            if split == "test":
                raise FileNotFoundError(
                    f"split 'test' needs a folder {os.path.join(root, 'test')!r} "
                    f"(only train/val can be carved out of root/<class>/ automatically)"
                )
            self.classes = _list_classes(root)
            class_root = root
            holdout = split  # None, "train" or "val"
        if not self.classes:
            raise ValueError(
                f"no class folders in {root!r}: expected the layout root/<class>/<video file> "
                f"(e.g. {os.path.join(root, 'ApplyEyeMakeup', 'v_ApplyEyeMakeup_g01_c01.avi')!r})"
            )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: List[Tuple[str, int]] = []
        for cls in self.classes:
            directory = os.path.join(class_root, cls)
            if not os.path.isdir(directory):
                continue
            videos = _list_videos(directory, self.extensions)
            if holdout is not None:
                n_val = int(round(len(videos) * self.val_fraction))
                if len(videos) >= 2:
                    n_val = min(max(n_val, 1), len(videos) - 1)
                else:
                    n_val = 0
                videos = videos[len(videos) - n_val:] if holdout == "val" else videos[:len(videos) - n_val]
            self.samples.extend((os.path.join(directory, v), self.class_to_idx[cls]) for v in videos)
        if not self.samples:
            where = class_root if holdout is None else f"{class_root} (split {split!r})"
            raise ValueError(
                f"no videos found in {where}: looked in {len(self.classes)} class folder(s) "
                f"({', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''}) for files "
                f"ending in {', '.join(self.extensions)}"
            )

    # -- Dataset ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def clip_shape(self) -> Tuple[int, int, int, int]:
        h, w = (self.size, self.size) if isinstance(self.size, int) else self.size
        return (3, self.frames, h, w)

    @property
    def targets(self) -> List[int]:
        return [label for _, label in self.samples]

    def __repr__(self) -> str:
        return (f"VideoFolder(root={self.root!r}, split={self.split!r}, {len(self)} videos, "
                f"{self.num_classes} classes, frames={self.frames}, size={self.size}, "
                f"sampling={self.sampling!r})")

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        frames = self.read_frames(path)  # (T, H, W, 3) uint8
        clip = frames.permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)
        clip = self._resize(clip)
        if self.normalize:
            mean = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(KINETICS_STD).view(1, 3, 1, 1)
            clip = (clip - mean) / std
        clip = clip.permute(1, 0, 2, 3).contiguous()  # (3, T, H, W)
        if self.transform is not None:
            clip = self.transform(clip)
        return clip, label

    # -- pieces -----------------------------------------------------------------------------

    def frames_needed(self) -> int:
        """Frames a video must have for one clip."""
        if self.sampling == "uniform":
            return self.frames
        return (self.frames - 1) * self.frame_stride + 1

    def frame_indices(self, num_frames: int, path: str = "<video>") -> List[int]:
        """Which of a video's ``num_frames`` frames make the clip (raises if too few)."""
        needed = self.frames_needed()
        if num_frames < needed:
            how = (f"{self.frames} frames sampled uniformly" if self.sampling == "uniform" else
                   f"a window of {self.frames} frames {self.frame_stride} apart")
            raise ValueError(
                f"video {path} has {num_frames} frame(s) but {needed} are needed ({how}); use fewer "
                f"frames or a smaller frame_stride, or remove the video"
            )
        if self.sampling == "uniform":
            return [int((i + 0.5) * num_frames / self.frames) for i in range(self.frames)]
        span = needed
        if self.sampling == "random":
            start = int(torch.randint(0, num_frames - span + 1, (1,)))
        else:
            start = (num_frames - span) // 2
        return [start + i * self.frame_stride for i in range(self.frames)]

    def read_frames(self, path: str) -> torch.Tensor:
        """Decode ``path`` and return the clip's frames, (T, H, W, 3) uint8."""
        av = _import_av()
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise VideoDecodeError(f"cannot read video {path}: it has no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                decoded = list(container.decode(stream))
        except VideoDecodeError:
            raise
        except Exception as exc:  # av.error.FFmpegError and friends, OSError
            raise VideoDecodeError(f"cannot read video {path}: {type(exc).__name__}: {exc}") from exc
        indices = self.frame_indices(len(decoded), path)
        try:
            arrays = [decoded[i].to_ndarray(format="rgb24") for i in indices]
        except Exception as exc:
            raise VideoDecodeError(f"cannot convert the frames of {path} to RGB: {exc}") from exc
        return torch.stack([torch.from_numpy(a) for a in arrays])

    def _resize(self, clip: torch.Tensor) -> torch.Tensor:
        """(T, 3, h, w) -> (T, 3, H, W): shorter side to ``size`` + center crop, or exact (H, W)."""
        h, w = clip.shape[-2:]
        if isinstance(self.size, int):
            s, r = self.size, self.resize
            scale = r / min(h, w)
            nh, nw = max(r, round(h * scale)), max(r, round(w * scale))
            if (nh, nw) != (h, w):
                clip = F.interpolate(clip, size=(nh, nw), mode="bilinear", align_corners=False,
                                     antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            return clip[..., top:top + s, left:left + s]
        if tuple(self.size) != (h, w):
            clip = F.interpolate(clip, size=tuple(self.size), mode="bilinear", align_corners=False,
                                 antialias=True)
        return clip
