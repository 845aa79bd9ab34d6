"""Per-layer multiply-accumulate counts.

Convention (the one torchvision publishes its video models' "GFLOPS" with, and that fvcore uses):
one multiply-accumulate per weight use in convolutions and linear layers, i.e.

* ``Conv``: ``output.numel() * in_channels / groups * prod(kernel_size)``
* ``Linear``: ``output.numel() * in_features``

Normalisation, activations, pooling, residual adds and biases are not counted: they are
bandwidth-bound, and the fused kernels of this package exist precisely to make them free.
With it, r3d_18 / mc3_18 / r2plus1d_18 at 1x3x16x112x112 come to 40.70 / 43.34 / 40.52 GMACs,
torchvision's figures. FLOPs in the usual hardware sense are twice the MACs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from ._tracing import InputSpec, meta_copy, meta_inputs, run_with_hooks

__all__ = ["LayerFlops", "FlopReport", "count_flops", "layer_macs"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one leaf module given its output (0 for layers the convention does not count)."""
    if isinstance(module, _CONV_TYPES):
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


@dataclasses.dataclass(frozen=True)
class LayerFlops:
    name: str
    kind: str
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    params: int
    macs: int


@dataclasses.dataclass
class FlopReport:
    """MACs of every convolution/linear layer of one forward pass, in execution order."""

    model: str
    input_shape: object
    layers: List[LayerFlops]

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @property
    def gmacs(self) -> float:
        return self.total_macs / 1e9

    def by_kind(self) -> Dict[str, int]:
        """MACs summed per layer type (e.g. Conv3d, Linear)."""
        totals: Dict[str, int] = {}
        for layer in self.layers:
            totals[layer.kind] = totals.get(layer.kind, 0) + layer.macs
        return totals

    def table(self) -> str:
        """The per-layer table that ``videoconv flops`` prints."""
        rows = [("layer", "type", "output", "params", "MMACs", "%")]
        total = max(self.total_macs, 1)
        for layer in self.layers:
            rows.append(
                (
                    layer.name,
                    layer.kind,
                    "x".join(map(str, layer.output_shape)),
                    f"{layer.params:,}",
                    f"{layer.macs / 1e6:,.1f}",
                    f"{100.0 * layer.macs / total:.1f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        aligns = ["<", "<", "<", ">", ">", ">"]

        def fmt(row):
            return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, aligns, widths))

        lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
        lines += [fmt(row) for row in rows[1:]]
        lines.append("")
        lines.append(
            f"total: {self.gmacs:.2f} GMACs ({2 * self.gmacs:.2f} GFLOPs) in {len(self.layers)} "
            f"conv/linear layers, input {self.input_shape}"
        )
        return "\n".join(lines)


def _shape(x) -> Tuple[int, ...]:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (tuple, list)) and x:
        return _shape(x[0])
    return ()


def count_flops(model: nn.Module, input_shape: InputSpec) -> FlopReport:
    """Count the MACs of one forward pass of ``model`` on a clip of ``input_shape``.

    ``input_shape`` is (N, C, T, H, W), a tensor, or a list of either for multi-input models
    (SlowFast's [slow, fast]). The model runs as a deep copy on the meta device in eval mode, so
    nothing is computed and ``model`` is left untouched.
    """
    clone = meta_copy(model).eval()
    layers: List[LayerFlops] = []

    def hook(name, module, args, output):
        macs = layer_macs(module, output)
        if macs or isinstance(module, _CONV_TYPES + (nn.Linear,)):
            layers.append(
                LayerFlops(
                    name=name,
                    kind=type(module).__name__,
                    input_shape=_shape(args),
                    output_shape=_shape(output),
                    params=sum(p.numel() for p in module.parameters(recurse=False)),
                    macs=macs,
                )
            )

    with torch.no_grad():
        run_with_hooks(clone, meta_inputs(input_shape), hook)
    return FlopReport(model=type(model).__name__, input_shape=_pretty(input_shape), layers=layers)


def _pretty(spec):
    if isinstance(spec, torch.Tensor):
        return tuple(spec.shape)
    if isinstance(spec, (tuple, list)) and spec and not isinstance(spec[0], int):
        return [_pretty(s) for s in spec]
    return tuple(spec)
