"""Providers: the implementations a benchmark puts side by side, and the modes it times them in.

A *workload* is either one distinct fused layer of a zoo model (``level="layer"``, traced by
:func:`videoconv.bench.layers.trace_layers`) or a whole zoo model (``level="model"``). Every
provider is built from the same float32 original modules, then moved to the device, dtype and
layout of the run, so the only difference between two rows of one workload is the provider:

============================  ==================================================================
``eager``                     the ``nn.Conv3d -> BatchNorm3d [+ residual] -> act`` module chain
                              in channels_last_3d (cuDNN on GPU with ``cudnn.benchmark``, oneDNN
                              on CPU): the baseline every speedup is relative to
``eager-ncdhw``               the same chain in the contiguous NCDHW layout
``conv-only``                 the eager convolutions alone, BatchNorm and activation removed: not
                              the same function; ``eager / conv-only`` bounds what fusing the
                              epilogue can win while keeping eager's convolution kernel
``videoconv``                 the fused modules (:func:`videoconv.fuse`), automatic backend choice
``videoconv-<backend>``       the fused modules forced onto one backend (``cpu``, ``triton``,
                              ``cuda``, ``reference``); unavailable ones are skipped with their
                              reasons (:func:`videoconv.backends.available`)
``compile``                   ``torch.compile`` of the eager chain; in ``fwd`` mode with inductor's
                              freezing (folds BN into the conv, prepacks oneDNN weights on CPU)
``compile-max-autotune``      the same with ``mode="max-autotune"`` (long compile; on request)
``openvino``                  OpenVINO's CPU plugin on the converted model (``fwd`` only; needs the
                              optional ``openvino`` package)
============================  ==================================================================

Modes (``--mode``):

* ``fwd``: eval mode (BatchNorm with running statistics) under ``torch.inference_mode``;
* ``bwd``: train mode (BatchNorm with batch statistics); the forward runs once outside the timed
  region and the timed call is ``torch.autograd.grad`` of the output w.r.t. every parameter (and,
  for a layer, its input and residual, which a layer inside a network must produce) with
  ``retain_graph=True``;
* ``train``: train mode; the timed call is a whole step: forward, backward, SGD step.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["MODES", "BASE_PROVIDERS", "ProviderUnavailable", "Workload", "Prepared", "prepare",
           "runner", "provider_names", "default_providers", "check_provider"]

MODES = ("fwd", "bwd", "train")
BASE_PROVIDERS = ("eager", "eager-ncdhw", "conv-only", "videoconv", "compile",
                  "compile-max-autotune", "openvino")


class ProviderUnavailable(RuntimeError):
    """A provider that cannot run this workload here (reported as a skipped row, not an error)."""


@dataclasses.dataclass
class Workload:
    """One thing to time: a traced layer or a whole model."""

    level: str  # "layer" or "model"
    label: str
    model: str
    kind: str  # "conv3d_bn_act", "conv2plus1d_bn_act" or "model"
    count: int  # times the layer occurs in its model (1 for a model)
    input_shapes: List[Tuple[int, ...]]  # the forward's tensor arguments (x, and a residual)
    macs: int
    #: float32, eval: the unfused module chain (a zoo model, or a layer's conv/BN/act chain)
    eager: nn.Module = dataclasses.field(repr=False)
    #: the layers whose roofline costs add up to this workload: [(LayerWorkload, count)]
    layers: list = dataclasses.field(repr=False, default_factory=list)
    #: a layer's fused module (float32); a model is fused per provider
    fused: Optional[nn.Module] = dataclasses.field(repr=False, default=None)


def provider_names() -> Tuple[str, ...]:
    from .. import backends

    return BASE_PROVIDERS + tuple(f"videoconv-{b.name}" for b in backends.PRIORITY)


def check_provider(name: str) -> None:
    if name not in provider_names():
        raise ValueError(f"unknown provider {name!r}; choose from {', '.join(provider_names())}")


def default_providers(device: torch.device) -> Tuple[str, ...]:
    """eager, eager-ncdhw, compile, videoconv-<b> for every backend that can run here, and on CPU
    openvino when it is installed."""
    from .. import backends

    runnable = [name for name, reasons in backends.available().items() if not reasons]
    names = ["eager", "eager-ncdhw", "compile"] + [f"videoconv-{b}" for b in runnable]
    if device.type == "cpu":
        try:
            import openvino  # noqa: F401

            names.append("openvino")
        except ImportError:
            pass
    return tuple(names)


@dataclasses.dataclass
class Prepared:
    """A provider built for one workload, dtype and device, before the mode is applied."""

    module: Callable  # called with the inputs
    inputs: Tuple[torch.Tensor, ...]  # (x,) or (x, residual); None residuals are dropped
    parameters: List[torch.Tensor]
    #: a context entered around each forward (inductor's freezing for compile in fwd mode)
    context: Optional[Callable] = None
    #: the module exposes .train()/.eval() (OpenVINO's compiled model does not)
    trainable: bool = True


# ---------------------------------------------------------------------------------------------
# building each provider


def _to(module: nn.Module, device, dtype, layout) -> nn.Module:
    return copy.deepcopy(module).to(device=device, dtype=dtype, memory_format=layout)


def _strip_epilogues(module: nn.Module) -> nn.Module:
    """A copy with every BatchNorm3d and ReLU/SiLU replaced by nn.Identity (conv-only)."""
    from .layers import _ChainModule

    stripped = copy.deepcopy(module)
    if isinstance(stripped, _ChainModule):
        stripped.conv_only = True
        return stripped
    for name, child in list(stripped.named_modules()):
        if isinstance(child, (nn.BatchNorm3d, nn.ReLU, nn.SiLU)) and name:
            parent, _, leaf = name.rpartition(".")
            setattr(stripped.get_submodule(parent) if parent else stripped, leaf, nn.Identity())
    return stripped


def _videoconv(wl: Workload, backend: Optional[str], device, dtype, layout) -> nn.Module:
    import videoconv
    from .. import backends

    if backend is not None:
        backends.get_backend(backend)  # unknown name: a clear error
        reasons = backends.available().get(backend, [])
        if reasons:
            raise ProviderUnavailable(f"backend {backend!r} cannot run here: " + "; ".join(reasons))
    if wl.level == "layer":
        module = _to(wl.fused, device, dtype, layout)
        module.backend = backend
        return module
    return videoconv.fuse(_to(wl.eager, device, dtype, layout), backend=backend)


def openvino_compiled(module: nn.Module, inputs, dtype, **config):
    """OpenVINO's CPU plugin on ``module`` traced at ``inputs``, computing in ``dtype``'s
    precision with latency hints and torch's thread count; ``config`` adds plugin properties
    (e.g. ``PERF_COUNT=True``). Returns the compiled model; it takes float32 arrays."""
    import openvino as ov

    hint = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[dtype]
    example = tuple(t.float() for t in inputs)
    # OpenVINO traces the model with torch.jit.trace; the zoo's input checks (Python ifs on
    # shapes) make it warn once per check that the trace fixes the shape. The benchmark traces
    # for one fixed shape, so the warning says nothing here and would bury the progress lines.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(copy.deepcopy(module).float().eval(),
                                     example_input=example[0] if len(example) == 1 else example)
    return ov.Core().compile_model(converted, "CPU", {
        "INFERENCE_PRECISION_HINT": hint,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        **config,
    })


def _openvino(module: nn.Module, inputs, dtype, mode: str):
    if mode != "fwd":
        raise ProviderUnavailable(f"OpenVINO is an inference runtime: no {mode} mode")
    if inputs[0].device.type != "cpu":
        raise ProviderUnavailable("OpenVINO runs on the CPU only")
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise ProviderUnavailable("openvino is not installed (pip install openvino)") from None
    compiled = openvino_compiled(module, inputs, dtype)
    # OpenVINO takes float32 and computes in the hinted precision.
    arrays = [t.float().numpy() for t in inputs]
    return lambda *_: compiled(arrays)


def prepare(provider: str, wl: Workload, dtype: torch.dtype, device: torch.device,
            mode: str) -> Prepared:
    """Build ``provider`` for ``wl`` in ``dtype`` on ``device``; raises ProviderUnavailable."""
    check_provider(provider)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    layout = torch.contiguous_format if provider == "eager-ncdhw" else torch.channels_last_3d
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(
        torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=layout)
        for shape in wl.input_shapes)
    context = None
    trainable = True
    if provider in ("eager", "eager-ncdhw"):
        module = _to(wl.eager, device, dtype, layout)
    elif provider == "conv-only":
        module = _strip_epilogues(_to(wl.eager, device, dtype, layout))
    elif provider == "videoconv" or provider.startswith("videoconv-"):
        backend = None if provider == "videoconv" else provider[len("videoconv-"):]
        module = _videoconv(wl, backend, device, dtype, layout)
    elif provider in ("compile", "compile-max-autotune"):
        import torch._inductor.config as inductor_config

        # Every workload recompiles shared forwards (one block class, many shapes): past dynamo's
        # recompile limit it would silently run eager, so each compiled provider starts clean.
        torch._dynamo.reset()
        base = _to(wl.eager, device, dtype, layout)
        compiled = torch.compile(base, mode="max-autotune" if provider.endswith("autotune") else None)
        if mode == "fwd":
            context = lambda: inductor_config.patch(freezing=True)  # noqa: E731  (inference only)
        module = _CompiledHandle(compiled, base)
    elif provider == "openvino":
        module = _openvino(_to(wl.eager, torch.device("cpu"), torch.float32, layout), inputs, dtype, mode)
        trainable = False
    else:  # pragma: no cover - check_provider covers it
        raise AssertionError(provider)
    params = [p for p in module.parameters()] if trainable else []
    return Prepared(module=module, inputs=inputs, parameters=params, context=context, trainable=trainable)


class _CompiledHandle:
    """A compiled module with the original's train()/eval()/parameters()."""

    def __init__(self, compiled, base: nn.Module):
        self.compiled, self.base = compiled, base

    def __call__(self, *args):
        return self.compiled(*args)

    def parameters(self):
        return self.base.parameters()

    def train(self, mode: bool = True):
        self.base.train(mode)
        return self

    def eval(self):
        return self.train(False)


# ---------------------------------------------------------------------------------------------
# the timed call of each mode


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _grad_like(out: torch.Tensor) -> torch.Tensor:
    # From a fixed CPU generator in float32, then cast: every provider and dtype of a workload
    # gets the same output gradient (randn_like would draw different values per dtype).
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return g.to(device=out.device, dtype=out.dtype).contiguous(memory_format=_layout_of(out))


def _layout_of(t: torch.Tensor):
    return torch.channels_last_3d if t.dim() == 5 and t.is_contiguous(
        memory_format=torch.channels_last_3d) and not t.is_contiguous() else torch.contiguous_format


def runner(prepared: Prepared, mode: str, level: str) -> Callable[[], object]:
    """The zero-argument call that is timed (see the module docstring for what each mode times).

    Called once here for ``bwd``/``train`` to build the graph; the caller makes the first timed
    call (compile, primitive creation) outside the measurement."""
    import contextlib

    module, inputs = prepared.module, prepared.inputs
    ctx = prepared.context or contextlib.nullcontext
    if mode == "fwd":
        if prepared.trainable:
            module.eval()

        def forward():
            with torch.inference_mode(), ctx():
                return module(*inputs)
        return forward

    module.train()
    # A layer inside a network must return the gradient of its input (and residual); a whole
    # model need not differentiate its input clip.
    if level == "layer":
        inputs = tuple(t.detach().requires_grad_(True) for t in inputs)
    targets = [p for p in prepared.parameters if p.requires_grad] + [t for t in inputs if t.requires_grad]
    if mode == "bwd":
        out = _first_tensor(module(*inputs))
        grad_out = _grad_like(out)

        def backward():
            return torch.autograd.grad(out, targets, grad_out, retain_graph=True)
        return backward

    optimizer = torch.optim.SGD([p for p in prepared.parameters if p.requires_grad], lr=1e-4,
                                momentum=0.9)
    grad_holder: List[torch.Tensor] = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = _first_tensor(module(*inputs))
        if not grad_holder:
            grad_holder.append(_grad_like(out))
        out.backward(grad_holder[0])
        optimizer.step()
        return out
    return step
