"""The Markdown report of a ``videoconv bench`` result (what the README and results/ show)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["to_markdown", "provider_order", "best_fused", "geomean"]

_ORDER = ("eager", "eager-ncdhw", "conv-only", "compile", "compile-max-autotune", "openvino",
          "videoconv")


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def provider_order(rows: Sequence[Dict[str, object]]) -> List[str]:
    """Providers present in ``rows``: baselines first, then videoconv and its backends."""
    present = list(dict.fromkeys(r["provider"] for r in rows))
    known = [p for p in _ORDER if p in present]
    return known + sorted(p for p in present if p not in known)


def best_fused(group: Dict[str, Dict[str, object]]) -> Optional[Dict[str, object]]:
    """The fastest videoconv row of one (workload, dtype, mode) group."""
    fused = [r for p, r in group.items() if p == "videoconv" or p.startswith("videoconv-")]
    return min(fused, key=lambda r: r["median_ms"]) if fused else None


def _fmt(v: Optional[float], spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def _speedup(r: Dict[str, object], with_interval: bool) -> str:
    """``1.17x``, or ``1.17x [1.12–1.22]`` with the row's confidence interval where it has one
    (runs before the intervals were recorded have none)."""
    text = _fmt(r["speedup_vs_eager"], ".2f", "x")
    ci = r.get("speedup_ci")
    if with_interval and ci:
        text += f" [{ci[0]:.2f}–{ci[1]:.2f}]"
    return text


def _groups(rows, level: str):
    groups: Dict[Tuple[str, str, str], Dict[str, Dict[str, object]]] = {}
    for r in rows:
        if r["level"] == level:
            groups.setdefault((r["workload"], r["dtype"], r["mode"]), {})[r["provider"]] = r
    return groups


def _header(result) -> List[str]:
    env = result["environment"]
    versions = f"torch {env['torch']}, triton {env['triton']}"
    if env.get("cuda"):
        versions += f", CUDA {env['cuda']}, cuDNN {env['cudnn']}"
    modes = sorted({r["mode"] for r in result["rows"]}, key=["fwd", "bwd", "train"].index)
    what = "" if modes == ["fwd"] or not modes else " (" + ", ".join(
        {"fwd": "forward", "bwd": "backward", "train": "training step"}[m] for m in modes) + ")"
    lines = [
        f"# videoconv bench{what} — {env['device']}",
        "",
        f"{versions}, videoconv {env['videoconv']} (rev {env['git_revision']}), {env['date']}",
        "",
        f"command: `{env['command']}`",
        "",
    ]
    if env.get("device_type") == "cpu" and env.get("onednn_bf16") is False:
        lines += [f"CPU capability {env.get('cpu_capability')}: oneDNN has no bfloat16 "
                  "convolution here (eager bfloat16 runs ATen's reference loops; videoconv's "
                  "cpu backend computes bfloat16 in float32)", ""]
    if env.get("host_allocator"):
        lines += [f"host allocator: {env['host_allocator']} (see bench/timing.py: "
                  "pin_host_allocator)", ""]
    spec = env.get("roofline")
    if spec:
        peaks = ", ".join(f"{k} {v:.2f}" for k, v in spec["peak_tflops"].items())
        lines += [f"roofline: peak TFLOP/s {peaks}; bandwidth {spec['bandwidth_gbs']:.0f} GB/s "
                  f"({spec['source']})", ""]
    # Runs before the CPU timing went in turns recorded no "timing": they were back to back.
    how = env.get("timing") or "back to back"
    paired = any(r.get("speedup_ci") for r in result["rows"])
    speedup = ("the median over the rounds of eager's time over the provider's in the same "
               "round, and in the model tables `[low–high]`, the 95% confidence interval of that "
               "median (order statistics: bench/timing.py, median_interval; the JSON has it for "
               "every row)" if paired else "eager's median over the provider's")
    lines += [
        "Times are medians in ms, `(x)` the speedup over `eager` (the nn.Conv3d → BatchNorm3d → "
        f"activation modules, channels_last_3d) measured {how} in this run: {speedup}. "
        "`% roofline`: the workload's roofline bound on this device (fused, compulsory traffic; "
        "`videoconv.analysis.roofline`) over the fastest videoconv time; TFLOP/s and the "
        "roofline count the convolutions' useful MACs (taps on the zero padding, which oneDNN "
        "and cuDNN skip, excluded). `headroom`: roofline "
        "bound of the unfused chain / of the fused one, the most fusion could win on an ideal "
        "machine. `peak MB`: memory one call allocates through torch's allocator, eager → "
        "fastest videoconv. Modes: `fwd` eval forward; `bwd` backward alone (train-mode BN); "
        "`train` forward + backward + SGD step.",
        "",
    ]
    return lines


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _wide_table(groups, providers: List[str], label: str, with_count: bool,
                with_interval: bool = False) -> List[str]:
    shown = [p for p in providers if p != "eager"]
    head = [label] + (["x"] if with_count else []) + ["dtype", "mode", "eager"] + shown + [
        "fusion bound", "% roofline", "headroom", "peak MB"]
    align = ["---"] + (["---:"] if with_count else []) + ["---", "---"] + ["---:"] * (len(head) - 3 - with_count)
    lines = [_row(head), _row(align)]
    for (workload, dt, mode), group in groups.items():
        eager = group.get("eager")
        if eager is None:
            continue
        cells = [workload] + ([str(eager["count"])] if with_count else []) + [
            dt, mode, f"{eager['median_ms']:.2f}"]
        for p in shown:
            r = group.get(p)
            cells.append("—" if r is None else f"{r['median_ms']:.2f} ({_speedup(r, with_interval)})")
        fused = best_fused(group)
        mem = "—"
        if eager.get("peak_mem_mb") is not None and fused and fused.get("peak_mem_mb") is not None:
            mem = f"{eager['peak_mem_mb']:.0f} → {fused['peak_mem_mb']:.0f}"
        cells += [_fmt(eager.get("fusion_bound"), ".2f", "x"),
                  _fmt(fused.get("pct_of_roofline") if fused else None, ".0f", "%"),
                  _fmt(eager.get("roofline_headroom"), ".2f", "x"), mem]
        lines.append(_row(cells))
    return lines


def _layer_summary(groups, providers: List[str]) -> List[str]:
    shown = [p for p in providers if p != "eager"]
    per: Dict[Tuple[str, str, str], Dict[str, list]] = {}
    for (_, dt, mode), group in groups.items():
        eager = group.get("eager")
        if eager is None:
            continue
        acc = per.setdefault((eager["model"], dt, mode), {})
        for p in shown:
            r = group.get(p)
            if r is None:
                continue
            acc.setdefault(p, []).append(r["speedup_vs_eager"])
            # time-weighted: each layer as often as it occurs in the model
            acc.setdefault(p + "@sum", []).append((eager["count"] * eager["median_ms"],
                                                   eager["count"] * r["median_ms"]))
    lines = [
        "Per model: geometric mean of the per-layer speedups / speedup of the sum of the layer "
        "times (each layer counted as often as it occurs):",
        "",
        "| model | dtype | mode | " + " | ".join(shown) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in shown) + " |",
    ]
    for (model, dt, mode), acc in sorted(per.items()):
        cells = []
        for p in shown:
            if p not in acc:
                cells.append("—")
                continue
            pairs = acc[p + "@sum"]
            cells.append(f"{geomean(acc[p]):.2f}x / {sum(a for a, _ in pairs) / sum(b for _, b in pairs):.2f}x")
        lines.append(f"| {model} | {dt} | {mode} | " + " | ".join(cells) + " |")
    return lines


def _detail_table(rows) -> List[str]:
    lines = [
        "| model | dtype | mode | provider | median ms | p20–p80 ms | TFLOP/s | GB/s | % roofline "
        "| vs eager | peak MB | setup s |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["level"] != "model":
            continue
        lines.append(
            f"| {r['workload']} | {r['dtype']} | {r['mode']} | {r['provider']} | {r['median_ms']:.1f} | "
            f"{r['p20_ms']:.1f}–{r['p80_ms']:.1f} | {r['tflops']:.3f} | {_fmt(r['gbs'], '.1f')} | "
            f"{_fmt(r['pct_of_roofline'], '.1f', '%')} | {_speedup(r, True)} | "
            f"{_fmt(r['peak_mem_mb'], '.0f')} | {r['setup_s']:.1f} |")
    return lines


def to_markdown(result: Dict[str, object]) -> str:
    rows = result["rows"]
    providers = provider_order(rows)
    lines = _header(result)
    models = _groups(rows, "model")
    if models:
        lines += ["## Whole models", ""]
        lines += _wide_table(models, providers, "model", False, with_interval=True)
        lines += ["", "Every measurement (GB/s and % roofline count the model's convolution "
                  "layers only; pooling and the head are not in the bound):", ""]
        lines += _detail_table(rows)
        lines.append("")
    layers = _groups(rows, "layer")
    if layers:
        lines += ["## Layers, traced from the zoo", "",
                  "`x`: how many times the layer occurs in its model. `fusion bound` = eager / "
                  "conv-only (eager's convolution alone) where conv-only ran.", ""]
        lines += _wide_table(layers, providers, "layer", True)
        lines.append("")
        lines += _layer_summary(layers, providers)
        lines.append("")
    for line in result.get("skipped", []):
        lines.append(f"not run: {line}  ")
    return "\n".join(lines).rstrip() + "\n"
