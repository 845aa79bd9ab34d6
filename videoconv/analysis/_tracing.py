"""Run a model on the meta device and watch its leaf modules.

Parameter counts need no input, but FLOPs, output shapes and activation memory depend on the
clip. Running a deep copy of the model on the ``meta`` device gives every shape without
computing anything (a full R(2+1)D forward costs nothing) and leaves the caller's model alone.
"""

from __future__ import annotations

import copy
from typing import Callable, List, Sequence, Tuple, Union

import torch
import torch.nn as nn

InputSpec = Union[Sequence[int], torch.Tensor, Sequence[Sequence[int]], Sequence[torch.Tensor]]

__all__ = ["InputSpec", "parse_input_shape", "meta_inputs", "meta_copy", "leaf_modules"]


def parse_input_shape(text: str) -> Tuple[int, ...]:
    """'1x3x16x112x112' -> (1, 3, 16, 112, 112)."""
    try:
        shape = tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ValueError(f"input shape must look like 1x3x16x112x112, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input shape must have positive sizes, got {text!r}")
    return shape


def _is_shape(spec) -> bool:
    return isinstance(spec, (tuple, list, torch.Size)) and all(isinstance(s, int) for s in spec)


def meta_inputs(spec: InputSpec, dtype: torch.dtype = torch.float32):
    """Meta tensors for a shape, a tensor, or a list of either (SlowFast's [slow, fast])."""
    if isinstance(spec, torch.Tensor):
        return torch.empty(spec.shape, dtype=spec.dtype, device="meta")
    if _is_shape(spec):
        return torch.empty(tuple(spec), dtype=dtype, device="meta")
    if isinstance(spec, (tuple, list)):
        return [meta_inputs(s, dtype) for s in spec]
    raise TypeError(f"expected an input shape, a tensor or a list of them, got {type(spec).__name__}")


def meta_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device."""
    clone = copy.deepcopy(model)
    clone.to(device="meta", dtype=dtype)
    return clone


def leaf_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if not list(m.children())]


def run_with_hooks(
    model: nn.Module,
    inputs,
    hook: Callable[[str, nn.Module, tuple, object], None],
) -> object:
    """Forward ``inputs`` through ``model`` calling ``hook(name, module, args, output)`` per leaf."""
    handles = []
    for name, module in leaf_modules(model):
        handles.append(
            module.register_forward_hook(
                lambda mod, args, out, _name=name: hook(_name, mod, args, out)
            )
        )
    try:
        return model(inputs)
    finally:
        for handle in handles:
            handle.remove()
