"""Activation memory of a training step: what autograd keeps between forward and backward.

For 3D CNNs the saved activations, not the weights, bound the batch size: r3d_18 has 33M
parameters (133 MB in float32) but keeps several GB of activations for a batch of 16 clips.

The estimate runs a copy of the model on the meta device in train mode under
``torch.autograd.graph.saved_tensors_hooks`` and adds up the storages autograd saves, each once
(an in-place ReLU saves the same storage that the next convolution saves as its input), leaving
out parameters and buffers. It is exact for what autograd itself saves; the caching allocator's rounding and
fragmentation and the transient workspace of the kernels come on top.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ._tracing import InputSpec, meta_copy, meta_inputs

__all__ = ["ActivationMemory", "activation_memory"]


@dataclasses.dataclass
class ActivationMemory:
    #: Bytes of saved activations per module (the innermost module running when it was saved).
    per_module: Dict[str, int]
    #: Bytes of parameters (held anyway; their gradients take as much again).
    param_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(self.per_module.values())

    def top(self, n: int = 10) -> List[tuple]:
        return sorted(self.per_module.items(), key=lambda kv: -kv[1])[:n]

    def summary(self) -> str:
        mib = 1024 * 1024
        return (
            f"saved activations {self.total_bytes / mib:,.1f} MiB, parameters "
            f"{self.param_bytes / mib:,.1f} MiB (+ as much again for their gradients)"
        )


def activation_memory(
    model: nn.Module,
    input_shape: InputSpec,
    dtype: torch.dtype = torch.float32,
    input_requires_grad: bool = False,
) -> ActivationMemory:
    """Bytes autograd saves for the backward pass of one training forward of ``model``.

    Args:
        model: any module; it is copied to the meta device, not run.
        input_shape: (N, C, T, H, W), a tensor, or a list of either (SlowFast).
        dtype: parameter and activation dtype (bfloat16 halves the figure).
        input_requires_grad: whether the clip itself needs a gradient (it usually does not).
    """
    clone = meta_copy(model, dtype=dtype).train()
    # Parameters and buffers (BN running statistics) are held whether or not autograd saves them.
    param_storages = {t.untyped_storage()._cdata for t in itertools.chain(clone.parameters(), clone.buffers())}
    param_bytes = sum(p.numel() * p.element_size() for p in clone.parameters())
    inputs = meta_inputs(input_shape, dtype)
    if input_requires_grad:
        for t in inputs if isinstance(inputs, list) else [inputs]:
            t.requires_grad_(True)

    stack: List[str] = [""]
    per_module: Dict[str, int] = {}
    seen = set()
    # Keep every saved tensor alive until the end so no storage address is reused and counted
    # as "already seen" by mistake.
    keep_alive = []

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage._cdata
        keep_alive.append(tensor)
        if key not in seen and key not in param_storages:
            seen.add(key)
            per_module[stack[-1]] = per_module.get(stack[-1], 0) + storage.nbytes()
        return tensor

    def enter(name):
        def pre_hook(module, args):
            stack.append(name)  # a pre-hook's return value would replace the args: return None

        return pre_hook

    def leave(module, args, output):
        stack.pop()  # likewise, returning anything here would replace the output

    handles = []
    for name, module in clone.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            clone(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return ActivationMemory(per_module=per_module, param_bytes=param_bytes)
