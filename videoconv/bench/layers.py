"""The distinct fused layers of a zoo model, traced from the model itself.

Workloads are not typed by hand: :func:`trace_layers` fuses the model
(:func:`videoconv.fuse`), runs its standard clip once with hooks on the fused modules, and
records each fused module's input size, its convolutions and activation. Layers with the same
signature (shapes, conv parameters, activation, residual) are one workload with a ``count``.
:class:`_ChainModule` is the eager chain of a layer's original modules (the benchmark's
``eager`` baseline for that layer; :mod:`videoconv.bench.providers` builds the others).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import models as zoo

__all__ = ["LayerWorkload", "trace_layers"]


@dataclasses.dataclass
class LayerWorkload:
    """One distinct fused layer of a model."""

    model: str
    name: str  # the first module path it was found at
    kind: str  # "conv3d_bn_act" or "conv2plus1d_bn_act"
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    convs: List[Dict[str, object]]  # per conv: weight shape, stride, padding, dilation, groups
    activation: str
    residual: bool
    count: int
    macs: int
    module: nn.Module = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def label(self) -> str:
        def conv_text(c):
            k = "x".join(map(str, c["weight"][2:]))
            s = "" if set(c["stride"]) == {1} else " s" + "".join(map(str, c["stride"]))
            g = "" if c["groups"] == 1 else (" dw" if c["groups"] == c["weight"][0] else f" g{c['groups']}")
            return f"{c['weight'][1] * c['groups']}->{c['weight'][0]} {k}{s}{g}"

        body = " / ".join(conv_text(c) for c in self.convs)  # no "|": labels go into tables
        extra = " +res" if self.residual else ""
        return f"{self.model} {body} {self.activation}{extra} @{'x'.join(map(str, self.input_shape[2:]))}"


def _conv_info(conv: nn.Conv3d) -> Dict[str, object]:
    return dict(weight=list(conv.weight.shape), stride=list(conv.stride), padding=list(conv.padding),
                dilation=list(conv.dilation), groups=conv.groups)


def _macs(conv: nn.Conv3d, out_shape) -> int:
    n, _, d, h, w = out_shape
    cout, cin_g, kt, kh, kw = conv.weight.shape
    return n * cout * d * h * w * cin_g * kt * kh * kw


def trace_layers(model_name: str, input_shape: Optional[Sequence[int]] = None,
                 batch: int = 1) -> List[LayerWorkload]:
    """The distinct fused layers of ``model_name`` at ``input_shape`` (default: its standard
    clip), each with the fused module that computes it (eval mode, float32)."""
    from ..nn import Conv2Plus1dBNAct, Conv3dBNAct
    from .. import fuse

    spec = zoo.get_model_spec(model_name)
    shape = (batch,) + tuple(input_shape or spec.input_shape)
    fused = fuse(zoo.get_model(model_name).eval())
    found: Dict[tuple, LayerWorkload] = {}
    hooks = []

    def hook(path):
        def record(module, args, output):
            x = args[0]
            residual = len(args) > 1 and args[1] is not None
            if isinstance(module, Conv3dBNAct):
                convs = [module._get("conv")]
                kind = "conv3d_bn_act"
            else:
                convs = [module._get("conv1"), module._get("conv2")]
                kind = "conv2plus1d_bn_act"
            info = [_conv_info(c) for c in convs]
            key = (kind, tuple(x.shape), repr(info), module.activation, residual)
            if key in found:
                found[key].count += 1
                return
            macs, h_shape = 0, tuple(x.shape)
            with torch.no_grad():  # MACs from the real intermediate shapes
                h = torch.empty(h_shape, device="meta")
                for c in convs:
                    h = nn.functional.conv3d(h, torch.empty_like(c.weight, device="meta"), None,
                                             c.stride, c.padding, c.dilation, c.groups)
                    macs += _macs(c, h.shape)
            found[key] = LayerWorkload(model=model_name, name=path, kind=kind,
                                       input_shape=tuple(x.shape), output_shape=tuple(output.shape),
                                       convs=info, activation=module.activation, residual=residual,
                                       count=1, macs=macs, module=module)
        return record

    for path, module in fused.named_modules():
        if isinstance(module, (Conv3dBNAct, Conv2Plus1dBNAct)):
            hooks.append(module.register_forward_hook(hook(path)))
    try:
        with torch.no_grad():
            fused(torch.randn(shape))
    finally:
        for h in hooks:
            h.remove()
    return list(found.values())


# ---------------------------------------------------------------------------------------------
# the chains each provider runs


def _eager_chain(module: nn.Module, conv_only: bool) -> Callable:
    """The unfused chain of a fused module's original submodules, as a function ``(x, r)``."""
    from ..nn import Conv3dBNAct
    from ..nn._common import apply_activation

    act = module.activation
    if isinstance(module, Conv3dBNAct):
        conv, bn = module._get("conv"), module._get("bn")
        if conv_only:
            return lambda x, r=None: conv(x)

        def chain(x, r=None):
            y = conv(x)
            y = bn(y) if bn is not None else y
            return apply_activation(y if r is None else y + r, act)
        return chain
    conv1, bn1, conv2, bn2 = (module._get(n) for n in ("conv1", "bn1", "conv2", "bn2"))
    if conv_only:
        return lambda x, r=None: conv2(conv1(x))

    def chain2(x, r=None):
        h = apply_activation(bn1(conv1(x)), act)
        y = bn2(conv2(h))
        return apply_activation(y if r is None else y + r, act)
    return chain2


class _ChainModule(nn.Module):
    """The eager ``conv -> bn [+ residual] -> act`` chain of a fused layer's original modules,
    as a module (so it can be copied, moved, compiled and exported like a model).

    ``conv_only``: the convolution(s) alone (the bench's ``conv-only`` provider)."""

    def __init__(self, module: nn.Module, conv_only: bool = False):
        super().__init__()
        self.inner = module
        self.conv_only = conv_only

    def forward(self, x, r=None):
        # Built per call from self.inner (cheap): a closure made once would keep pointing at the
        # original submodules after deepcopy()/.to().
        return _eager_chain(self.inner, self.conv_only)(x, r)
