"""Registry of the reference zoo.

Every architecture registers a builder together with the facts the tests and benchmarks need:
its standard clip, the parameter count published for it and where that figure comes from, and a
small clip that is still valid for the network (for quick numerical checks). Keeping those facts
next to the builder means a new model is tested by the generic zoo tests as soon as it registers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.nn as nn

__all__ = ["ModelSpec", "register_model", "list_models", "get_model", "get_model_spec"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    #: Publication (or reference implementation) the architecture follows.
    paper: str
    #: Standard clip, (C, T, H, W), at which the published FLOPs/accuracy are quoted.
    input_shape: Tuple[int, int, int, int]
    #: Number of classes the published parameter count refers to.
    num_classes: int
    #: Published parameter count at `num_classes`; None when no figure is published.
    published_params: Optional[int]
    #: Relative tolerance on `published_params` (0 for "exactly", e.g. torchvision's counts).
    params_rtol: float
    #: Where `published_params` comes from.
    params_source: str
    #: A small clip (C, T, H, W) that the network accepts, for fast numerical tests.
    test_input_shape: Tuple[int, int, int, int]
    #: Smallest number of frames the network accepts (its temporal pooling needs them).
    min_frames: int = 1


_MODELS: Dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    paper: str,
    input_shape: Tuple[int, int, int, int],
    published_params: Optional[int],
    params_source: str,
    test_input_shape: Tuple[int, int, int, int],
    num_classes: int = 400,
    params_rtol: float = 0.01,
    min_frames: int = 1,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering `builder(num_classes=..., **kw) -> nn.Module` under `name`."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelSpec(
            name=name,
            builder=builder,
            paper=paper,
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            published_params=published_params,
            params_rtol=params_rtol,
            params_source=params_source,
            test_input_shape=tuple(test_input_shape),
            min_frames=min_frames,
        )
        return builder

    return decorator


def list_models() -> List[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_MODELS)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def get_model(name: str, num_classes: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """Build a reference model of the zoo with freshly initialised weights.

    ``num_classes`` defaults to the count the published figures refer to (400 for Kinetics
    models, 101 for C3D's UCF-101 head). Other keyword arguments go to the builder.
    """
    spec = get_model_spec(name)
    return spec.builder(num_classes=spec.num_classes if num_classes is None else num_classes, **kwargs)
