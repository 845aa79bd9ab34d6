"""Training of the zoo: gradient checkpointing per stage, AMP, accumulation, DDP, ``videoconv train``.

Usage (not a doctest: it needs a model, an optimizer and data)::

    from videoconv.train import checkpoint_stages, TrainStep
    checkpoint_stages(model, "all")                       # or ["layer3", "layer4"]
    step = TrainStep(model, optimizer, amp="bfloat16", accumulation_steps=2)
    result = step(clips, labels)                          # loss, correct, stepped ...

* :mod:`.checkpointing` — :func:`checkpoint_stages`, :func:`stage_names`, :func:`uncheckpoint_stages`
* :mod:`.step` — :class:`TrainStep` / :func:`train_step` (autocast, GradScaler, accumulation, clipping)
* :mod:`.loop` — :func:`run_training` (the run behind ``videoconv train``), :func:`measure_step_memory`,
  :func:`plot_training_curves`
* :mod:`.augmentation` — :class:`Video3DAugmentation` (batched clip augmentation)
* :mod:`.cli` — ``add_train_parser(subparsers)``, ``main(args)``
"""

from .checkpointing import checkpoint_stages, checkpointed_stages, get_stages, stage_names, uncheckpoint_stages
from .step import StepResult, TrainStep, check_autocast_supported, resolve_amp_dtype, train_step
from .loop import TrainConfig, measure_step_memory, peak_memory_of, plot_training_curves, run_training

__all__ = [
    "checkpoint_stages",
    "checkpointed_stages",
    "get_stages",
    "stage_names",
    "uncheckpoint_stages",
    "StepResult",
    "TrainStep",
    "train_step",
    "check_autocast_supported",
    "resolve_amp_dtype",
    "TrainConfig",
    "run_training",
    "measure_step_memory",
    "peak_memory_of",
    "plot_training_curves",
    "Video3DAugmentation",
]


def __getattr__(name):
    # Imported lazily: the augmentation module is independent of the training machinery.
    if name == "Video3DAugmentation":
        from .augmentation import Video3DAugmentation

        return Video3DAugmentation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
