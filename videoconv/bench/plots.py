"""PNG plots of a ``videoconv bench`` result: speedups per model and per layer, and a roofline.

matplotlib (Agg, no display) is an optional dependency (``pip install videoconv[bench]``);
without it the run still writes its JSON and Markdown and says the plots were skipped.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from .report import provider_order

__all__ = ["plot_result"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the plots need matplotlib: pip install matplotlib "
                          "(or videoconv[bench])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_MARKERS = "osD^v<>PX*hp"


def _speedup_plot(plt, rows: Sequence[Dict[str, object]], title: str, path: str) -> None:
    providers = [p for p in provider_order(rows) if p != "eager"]
    models = [r for r in rows if r["level"] == "model"]
    layers = [r for r in rows if r["level"] == "layer"]
    model_keys = list(dict.fromkeys((r["workload"], r["dtype"], r["mode"]) for r in models))
    layer_keys = list(dict.fromkeys((r["workload"], r["dtype"], r["mode"]) for r in layers))
    panels = [k for k, keys in (("model", model_keys), ("layer", layer_keys)) if keys]
    heights = [max(2.0, 0.32 * len(model_keys) * max(1, len(providers)) / 2.5 + 1),
               max(2.0, 0.22 * len(layer_keys) + 1)]
    heights = [h for k, h in zip(("model", "layer"), heights) if k in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)),
                             gridspec_kw=dict(height_ratios=heights), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        keys = model_keys if panel == "model" else layer_keys
        subset = models if panel == "model" else layers
        index = {k: i for i, k in enumerate(keys)}
        width = 0.8 / max(1, len(providers))
        for j, p in enumerate(providers):
            pts = [(index[(r["workload"], r["dtype"], r["mode"])], r["speedup_vs_eager"],
                    r.get("speedup_ci"))
                   for r in subset if r["provider"] == p and r["speedup_vs_eager"]]
            if not pts:
                continue
            ys, xs, cis = zip(*pts)
            if panel == "model":  # few rows: grouped bars, with the 95% interval where measured
                bars = [y - 0.4 + (j + 0.5) * width for y in ys]
                ax.barh(bars, xs, height=width, label=p)
                whiskers = [(b, x, ci) for b, x, ci in zip(bars, xs, cis) if ci]
                if whiskers:
                    b, x, ci = zip(*whiskers)
                    ax.errorbar(x, b, xerr=[[v - c[0] for v, c in zip(x, ci)],
                                            [c[1] - v for v, c in zip(x, ci)]],
                                fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
            else:  # many rows: one marker per provider
                ax.scatter(xs, ys, s=18, marker=_MARKERS[j % len(_MARKERS)], label=p)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([f"{w} {d} {m}" for w, d, m in keys],
                           fontsize=7 if panel == "layer" else 8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("speedup vs eager (channels_last_3d module chain), log scale")
        ax.set_title(f"{'whole models' if panel == 'model' else 'layers traced from the zoo'} — {title}",
                     fontsize=9)
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _roofline_plot(plt, result: Dict[str, object], title: str, path: str) -> bool:
    spec = result["environment"].get("roofline")
    rows = [r for r in result["rows"] if r["mode"] == "fwd" and r.get("gbs") and r["tflops"] > 0]
    if not spec or not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 6))
    intensities = [r["tflops"] * 1e3 / r["gbs"] for r in rows]
    lo, hi = min(intensities) / 2, max(intensities) * 2
    bw = spec["bandwidth_gbs"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    colors = {dt: f"C{i}" for i, dt in enumerate(dtypes)}
    for dt in dtypes:
        peak = spec["peak_tflops"].get(dt) or spec["peak_tflops"].get("tf32")
        if peak is None:
            continue
        ridge = peak * 1e3 / bw
        xs = [lo, ridge, max(hi, ridge * 2)]
        ax.plot(xs, [min(peak, x * bw / 1e3) for x in xs], color=colors[dt], linewidth=1.2,
                label=f"roofline {dt}: {peak:.2f} TFLOP/s, {bw:.0f} GB/s")
    providers = provider_order(rows)
    for j, p in enumerate(providers):
        for dt in dtypes:
            pts = [(r["tflops"] * 1e3 / r["gbs"], r["tflops"], r["level"]) for r in rows
                   if r["provider"] == p and r["dtype"] == dt]
            if not pts:
                continue
            ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts],
                       s=[40 if lvl == "model" else 14 for _, _, lvl in pts],
                       marker=_MARKERS[j % len(_MARKERS)], color=colors[dt], alpha=0.7,
                       label=f"{p} {dt}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity, FLOP/byte (compulsory traffic of the fused layer)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(f"roofline (forward; small markers layers, large whole models) — {title}", fontsize=9)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_result(result: Dict[str, object], prefix: str) -> List[str]:
    """Write ``<prefix>_speedup.png`` and ``<prefix>_roofline.png``; returns the paths written."""
    plt = _pyplot()
    env = result["environment"]
    title = f"{env['device']}, torch {env['torch']}, rev {env['git_revision']}"
    written = []
    if result["rows"]:
        path = f"{prefix}_speedup.png"
        _speedup_plot(plt, result["rows"], title, path)
        written.append(path)
    path = f"{prefix}_roofline.png"
    if _roofline_plot(plt, result, title, path):
        written.append(path)
    return written
