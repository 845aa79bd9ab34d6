"""Helpers shared by the fused modules: where the original submodules live, activations,
the folded-parameter cache and the backend context."""

from __future__ import annotations

import contextlib
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops._direct import dispatcher_unobservable
from ..ops._validation import _conv_output_shape, as_triple, canonical_activation
from ..ops.conv3d_bn_act_train import conv3d_bn_act_train

__all__ = ["activation_name", "apply_activation", "FusedModuleBase", "module_tensor"]


def hooks_reason(module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot be fused away, if it has hooks of its own: a fused module calls the
    fused op, not the modules it replaces, so their forward (pre-)hooks and backward hooks would
    silently stop running (a hook that changes an input or output would give a different
    answer, one that records activations would record nothing). None without hooks. Global
    hooks (``nn.modules.module.register_module_forward_hook``) still run on the fused module."""
    kinds = [name for name, hooks in (
        ("forward pre-hooks", module._forward_pre_hooks),
        ("forward hooks", module._forward_hooks),
        ("backward hooks", module._backward_hooks),
        ("backward pre-hooks", getattr(module, "_backward_pre_hooks", None))) if hooks]
    if not kinds:
        return None
    reason = f"has {' and '.join(kinds)}, which a fused module would not run"
    # The two common hooks that compute a weight say how to fuse the module anyway: a fused
    # module cannot run them (the weight would be stale), but both can be made permanent.
    from torch.nn.utils import prune
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):
            return (f"{reason} (torch.nn.utils.prune on {hook._tensor_name!r}: "
                    f"torch.nn.utils.prune.remove(module, {hook._tensor_name!r}) makes the pruning "
                    "permanent, and the module can then be fused)")
        if isinstance(hook, WeightNorm):
            return (f"{reason} (torch.nn.utils.weight_norm on {hook.name!r}: "
                    f"torch.nn.utils.remove_weight_norm(module, {hook.name!r}) makes the weight a "
                    "parameter again, and the module can then be fused)")
    return reason


def activation_name(act, what: str = "activation") -> str:
    """The op's activation name for a module (``nn.ReLU``, ``nn.SiLU``, ``nn.Identity``, None) or
    a string (``"relu"``, ``"silu"``/``"swish"``, ``"identity"``). ValueError for a module with
    hooks (:func:`hooks_reason`)."""
    if isinstance(act, nn.Module) and hooks_reason(act) is not None:
        raise ValueError(f"videoconv.nn: {what} {type(act).__name__} {hooks_reason(act)}")
    if act is None or isinstance(act, nn.Identity):
        return "identity"
    if isinstance(act, str):
        return canonical_activation(act, "videoconv.nn")
    if isinstance(act, nn.ReLU):
        return "relu"
    if isinstance(act, nn.SiLU):
        return "silu"
    raise ValueError(
        f"videoconv.nn: unsupported {what} {type(act).__name__}; expected nn.ReLU, nn.SiLU, "
        "nn.Identity/None, or one of 'relu', 'silu', 'identity'"
    )


def apply_activation(x: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return torch.relu(x)
    if activation == "silu":
        return F.silu(x)
    return x


def module_tensor(module: nn.Module, name: str) -> Optional[Tensor]:
    """``getattr(module, name)`` for a parameter or buffer, read from the module's own dicts.

    ``nn.Module.__getattr__`` costs ~0.5 µs per parameter; the eval fast path reads 7 to 14 of
    them on every call to check its guard, which is most of a tiny layer's budget (an X3D
    Squeeze-and-Excitation conv takes ~10 µs in eager). Anything else (a parametrized or
    hook-computed weight, a plain attribute) falls back to ``getattr``, as the fold itself does.
    """
    params = module._parameters
    if name in params:
        return params[name]
    buffers = module._buffers
    if name in buffers:
        return buffers[name]
    return getattr(module, name)


def _bn_eps(bn: Optional[nn.Module]) -> Optional[float]:
    """The one non-tensor value a fold reads: part of the fold cache's and the prepared call's
    keys (a changed ``bn.eps`` was otherwise unseen: the old fold, a wrong answer)."""
    return None if bn is None else bn.eps


def _fold_sources_of(conv: nn.Module, bn: Optional[nn.Module]) -> Tuple[Optional[Tensor], ...]:
    """The tensors ``fold_conv_bn(conv, bn)`` reads: what the fold cache and the prepared call
    depend on."""
    weight, bias = module_tensor(conv, "weight"), module_tensor(conv, "bias")
    if bn is None:
        return (weight, bias)
    return (weight, bias) + tuple(module_tensor(bn, name) for name in _BN_SOURCES)


# The names _fold_sources_of reads, in its order (the C stamp is made from them: the stamp
# test in tests/test_direct_call.py checks that both see the same tensors).
_CONV_SOURCES = ("weight", "bias")
_BN_SOURCES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _fold_specs_of(conv: nn.Module, bn: Optional[nn.Module]) -> tuple:
    """The (module, names) pairs of :func:`_fold_sources_of`'s tensors, for :func:`parameter_stamp`
    (``bn`` None: no names)."""
    return ((conv, _CONV_SOURCES), (bn, _BN_SOURCES))


def _load_stamp():
    from .._extension import extension_loaded

    if not extension_loaded():
        return None, None
    from .. import _C

    return getattr(_C, "parameter_stamp", None), getattr(_C, "parameter_stamp_holds", None)


_make_stamp, _stamp_holds = _load_stamp()


def parameter_stamp(specs: tuple) -> Optional[object]:
    """The stamp of the fold sources named by ``specs`` (:func:`_fold_specs_of` pairs), checked by
    :func:`stamp_holds` in one C call (csrc/parameter_stamp.cpp: ~0.5 µs against ~3-5 µs for
    :func:`_fold_sources_of` + :func:`_sources_key` in Python, on every eval call of every fused
    module). None without the extension, or when a source is computed on access (a
    parametrized weight) or is an inference tensor: the Python check then runs."""
    return None if _make_stamp is None else _make_stamp(specs)


def stamp_holds(stamp: object, modules: tuple) -> bool:
    """Whether every tensor ``stamp`` recorded is still its module's, unchanged (the same object
    found in the same dict, storage address, version, dtype and device), with ``modules`` the specs'
    modules as the fused module resolves them now: when :func:`_sources_key` of
    :func:`_fold_sources_of` would give the key it gave when the stamp was made."""
    return _stamp_holds(stamp, modules)


class _Container(nn.Module):
    """An empty holder, so original submodules keep their nested names (``0.0.weight``)."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("internal container of a videoconv fused module; not callable")


def _check_name(name: str) -> Tuple[str, ...]:
    parts = tuple(name.split("."))
    if not name or any(not p for p in parts):
        raise ValueError(f"videoconv.nn: invalid submodule name {name!r}")
    return parts


class FusedModuleBase(nn.Module):
    """Base of the fused modules.

    The original modules (convs, BatchNorms) are registered as submodules under names given by
    ``_slots`` (role -> dotted path, e.g. ``{"conv": "0", "bn": "1"}`` or the default
    ``{"conv": "conv", "bn": "bn"}``), so the fused module's ``state_dict`` has the keys the
    original container had. ``_slots`` maps a role to None where there is no such module.
    """

    _roles: Tuple[str, ...] = ()

    def _init_slots(self, modules: Dict[str, Optional[nn.Module]], names: Optional[Dict[str, str]]):
        names = dict(names or {})
        unknown = set(names) - set(self._roles)
        if unknown:
            raise ValueError(f"videoconv.nn: unknown submodule roles {sorted(unknown)}; "
                             f"expected some of {list(self._roles)}")
        slots: Dict[str, Optional[Tuple[str, ...]]] = {}
        used = set()
        for role in self._roles:
            module = modules.get(role)
            if module is None:
                slots[role] = None
                continue
            parts = _check_name(names.get(role, role))
            if parts in used or any(parts[: len(u)] == u or u[: len(parts)] == parts for u in used):
                raise ValueError(f"videoconv.nn: submodule name {'.'.join(parts)!r} clashes")
            used.add(parts)
            parent: nn.Module = self
            for p in parts[:-1]:
                child = parent._modules.get(p)
                if child is None:
                    child = _Container()
                    parent.add_module(p, child)
                parent = child
            parent.add_module(parts[-1], module)
            slots[role] = parts
        self._slots = slots
        self._fold_cache = None
        self.backend: Optional[str] = None

    def _get(self, role: str) -> Optional[nn.Module]:
        parts = self._slots[role]
        if parts is None:
            return None
        m: nn.Module = self
        for p in parts:
            m = m._modules[p]
        return m

    def submodule_names(self) -> Dict[str, Optional[str]]:
        """Role -> dotted name of the original module inside this one (None if absent)."""
        return {r: (None if p is None else ".".join(p)) for r, p in self._slots.items()}

    # -- folded parameters, cached ---------------------------------------------------------

    def _fold_sources(self) -> Sequence[Optional[Tensor]]:
        raise NotImplementedError

    def _fold(self) -> Tuple[Tensor, ...]:
        raise NotImplementedError

    def _fold_constants(self) -> tuple:
        """The non-tensor values the fold reads: each BatchNorm's ``eps`` (:func:`_bn_eps`)."""
        raise NotImplementedError

    def invalidate_fold_cache(self) -> None:
        """Forget the cached folded scale/shift. Needed only after changing parameters that are
        inference tensors in place (they have no version counter); in-place updates,
        ``load_state_dict``, ``.data =``, ``.to()``, a new ``bn.eps`` and training steps are
        detected automatically."""
        self._fold_cache = None
        self.__dict__.pop("_prepared", None)  # built from the fold (see Conv3dBNAct)

    # -- hooks on the original modules, added after fusion ------------------------------------

    @staticmethod
    def _hooked(modules: tuple) -> bool:
        """Whether one of ``modules`` (the original convs and BatchNorms inside) has hooks of its
        own. ``fuse()`` and ``from_modules`` refuse modules with hooks (:func:`hooks_reason`),
        but a user can add one afterwards, e.g. Grad-CAM's forward and backward hooks on a
        fused model's last conv: the fused op never calls the modules, so such hooks would
        silently not run. Checked on every call, before the fast path: ~8 dict truth tests."""
        for m in modules:
            if m is not None and (m._forward_pre_hooks or m._forward_hooks or m._backward_hooks
                                  or m._backward_pre_hooks):
                return True
        return False

    def _unfused(self, x: Tensor, residual: Optional[Tensor], stages: tuple) -> Tensor:
        """The original modules' own forward, for a module with hooks inside (:meth:`_hooked`):
        ``act(bn(conv(x)))`` per ``(conv, bn)`` stage, with ``residual`` added before the last
        activation, each module called as the model called it, so that its hooks run and see
        what they saw before fusion, in eval and in train mode (BatchNorm's own running-stat
        update). At eager speed: the hooks need the intermediate values the fused op never
        materialises."""
        if self.training:
            self._forget_fold()
        for i, (conv, bn) in enumerate(stages):
            x = conv(x)
            if bn is not None:
                x = bn(x)
            if residual is not None and i == len(stages) - 1:
                x = x + residual
            x = apply_activation(x, self.activation)
        return x

    def _forget_fold(self) -> None:
        # The running statistics change in training mode (native batch_norm updates them
        # without always bumping their version counter; num_batches_tracked's add_ does).
        if not torch.compiler.is_compiling():
            self._fold_cache = None
            self.__dict__.pop("_prepared", None)

    def folded(self) -> Tuple[Tensor, ...]:
        """The folded per-channel scale/shift tensors (eval-mode semantics).

        Cached across calls when no gradient is needed: the cache key is every source tensor's
        identity, storage pointer and version counter (``_version``, bumped by any in-place
        update: optimiser steps, ``copy_``, ``load_state_dict``, BN's running-stat updates),
        plus its dtype and device, and each BatchNorm's ``eps``. Under ``torch.compile`` the
        fold is traced instead (it is a handful of per-channel ops).

        Parameters that are inference tensors (modules built under ``torch.inference_mode``
        and used as they are, or fused with ``inplace=True``; ``videoconv.fuse`` otherwise
        copies them into ordinary tensors) have no version counter: their in-place updates
        cannot be seen, so call :meth:`invalidate_fold_cache` after changing them.
        """
        sources = self._fold_sources()
        if torch.compiler.is_compiling():
            return self._fold()
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources):
            return self._fold()  # differentiable w.r.t. the BN/conv parameters; not cached
        key = (_sources_key(sources)[0], self._fold_constants())
        cache = self._fold_cache
        if cache is not None and cache[0] == key:
            return cache[1]
        # Normal tensors even under inference_mode: they carry version counters, which lets
        # the cpu backend's pack cache recognise them without comparing values on every call.
        with torch.inference_mode(False), torch.no_grad():
            values = tuple(v.detach() for v in self._fold())
        # The key's tensors and storages are kept alive with it (_key_referents: otherwise a
        # recycled id or address can match a stale key).
        self._fold_cache = (key, values, _key_referents(sources))
        return values

    def _conv_args(self, conv: nn.Module, role: str = "conv"):
        """``[stride], [padding], [dilation]`` of ``conv`` (the module in ``role``) as the op's
        int lists, converted once per distinct value (per-call conversion is a visible cost on
        small layers). ValueError for a padding mode other than zeros, which the op does not
        have (checked when the module was built, and again here: set on the conv afterwards, it
        was ignored, a wrong answer)."""
        key = (conv.stride, conv.padding, conv.dilation, conv.padding_mode)
        attr = f"_conv_args_cache_{role}"
        cached = self.__dict__.get(attr)
        if cached is not None and cached[0] == key:
            return cached[1]
        name = "videoconv.nn"
        if conv.padding_mode != "zeros":
            raise ValueError(f"{name}: {role} has padding_mode={conv.padding_mode!r}; only "
                             "'zeros' can be fused")
        args = (list(as_triple(conv.stride, "stride", name)),
                list(as_triple(conv.padding, "padding", name)),
                list(as_triple(conv.dilation, "dilation", name)))
        self.__dict__[attr] = (key, args)
        return args

    # -- training-mode BatchNorm ----------------------------------------------------------

    def _batch_stats(self, bn: Optional[nn.Module]) -> bool:
        """Whether ``bn`` normalises with batch statistics in this call: in training mode, and
        (as ``nn.BatchNorm3d``) in eval mode too when it keeps no running statistics."""
        return bn is not None and (self.training or module_tensor(bn, "running_mean") is None
                                   or module_tensor(bn, "running_var") is None)

    def _conv_bn_train(self, x: Tensor, conv: nn.Module, bn: nn.Module, residual: Optional[Tensor],
                       conv_args, activation: Optional[str] = None) -> Tensor:
        """``act(bn(conv(x)) [+ residual])`` with ``bn`` normalising by batch statistics, on the
        fused path (:func:`videoconv.ops.conv3d_bn_act_train`): the convolution's epilogue
        gives the statistics, the running statistics are updated as ``nn.BatchNorm3d`` would
        (only in training mode with ``track_running_stats``), normalisation and activation are
        one element-wise step, and the backward is BatchNorm's analytic one. ``activation``:
        this module's unless given."""
        stride, padding, dilation = conv_args
        track = self.training and bn.track_running_stats and bn.running_mean is not None
        kwargs = dict(
            bn_weight=bn.weight, bn_bias=bn.bias,
            running_mean=bn.running_mean if track else None,
            running_var=bn.running_var if track else None,
            num_batches_tracked=bn.num_batches_tracked if track else None,
            momentum=bn.momentum, eps=bn.eps, stride=stride, padding=padding,
            dilation=dilation, groups=conv.groups,
            activation=self.activation if activation is None else activation, residual=residual)
        if self.backend is None:
            return conv3d_bn_act_train(x, conv.weight, conv.bias, **kwargs)
        with self._backend_context():
            return conv3d_bn_act_train(x, conv.weight, conv.bias, **kwargs)

    # -- a residual the fused op cannot add ------------------------------------------------

    @staticmethod
    def _residual_apart(x: Tensor, residual: Optional[Tensor], convs_args) -> bool:
        """Whether ``residual`` is one the fused ops do not add: not of the output's size (a
        broadcast add, e.g. of a per-channel mean), or not of ``x``'s dtype or device (a float32
        shortcut on a bfloat16 branch). ``fuse()`` puts these modules in place of any
        ``act(bn(conv(x)) + r)``, and eager ``+`` broadcasts and promotes, so such a residual is
        added after the fused op, as eager adds it (:meth:`_add_apart`), rather than refused.
        ``convs_args``: ``(conv, [stride, padding, dilation])`` per convolution, in order.

        False when the input itself is invalid or the residual does not broadcast (the op then
        raises its error naming the problem), and for what is not a tensor (torch.fx's proxies:
        the trace records the op as it is). Only asked off the eval fast path, which holds
        prepared calls only for residuals that fitted."""
        if not (isinstance(residual, Tensor) and isinstance(x, Tensor)):
            return False
        size = list(x.shape)
        if len(size) != 5:
            return False
        for conv, (stride, padding, dilation) in convs_args:
            weight = conv.weight
            if weight.dim() != 5:
                return False
            try:
                size = _conv_output_shape("videoconv.nn", size, "weight", weight.shape, stride,
                                          padding, dilation, conv.groups)
            except RuntimeError:
                return False
        if list(residual.shape) == size:
            return residual.dtype != x.dtype or residual.device != x.device
        try:
            torch.broadcast_shapes(tuple(size), tuple(residual.shape))
        except RuntimeError:
            return False  # neither adds it: the op's error names the sizes
        return True

    def _add_apart(self, y: Tensor, residual: Tensor) -> Tensor:
        """``act(y + residual)`` with eager's ``+`` (broadcasting, type promotion), ``y`` being
        the fused op's output without residual or final activation."""
        return apply_activation(y + residual, self.activation)

    # -- the eval fast path's prepared call (videoconv/ops/_direct.py) -----------------------

    def _prepared_guard(self, x: Tensor, residual: Optional[Tensor], modules: tuple,
                        sources: Tuple[Optional[Tensor], ...], key: Optional[tuple]):
        """What the prepared call depends on, None when it cannot have one (each module)."""
        raise NotImplementedError

    def _eval_fast_path(self, x: Tensor, residual: Optional[Tensor], modules: tuple):
        """``(output, keep)``: the output of the call prepared for this input signature and these
        parameters, or None; and, when None, what :meth:`_keep_prepared` needs to keep the call
        the caller prepares after its direct call (None: none may be prepared). ``modules`` is
        the flat tuple of the (conv, bn) pairs the folds read.

        Only under no_grad/inference_mode, when nothing observes the dispatcher. The parameters
        are checked by the C stamp (csrc/parameter_stamp.cpp) when there is one, else read and
        keyed again (``_fold_sources_of``, ``_sources_key``); the rest of the guard is the
        module's :meth:`_prepared_guard`."""
        # (Dynamo folds is_compiling() to True: it never traces the C stamp below.)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None, None
        prepared = self.__dict__.get("_prepared")
        stamp = None if prepared is None else prepared[3]
        if stamp is not None and stamp_holds(stamp, modules):
            # The parameters the prepared call was built from: not read or keyed again.
            sources, weights, key = prepared[4], prepared[5], prepared[0][4]
        else:
            pairs = tuple(zip(modules[::2], modules[1::2]))
            # A stamp made before the key is read can only be older than the key, never newer:
            # if a parameter changes in between, the stamp fails later, not holds.
            stamp = parameter_stamp(tuple(spec for conv, bn in pairs
                                          for spec in _fold_specs_of(conv, bn)))
            per_pair = [_fold_sources_of(conv, bn) for conv, bn in pairs]
            sources = tuple(t for own in per_pair for t in own)
            weights = tuple(own[0] for own in per_pair)  # the convs' weights
            key = None
        if not dispatcher_unobservable(x, residual, *weights):
            return None, None
        guard = self._prepared_guard(x, residual, modules, sources, key)
        if guard is None:
            return None, None
        if prepared is not None and prepared[0] == guard:
            if prepared[1] is None:
                return None, None  # this backend has no prepared call: the direct path
            self._direct_plan().hits += 1
            return prepared[1](x, residual), None
        return None, (guard, stamp, sources, weights)

    def _keep_prepared(self, keep: tuple, call) -> None:
        """Keep ``call`` (the backend's prepared call, or None) with what
        :meth:`_eval_fast_path` gave: (guard, call, referents, stamp, sources, weights), with what
        the guard's identities refer to kept alive (:func:`_key_referents`)."""
        guard, stamp, sources, weights = keep
        self.__dict__["_prepared"] = (guard, call, _key_referents(sources), stamp, sources,
                                      weights)

    def _direct_plan(self):
        """This module's cached backend choice for the eval fast path (videoconv/ops/_direct.py),
        created on first use (modules are also built through ``__new__`` by deepcopy/pickle)."""
        plan = self.__dict__.get("_direct")
        if plan is None:
            from ..ops._direct import DirectPlan

            plan = self.__dict__["_direct"] = DirectPlan()
        return plan

    def _backend_context(self):
        if self.backend is None:
            return contextlib.nullcontext()
        from .. import backends  # selection context only; the op picks the implementation

        return backends.use(self.backend)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fold_cache"] = None
        state.pop("_direct", None)
        state.pop("_prepared", None)
        return state

    def __deepcopy__(self, memo):
        # Default deepcopy, minus the cache (it refers to the source's tensors).
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        import copy

        for k, v in self.__dict__.items():
            if k in ("_direct", "_prepared"):  # per-module call caches; the copy makes its own
                continue
            setattr_ = object.__setattr__
            setattr_(new, k, None if k == "_fold_cache" else copy.deepcopy(v, memo))
        return new


def _sources_key(sources: Sequence[Optional[Tensor]]) -> Tuple[tuple, bool]:
    """The fold cache's key of ``sources``, and whether every one has a version counter.

    Per tensor: identity, storage, version counter, dtype and device (flat, one tuple): `.to()`
    and `.data =` give new storage, in-place updates bump the version. Inference tensors do not
    track versions (reading _version raises); identity and storage still catch replaced
    tensors, which is how parameters are normally swapped. Computed for every source on every
    eval forward (7 to 14 tensors), so it is one loop building one tuple.

    Whoever keeps a key must keep what it identifies alive with it, :func:`_key_referents`
    (the fold cache and the prepared call do): an id() and a data_ptr() are unique only among
    live objects and storages."""
    key = []
    versioned = True
    for t in sources:
        if t is None:
            key.append(None)
            continue
        if t.is_inference():  # no version counter (asked, not caught: see cpu._version)
            version, versioned = -1, False
        else:
            version = t._version
        key += (id(t), t.data_ptr(), version, t.dtype, t.device)
    return tuple(key), versioned


def _key_referents(sources: Sequence[Optional[Tensor]]) -> tuple:
    """What keeps a :func:`_sources_key` key unambiguous while it is cached: the tensors (their
    id()s) and their storages (their data_ptr()s). Without them CPython and the allocator recycle
    both: a parametrized weight is a new tensor on every access and can be given a freed one's
    id and storage; ``module.to(torch.bfloat16).float()`` swaps a parameter's storage through
    ``.data`` (same tensor, same version) and the last one can land at the first one's address.
    Either way the stale key matched and the old fold was used: a wrong answer (both seen).
    Kept alive, an old storage costs its memory only until the next call re-keys."""
    return tuple(None if t is None else (t, t.untyped_storage()) for t in sources)
