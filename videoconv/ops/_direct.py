"""The modules' eval fast path: call the chosen backend directly when the dispatcher would add
nothing anyone could see.

Why it exists. A call through ``torch.ops.videoconv.*`` costs about 45 µs of Python on the CPU
before any arithmetic happens: the dispatcher boxes the ten arguments for the Python kernel,
the ``torch.library`` autograd layer runs (in Python, even under ``no_grad``) and redispatches,
and the kernel then validates the input (~7 µs) and picks a backend (~5 µs). That is fixed per
call, and video models make many small calls: a fused X3D-S forward makes 116, where 45 µs each
is ~5 ms of a ~50 ms forward, and a small depthwise layer's convolution itself takes ~70 µs.

What it does. :class:`DirectPlan` remembers, per module, the backend that
:func:`videoconv.backends.select_backend` chose for one *signature* (shapes, strides, dtypes and
devices of every tensor argument, the convolution arguments, the forced backend and the
registered backends) after the full validation passed once for it. A later call with the same
signature calls that backend's method directly, with the same arguments the op's kernel would
pass; the result is the same tensor, computed by the same code. Any change of signature
(another input size, layout, dtype, a forced backend) takes the full path again, which also
raises the usual errors for bad input.

A prepared call, one level further (``Conv3dBNAct`` and ``Conv2Plus1dBNAct`` under
``no_grad``/``inference_mode``). The direct call still pays ~30 µs per call (a (2+1)D unit ~40 µs
more than two prepared ``Conv3dBNAct`` calls): folding and pack-cache lookups, building the
argument dict and the signature, the backend's own argument handling. A backend may therefore offer
``prepare_conv3d_bn_act`` and ``prepare_conv2plus1d_bn_act`` (the ``cpu`` backend does): a closure
with the packed weights, the biases and the oneDNN arguments bound once. The module keeps it with a
guard made of the input signature, the forced backend, the registered backends, the conv (or unit)
arguments, BatchNorm's eps and the fold cache's key of every parameter it comes from (identity,
storage and version of the conv weight and bias and the BatchNorm parameters and statistics; those
tensors and storages are kept alive with it, so that no recycled id or address can match), and
calls it while the guard holds; any change (an optimiser step, ``load_state_dict``, ``.to()``,
``.data =``, a new eps, training-mode statistics, another input size) builds it again after a
direct call. Parameters without version counters (inference tensors) never get one. With the
extension loaded, the parameters' part of the guard is checked by a C stamp
(csrc/parameter_stamp.cpp, ~0.5 µs) instead of being read and keyed again in Python (3-5 µs) on
every call.

When it is not used (:func:`dispatcher_unobservable`). Whenever skipping the dispatcher could be
seen, as for ``nn.MultiheadAttention``'s fast path: autograd must record the op (grad mode on
and a tensor that requires grad), ``torch.compile``/``torch.export``/``torch.jit`` is tracing, a
``TorchFunctionMode``/``TorchDispatchMode`` is active (FakeTensorMode, FlopCounterMode, ...), a
tensor is a subclass, functorch transforms (vmap, grad) are active, or the autograd profiler is
on (so profiles still show ``videoconv::*`` ops). Empty batches also take the op (they return
early there).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.overrides import has_torch_function

from .. import backends

__all__ = ["DirectPlan", "dispatcher_unobservable", "tensor_signature"]

_PLAIN = (Tensor, torch.nn.Parameter)


def dispatcher_unobservable(*tensors: Optional[Tensor]) -> bool:
    """Whether calling a backend directly instead of the ``torch.ops`` operator is invisible:
    nothing records, traces, intercepts or profiles the call (see the module docstring)."""
    # First: under torch.compile this is the only check Dynamo evaluates (it folds to True
    # there), the others are not traceable.
    if torch.compiler.is_compiling() or torch._C._is_tracing() or torch.jit.is_scripting():
        return False
    # One plain loop, no generators: this runs on every eval call of every fused module, and
    # a tiny layer's whole budget is ~10 µs. Types before anything that reads a tensor
    # attribute: an fx Proxy's attributes are proxies, which cannot be used in a condition.
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN:
            return False  # subclasses, proxies
        if grad and t.requires_grad:
            return False
    if has_torch_function(tensors):  # __torch_function__ overrides and function modes
        return False
    if torch._C._len_torch_dispatch_stack() > 0:  # FakeTensorMode, FlopCounterMode, ...
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:  # vmap, grad, jvp
        return False
    if torch._C._autograd._profiler_enabled():
        return False
    return True


def tensor_signature(t: Optional[Tensor]):
    """What a cached decision about ``t`` depends on: shape, strides, dtype, device."""
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


class DirectPlan:
    """One module's cached (signature -> backend) decision for :func:`dispatcher_unobservable`
    calls. ``hits`` counts direct calls (tests use it to see that the fast path ran).

    The signature and its backend are one tuple, replaced whole: threads sharing a module (with
    thread-local forced backends, ``backends.use``) never pair one call's signature with
    another's backend."""

    __slots__ = ("entry", "hits")

    def __init__(self) -> None:
        self.entry: Optional[Tuple[Tuple[Any, ...], Any]] = None
        self.hits = 0

    def run(self, op_name: str, validate: Callable[[], Any], tensors: Tuple[Optional[Tensor], ...],
            args: Tuple[Any, ...], inputs: Dict[str, Any]) -> Optional[Tensor]:
        """``backend.<op_name>(**inputs)`` for the backend the op would choose, or None when the
        caller must take the operator (an empty batch).

        ``tensors`` and ``args`` (the non-tensor arguments, hashable) make the signature;
        ``validate`` runs the op's full input check, once per new signature."""
        if inputs["input"].shape[0] == 0:
            return None
        key = (tuple(tensor_signature(t) for t in tensors), args, backends.forced_backend(),
               tuple(backends.PRIORITY))
        entry = self.entry
        if entry is not None and entry[0] == key:
            backend = entry[1]
            self.hits += 1
        else:
            validate()
            backend = backends.select_backend(op_name, **inputs)
            self.entry = (key, backend)
        return getattr(backend, op_name)(**inputs)
