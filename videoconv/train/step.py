"""One training step: autocast, loss scaling, gradient accumulation, clipping.

Usage (not a doctest: it needs a model, an optimizer and data)::

    step = TrainStep(model, optimizer, amp="bfloat16", accumulation_steps=4, max_grad_norm=1.0)
    for clips, labels in loader:
        result = step(clips, labels)          # result.loss, result.correct, result.stepped

* ``amp=None`` trains in float32. ``"bfloat16"`` runs the forward (and the loss) under
  ``torch.autocast(device_type, dtype=torch.bfloat16)``, no loss scaling (bfloat16 has float32's
  exponent range). ``"float16"`` autocasts to float16 and scales the loss with
  ``torch.amp.GradScaler(device_type)`` (float16 gradients underflow otherwise); steps whose
  gradients overflowed are skipped by the scaler, as usual. Both are checked up front: a dtype
  the device's autocast does not support raises ``ValueError`` (torch itself only warns and
  silently runs in float32). On CPU with torch 2.13 both float16 and bfloat16 autocast work.
* ``accumulation_steps=k``: each call is one micro-batch; its loss is divided by ``k`` and
  backpropagated, and the optimizer steps (and the gradients are zeroed) every ``k`` calls. For a
  loss that is a mean over the batch, ``k`` micro-batches of ``b`` samples give the gradients of
  one batch of ``k*b`` samples (exactly so for a model without BatchNorm or with BatchNorm in
  eval mode; BatchNorm in training mode normalises each micro-batch with its own statistics).
  Under DistributedDataParallel the gradient all-reduce is skipped (``no_sync``) on the
  micro-batches that do not step.
* ``max_grad_norm`` clips the global gradient norm before the step (after unscaling).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TrainStep", "StepResult", "train_step", "resolve_amp_dtype", "check_autocast_supported", "autocast"]

AmpDtype = Union[None, str, torch.dtype]

_AMP_NAMES = {
    "none": None,
    "float32": None,
    "fp32": None,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_amp_dtype(amp: AmpDtype) -> Optional[torch.dtype]:
    """``None``/"none" -> None; "float16"/"bfloat16" (or the torch dtypes) -> the dtype."""
    if amp is None:
        return None
    if isinstance(amp, torch.dtype):
        if amp == torch.float32:
            return None
        if amp in (torch.float16, torch.bfloat16):
            return amp
        raise ValueError(f"amp dtype must be float16 or bfloat16, got {amp}")
    key = str(amp).strip().lower()
    if key not in _AMP_NAMES:
        raise ValueError(f"amp must be one of none, float16, bfloat16; got {amp!r}")
    return _AMP_NAMES[key]


def check_autocast_supported(device_type: str, dtype: torch.dtype) -> None:
    """Raise ``ValueError`` if ``torch.autocast(device_type, dtype)`` would not autocast.

    torch only *warns* and disables autocast for an unsupported (device, dtype) pair; a training
    run would then quietly be float32. Entering the context once tells which it is.
    """
    if not torch.amp.is_autocast_available(device_type):
        raise ValueError(f"autocast is not available for device type {device_type!r} in torch {torch.__version__}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast(device_type, dtype=dtype):
            enabled = torch.is_autocast_enabled(device_type)
            dtype_now = torch.get_autocast_dtype(device_type)
    if not enabled or dtype_now != dtype:
        why = "; ".join(str(w.message) for w in caught) or "autocast stayed disabled"
        raise ValueError(
            f"{dtype} autocast is not supported on {device_type} by torch {torch.__version__}: {why}"
        )
    if device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError("bfloat16 autocast needs a GPU with bfloat16 support (sm_80 or newer)")


def autocast(device_type: str, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype``, or a null context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


@dataclasses.dataclass
class StepResult:
    #: The micro-batch's loss (not divided by the accumulation steps, not scaled).
    loss: float
    #: Correctly classified samples of the micro-batch and its size.
    correct: int
    count: int
    #: Whether the optimizer stepped after this micro-batch (False while accumulating, and for a
    #: float16 step the GradScaler skipped because of inf/nan gradients).
    stepped: bool
    #: Global gradient norm before clipping (only when clipping).
    grad_norm: Optional[float] = None
    #: GradScaler scale used for this micro-batch (float16 only).
    scale: Optional[float] = None

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)


def _device_type_of(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cpu"


class TrainStep:
    """Callable training step over micro-batches (see the module docstring).

    Args:
        model: the model (possibly DDP-wrapped); put in train mode by the caller.
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        amp: None / "none", "float16" or "bfloat16" (or the torch dtype).
        accumulation_steps: micro-batches per optimizer step.
        max_grad_norm: clip the gradient norm to this (None: no clipping).
        loss_fn: ``loss_fn(logits, targets) -> scalar`` (default cross-entropy, a batch mean).
        scheduler: an LR scheduler stepped after every optimizer step (optional).
        device_type: autocast device type (default: the parameters' device type).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        amp: AmpDtype = None,
        accumulation_steps: int = 1,
        max_grad_norm: Optional[float] = None,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        scheduler=None,
        device_type: Optional[str] = None,
    ) -> None:
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = resolve_amp_dtype(amp)
        self.device_type = device_type or _device_type_of(model)
        if self.amp_dtype is not None:
            check_autocast_supported(self.device_type, self.amp_dtype)
        self.scaler = (
            torch.amp.GradScaler(self.device_type) if self.amp_dtype == torch.float16 else None
        )
        self.accumulation_steps = int(accumulation_steps)
        self.max_grad_norm = max_grad_norm
        self.loss_fn = loss_fn or F.cross_entropy
        self.scheduler = scheduler
        #: micro-batches backpropagated since the last optimizer step.
        self.pending = 0
        #: optimizer steps taken (including ones the GradScaler skipped).
        self.steps = 0

    def _no_sync(self, sync: bool):
        if not sync and isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def __call__(self, inputs, targets: torch.Tensor, force_step: bool = False) -> StepResult:
        """Forward + backward of one micro-batch; step the optimizer every ``k`` of them.

        ``force_step=True`` steps after this micro-batch even if fewer than ``k`` were
        accumulated (the end of an epoch); the gradients are then rescaled by ``k / pending`` so
        they are still the mean over the micro-batches actually seen.
        """
        will_step = force_step or self.pending + 1 >= self.accumulation_steps
        with self._no_sync(will_step):
            with autocast(self.device_type, self.amp_dtype):
                logits = self.model(inputs)
                loss = self.loss_fn(logits, targets)
            scaled = loss / self.accumulation_steps
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
        self.pending += 1
        scale = float(self.scaler.get_scale()) if self.scaler is not None else None
        with torch.no_grad():
            correct = int((logits.argmax(dim=1) == targets).sum()) if logits.dim() == 2 else 0
        result = StepResult(
            loss=float(loss.detach()), correct=correct, count=int(targets.shape[0]), stepped=False, scale=scale
        )
        if will_step:
            result.stepped, result.grad_norm = self._optimizer_step()
        return result

    def _optimizer_step(self):
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.pending < self.accumulation_steps:
            factor = self.accumulation_steps / self.pending
            for p in params:
                p.grad.mul_(factor)
        grad_norm = None
        if self.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        stepped = True
        if self.scaler is not None:
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # The scaler lowers the scale exactly when it skipped the step (inf/nan gradients).
            stepped = self.scaler.get_scale() >= scale_before
        else:
            self.optimizer.step()
        if stepped and self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        self.steps += 1
        return stepped, grad_norm


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs,
    targets: torch.Tensor,
    amp: AmpDtype = None,
    max_grad_norm: Optional[float] = None,
    loss_fn=None,
    scaler: Optional["torch.amp.GradScaler"] = None,
) -> StepResult:
    """One forward/backward/optimizer step without accumulation (functional form of TrainStep).

    For float16 pass the same ``scaler`` on every call (one is created if None, which then
    restarts at the initial scale each call: fine for a single step, wasteful in a loop).
    """
    step = TrainStep(model, optimizer, amp=amp, max_grad_norm=max_grad_norm, loss_fn=loss_fn)
    if scaler is not None and step.scaler is not None:
        step.scaler = scaler
    return step(inputs, targets)
