"""Forward timings of the reference zoo, per provider, in one run.

Each model runs in eval mode at its standard clip (batch 1 by default), channels_last_3d (the
layout cuDNN and oneDNN are fastest in for 3D convolutions), in each requested dtype, through
each provider: ``eager`` (the ``nn.Conv3d`` module chain: the baseline), ``conv-only`` (the
same model with its BatchNorms and activations removed: not the same function, a bound on
what epilogue fusion alone can win), ``videoconv``
(``videoconv.fuse(model)``), ``compile`` (inductor with freezing) and ``openvino`` (CPU, when
installed). Rows carry MACs from :func:`videoconv.analysis.count_flops`, so the achieved TFLOP/s
can be read against the device's peak, and the speedup over eager measured in the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from typing import Dict, List, Optional, Sequence

import torch

from .. import models as zoo
from ..analysis import count_flops, count_params
from .environment import environment
from .timing import time_callable

__all__ = ["ZooRow", "run_zoo_benchmark", "rows_to_markdown", "DTYPES", "PROVIDERS"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class ZooRow:
    provider: str
    workload: str
    input_shape: List[int]
    dtype: str
    device: str
    params: int
    gmacs: float
    median_ms: float
    p20_ms: float
    p80_ms: float
    tflops: float
    #: Seconds spent preparing the provider (fusing, compiling, converting) before timing.
    setup_s: float
    speedup_vs_eager: Optional[float] = None


# ---------------------------------------------------------------------------------------------
# Providers: each turns (eval model, clip) into a zero-argument forward, or says why it cannot.
# All providers of one workload are timed in the same run, so their ratios are comparable.


class ProviderUnavailable(RuntimeError):
    pass


def _eager(model, x):
    return lambda: model(x)


def _conv_only(model, x):
    # Not the same function: every BatchNorm3d and ReLU/SiLU replaced by nn.Identity, so only the
    # eager convolutions (and the rest of the network) remain. Its time is the floor for any
    # fusion that keeps eager's convolution kernels: eager / conv-only bounds what fusing the
    # epilogues can win on this model.
    import torch.nn as nn

    stripped = copy.deepcopy(model)
    for name, module in list(stripped.named_modules()):
        if isinstance(module, (nn.BatchNorm3d, nn.ReLU, nn.SiLU)) and name:
            parent, _, leaf = name.rpartition(".")
            setattr(stripped.get_submodule(parent) if parent else stripped, leaf, nn.Identity())
    return lambda: stripped(x)


def _videoconv(model, x):
    import videoconv

    fused = videoconv.fuse(model)
    return lambda: fused(x)


def _compile(model, x):
    # Inductor with freezing: constant-folds BN into the convolutions and, on CPU, prepacks
    # oneDNN weights, i.e. the strongest torch.compile baseline for inference.
    import torch._inductor.config as inductor_config

    # Every model/dtype recompiles shared block classes; past dynamo's recompile limit (8 per
    # code object) it silently runs eager, so each compiled provider starts from a clean cache.
    torch._dynamo.reset()
    compiled = torch.compile(model)

    def forward():
        with inductor_config.patch(freezing=True):
            return compiled(x)

    with torch.inference_mode():
        forward()  # compile outside the timed region, in the mode it is timed in
    return forward


def _openvino(model, x):
    if x.device.type != "cpu":
        raise ProviderUnavailable("OpenVINO runs on the CPU only")
    try:
        import openvino as ov
    except ImportError:
        raise ProviderUnavailable("openvino is not installed (pip install openvino)") from None
    hint = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[x.dtype]
    converted = ov.convert_model(model.float(), example_input=x.float())
    compiled = ov.Core().compile_model(
        converted,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        },
    )
    model.to(x.dtype)
    clip = x.float().numpy()  # OpenVINO takes float32 and computes in the hinted precision
    return lambda: compiled(clip)


PROVIDERS = {"eager": _eager, "conv-only": _conv_only, "videoconv": _videoconv,
             "compile": _compile, "openvino": _openvino}


def _input(spec, batch: int, smoke: bool):
    shape = spec.test_input_shape if smoke else spec.input_shape
    return (batch,) + tuple(shape)


def run_zoo_benchmark(
    models: Optional[Sequence[str]] = None,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    batch: int = 1,
    device: Optional[torch.device] = None,
    smoke: bool = False,
    min_run_time: float = 1.0,
    progress=None,
    providers: Sequence[str] = ("eager", "videoconv"),
) -> Dict[str, object]:
    """Time each model's forward per provider; returns ``{"environment", "rows", "skipped"}``."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = list(models) if models else zoo.list_models()
    for dt in dtypes:
        if dt not in DTYPES:
            raise ValueError(f"unknown dtype {dt!r}; choose from {', '.join(DTYPES)}")
    for provider in providers:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")
    if "eager" not in providers:
        providers = ("eager",) + tuple(providers)  # every speedup is relative to eager
    env = environment(device)
    rows: List[ZooRow] = []
    skipped: List[str] = []
    for name in names:
        spec = zoo.get_model_spec(name)
        shape = _input(spec, batch, smoke)
        reference = zoo.get_model(name).eval()
        params = count_params(reference)
        macs = count_flops(reference, shape).total_macs
        for dt in dtypes:
            x = torch.randn(shape, device=device, dtype=DTYPES[dt]).contiguous(
                memory_format=torch.channels_last_3d
            )
            eager_ms = None
            for provider in providers:
                if progress:
                    progress(f"{name} {dt} {'x'.join(map(str, shape))} {provider}")
                model = copy.deepcopy(reference).to(
                    device=device, dtype=DTYPES[dt], memory_format=torch.channels_last_3d
                )
                start = time.perf_counter()
                try:
                    # Outside inference_mode: fusing must not turn the parameters into
                    # inference tensors; the timed calls below run in inference_mode.
                    with torch.no_grad():
                        forward = PROVIDERS[provider](model, x)
                except ProviderUnavailable as exc:
                    skipped.append(f"{provider} on {name} {dt}: {exc}")
                    continue
                setup_s = time.perf_counter() - start

                def timed():
                    with torch.inference_mode():
                        return forward()

                timing = time_callable(
                    timed, device, min_run_time=0.05 if smoke else min_run_time, min_runs=1 if smoke else 5
                )
                if provider == "eager":
                    eager_ms = timing.median_ms
                rows.append(
                    ZooRow(
                        provider=provider,
                        workload=name,
                        input_shape=list(shape),
                        dtype=dt,
                        device=env["device"],
                        params=params,
                        gmacs=macs / 1e9,
                        median_ms=timing.median_ms,
                        p20_ms=timing.p20_ms,
                        p80_ms=timing.p80_ms,
                        tflops=2 * macs / (timing.median_ms * 1e-3) / 1e12,
                        setup_s=setup_s,
                        speedup_vs_eager=None if eager_ms is None else eager_ms / timing.median_ms,
                    )
                )
                del model, forward
    return {"environment": env, "rows": [dataclasses.asdict(r) for r in rows], "skipped": skipped}


def rows_to_markdown(result: Dict[str, object]) -> str:
    env = result["environment"]
    lines = [
        f"Reference zoo forward, batch as shown, channels_last_3d — {env['device']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, videoconv {env['videoconv']} "
        f"(rev {env['git_revision']}), {env['date']}; command: `{env['command']}`",
        "",
        "| model | input | dtype | provider | median ms | p20–p80 ms | TFLOP/s | vs eager | setup s |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        speedup = "—" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x"
        lines.append(
            f"| {r['workload']} | {'x'.join(map(str, r['input_shape']))} | {r['dtype']} | "
            f"{r['provider']} | {r['median_ms']:.1f} | {r['p20_ms']:.1f}–{r['p80_ms']:.1f} | "
            f"{r['tflops']:.3f} | {speedup} | {r['setup_s']:.1f} |"
        )
    for line in result.get("skipped", []):
        lines.append(f"\nnot run: {line}")
    return "\n".join(lines) + "\n"


def save(result: Dict[str, object], json_path: Optional[str], markdown_path: Optional[str],
         to_markdown=None) -> None:
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write((to_markdown or rows_to_markdown)(result))
