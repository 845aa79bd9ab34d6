"""The ``videoconv`` command.

    videoconv info                       versions, devices, extension, backends
    videoconv flops MODEL [--input S]    per-layer MACs table of a zoo model
    videoconv bench [...]                layers and models of the zoo, every provider, on the device present
    videoconv check [...]                every backend against float64; --compile: build the kernels
    videoconv train [...]                train a zoo model (synthetic-motion or a folder of videos)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

__all__ = ["main"]


def _info(args: argparse.Namespace) -> int:
    import torch

    import videoconv
    from videoconv import backends
    from videoconv._extension import extension_build_info, extension_error, extension_loaded
    from videoconv.bench.environment import cpu_name, git_revision

    def version_of(module: str) -> str:
        try:
            return getattr(__import__(module), "__version__", "unknown")
        except Exception as exc:  # report a broken optional install instead of crashing
            return f"not available ({type(exc).__name__})"

    rev = git_revision()
    print(f"videoconv {videoconv.__version__}" + (f" (git {rev})" if rev else ""))
    print(f"python    {sys.version.split()[0]}")
    print(f"torch     {torch.__version__}")
    print(f"triton    {version_of('triton')}")
    print(f"numpy     {version_of('numpy')}")
    print(f"openvino  {version_of('openvino')}")
    print()
    print("devices:")
    print(
        f"  cpu: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, "
        f"oneDNN {'yes' if torch.backends.mkldnn.is_available() else 'no'}, "
        f"bf16 {'native' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'emulated'}"
    )
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            print(f"  cuda:{i}: {torch.cuda.get_device_name(i)}, sm_{major}{minor}")
        print(f"  CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    elif torch.version.cuda is None:
        print("  cuda: none (this torch is a CPU-only build)")
    else:
        print(f"  cuda: none visible (torch built with CUDA {torch.version.cuda})")
    print()
    if extension_loaded():
        print(f"extension videoconv._C: loaded ({extension_build_info()})")
        from .backends import cpu as cpu_backend

        variant = cpu_backend._pointwise_variant()
        print(f"  cpu 1x1x1 kernel: {variant or 'none on this CPU (oneDNN runs those layers)'}")
    else:
        print(f"extension videoconv._C: NOT loaded: {extension_error()}")
        print("  the package works without it: operators are declared from Python and run on the")
        print("  Python backends; rebuild with `pip install --no-build-isolation -e .`")
    print()
    print("backends (in priority order):")
    forced = backends.forced_backend()
    for backend in backends.PRIORITY:
        reasons = backend.environment_reasons()
        state = "can run" if not reasons else "cannot run: " + "; ".join(reasons)
        mark = " (forced)" if backend.name == forced else ""
        print(f"  {backend.name:<10} {state}{mark} — {backend.description}")
    return 0


def _flops(args: argparse.Namespace) -> int:
    from videoconv import models
    from videoconv.analysis import activation_memory, count_flops, count_params, parse_input_shape

    spec = models.get_model_spec(args.model)
    shape = parse_input_shape(args.input) if args.input else (1,) + spec.input_shape
    model = models.get_model(args.model)
    report = count_flops(model, shape)
    print(f"{args.model} ({spec.paper}), input {'x'.join(map(str, shape))}")
    print()
    print(report.table())
    print(f"params: {count_params(model):,}")
    print(f"training, float32: {activation_memory(model, shape).summary()}")
    return 0


def _names(value, what: str):
    """--models/--layers: a comma-separated list, 'all' (the suite's five models) or 'none'."""
    from videoconv.bench.suite import FULL_MODELS

    if value is None:
        return None
    if value in ("none", ""):
        return ()
    if value == "all":
        return FULL_MODELS
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _bench(args: argparse.Namespace) -> int:
    import torch

    from videoconv.bench import suite

    device = torch.device(args.device) if args.device else None
    dev = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    defaults = suite.default_workloads(dev)
    layers, models = _names(args.layers, "layers"), _names(args.models, "models")
    if layers is None and models is None:  # nothing chosen: the default workload
        layers, models = defaults["layers"], defaults["models"]
    dtypes = args.dtype.split(",") if args.dtype else defaults["dtypes"]
    if defaults.get("note") and not args.dtype:
        if args.smoke:  # tiny clips: bfloat16 is cheap even in ATen's reference loops
            dtypes = ("float32", "bfloat16")
        else:
            print(f"note: {defaults['note']}", file=sys.stderr)
    layers, models = layers or (), models or ()
    max_layers = args.max_layers
    if args.smoke:  # seconds: a few layers of one model and one forward prove the whole path
        layers, models = layers[:1], models[:1]
        max_layers = max_layers or 3
    result = suite.run_benchmark(
        layers=layers, models=models,
        dtypes=dtypes,
        modes=args.mode.split(","),
        providers=args.providers.split(",") if args.providers else None,
        batch=args.batch, device=device, smoke=args.smoke, min_run_time=args.min_run_time,
        max_layers=max_layers, progress=not args.no_progress, rounds=args.rounds,
    )
    from videoconv.bench.report import to_markdown

    print(to_markdown(result))
    json_path, markdown_path, plot_prefix = args.json, args.markdown, args.plot
    if args.output_dir:
        # One set of files per device type and name, overwritten by each full run: the latest
        # result is the one the README shows; git keeps the history.
        stem = os.path.join(args.output_dir, f"{args.output_name}_{result['environment']['device_type']}")
        json_path = json_path or stem + ".json"
        markdown_path = markdown_path or stem + ".md"
        plot_prefix = plot_prefix or stem
    try:
        written = suite.save(result, json_path, markdown_path, plot_prefix)
    except ImportError as exc:  # matplotlib missing: the tables are written, the plots are not
        written = suite.save(result, json_path, markdown_path, None)
        print(f"plots skipped: {exc}", file=sys.stderr)
    if written:
        print("wrote " + ", ".join(written))
    return 0


def _check(args: argparse.Namespace) -> int:
    from videoconv import check

    return check.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoconv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, devices, built extension and which backends can run")
    p.set_defaults(func=_info)

    p = sub.add_parser("flops", help="per-layer multiply-accumulates of a zoo model")
    p.add_argument("model", help="a name from videoconv.models.list_models()")
    p.add_argument("--input", help="clip shape NxCxTxHxW (default: the model's standard clip, batch 1)")
    p.set_defaults(func=_flops)

    p = sub.add_parser(
        "bench",
        help="time the zoo's layers and models per provider on the device present "
        "(no options: the default workload, about ten minutes)",
    )
    p.add_argument("--models", help="whole models to time: comma-separated zoo names, 'all' "
                   "(r3d_18,r2plus1d_18,x3d_m,slowfast_r50,c3d) or 'none'")
    p.add_argument("--layers", metavar="MODELS",
                   help="time every distinct fused layer of these models: comma-separated, 'all' "
                   "or 'none'. Giving only one of --models/--layers leaves the other empty; "
                   "giving neither runs the default workload")
    p.add_argument("--dtype", help="comma-separated dtypes (default: float32,bfloat16 on CPU; "
                   "bfloat16,float16,float32 on GPU)")
    p.add_argument("--mode", default="fwd",
                   help="comma-separated: fwd (eval forward), bwd (backward alone, train-mode BN), "
                   "train (forward+backward+SGD step); default fwd")
    p.add_argument(
        "--providers",
        help="comma-separated: eager, eager-ncdhw, conv-only, compile, compile-max-autotune, "
        "openvino, videoconv (automatic backend), videoconv-<backend>. Default: eager, "
        "eager-ncdhw, compile, videoconv-<each backend that can run here>, openvino (CPU, when "
        "installed)",
    )
    p.add_argument("--max-layers", type=int, help="the first N distinct layers per model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", help="cpu or cuda (default: cuda if present)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny clips, one model, short timing: proves the suite runs (CI)")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=10,
                   help="CPU: rounds of turns per workload (at least 2); every speedup is the "
                        "median of the per-round ratios, with a 95%% confidence interval that "
                        "more rounds narrow")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--markdown", help="write the Markdown report here")
    p.add_argument("--plot", metavar="PREFIX", help="write PREFIX_speedup.png and PREFIX_roofline.png")
    p.add_argument("--output-dir", help="write NAME_<device>.json, .md and the plots here")
    p.add_argument("--output-name", default="bench", help="NAME for --output-dir (default bench)")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "check",
        help="numerical equivalence of every backend that can run here against float64; "
        "--compile: build every kernel for the target GPUs",
    )
    p.add_argument("--backend", help="comma-separated backend names (default: all that can run)")
    p.add_argument("--quick", action="store_true", help="a few representative cases only")
    p.add_argument("--compile", action="store_true",
                   help="compile every Triton kernel (at its autotune configs) and CUDA source "
                   "ahead of time; report registers, shared memory, spills; fail on a spill")
    p.add_argument("--arch", default="sm_80,sm_90", help="targets for --compile")
    p.add_argument("--kernel", help="with --compile: only kernels whose name contains one of these "
                   "comma-separated substrings")
    p.add_argument("-v", "--verbose", action="store_true", help="print each case as it runs")
    p.set_defaults(func=_check)

    from videoconv.train.cli import add_train_parser

    add_train_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        # Bad names or shapes from the command line: one clear line, not a traceback.
        print(f"videoconv {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
