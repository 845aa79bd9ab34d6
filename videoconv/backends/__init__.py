"""Backends: which implementation runs videoconv's operators.

Following xformers' pattern, each backend is a small class that states what it supports and,
when it cannot run (on this install, or for a given input), returns readable reasons instead of
failing later. The operators walk :data:`PRIORITY` and take the first backend with no reasons;
forcing one (:func:`use` or ``VIDEOCONV_BACKEND``) that cannot run raises an error listing its
reasons — there is no silent fallback.

Backends register here as they are implemented: ``reference`` (plain PyTorch eager, the oracle)
is always present; the CPU, Triton and CUDA C++ backends plug into the same list.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Type

import torch

__all__ = [
    "Backend",
    "ReferenceBackend",
    "PRIORITY",
    "OPS",
    "NotSupportedError",
    "register_backend",
    "unregister_backend",
    "available",
    "names",
    "get_backend",
    "use",
    "forced_backend",
    "select_backend",
    "not_supported_reasons",
    "output_memory_format",
    "empty_output",
]

#: The operators every backend implements (names of ``torch.ops.videoconv.*`` and of the
#: backend methods that run them).
OPS = ("conv3d_bn_act", "conv2plus1d_bn_act", "conv3d_bn_stats")


class NotSupportedError(RuntimeError):
    """No backend can run these inputs, or the forced one cannot; the message lists why."""


def output_memory_format(input: torch.Tensor) -> torch.memory_format:
    """The memory format of an operator's output for ``input``: the layout contract of every
    backend and of the fake (meta) kernels.

    ``channels_last_3d`` when ``input`` is in channels_last_3d (and not also plain contiguous,
    as happens when C == 1 or D*H*W == 1), else ``contiguous_format``. A non-dense view (a
    slice such as SlowFast's ``clip[:, :, ::alpha]``) counts as the layout its strides are
    ordered like (``Tensor.suggest_memory_format``, as ATen's ``suggest_memory_format`` decides): a frame
    subsample of a channels_last_3d clip gives a channels_last_3d output, not an NCDHW one
    that would turn the rest of the network NCDHW.
    """
    if input.is_contiguous():
        return torch.contiguous_format
    if input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    if _strides_ordered_channels_last_3d(input):
        return torch.channels_last_3d
    return torch.contiguous_format


def _strides_ordered_channels_last_3d(t: torch.Tensor) -> bool:
    # ATen's suggest_memory_format (not exposed in Python) for 5-D: among the dims of size > 1,
    # strides grow in the order C, W, H, D, N, with C (more than one channel) the innermost.
    if t.dim() != 5 or t.size(1) <= 1:
        return False
    strides = [t.stride(d) for d in (1, 4, 3, 2, 0) if t.size(d) > 1]
    return strides == sorted(strides) and strides.count(strides[0]) == 1


def empty_output(input: torch.Tensor, size) -> torch.Tensor:
    """An uninitialised output of ``size`` for ``input``: its dtype, device and
    :func:`output_memory_format`."""
    return torch.empty(
        size, dtype=input.dtype, device=input.device, memory_format=output_memory_format(input)
    )


def _layout_name(tensor: torch.Tensor) -> str:
    fmt = output_memory_format(tensor)
    return "channels_last_3d" if fmt == torch.channels_last_3d else "contiguous"


class Backend:
    """Base class: one implementation of every videoconv operator, with its limits.

    A backend is a class (never instantiated) with

    * class attributes describing what it supports (``devices``, ``dtypes``, ``activations``,
      ``ops``, ``memory_formats``, ``supports_groups``, ``supports_residual``);
    * :meth:`environment_reasons`: why it cannot run on this install at all (library missing,
      no GPU, ...);
    * :meth:`not_supported_reasons`: why it cannot run *these* inputs. The base version checks
      the environment and the attributes above; subclasses extend it (``reasons =
      super().not_supported_reasons(op_name, **inputs)``) with their own limits (kernel sizes,
      alignment, ...). Reasons are short human-readable strings;
    * one classmethod per operator (:data:`OPS`), taking the operator's arguments by keyword
      (the schema's names) and returning the output tensor in
      :func:`output_memory_format` of the input. Inputs reaching a backend are already validated
      (shapes, dtypes, devices, argument values) and have a non-empty batch.
    """

    #: Name used by ``use()``, ``VIDEOCONV_BACKEND`` and ``videoconv info``.
    name: str = ""
    #: Device types it runs on ("cpu", "cuda").
    devices: frozenset = frozenset()
    #: One line saying what it is, for ``videoconv info``.
    description: str = ""
    #: Operators it implements (a subset of :data:`OPS`).
    ops: frozenset = frozenset(OPS)
    #: Input dtypes it accepts.
    dtypes: frozenset = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
    #: Activations it implements.
    activations: frozenset = frozenset({"relu", "silu", "identity"})
    #: Input layouts it accepts ("contiguous", "channels_last_3d").
    memory_formats: frozenset = frozenset({"contiguous", "channels_last_3d"})
    #: Whether grouped (incl. depthwise) convolutions are supported.
    supports_groups: bool = True
    #: Whether the residual input is supported.
    supports_residual: bool = True

    @classmethod
    def environment_reasons(cls) -> List[str]:
        """Why this backend cannot run on this install at all (empty if it can)."""
        return []

    @classmethod
    def not_supported_reasons(cls, op_name: str, **inputs: Any) -> List[str]:
        """Why this backend cannot run ``op_name`` on ``inputs`` (the operator's arguments by
        keyword); empty if it can."""
        reasons = list(cls.environment_reasons())
        if op_name not in cls.ops:
            reasons.append(f"operator {op_name} is not implemented")
        x = inputs.get("input")
        if isinstance(x, torch.Tensor):
            if x.device.type not in cls.devices:
                reasons.append(
                    f"device {x.device.type} is not supported (supports {', '.join(sorted(cls.devices))})"
                )
            if x.dtype not in cls.dtypes:
                supported = ", ".join(sorted(str(d).replace("torch.", "") for d in cls.dtypes))
                reasons.append(
                    f"dtype {str(x.dtype).replace('torch.', '')} is not supported (supports {supported})"
                )
            if x.dim() == 5 and _layout_name(x) not in cls.memory_formats:
                reasons.append(f"input layout {_layout_name(x)} is not supported")
        activation = inputs.get("activation")
        if activation is not None and activation not in cls.activations:
            reasons.append(f"activation {activation!r} is not supported")
        groups = inputs.get("groups", 1)
        if not cls.supports_groups and groups != 1:
            reasons.append(f"groups={groups} is not supported (only groups=1)")
        if not cls.supports_residual and inputs.get("residual") is not None:
            reasons.append("a residual input is not supported")
        return reasons

    @classmethod
    def conv3d_bn_act(cls, *, input, weight, scale, shift, stride, padding, dilation, groups,
                      activation, residual):  # noqa: D401  (signature of the operator)
        raise NotImplementedError(f"backend {cls.name!r} does not implement conv3d_bn_act")

    @classmethod
    def prepare_conv3d_bn_act(cls, *, input, weight, scale, shift, stride, padding, dilation,
                              groups, activation, residual) -> Optional[Callable]:
        """Optional: a call ``(input, residual) -> output`` equal to :meth:`conv3d_bn_act` for
        later inputs with the *same signature* (shape, strides, dtype, device) and the same
        weight, scale and shift values, with the per-call work that depends on neither done
        now (the modules' eval fast path keeps it while those hold; see
        videoconv/ops/_direct.py). ``None``: no cheaper call than :meth:`conv3d_bn_act`."""
        return None

    @classmethod
    def prepared_call_settings(cls) -> Any:
        """Optional: what this backend's prepared calls depend on besides their arguments, as one
        hashable value (run-time switches of its routes; the ``cpu`` backend's ``WINOGRAD``,
        limits, ...). The operators' own cache of prepared calls compares it on every call
        (videoconv/ops/_direct.py, ``OpPreparedCalls``), so it must be cheap. None: nothing."""
        return None

    @classmethod
    def conv2plus1d_bn_act(cls, *, input, w1, scale1, shift1, w2, scale2, shift2, stride, padding,
                           activation, temporal_first, residual):
        raise NotImplementedError(f"backend {cls.name!r} does not implement conv2plus1d_bn_act")

    @classmethod
    def prepare_conv2plus1d_bn_act(cls, *, input, w1, scale1, shift1, w2, scale2, shift2, stride,
                                   padding, activation, temporal_first,
                                   residual) -> Optional[Callable]:
        """Optional: as :meth:`prepare_conv3d_bn_act`, for :meth:`conv2plus1d_bn_act`: a call
        ``(input, residual) -> output`` equal to it for later inputs with the same signature and
        the same weights, scales and shifts. ``None``: no cheaper call."""
        return None

    @classmethod
    def conv3d_bn_stats(cls, *, input, weight, stride, padding, dilation, groups):
        """``(out, mean, var)``: the convolution in the input's layout and the float64 mean and
        biased variance of ``out`` per channel (see videoconv/ops/conv3d_bn_stats.py for the
        numerics every backend must meet: per-tile centred sums, fixed-order float64 merge)."""
        raise NotImplementedError(f"backend {cls.name!r} does not implement conv3d_bn_stats")


class ReferenceBackend(Backend):
    name = "reference"
    devices = frozenset({"cpu", "cuda"})
    description = "plain PyTorch eager (F.conv3d, then the epilogue): the oracle"

    @classmethod
    def conv3d_bn_act(cls, **inputs):
        from . import reference

        return reference.conv3d_bn_act(**inputs)

    @classmethod
    def conv2plus1d_bn_act(cls, **inputs):
        from . import reference

        return reference.conv2plus1d_bn_act(**inputs)

    @classmethod
    def conv3d_bn_stats(cls, **inputs):
        from . import reference

        return reference.conv3d_bn_stats(**inputs)

    @classmethod
    def conv3d_input_weight_grad(cls, **inputs):
        """ATen's gradient convolutions (``None``), except on CPU where ATen's bfloat16 weight
        gradient is wrong, up to inf/NaN (videoconv/backends/cpu.py, ``_weight_grad_unsafe``):
        there it is computed in float32, as the cpu backend does."""
        if inputs["input"].device.type != "cpu":
            return None
        from .cpu import input_weight_grad_unless_aten_is_wrong

        return input_weight_grad_unless_aten_is_wrong(**inputs)


#: Backends in the order automatic selection tries them (fastest first; reference last).
PRIORITY: List[Type[Backend]] = [ReferenceBackend]

_ENV_VAR = "VIDEOCONV_BACKEND"
# forced_backend() runs on every eval call of every fused module (their prepared calls' guard),
# where os.environ.get's encoding of the key and the value is a visible cost. CPython's
# os.environ keeps the encoded environment in a plain dict (``_data``, updated by every
# os.environ write and by monkeypatch.setenv), so a missing variable is one dict lookup; other
# implementations take os.environ.get.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
try:
    _ENV_KEY = os.environ.encodekey(_ENV_VAR)
except AttributeError:
    _ENVIRON_DATA = None
if not isinstance(_ENVIRON_DATA, dict):
    _ENVIRON_DATA = None


class _ForcedStack(threading.local):
    # Each thread starts with an empty stack, so reading it is a plain attribute hit: a
    # ``getattr(local, name, default)`` miss costs ~0.4 µs, and forced_backend() runs on every
    # fused module call (it is part of the eval fast path's guard).
    def __init__(self):
        self.stack: List[str] = []


_local = _ForcedStack()


def register_backend(backend: Type[Backend], before: Optional[str] = None) -> Type[Backend]:
    """Add a backend to :data:`PRIORITY`, ahead of ``before`` (default: ahead of reference)."""
    if backend.name in names():
        raise ValueError(f"backend {backend.name!r} is registered twice")
    anchor = before or ReferenceBackend.name
    index = names().index(anchor)
    PRIORITY.insert(index, backend)
    return backend


def unregister_backend(name: str) -> Type[Backend]:
    """Remove a backend from :data:`PRIORITY` (``reference`` cannot be removed)."""
    if name == ReferenceBackend.name:
        raise ValueError("the reference backend cannot be unregistered")
    backend = get_backend(name)
    PRIORITY.remove(backend)
    return backend


def names() -> List[str]:
    return [b.name for b in PRIORITY]


def get_backend(name: str) -> Type[Backend]:
    for backend in PRIORITY:
        if backend.name == name:
            return backend
    raise ValueError(f"unknown videoconv backend {name!r}; known backends: {', '.join(names())}")


def available() -> Dict[str, List[str]]:
    """Backend name -> reasons it cannot run on this install (an empty list if it can)."""
    return {b.name: b.environment_reasons() for b in PRIORITY}


def prepared_call_settings() -> tuple:
    """Every registered backend's :meth:`Backend.prepared_call_settings`, in priority order."""
    return tuple([b.prepared_call_settings() for b in PRIORITY])


def forced_backend() -> Optional[str]:
    """The backend forced by :func:`use` (innermost) or by ``VIDEOCONV_BACKEND``, if any."""
    stack = _local.stack
    if stack:
        return stack[-1]
    if _ENVIRON_DATA is not None and _ENV_KEY not in _ENVIRON_DATA:
        return None  # the common case, without os.environ.get's key encoding (~0.5 µs)
    name = os.environ.get(_ENV_VAR, "").strip()
    if name:
        get_backend(name)  # an unknown name in the environment is an error, not ignored
        return name
    return None


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Force ``name`` for the operators called inside the block (thread-local, nestable)."""
    get_backend(name)
    stack = _local.stack
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def not_supported_reasons(op_name: str, **inputs: Any) -> Dict[str, List[str]]:
    """Backend name -> reasons it cannot run ``op_name`` on ``inputs`` (empty if it can)."""
    return {b.name: b.not_supported_reasons(op_name, **inputs) for b in PRIORITY}


def _describe(op_name: str, inputs: Dict[str, Any]) -> str:
    x = inputs.get("input")
    if not isinstance(x, torch.Tensor):
        return op_name
    dtype = str(x.dtype).replace("torch.", "")
    return f"{op_name} on a {x.device.type} {dtype} input of size {list(x.shape)} ({_layout_name(x)})"


def select_backend(op_name: str, **inputs: Any) -> Type[Backend]:
    """The backend that runs ``op_name`` on ``inputs``.

    The forced one (:func:`use`, else ``VIDEOCONV_BACKEND``) if any: if it cannot run these
    inputs, :class:`NotSupportedError` lists its reasons (no fallback). Otherwise the first
    backend of :data:`PRIORITY` with no reasons; if there is none, :class:`NotSupportedError`
    lists every backend's reasons.
    """
    forced = forced_backend()
    if forced is not None:
        backend = get_backend(forced)
        reasons = backend.not_supported_reasons(op_name, **inputs)
        if reasons:
            source = "use()" if _local.stack else f"{_ENV_VAR}={forced}"
            raise NotSupportedError(
                f"videoconv backend {forced!r} (forced by {source}) cannot run "
                f"{_describe(op_name, inputs)}: " + "; ".join(reasons)
            )
        return backend
    all_reasons = {}
    for backend in PRIORITY:
        reasons = backend.not_supported_reasons(op_name, **inputs)
        if not reasons:
            return backend
        all_reasons[backend.name] = reasons
    lines = "\n".join(f"  {name}: {'; '.join(r)}" for name, r in all_reasons.items())
    raise NotSupportedError(f"no videoconv backend can run {_describe(op_name, inputs)}:\n{lines}")


# Backends implemented in their own modules register here (imported last: they subclass Backend).
from .cpu import CpuBackend  # noqa: E402
from .triton import TritonBackend  # noqa: E402
from .cuda import CudaBackend  # noqa: E402

register_backend(CpuBackend)
register_backend(TritonBackend)
register_backend(CudaBackend)
