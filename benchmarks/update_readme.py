"""Regenerate the generated tables of README.md and benchmarks/results/README.md.

    python benchmarks/update_readme.py

README.md: the zoo table, computed (parameters, MACs at each model's standard clip).
benchmarks/results/README.md: the benchmark reports, copied from
benchmarks/results/<name>_<device>.md as `videoconv bench` wrote them (headings demoted to fit
under its "Generated reports"), with their plots. A device with no result says so.
"""

from __future__ import annotations

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
    _update(os.path.join("benchmarks", "results", "README.md"), "bench-table", bench_tables())


if __name__ == "__main__":
    main()
