"""Forward timings of the reference zoo: the baseline every fused kernel is measured against.

Each model runs in eval mode as the eager ``nn.Conv3d`` chain in channels_last_3d (the layout
cuDNN and oneDNN are fastest in for 3D convolutions), at its standard clip, batch 1 by default,
in each requested dtype. Rows carry MACs from :func:`videoconv.analysis.count_flops` so the
achieved TFLOP/s can be read against the device's peak.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Sequence

import torch

from .. import models as zoo
from ..analysis import count_flops, count_params
from .environment import environment
from .timing import time_callable

__all__ = ["ZooRow", "run_zoo_benchmark", "rows_to_markdown", "DTYPES"]

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
    speedup_vs_eager: float = 1.0


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
) -> Dict[str, object]:
    """Time each model's forward; returns ``{"environment": ..., "rows": [...]}``."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = list(models) if models else zoo.list_models()
    for dt in dtypes:
        if dt not in DTYPES:
            raise ValueError(f"unknown dtype {dt!r}; choose from {', '.join(DTYPES)}")
    env = environment(device)
    rows: List[ZooRow] = []
    for name in names:
        spec = zoo.get_model_spec(name)
        shape = _input(spec, batch, smoke)
        model = zoo.get_model(name).eval()
        params = count_params(model)
        macs = count_flops(model, shape).total_macs
        for dt in dtypes:
            if progress:
                progress(f"{name} {dt} {'x'.join(map(str, shape))}")
            m = model.to(device=device, dtype=DTYPES[dt], memory_format=torch.channels_last_3d)
            x = torch.randn(shape, device=device, dtype=DTYPES[dt]).contiguous(
                memory_format=torch.channels_last_3d
            )

            def forward():
                with torch.inference_mode():
                    return m(x)

            timing = time_callable(
                forward, device, min_run_time=0.05 if smoke else min_run_time, min_runs=1 if smoke else 5
            )
            rows.append(
                ZooRow(
                    provider="eager",
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
                )
            )
        del model, m, x
    return {"environment": env, "rows": [dataclasses.asdict(r) for r in rows]}


def rows_to_markdown(result: Dict[str, object]) -> str:
    env = result["environment"]
    lines = [
        f"Reference zoo, eager forward, channels_last_3d — {env['device']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, videoconv {env['videoconv']} "
        f"(rev {env['git_revision']}), {env['date']}; command: `{env['command']}`",
        "",
        "| model | input | dtype | params (M) | GMACs | median ms | p20–p80 ms | TFLOP/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['workload']} | {'x'.join(map(str, r['input_shape']))} | {r['dtype']} | "
            f"{r['params'] / 1e6:.2f} | {r['gmacs']:.2f} | {r['median_ms']:.1f} | "
            f"{r['p20_ms']:.1f}–{r['p80_ms']:.1f} | {r['tflops']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def save(result: Dict[str, object], json_path: Optional[str], markdown_path: Optional[str]) -> None:
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(rows_to_markdown(result))
