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

import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.overrides import has_torch_function

from .. import backends

__all__ = ["DirectPlan", "OpPreparedCalls", "dispatcher_unobservable", "tensor_signature"]

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


#: What :meth:`OpPreparedCalls.find` returns when the backend has no prepared call for a known
#: signature: take the kernel's full path, and do not ask again.
NO_PREPARED_CALL = object()


class OpPreparedCalls:
    """The operators' own kernels' prepared calls (``Backend.prepare_<op>``), one per weight
    tensor: what the modules' eval fast path keeps per module (above), for whoever calls the
    operator itself. That is ``torch.compile``'s and ``torch.export``'s graphs, which call
    ``torch.ops.videoconv.*`` with the parameters and with the folded scale and shift recomputed
    as new tensors on every forward, and direct callers of ``videoconv.ops``.

    Why: without it the kernel validates the arguments (~7 µs), selects a backend (~5 µs) and
    prepares the backend's call again (~15-20 µs: pack-cache lookup and value checks, the route's
    closure) on every call, ~30 µs of Python before any arithmetic. X3D-S makes 116 such calls a
    forward: ``torch.compile(videoconv.fuse(x3d_s))`` ran at 0.695x of the fused model in eager
    (bfloat16, 2-core Zen 4, benchmarks/compiled_fused_ab.py), where the modules hold prepared
    calls; 0.887x with this cache (and the cpu backend no longer raising and catching an error
    to read an inference tensor's version, 8-18 µs a time, twice a call).

    Guard. An entry is found by its first weight's identity (a weak reference: the entry dies
    with the weight) and holds while all of these are what they were when it was made:

    * each weight's identity, storage address, version counter (bumped by any in-place change:
      an optimiser step, ``copy_``), shape, strides, dtype and device. The other weights and every
      weight's storage are kept alive with the entry, so no recycled id or address can match.
      Weights that are inference tensors have no version counter and are never cached;
    * the *values* of the per-channel tensors (scale and shift), against copies: they are new
      tensors on every compiled call, and comparing ``C_out`` values costs ~1 µs;
    * the signature (shape, strides, dtype, device) of every other tensor (input, residual), the
      non-tensor arguments, the forced backend, the registered backends and their run-time
      switches (``Backend.prepared_call_settings``: the ``cpu`` backend's routes).

    A hit calls the prepared call, which computes what the backend's op method would: the same
    tensor. It skips validation, which depends only on what the guard compares. A miss takes the
    kernel's full path and replaces the entry (one per first weight)."""

    __slots__ = ("_entries", "hits")

    def __init__(self) -> None:
        self._entries: Dict[int, tuple] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    @staticmethod
    def _key(weights: Tuple[Tensor, ...], values: Tuple[Tensor, ...],
             others: Tuple[Optional[Tensor], ...], args: Tuple[Any, ...]) -> Optional[tuple]:
        parts = []
        for w in weights:
            if type(w) not in _PLAIN or w.is_inference():
                return None  # subclasses (and their own semantics), or no version counter
            parts.append((id(w), w.data_ptr(), w._version, w.shape, w.stride(), w.dtype,
                          w.device))
        for t in values + others:
            if t is not None and type(t) not in _PLAIN:
                return None
        return (tuple(parts), tuple(tensor_signature(t) for t in values),
                tuple(tensor_signature(t) for t in others), args, backends.forced_backend(),
                tuple(backends.PRIORITY), backends.prepared_call_settings())

    def find(self, weights: Tuple[Tensor, ...], values: Tuple[Tensor, ...],
             others: Tuple[Optional[Tensor], ...], args: Tuple[Any, ...]):
        """``(call, key)``: the prepared call kept for exactly these arguments (or
        :data:`NO_PREPARED_CALL`, with no key), else None and the key to :meth:`keep` the call
        the kernel prepares (None: nothing may be kept)."""
        key = self._key(weights, values, others, args)
        if key is None:
            return None, None
        entry = self._entries.get(id(weights[0]))
        if (entry is not None and entry[0]() is weights[0] and entry[1] == key
                and all(torch.equal(kept, v) for kept, v in zip(entry[2], values))):
            if entry[3] is None:
                return NO_PREPARED_CALL, None
            self.hits += 1
            return entry[3], None
        return None, key

    def keep(self, key: tuple, weights: Tuple[Tensor, ...], values: Tuple[Tensor, ...],
             call: Optional[Callable]) -> None:
        """Keep ``call`` (None: the backend has none) for the arguments ``key`` was made from."""
        wid = id(weights[0])
        entries = self._entries

        def drop(ref, wid=wid):
            current = entries.get(wid)
            if current is not None and current[0] is ref:
                del entries[wid]

        referents = (weights[1:], tuple(w.untyped_storage() for w in weights))
        with torch.no_grad():
            copies = tuple(v.detach().clone() for v in values)
        entries[wid] = (weakref.ref(weights[0], drop), key, copies, call, referents)
