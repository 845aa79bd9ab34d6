"""``videoconv bench``: layers and whole models, every provider, one run.

Workloads are traced from the zoo (:func:`videoconv.bench.layers.trace_layers` for layers;
each model at its standard clip for models), never typed by hand. For each workload, dtype and
mode, every provider is timed in the same run, so the speedups in one row group are ratios taken
together (:mod:`videoconv.bench.providers` says what each provider and mode is): on a GPU back
to back, on a CPU in turns (:func:`videoconv.bench.timing.time_interleaved`: a shared machine's
speed drifts by tens of percent from minute to minute, and providers timed one after the other
would each get a different minute).

Per row: median and 20/80-percentile time, TFLOP/s, effective GB/s and % of the roofline of
this device (:mod:`videoconv.analysis.roofline`: datasheet peaks on known GPUs, a measured GEMM
and copy on a CPU), speedup vs ``eager``, and the peak memory one call allocates. The result
carries the device, the versions and the exact command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from .. import models as zoo
from . import providers as prov
from .environment import environment, onednn_bf16
from . import timing
from .timing import peak_memory_bytes, time_callable

__all__ = ["Row", "run_benchmark", "default_workloads", "DTYPES", "FULL_MODELS",
           "model_workload", "layer_workloads", "save"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: The models whose layers and end-to-end forward the suite covers (`--layers all`, `--models all`).
FULL_MODELS = ("r3d_18", "r2plus1d_18", "x3d_m", "slowfast_r50", "c3d")


def default_workloads(device: torch.device) -> Dict[str, object]:
    """What ``videoconv bench`` runs with no options: about ten minutes on the device present.

    CPU (2 cores here): the distinct layers of r3d_18 and r2plus1d_18 (33 workloads) and the
    whole r2plus1d_18, r3d_18 and x3d_s, in float32 and bfloat16, forward. On a GPU everything
    is ~100x faster, so the full set: the layers and models of :data:`FULL_MODELS`, bfloat16 and
    float16 (float32 convs are TF32 there, see ``videoconv.analysis.roofline.math_dtype``).

    On a CPU where oneDNN has no bfloat16 convolution (AVX2 only, e.g. AMD Zen 3), float32 only,
    with a ``note`` saying so: eager bfloat16 runs ATen's reference loops there (one r3d_18
    forward: minutes), which would stretch the run to hours and measure only that. ``--dtype
    float32,bfloat16`` runs it anyway."""
    if device.type == "cuda":
        return dict(layers=FULL_MODELS, models=FULL_MODELS, dtypes=("bfloat16", "float16", "float32"))
    cpu = dict(layers=("r3d_18", "r2plus1d_18"), models=("r2plus1d_18", "r3d_18", "x3d_s"),
               dtypes=("float32", "bfloat16"), note=None)
    if not onednn_bf16():
        cpu.update(dtypes=("float32",), note=(
            "bfloat16 left out of the default run: oneDNN has no bfloat16 convolution on this "
            f"CPU ({torch.backends.cpu.get_cpu_capability()}; it needs AVX512-BW/VL/DQ or "
            "AVX-NE-CONVERT), so eager bfloat16 runs ATen's reference loops, minutes per "
            "model; --dtype float32,bfloat16 runs it anyway"))
    return cpu


@dataclasses.dataclass
class Row:
    level: str  # "layer" or "model"
    provider: str
    workload: str
    model: str
    kind: str
    count: int
    mode: str
    input_shape: List[int]
    dtype: str
    device: str
    gmacs: float
    median_ms: float
    p20_ms: float
    p80_ms: float
    #: the roofline's FLOPs (useful MACs: zero-padding taps excluded) / measured time; gmacs is
    #: the conventional count (every tap), as in videoconv.analysis.flops
    tflops: float
    #: minimal bytes of the workload (fused, roofline model) / measured time
    gbs: Optional[float]
    #: the workload's roofline bound on this device (fused, minimal traffic) / measured time
    pct_of_roofline: Optional[float]
    #: roofline bound of the unfused chain / of the fused one: what fusion can win at most
    roofline_headroom: Optional[float]
    #: bytes allocated by one call above what was allocated before it (torch's allocator;
    #: None where the provider allocates elsewhere, e.g. OpenVINO)
    peak_mem_mb: Optional[float]
    setup_s: float
    #: eager's time over this provider's. Timed in turns (CPU): the median over rounds of the
    #: two blocks' ratio in each round (bench/timing.py, paired_speedup); back to back (GPU): the
    #: ratio of the two medians
    speedup_vs_eager: Optional[float] = None
    #: in turns only: [low, high], the 95% confidence interval of that median (distribution-free,
    #: bench/timing.py, median_interval); None for eager itself and back-to-back timing
    speedup_ci: Optional[List[float]] = None
    #: eager / conv-only of this workload (when conv-only ran): the most epilogue fusion can win
    fusion_bound: Optional[float] = None


# ---------------------------------------------------------------------------------------------
# workloads


def layer_workloads(model: str, smoke: bool = False, batch: int = 1,
                    max_layers: Optional[int] = None) -> List[prov.Workload]:
    from .layers import _ChainModule, trace_layers

    spec = zoo.get_model_spec(model)
    out = []
    traced = trace_layers(model, spec.test_input_shape if smoke else None, batch)
    for wl in traced[:max_layers]:
        shapes = [tuple(wl.input_shape)] + ([tuple(wl.output_shape)] if wl.residual else [])
        out.append(prov.Workload(level="layer", label=wl.label, model=model, kind=wl.kind,
                                 count=wl.count, input_shapes=shapes, macs=wl.macs,
                                 eager=_ChainModule(wl.module).eval(), layers=[(wl, 1)],
                                 fused=wl.module))
    return out


def model_workload(model: str, smoke: bool = False, batch: int = 1) -> prov.Workload:
    from ..analysis import count_flops
    from .layers import trace_layers

    spec = zoo.get_model_spec(model)
    shape = (batch,) + tuple(spec.test_input_shape if smoke else spec.input_shape)
    torch.manual_seed(0)
    reference = zoo.get_model(model).eval()
    # the fused layers of the model, for its roofline (other ops, pooling and the head, are
    # not counted: the bound is that of its convolution layers)
    layers = [(wl, wl.count) for wl in trace_layers(model, shape[1:], batch)]
    return prov.Workload(level="model", label=f"{model} @{'x'.join(map(str, shape))}", model=model,
                         kind="model", count=1, input_shapes=[shape],
                         macs=count_flops(reference, shape).total_macs, eager=reference, layers=layers)


# ---------------------------------------------------------------------------------------------
# the roofline of a workload


def _roofline(wl: prov.Workload, dt: str, mode: str, limits, device):
    """(minimal bytes, bound seconds fused, bound seconds unfused, FLOPs) of ``wl`` in ``mode``.

    FLOPs are the roofline's: the convolutions' useful MACs (zero-padding taps excluded, see
    videoconv.analysis.roofline), plus, for a whole model, its MACs outside the traced conv
    layers (the classifier) at the conventional count."""
    from ..analysis import roofline

    if not wl.layers:
        return None
    math_dt = roofline.math_dtype(dt, device)
    factor = roofline.MODE_FACTOR[mode]
    nbytes = fused = unfused = 0.0
    useful = traced = 0
    for layer, count in wl.layers:
        cost = roofline.layer_cost(layer, dt)
        bounds = roofline.roofline_time(cost, limits, math_dt)
        nbytes += count * cost.bytes_fused
        fused += count * bounds.fused_s
        unfused += count * bounds.unfused_s
        useful += count * cost.useful_macs
        traced += count * cost.macs
    flops = 2 * (useful + max(0, wl.macs - traced))
    return factor * nbytes, factor * fused, factor * unfused, factor * flops


# ---------------------------------------------------------------------------------------------
# the run


class _Progress:
    """A tqdm bar on a terminal; one line per step otherwise (CI logs); nothing when quiet."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def step(self, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(message[:70])
        elif self.enabled:
            print(f"  timing {message} ...", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_benchmark(
    layers: Sequence[str] = (),
    models: Sequence[str] = (),
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    modes: Sequence[str] = ("fwd",),
    providers: Optional[Sequence[str]] = None,
    batch: int = 1,
    device: Optional[torch.device] = None,
    smoke: bool = False,
    min_run_time: float = 0.5,
    max_layers: Optional[int] = None,
    progress: bool = True,
    measure_memory: bool = True,
    rounds: int = 10,
) -> Dict[str, object]:
    """Time ``providers`` on the layers of ``layers`` and on the whole ``models``.

    On a CPU each workload's providers run in ``rounds`` rounds of turns (at least 2); more
    rounds narrow the speedups' confidence intervals (a workload then takes at least ``rounds``
    calls of every provider, whatever ``min_run_time`` says).

    Returns ``{"environment", "rows", "skipped"}`` (rows as dicts of :class:`Row`)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for dt in dtypes:
        if dt not in DTYPES:
            raise ValueError(f"unknown dtype {dt!r}; choose from {', '.join(DTYPES)}")
    for mode in modes:
        if mode not in prov.MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(prov.MODES)}")
    for name in tuple(layers) + tuple(models):
        zoo.get_model_spec(name)  # unknown names fail before any timing
    providers = tuple(providers) if providers else prov.default_providers(device)
    for p in providers:
        prov.check_provider(p)
    if "eager" not in providers:
        providers = ("eager",) + providers  # every speedup is relative to eager
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if rounds < 2:
        raise ValueError(f"rounds must be at least 2 (a speedup is paired round by round), got {rounds}")
    if smoke:
        rounds = 2  # a smoke run proves the path, it measures nothing
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the eager baseline at its best: cuDNN autotuned

    from ..analysis import roofline

    env = environment(device)
    env["host_allocator"] = timing.pin_host_allocator()
    limits = roofline.device_spec(device)  # datasheet on known GPUs; measured on a CPU
    env["roofline"] = limits.to_dict()
    env["modes"] = list(modes)
    env["timing"] = (f"in turns ({rounds} rounds, in each every provider's block of calls: "
                     "bench/timing.py, time_interleaved)" if device.type == "cpu"
                     else "back to back")
    env["rounds"] = rounds if device.type == "cpu" else None

    workloads: List[prov.Workload] = []
    for name in layers:
        workloads += layer_workloads(name, smoke, batch, max_layers)
    for name in models:
        workloads.append(model_workload(name, smoke, batch))

    bar = _Progress(len(workloads) * len(dtypes) * len(modes) * len(providers), progress)
    rows: List[Row] = []
    skipped: List[str] = []
    try:
        for wl in workloads:
            for dt in dtypes:
                for mode in modes:
                    rows += _time_group(wl, dt, mode, providers, device, env, limits, smoke,
                                        min_run_time, bar, skipped, measure_memory, rounds)
    finally:
        bar.close()
    # Every row carries what it was measured with, so a row copied out of the file still says so.
    stamp = {k: env.get(k) for k in ("torch", "triton", "cuda", "cudnn", "git_revision", "command", "date")}
    return {"environment": env, "rows": [dict(dataclasses.asdict(r), **stamp) for r in rows],
            "skipped": skipped}


def _time_group(wl, dt, mode, providers, device, env, limits, smoke, min_run_time, bar,
                skipped, measure_memory, rounds=10) -> List[Row]:
    """Every provider on one (workload, dtype, mode): on a GPU back to back, on a CPU prepared
    first and then timed in turns (:func:`videoconv.bench.timing.time_interleaved`)."""
    from ..analysis import roofline

    dtype = DTYPES[dt]
    bound = _roofline(wl, dt, mode, limits, device)
    flops = roofline.MODE_FACTOR[mode] * 2 * wl.macs if bound is None else bound[3]
    interleave = device.type == "cpu"
    runs_min = 1 if smoke else 5
    run_time = 0.02 if smoke else min_run_time
    ready: Dict[str, tuple] = {}  # provider -> (prepared, fn, setup seconds)
    timings: Dict[str, timing.Timing] = {}
    for p in providers:
        bar.step(f"{wl.label} {dt} {mode} {p}" + (" (set-up)" if interleave else ""))
        start = time.perf_counter()
        try:
            prepared = prov.prepare(p, wl, dtype, device, mode)
            fn = prov.runner(prepared, mode, wl.level)
            fn()  # first call outside the measurement: compile, oneDNN primitives, weight packing
        except prov.ProviderUnavailable as exc:
            skipped.append(f"{p} on {wl.label} {dt} {mode}: {exc}")
            bar.done()
            continue
        except Exception as exc:  # a provider that fails is reported, not fatal to the run
            skipped.append(f"{p} on {wl.label} {dt} {mode}: {type(exc).__name__}: {exc}")
            bar.done()
            continue
        ready[p] = (prepared, fn, time.perf_counter() - start)
        if not interleave:
            timings[p] = time_callable(fn, device, min_run_time=run_time, min_runs=runs_min)
    if interleave and ready:
        bar.step(f"{wl.label} {dt} {mode}: {len(ready)} providers in turns")
        timings = timing.time_interleaved({p: r[1] for p, r in ready.items()},
                                          min_run_time=run_time, min_runs=runs_min,
                                          rounds=rounds)
    rows: List[Row] = []
    eager = timings.get("eager")

    def speedup(t: timing.Timing, base: Optional[timing.Timing] = eager):
        """(base / t, its confidence interval or None): paired when timed in turns."""
        if base is None:
            return None, None
        paired = timing.paired_speedup(base, t) if t is not base else None
        if paired is None:
            return base.median_ms / t.median_ms, None
        return paired[0], [paired[1], paired[2]]

    for p, (prepared, fn, setup_s) in ready.items():
        t = timings[p]
        peak = None
        if measure_memory and p != "openvino":
            peak = peak_memory_bytes(fn, device) / 2**20
        seconds = t.median_ms * 1e-3
        ratio, ci = speedup(t)
        rows.append(Row(
            level=wl.level, provider=p, workload=wl.label, model=wl.model, kind=wl.kind,
            count=wl.count, mode=mode, input_shape=list(wl.input_shapes[0]), dtype=dt,
            device=env["device"], gmacs=wl.macs / 1e9, median_ms=t.median_ms, p20_ms=t.p20_ms,
            p80_ms=t.p80_ms, tflops=flops / seconds / 1e12,
            gbs=None if bound is None else bound[0] / seconds / 1e9,
            pct_of_roofline=None if bound is None else 100.0 * bound[1] / seconds,
            roofline_headroom=None if bound is None else bound[2] / bound[1],
            peak_mem_mb=peak, setup_s=setup_s,
            speedup_vs_eager=ratio, speedup_ci=ci,
        ))
        bar.done()
    ready.clear()
    if eager is not None and "conv-only" in timings:
        bound = speedup(timings["conv-only"])[0]
        for row in rows:
            row.fusion_bound = bound
    return rows


def save(result: Dict[str, object], json_path: Optional[str] = None,
         markdown_path: Optional[str] = None, plot_prefix: Optional[str] = None) -> List[str]:
    """Write the JSON, the Markdown report and the plots; returns the paths written."""
    from .report import to_markdown

    written = []
    for path in (json_path, markdown_path, plot_prefix):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        written.append(json_path)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(to_markdown(result))
        written.append(markdown_path)
    if plot_prefix:
        from .plots import plot_result

        written += plot_result(result, plot_prefix)
    return written
