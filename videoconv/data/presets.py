"""Named dataset sizes + training hyperparameters, and :func:`make_datasets`.

``PRESETS[name]`` is a flat dict: dataset sizes and clip shape (``num_train``, ``num_val``,
``num_classes``, ``frames``, ``size``), the training hyperparameters ``videoconv train`` uses
(``epochs``, ``batch_size``, ``optimizer``, ``lr``, ``weight_decay``, ``momentum``,
``scheduler``, ``warmup_epochs``, ``augment``), and two sub-dicts: ``motion`` (extra
:class:`~videoconv.data.SyntheticMotion` arguments) and ``folder`` (what changes for real
videos in a :class:`~videoconv.data.VideoFolder`: sampling, resize, augmentation, ...).

* ``smoke``: sized for a CPU (2 cores). On ``synthetic-motion``, ``r2plus1d_18`` reaches
  >= 0.9 validation accuracy in a few minutes, while ``c2d_r18`` (per-frame 2D ResNet +
  temporal average) stays at chance: the class is only in the motion. No flips (a mirrored
  clip of "right" is "left"). Two classes, not 4 or 8: with a second axis the axis of motion
  leaks weakly into the unordered set of frames (see SyntheticMotion), which a per-frame model
  could use; with right/left alone a per-frame model is exactly at chance, so c2d_r18's result
  says something. The dataset itself does 2, 4 or 8 directions and ranges of speeds.
* ``full``: a real run (GPU): larger clips and more data / epochs; on folders, the usual
  short-side resize + random crop + flip recipe.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Optional, Tuple

from torch.utils.data import Dataset

from .synthetic_motion import SyntheticMotion
from .video_folder import VideoFolder

__all__ = ["PRESETS", "DATA_NAMES", "make_datasets"]

#: Accepted values of ``data`` besides a path to a folder of videos.
DATA_NAMES = ("synthetic-motion", "folder")

PRESETS: Dict[str, Dict[str, Any]] = {
    "smoke": {
        "description": "a few minutes on 2 CPU cores: r2plus1d_18 >= 0.9 val acc on synthetic-motion "
                       "(right vs left), c2d_r18 at chance",
        # data (synthetic-motion): 2 classes, right/left, so no order-free view of the frames
        # (hence no per-frame model) can tell them apart; 1 epoch of fresh clips
        "num_train": 2048,
        "num_val": 256,
        "num_classes": 2,
        "frames": 8,
        "size": 32,
        "motion": {"num_objects": (3, 5), "speed": 2, "noise": 0.1, "background_contrast": 0.5},
        # training: 128 AdamW steps of 16 clips; r2plus1d_18 picks up the motion after ~30-60
        # steps (it varies with the seed) and is at >= 0.98 val acc by the end
        "epochs": 1,
        "batch_size": 16,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "scheduler": "cosine",
        "warmup_epochs": 0.05,
        "augment": False,  # no flips: they would swap right/left
        "num_workers": 0,
        # real videos with this preset: tiny clips, random windows, crop + flip
        "folder": {
            "sampling": "random",
            "val_sampling": "center",
            "resize": 36,
            "augment": {"frames": 8, "size": 32, "flip_p": 0.5},
            "epochs": 5,
        },
    },
    "full": {
        "description": "a real run (meant for a GPU): 16 x 112 x 112 clips, 30 epochs",
        "num_train": 20000,
        "num_val": 2000,
        "num_classes": 8,
        "frames": 16,
        "size": 64,
        "motion": {"num_objects": (2, 4), "speed": (1, 3), "noise": 0.1},
        "epochs": 20,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.05,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "scheduler": "cosine",
        "warmup_epochs": 1.0,
        "augment": False,
        "num_workers": 4,
        "folder": {
            "frames": 16,
            "size": 112,
            "sampling": "random",
            "val_sampling": "center",
            "resize": 128,
            "augment": {"frames": 16, "size": 112, "flip_p": 0.5},
            "epochs": 30,
        },
    },
}

_HYPERPARAMETERS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "scheduler",
                    "warmup_epochs", "augment", "num_workers")


def _resolve_data(data: str, root: Optional[str]) -> Tuple[str, Optional[str]]:
    if not isinstance(data, str) or not data:
        raise ValueError(f"data must be a non-empty string: one of {', '.join(DATA_NAMES)} or a folder path; got {data!r}")
    name = data.strip().lower().replace("_", "-")
    if name in ("synthetic-motion", "synthetic", "motion"):
        return "synthetic-motion", None
    if name == "folder":
        if root is None:
            raise ValueError("data='folder' needs root= (a folder laid out as root/<class>/<video>)")
        return "folder", os.fspath(root)
    if os.path.isdir(data):
        return "folder", data
    raise ValueError(
        f"unknown data {data!r}: use one of {', '.join(repr(d) for d in DATA_NAMES)} "
        f"('folder' with root=...), or the path of an existing folder of videos (root/<class>/<video>)"
    )


def make_datasets(
    data: str,
    preset: str = "smoke",
    root: Optional[str] = None,
    seed: int = 0,
) -> Tuple[Dataset, Dataset, Dict[str, Any]]:
    """``(train_ds, val_ds, info)`` for ``data`` sized and tuned by ``preset``.

    Args:
        data: ``"synthetic-motion"``, ``"folder"`` (with ``root``) or a path to a folder of
            videos laid out as ``<class>/<video>`` (with ``train/`` and ``val/`` sub-folders, or
            split per class automatically; see :class:`VideoFolder`).
        preset: a key of :data:`PRESETS`.
        root: the folder for ``data="folder"``.
        seed: fixes the synthetic clips (train and val use disjoint streams).

    ``info`` holds ``num_classes``, ``classes``, ``clip_shape`` (C, T, H, W) of the clips the
    model sees, ``data``, ``preset``, ``num_train``/``num_val`` and the training hyperparameters
    (flat, and again under ``"hyperparameters"``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: valid presets are {', '.join(repr(p) for p in PRESETS)}")
    kind, folder = _resolve_data(data, root)
    p = copy.deepcopy(PRESETS[preset])
    hyper = {k: p[k] for k in _HYPERPARAMETERS if k in p}

    if kind == "synthetic-motion":
        common = dict(num_classes=p["num_classes"], frames=p["frames"], size=p["size"], seed=seed, **p["motion"])
        train_ds = SyntheticMotion(p["num_train"], split="train", **common)
        val_ds = SyntheticMotion(p["num_val"], split="val", **common)
        classes = list(train_ds.classes)
        clip_shape = train_ds.clip_shape
        if hyper.get("augment"):
            augment = hyper["augment"]
            if isinstance(augment, dict) and augment.get("flip_p", 0.5) > 0:
                raise ValueError(f"preset {preset!r}: flips would swap the motion classes right/left")
    else:
        f = p["folder"]
        frames, size = f.get("frames", p["frames"]), f.get("size", p["size"])
        resize = f.get("resize", size)
        augment = f.get("augment")
        train_size = augment.get("size", size) if isinstance(augment, dict) else size
        # Train clips keep the resize x resize square when the augmentation crops them.
        train_ds = VideoFolder(folder, frames=frames, size=resize if augment else train_size,
                               resize=resize, split="train", sampling=f.get("sampling", "random"))
        val_ds = VideoFolder(folder, frames=frames, size=size, resize=resize, split="val",
                             sampling=f.get("val_sampling", "center"))
        classes = list(train_ds.classes)
        clip_shape = (3, frames, size, size)
        hyper["augment"] = augment or False
        for key in ("epochs", "batch_size", "lr", "weight_decay"):
            if key in f:
                hyper[key] = f[key]

    info: Dict[str, Any] = {
        "data": kind,
        "root": folder,
        "preset": preset,
        "seed": seed,
        "num_classes": len(classes),
        "classes": classes,
        "clip_shape": tuple(clip_shape),
        "num_train": len(train_ds),
        "num_val": len(val_ds),
        **hyper,
        "hyperparameters": dict(hyper),
    }
    return train_ds, val_ds, info
