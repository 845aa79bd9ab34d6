"""Datasets for training the zoo: a procedural motion benchmark and a loader for real videos.

* :class:`SyntheticMotion` — clips of textured objects moving in one of 2/4/8 directions over a
  static textured background; the class is only in the motion (no frame, nor the set of frames,
  gives the direction), so a 3D CNN learns it and a per-frame 2D CNN stays at chance. Nothing to
  download; item ``i`` is always the same clip.
* :class:`VideoFolder` — ``root/<class>/<video>`` (UCF101 / HMDB51 layout), decoded with PyAV.
* :data:`PRESETS` / :func:`make_datasets` — named sizes and training hyperparameters
  (``"smoke"``: a few minutes on a CPU; ``"full"``), and the ``(train, val, info)`` triple that
  ``videoconv train`` consumes.

>>> from videoconv.data import make_datasets
>>> train_ds, val_ds, info = make_datasets("synthetic-motion", preset="smoke")
>>> clip, label = train_ds[0]            # (3, T, H, W) float32, int
"""

from .synthetic_motion import DIRECTIONS, SyntheticMotion
from .video_folder import VIDEO_EXTENSIONS, VideoDecodeError, VideoFolder
from .presets import DATA_NAMES, PRESETS, make_datasets

__all__ = [
    "SyntheticMotion",
    "DIRECTIONS",
    "VideoFolder",
    "VideoDecodeError",
    "VIDEO_EXTENSIONS",
    "PRESETS",
    "DATA_NAMES",
    "make_datasets",
]
