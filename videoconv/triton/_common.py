"""What every videoconv Triton kernel shares: the interpreter switch, activation codes and the
epilogue helper, and the description of an ahead-of-time compile variant.

``TRITON_INTERPRET=1`` must be set before this package is imported: ``triton.jit`` decides at
decoration time whether a kernel is compiled or interpreted. With it, the kernels run on CPU
tensors through Triton's interpreter (slow, exact enough to test); without it they need CUDA.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Tuple

import triton
import triton.language as tl

__all__ = [
    "INTERPRET",
    "ACTIVATION_CODES",
    "activation_code",
    "apply_activation",
    "AotVariant",
    "environment_reasons",
]

#: True when the kernels in this process run through Triton's interpreter (CPU tensors).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: ``activation`` string -> the constexpr code the kernels branch on.
ACTIVATION_CODES = {"identity": 0, "relu": 1, "silu": 2}


def activation_code(activation: str) -> int:
    try:
        return ACTIVATION_CODES[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}") from None


@triton.jit
def apply_activation(u, ACT: tl.constexpr):
    """act(u) on a float32 tile; ``ACT`` is an :data:`ACTIVATION_CODES` value."""
    if ACT == 1:
        u = tl.maximum(u, 0.0)
    elif ACT == 2:
        u = u / (1.0 + tl.exp(-u))
    return u


@dataclasses.dataclass(frozen=True)
class AotVariant:
    """One kernel specialisation to compile ahead of time (``videoconv check --compile``).

    ``signature`` maps each non-constexpr argument name to its Triton type string (``"*bf16"``,
    ``"i32"``, ``"i64"``, ``"fp32"``); ``constexprs`` maps the constexpr names to values (block
    sizes from the autotune configs, activation code, ...).
    """

    name: str
    fn: Callable[..., Any]
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3


def environment_reasons() -> List[str]:
    """Why the Triton kernels cannot run in this process (empty if they can)."""
    import torch

    if INTERPRET:
        return []
    if not torch.cuda.is_available():
        return ["no CUDA GPU is visible (set TRITON_INTERPRET=1 before importing videoconv to "
                "run the Triton kernels through the interpreter on CPU tensors)"]
    return []
