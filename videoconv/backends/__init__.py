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
from typing import Dict, Iterator, List, Optional, Type

__all__ = [
    "Backend",
    "ReferenceBackend",
    "PRIORITY",
    "register_backend",
    "available",
    "names",
    "get_backend",
    "use",
    "forced_backend",
]


class Backend:
    """Base class: one implementation of every videoconv operator, with its limits."""

    #: Name used by ``use()``, ``VIDEOCONV_BACKEND`` and ``videoconv info``.
    name: str = ""
    #: Device types it runs on ("cpu", "cuda").
    devices: frozenset = frozenset()
    #: One line saying what it is, for ``videoconv info``.
    description: str = ""

    @classmethod
    def environment_reasons(cls) -> List[str]:
        """Why this backend cannot run on this install at all (empty if it can)."""
        return []


class ReferenceBackend(Backend):
    name = "reference"
    devices = frozenset({"cpu", "cuda"})
    description = "plain PyTorch eager (F.conv3d, then the epilogue): the oracle"


#: Backends in the order automatic selection tries them (fastest first; reference last).
PRIORITY: List[Type[Backend]] = [ReferenceBackend]

_ENV_VAR = "VIDEOCONV_BACKEND"
_local = threading.local()


def register_backend(backend: Type[Backend], before: Optional[str] = None) -> Type[Backend]:
    """Add a backend to :data:`PRIORITY`, ahead of ``before`` (default: ahead of reference)."""
    if backend.name in names():
        raise ValueError(f"backend {backend.name!r} is registered twice")
    anchor = before or ReferenceBackend.name
    index = names().index(anchor)
    PRIORITY.insert(index, backend)
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


def forced_backend() -> Optional[str]:
    """The backend forced by :func:`use` (innermost) or by ``VIDEOCONV_BACKEND``, if any."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    name = os.environ.get(_ENV_VAR, "").strip()
    if name:
        get_backend(name)  # an unknown name in the environment is an error, not ignored
        return name
    return None


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Force ``name`` for the operators called inside the block (thread-local, nestable)."""
    get_backend(name)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()
