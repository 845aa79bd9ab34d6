"""Regenerate the generated tables of README.md and benchmarks/results/README.md.

    python benchmarks/update_readme.py

README.md: the zoo table, computed (parameters, MACs at each model's standard clip), and the
per-machine summary of whole-model speedups, read from the result files in SUMMARY.
benchmarks/results/README.md: the benchmark reports, copied from
benchmarks/results/<name>_<device>.md as `videoconv bench` wrote them (headings demoted to fit
under its "Generated reports"), with their plots. A device with no result says so.
"""

from __future__ import annotations

import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zoo_table() -> str:
    import videoconv.models as zoo
    from videoconv.analysis import count_flops, count_params

    lines = [
        "| model | after | standard clip | params | published | GMACs |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for name in zoo.list_models():
        spec = zoo.get_model_spec(name)
        model = zoo.get_model(name)
        shape = (1,) + spec.input_shape
        published = "—" if spec.published_params is None else f"{spec.published_params / 1e6:.2f}M"
        lines.append(
            f"| `{name}` | {spec.paper.split(' (')[0]} | {'x'.join(map(str, spec.input_shape[1:]))} | "
            f"{count_params(model) / 1e6:.2f}M | {published} | "
            f"{count_flops(model, shape).gmacs:.2f} |"
        )
    lines.append("")
    lines.append(f"Parameters with the published head ({', '.join(sorted({str(zoo.get_model_spec(n).num_classes) for n in zoo.list_models()}))} classes); GMACs at batch 1.")
    return "\n".join(lines)


#: result names, in README order: `make bench`'s default run, the training-step run, then the
#: forward-only runs of the suite's previous revision (providers, fusion bound, layers)
RESULTS = ("bench", "train", "providers", "bound", "layers")
DEVICES = (("cpu", "CPU"), ("cuda", "GPU"))


#: the README's summary table: (machine, result name), one row group per machine. The CPU model
#: name is the same on every machine here (a VM's "AMD EPYC"): the label comes from the result's
#: recorded generation and features (environment "cpu", videoconv.bench.environment.machine_label)
#: where it has them, so a `make bench` rerun on another CPU is labelled as what it ran on; these
#: labels are for the results recorded before that.
SUMMARY = (
    ("Zen 4, AVX512-BF16", "models_s10_zen4_cpu"),
    ("Zen 3, AVX2 only", "bench_avx2_cpu"),
    ("Zen 5, AVX-512 full width", "models_s6_zen5_cpu"),
)
SUMMARY_MODELS = ("r2plus1d_18", "r3d_18", "x3d_s")
SUMMARY_BASELINES = ("compile", "openvino")


def summary_table() -> str:
    """Whole models, forward: the fused model (videoconv-cpu) against eager, with its paired
    interval where the run has one, and in parentheses torch.compile / OpenVINO, per machine
    and dtype, exactly as the result files have them."""
    from videoconv.bench.environment import machine_label

    lines = ["| machine (result file, rev) | dtype | " + " | ".join(SUMMARY_MODELS) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in SUMMARY_MODELS) + " |"]
    for machine, name in SUMMARY:
        with open(os.path.join(ROOT, "benchmarks", "results", f"{name}.json")) as f:
            result = json.load(f)
        env = result["environment"]
        rows = {(r["model"], r["dtype"], r["provider"]): r for r in result["rows"]
                if r["level"] == "model" and r["mode"] == "fwd"}
        label = f"{machine_label(env.get('cpu')) or machine} (`{name}`, {env['git_revision']}"
        label += f", {env['rounds']} rounds)" if env.get("rounds") else ")"
        for dt in ("float32", "bfloat16"):
            if not any(k[1] == dt for k in rows):
                continue
            cells = []
            for model in SUMMARY_MODELS:
                fused = rows.get((model, dt, "videoconv-cpu"))
                if fused is None:
                    cells.append("—")
                    continue
                text = f"{fused['speedup_vs_eager']:.2f}x"
                if fused.get("speedup_ci"):
                    text += " [{:.2f}–{:.2f}]".format(*fused["speedup_ci"])
                others = [rows.get((model, dt, p)) for p in SUMMARY_BASELINES]
                text += " (" + " / ".join("—" if r is None else f"{r['speedup_vs_eager']:.2f}x"
                                          for r in others) + ")"
                cells.append(text)
            lines.append(f"| {label} | {dt} | " + " | ".join(cells) + " |")
            label = ""
    return "\n".join(lines)


def bench_tables() -> str:
    parts = []
    results = os.path.join(ROOT, "benchmarks", "results")
    for device, title in DEVICES:
        found = False
        for name in RESULTS:
            path = os.path.join(results, f"{name}_{device}.md")
            if not os.path.exists(path):
                continue
            found = True
            with open(path) as f:
                report = re.sub(r"^(#+) ", lambda m: "##" + m.group(1) + " ", f.read().strip(), flags=re.M)
            parts.append(report)
            for plot in ("speedup", "roofline"):
                png = f"{name}_{device}_{plot}.png"  # next to the page that shows it
                if os.path.exists(os.path.join(results, png)):
                    parts.append(f"![{name} {device} {plot}]({png})")
        if not found:
            parts.append(f"### {title}\n\nNot yet measured: no {title} benchmark run has been "
                         f"recorded (`make bench` on a machine with a {title} writes "
                         f"`benchmarks/results/bench_{device}.md`).")
    return "\n\n".join(parts)


def replace_between(text: str, marker: str, body: str, name: str = "README.md") -> str:
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{name} has no {marker} markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def _update(relative: str, marker: str, body: str) -> None:
    path = os.path.join(ROOT, relative)
    with open(path) as f:
        text = replace_between(f.read(), marker, body, relative)
    with open(path, "w") as f:
        f.write(text)
    print(f"updated {path}")


def main() -> None:
    _update("README.md", "zoo-table", zoo_table())
    _update("README.md", "summary-table", summary_table())
    _update(os.path.join("benchmarks", "results", "README.md"), "bench-table", bench_tables())


if __name__ == "__main__":
    main()
