"""Per-layer timings: every distinct fused layer of a zoo model, traced from the model itself.

Workloads are not typed by hand: :func:`trace_layers` fuses the model
(:func:`videoconv.fuse`), runs its standard clip once with hooks on the fused modules, and
records each fused module's input size, its convolutions and activation. Layers with the same
signature (shapes, conv parameters, activation, residual) are one workload with a ``count``.

Each workload is timed, in one run, through these providers, all built from the *same*
original modules (eval mode, channels_last_3d):

* ``eager``: the module chain ``conv -> bn [+ residual] -> act`` (the baseline);
* ``conv-only``: the eager convolution(s) alone, without BatchNorm or activation. It is the
  floor for any fusion that keeps the backend's convolution kernel: ``eager / conv-only`` is
  the most that fusing the epilogue can win (the report calls it ``fusion_bound``);
* ``videoconv``: the fused module (whichever backend the op selects here);
* ``compile``: ``torch.compile`` of the eager chain with freezing (inductor folds BN into the
  conv and, on CPU, fuses the activation into oneDNN, i.e. the strongest compiler baseline).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import models as zoo
from .environment import environment
from .timing import time_callable

__all__ = ["LayerWorkload", "LayerRow", "trace_layers", "run_layer_benchmark", "layer_rows_to_markdown",
           "LAYER_PROVIDERS", "DEFAULT_LAYER_MODELS"]

#: The models the issue's per-layer goals are stated for.
DEFAULT_LAYER_MODELS = ("r3d_18", "r2plus1d_18", "x3d_s")
LAYER_PROVIDERS = ("eager", "conv-only", "videoconv", "compile")


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
    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module
        self._chain = _eager_chain(module, conv_only=False)

    def forward(self, x, r=None):
        return self._chain(x, r)


def _provider(name: str, module: nn.Module, x, r):
    if name == "eager":
        f = _eager_chain(module, conv_only=False)
        return lambda: f(x, r)
    if name == "conv-only":
        f = _eager_chain(module, conv_only=True)
        return lambda: f(x, r)
    if name == "videoconv":
        return lambda: module(x, r)
    if name == "compile":
        import torch._inductor.config as inductor_config

        # every layer recompiles _ChainModule.forward: without a reset dynamo stops compiling
        # after its recompile limit (8) and silently runs eager
        torch._dynamo.reset()
        compiled = torch.compile(_ChainModule(module))

        def forward():
            with inductor_config.patch(freezing=True):
                return compiled(x, r)

        with torch.inference_mode():
            forward()
        return forward
    raise ValueError(f"unknown layer provider {name!r}; choose from {', '.join(LAYER_PROVIDERS)}")


@dataclasses.dataclass
class LayerRow:
    provider: str
    workload: str
    model: str
    kind: str
    count: int
    input_shape: List[int]
    dtype: str
    device: str
    gmacs: float
    median_ms: float
    p20_ms: float
    p80_ms: float
    tflops: float
    setup_s: float
    speedup_vs_eager: Optional[float] = None
    #: eager / conv-only of this workload: the most an epilogue fusion can win here.
    fusion_bound: Optional[float] = None
    #: Bytes per second this provider moved, counting the minimal bytes of its variant
    #: (unfused chain for eager, fused layer for videoconv; videoconv.analysis.roofline).
    gbs: Optional[float] = None
    #: The roofline bound of its variant on this device over the measured time, in percent.
    pct_of_roofline: Optional[float] = None
    #: Roofline bound of the unfused chain / of the fused layer: what fusion can win at most on
    #: an ideal machine of this device's peak and bandwidth.
    roofline_headroom: Optional[float] = None


def run_layer_benchmark(
    models: Sequence[str] = DEFAULT_LAYER_MODELS,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    providers: Sequence[str] = LAYER_PROVIDERS,
    batch: int = 1,
    device: Optional[torch.device] = None,
    smoke: bool = False,
    min_run_time: float = 0.5,
    progress=None,
    max_layers: Optional[int] = None,
) -> Dict[str, object]:
    """Time every distinct fused layer of ``models``; returns ``{"environment", "rows", "skipped"}``."""
    from .zoo import DTYPES

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    providers = tuple(providers)
    for p in providers:
        if p not in LAYER_PROVIDERS:
            raise ValueError(f"unknown layer provider {p!r}; choose from {', '.join(LAYER_PROVIDERS)}")
    if "eager" not in providers:
        providers = ("eager",) + providers
    env = environment(device)
    from ..analysis import roofline

    device_limits = roofline.device_spec(device)  # datasheet on known GPUs; measured on a CPU
    env["roofline"] = device_limits.to_dict()
    rows: List[LayerRow] = []
    skipped: List[str] = []
    for model_name in models:
        spec = zoo.get_model_spec(model_name)
        workloads = trace_layers(model_name, spec.test_input_shape if smoke else None, batch)
        if max_layers is not None:
            workloads = workloads[:max_layers]
        for wl in workloads:
            for dt in dtypes:
                dtype = DTYPES[dt]
                module = copy.deepcopy(wl.module).to(device=device, dtype=dtype,
                                                     memory_format=torch.channels_last_3d).eval()
                x = torch.randn(wl.input_shape, device=device, dtype=dtype).contiguous(
                    memory_format=torch.channels_last_3d)
                r = (torch.randn(wl.output_shape, device=device, dtype=dtype).contiguous(
                    memory_format=torch.channels_last_3d) if wl.residual else None)
                times: Dict[str, float] = {}
                math = roofline.math_dtype(dt, device)
                cost = roofline.layer_cost(wl, dt)
                headroom = roofline.roofline_time(cost, device_limits, math).fusion_headroom
                for p in providers:
                    if progress:
                        progress(f"{wl.label} {dt} {p}")
                    start = time.perf_counter()
                    try:
                        with torch.no_grad():
                            fn = _provider(p, module, x, r)
                    except Exception as exc:  # a provider that cannot build is reported, not fatal
                        skipped.append(f"{p} on {wl.label} {dt}: {type(exc).__name__}: {exc}")
                        continue
                    setup_s = time.perf_counter() - start

                    def timed():
                        with torch.inference_mode():
                            return fn()

                    t = time_callable(timed, device, min_run_time=0.02 if smoke else min_run_time,
                                      min_runs=1 if smoke else 5)
                    times[p] = t.median_ms
                    got = (None if p not in ("eager", "videoconv") else
                           roofline.achieved(cost, t.median_ms, device_limits, math,
                                             fused=p == "videoconv"))
                    rows.append(LayerRow(
                        provider=p, workload=wl.label, model=model_name, kind=wl.kind,
                        count=wl.count, input_shape=list(wl.input_shape), dtype=dt,
                        device=env["device"], gmacs=wl.macs / 1e9, median_ms=t.median_ms,
                        p20_ms=t.p20_ms, p80_ms=t.p80_ms,
                        tflops=2 * wl.macs / (t.median_ms * 1e-3) / 1e12, setup_s=setup_s,
                        speedup_vs_eager=times["eager"] / t.median_ms if "eager" in times else None,
                        gbs=None if got is None else got.gbs,
                        pct_of_roofline=None if got is None else got.pct_of_roofline,
                        roofline_headroom=headroom,
                    ))
                bound = (times["eager"] / times["conv-only"]
                         if "eager" in times and "conv-only" in times else None)
                for row in rows:
                    if row.workload == wl.label and row.dtype == dt:
                        row.fusion_bound = bound
    return {"environment": env, "rows": [dataclasses.asdict(r) for r in rows], "skipped": skipped}


def _geomean(values: List[float]) -> float:
    import math

    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def layer_rows_to_markdown(result: Dict[str, object]) -> str:
    env = result["environment"]
    rows = result["rows"]
    # conv-only is shown as the fusion bound (eager / conv-only), not as a provider column
    shown = [p for p in LAYER_PROVIDERS if p not in ("eager", "conv-only")
             and any(r["provider"] == p for r in rows)]
    lines = [
        f"Per-layer forward, traced from the zoo, channels_last_3d — {env['device']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, videoconv {env['videoconv']} "
        f"(rev {env['git_revision']}), {env['date']}; command: `{env['command']}`",
        "",
        "Times in ms, speedups vs `eager` (conv -> BN [+res] -> act modules) in the same run; "
        "x = how many times the layer occurs in the model. `fusion bound` = eager / conv-only "
        "(the eager convolution alone): what removing BatchNorm and the activation entirely "
        "would win with eager's convolution; a fused path can only beat it with a faster "
        "convolution (prepacked weights, another kernel).",
        "",
        "`% roofline` = the roofline bound of the fused layer on this device over videoconv's "
        "time; the peak and bandwidth are in the JSON's environment (datasheet on known GPUs; on "
        "a CPU measured once with a GEMM and a copy, a practical ceiling that a well-blocked "
        "convolution can exceed, hence values over 100%). `ideal headroom` = "
        "roofline bound of the unfused chain / of the fused layer: what fusion could win at "
        "most on an ideal machine with this device's peak and bandwidth.",
        "",
        "| layer | x | dtype | eager | " + " | ".join(shown) + " | fusion bound | % roofline "
        "| ideal headroom |",
        "| --- | ---: | --- | ---: | " + " | ".join("---:" for _ in shown) + " | ---: | ---: | ---: |",
    ]
    keys = []
    for r in rows:
        k = (r["workload"], r["dtype"])
        if k not in keys:
            keys.append(k)
    summary: Dict[Tuple[str, str, str], List[float]] = {}
    for wl, dt in keys:
        group = {r["provider"]: r for r in rows if r["workload"] == wl and r["dtype"] == dt}
        eager = group.get("eager")
        if eager is None:
            continue
        cells = []
        for p in shown:
            r = group.get(p)
            if r is None:
                cells.append("—")
            else:
                cells.append(f"{r['median_ms']:.2f} ({r['speedup_vs_eager']:.2f}x)")
                summary.setdefault((eager["model"], dt, p), []).append(r["speedup_vs_eager"])
                # time-weighted: the model's share of this layer (count x eager time)
                summary.setdefault((eager["model"], dt, p + "@time"), []).append(
                    (eager["count"] * eager["median_ms"], eager["count"] * r["median_ms"]))
        bound = eager.get("fusion_bound")
        if bound:
            summary.setdefault((eager["model"], dt, "fusion bound"), []).append(bound)
        fused = group.get("videoconv")
        pct = fused.get("pct_of_roofline") if fused else None
        ideal = eager.get("roofline_headroom")
        lines.append(f"| {wl.replace('|', '/')} | {eager['count']} | {dt} | {eager['median_ms']:.2f} | "
                     + " | ".join(cells) + f" | {'—' if not bound else f'{bound:.2f}x'} | "
                     + ("—" if pct is None else f"{pct:.0f}%") + " | "
                     + ("—" if ideal is None else f"{ideal:.2f}x") + " |")
    lines += ["", "Per model: geometric mean of the per-layer speedups, and the speedup of the "
              "sum of all layer times (each layer counted as often as it occurs):", "",
              "| model | dtype | " + " | ".join(f"{p} (geomean)" for p in shown)
              + " | " + " | ".join(f"{p} (sum of layers)" for p in shown) + " | fusion bound (geomean) |",
              "| --- | --- | " + " | ".join("---:" for _ in shown * 2) + " | ---: |"]
    for model, dt in sorted({(m, d) for (m, d, _) in summary}):
        geo = [summary.get((model, dt, p)) for p in shown]
        tot = []
        for p in shown:
            pairs = summary.get((model, dt, p + "@time"))
            tot.append(None if not pairs else sum(a for a, _ in pairs) / sum(b for _, b in pairs))
        bound = summary.get((model, dt, "fusion bound"))
        lines.append(f"| {model} | {dt} | "
                     + " | ".join("—" if not c else f"{_geomean(c):.2f}x" for c in geo) + " | "
                     + " | ".join("—" if t is None else f"{t:.2f}x" for t in tot) + " | "
                     + ("—" if not bound else f"{_geomean(bound):.2f}x") + " |")
    for line in result.get("skipped", []):
        lines.append(f"\nnot run: {line}")
    return "\n".join(lines) + "\n"
