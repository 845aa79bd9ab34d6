"""Gradient checkpointing of whole stages of a model: ``checkpoint_stages(model, stages)``.

A *stage* is a top-level child of the model (the children of a top-level ``nn.ModuleList`` /
``nn.ModuleDict`` count as top-level, named ``blocks.0``, ``blocks.1`` ...) that has parameters
and is not a single ``torch.nn`` layer (a bare conv, norm, pool or linear). For the zoo:

==================  ==========================================================================
model               stages
==================  ==========================================================================
r3d / mc3 / r2+1d   ``stem``, ``layer1`` ... ``layer4``
c2d_r18             ``layer1`` ... ``layer4`` (its stem is loose ``conv1``/``bn1``/``relu``)
c3d                 ``conv1`` ... ``conv5b``
i3d                 the ``Conv3d_*`` units and the ``Mixed_*`` inception modules
slowfast_r50        ``slow_stem``, ``fast_stem``, ``lateral_stem``, ``slow_res2`` ...
                    ``slow_res5``, ``fast_res2`` ... ``fast_res5``, ``lateral_res2`` ... ``lateral_res4``
x3d / csn           ``blocks.0`` (stem) ... ``blocks.4`` (stages), ``blocks.5`` (head)
==================  ==========================================================================

:func:`stage_names` lists them for any model (also after :func:`videoconv.fuse`, which keeps the
module paths).

How a stage is checkpointed
---------------------------
The stage's ``forward`` is replaced by an instance attribute that runs the class's ``forward``
through :func:`torch.utils.checkpoint.checkpoint`: the module tree, the parameter names and the
``state_dict`` keys do not change (an optimizer, DDP, a saved checkpoint see the same model),
and :func:`uncheckpoint_stages` restores the original behaviour. Only the stage's input is kept
for backward; everything inside it is recomputed during backward, with the RNG state (dropout)
and autocast state of the forward.

Recomputation would run every BatchNorm of the stage in training mode a second time and update
its running statistics twice. The wrapper snapshots the stage's buffers before the recomputation
and restores them after it, so a checkpointed model ends a step with exactly the running
statistics, outputs and gradients of the plain model (``tests/test_train.py`` checks this).

``use_reentrant=False`` (the default, and what PyTorch recommends) works with keyword arguments,
inputs that do not require grad, DDP and ``torch.autograd.grad``. With ``use_reentrant=True`` a
stage whose tensor inputs do not require grad (the stem, which sees the clip) would get no
parameter gradients at all; such a call runs unchecked instead.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["stage_names", "get_stages", "checkpoint_stages", "uncheckpoint_stages", "checkpointed_stages"]

Stages = Union[None, str, Sequence[str]]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _is_torch_layer(module: nn.Module) -> bool:
    """A single ``torch.nn`` layer (conv, norm, pool, linear, activation...), not a container."""
    return type(module).__module__.startswith("torch.nn.modules") and not isinstance(
        module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    )


def _is_stage(module: nn.Module) -> bool:
    return not _is_torch_layer(module) and any(True for _ in module.parameters())


def get_stages(model: nn.Module) -> Dict[str, nn.Module]:
    """Stage name -> module, in the model's registration order (see the module docstring)."""
    model = _unwrap(model)
    stages: Dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            for sub, grandchild in child.named_children():
                if _is_stage(grandchild):
                    stages[f"{name}.{sub}"] = grandchild
        elif _is_stage(child):
            stages[name] = child
    return stages


def stage_names(model: nn.Module) -> List[str]:
    """Names accepted by :func:`checkpoint_stages` for this model."""
    return list(get_stages(model))


class _CheckpointedForward:
    """Instance-level ``forward`` of a checkpointed stage (picklable, deep-copyable)."""

    def __init__(self, module: nn.Module, use_reentrant: bool, preserve_rng_state: bool, original=None) -> None:
        self.module = module
        self.use_reentrant = use_reentrant
        self.preserve_rng_state = preserve_rng_state
        #: an instance-level forward that was there before (None: the class's forward).
        self.original = original

    def _plain_forward(self):
        if self.original is not None:
            return self.original
        return type(self.module).forward.__get__(self.module)

    def __call__(self, *args, **kwargs):
        forward = self._plain_forward()
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        tensors += [a for a in kwargs.values() if isinstance(a, torch.Tensor)]
        for a in args:  # SlowFast-style [slow, fast] pairs
            if isinstance(a, (list, tuple)):
                tensors += [t for t in a if isinstance(t, torch.Tensor)]
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        if self.use_reentrant and (kwargs or not any(t.requires_grad for t in tensors)):
            # Reentrant checkpointing gives no parameter gradients when no input requires grad,
            # and takes no keyword arguments: run this call unchecked.
            return forward(*args, **kwargs)

        module = self.module
        calls = [0]

        def run(*a, **k):
            calls[0] += 1
            if calls[0] == 1:  # the real forward
                return forward(*a, **k)
            # Recomputation during backward: keep BatchNorm running statistics (and any other
            # buffer the forward updates) as the real forward left them.
            saved = [(b, b.detach().clone()) for b in module.buffers()]
            try:
                return forward(*a, **k)
            finally:
                with torch.no_grad():
                    for buffer, value in saved:
                        buffer.copy_(value)

        return checkpoint(
            run, *args, use_reentrant=self.use_reentrant, preserve_rng_state=self.preserve_rng_state, **kwargs
        )


def _resolve(model: nn.Module, stages: Stages) -> List[str]:
    available = stage_names(model)
    if stages is None or (isinstance(stages, str) and stages.strip().lower() in ("all", "")):
        if not available:
            raise ValueError(f"{type(_unwrap(model)).__name__} has no stages to checkpoint")
        return available
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    names = list(stages)
    unknown = [s for s in names if s not in available]
    if unknown:
        raise ValueError(
            f"unknown stage(s) {', '.join(map(repr, unknown))} for {type(_unwrap(model)).__name__}; "
            f"valid stages: {', '.join(available) if available else '(none)'} (or 'all')"
        )
    return names


def checkpoint_stages(
    model: nn.Module,
    stages: Stages = None,
    use_reentrant: bool = False,
    preserve_rng_state: bool = True,
) -> nn.Module:
    """Run the given stages of ``model`` under gradient checkpointing (in place; returns ``model``).

    Args:
        model: any module (a zoo model, a fused one, or one wrapped in DDP).
        stages: ``None`` or ``"all"`` for every stage, else a list of names from
            :func:`stage_names` (or one comma-separated string). An unknown name raises
            ``ValueError`` listing the valid ones.
        use_reentrant: passed to :func:`torch.utils.checkpoint.checkpoint`.
        preserve_rng_state: replay the forward's RNG state in the recomputation (dropout).

    Calling it again re-wraps with the new settings; the model computes exactly what it computed
    before, with less activation memory and about one extra forward of the stages in backward.
    """
    names = _resolve(model, stages)
    all_stages = get_stages(model)
    for name in names:
        module = all_stages[name]
        original = module.__dict__.get("forward")
        if isinstance(original, _CheckpointedForward):
            original = original.original
        module.forward = _CheckpointedForward(module, use_reentrant, preserve_rng_state, original)
    return model


def uncheckpoint_stages(model: nn.Module) -> nn.Module:
    """Undo :func:`checkpoint_stages` on every stage (in place; returns ``model``)."""
    for module in get_stages(model).values():
        wrapper = module.__dict__.get("forward")
        if isinstance(wrapper, _CheckpointedForward):
            if wrapper.original is None:
                del module.forward
            else:
                module.forward = wrapper.original
    return model


def checkpointed_stages(model: nn.Module) -> List[str]:
    """Names of the stages currently checkpointed."""
    return [
        name
        for name, module in get_stages(model).items()
        if isinstance(module.__dict__.get("forward"), _CheckpointedForward)
    ]
