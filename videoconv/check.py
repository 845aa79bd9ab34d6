"""``videoconv check``: is every backend that can run here numerically equivalent to the oracle,
and does every kernel build for the GPUs we target?

* ``videoconv check`` runs each op (``conv3d_bn_act``, ``conv2plus1d_bn_act`` and the
  training-mode ``conv3d_bn_stats``) over a matrix of small shapes drawn from real models
  (strides (1,1,1)/(1,2,2)/(2,2,2)/(2,1,1), temporal kernels 1/3/5/7, spatial dilation 2,
  groups 1/2/C, odd sizes, both layouts, with and without residual, every activation) through
  every backend that can run on this machine — the Triton backend through its interpreter when
  there is no GPU — in every dtype it supports, against the float64 reference, and prints the
  worst error per backend and dtype with pass/fail. ``--backend``, ``--quick``.
* ``videoconv check --compile --arch sm_80,sm_90`` compiles every Triton kernel at each of its
  autotune configurations (:mod:`videoconv.triton.aot`) and every CUDA source
  (:mod:`videoconv.cuda_sources`), prints registers, shared memory and spills per kernel, and
  fails on a compile error or a spill.

Errors are measured relative to the largest magnitude of the float64 output, so one number per
case is comparable across shapes; the tolerance is per dtype (:data:`TOLERANCE`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from typing import Dict, Iterable, List, Optional, Sequence

__all__ = ["Case", "CheckResult", "cases", "run_check", "run_compile_check", "TOLERANCE", "main"]

#: Relative error (max |got - exact| / max |exact|) allowed per dtype.
TOLERANCE = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2, "float64": 1e-10}


@dataclasses.dataclass(frozen=True)
class Case:
    op: str  # "conv3d_bn_act", "conv2plus1d_bn_act" or "conv3d_bn_stats"
    n: int
    cin: int
    cout: int
    size: tuple  # (D, H, W)
    kernel: tuple  # conv3d: (kt, kh, kw); (2+1)D: (kt, k)
    stride: tuple
    padding: tuple
    dilation: tuple = (1, 1, 1)
    groups: int = 1
    activation: str = "relu"
    residual: bool = False
    channels_last: bool = True
    temporal_first: bool = False
    cmid: int = 0

    @property
    def label(self) -> str:
        d, h, w = self.size
        layout = "cl3d" if self.channels_last else "ncdhw"
        if self.op == "conv3d_bn_stats":
            g = "" if self.groups == 1 else (" dw" if self.groups == self.cin else f" g{self.groups}")
            k = "x".join(map(str, self.kernel))
            return (f"stats {self.cin}->{self.cout} k{k} s{''.join(map(str, self.stride))}{g} "
                    f"{self.n}x{d}x{h}x{w} {layout}")
        if self.op == "conv3d_bn_act":
            g = "" if self.groups == 1 else (" dw" if self.groups == self.cin else f" g{self.groups}")
            dil = "" if set(self.dilation) == {1} else f" dil{''.join(map(str, self.dilation))}"
            k = "x".join(map(str, self.kernel))
            body = f"conv3d {self.cin}->{self.cout} k{k} s{''.join(map(str, self.stride))}{dil}{g}"
        else:
            order = "t-first" if self.temporal_first else "s-first"
            body = (f"(2+1)d {self.cin}->{self.cmid}->{self.cout} kt{self.kernel[0]} "
                    f"k{self.kernel[1]} s{''.join(map(str, self.stride))} {order}")
        res = " +res" if self.residual else ""
        return f"{body} {self.activation}{res} {self.n}x{d}x{h}x{w} {layout}"


def cases(quick: bool = False) -> List[Case]:
    """The shape matrix. Small (the interpreter runs it on CPU), but every feature is crossed
    with both layouts and a residual at least once."""
    c3 = "conv3d_bn_act"
    base = [
        Case(c3, 2, 3, 8, (5, 9, 9), (3, 7, 7), (1, 2, 2), (1, 3, 3)),  # stem, Cin=3
        Case(c3, 1, 8, 8, (4, 7, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), residual=True),
        Case(c3, 1, 8, 16, (6, 8, 8), (3, 3, 3), (2, 2, 2), (1, 1, 1)),
        Case(c3, 1, 8, 12, (7, 6, 6), (1, 1, 1), (2, 1, 1), (0, 0, 0), activation="identity"),
        Case(c3, 1, 6, 6, (9, 5, 5), (5, 1, 1), (1, 1, 1), (2, 0, 0), activation="silu"),
        Case(c3, 1, 4, 6, (9, 5, 5), (7, 1, 1), (1, 1, 1), (3, 0, 0)),
        Case(c3, 1, 4, 8, (3, 9, 9), (1, 3, 3), (1, 1, 1), (0, 2, 2), dilation=(1, 2, 2)),
        Case(c3, 1, 8, 8, (4, 7, 7), (3, 3, 3), (1, 2, 2), (1, 1, 1), groups=2),
        Case(c3, 2, 12, 12, (5, 7, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), groups=12,
             activation="silu"),
        Case(c3, 1, 12, 12, (5, 8, 8), (3, 3, 3), (1, 2, 2), (1, 1, 1), groups=12, residual=True),
        Case(c3, 1, 10, 10, (7, 5, 5), (5, 1, 1), (1, 1, 1), (2, 0, 0), groups=10),
        Case("conv2plus1d_bn_act", 1, 4, 8, (5, 7, 7), (3, 3), (1, 1, 1), (1, 1, 1), cmid=23),
        Case("conv2plus1d_bn_act", 1, 8, 8, (6, 8, 8), (3, 3), (2, 2, 2), (1, 1, 1), cmid=12,
             residual=True),
        Case("conv2plus1d_bn_act", 1, 6, 8, (5, 7, 7), (5, 3), (1, 2, 2), (2, 1, 1), cmid=10,
             temporal_first=True, activation="silu"),
        # the cpu backend's Winograd shape (C_in a multiple of 16, a 3x3 stride-1 kernel; float32
        # channels_last_3d takes it), with partial 4x4 tiles and a C_out that is not a multiple
        # of 16
        Case(c3, 1, 16, 23, (4, 10, 10), (3, 3, 3), (1, 1, 1), (1, 1, 1), activation="silu",
             residual=True),
        # the cpu backend's 1x1x1 kernel (channels_last_3d, C_in >= 32 on AVX-512; more than 64
        # output positions, so not the small GEMM), strided, with a C_out that is not a multiple
        # of 16
        Case(c3, 1, 48, 40, (3, 9, 9), (1, 1, 1), (1, 2, 2), (0, 0, 0), residual=True),
    ]
    # conv3d_bn_stats (training-mode BatchNorm): the convolution features that change how the
    # statistics epilogue tiles the output (strides, a 1x1x1 conv, groups, depthwise); its
    # checked outputs are the conv output and the per-channel mean and biased variance.
    stats = [dataclasses.replace(base[i], op="conv3d_bn_stats", activation="identity", residual=False)
             for i in (0, 2, 3, 7, 8)]
    if quick:
        base = [base[i] for i in (0, 1, 8, 11)] + stats[:1]
    else:
        base = base + stats
    out = []
    for case in base:
        out.append(case)
        out.append(dataclasses.replace(case, channels_last=not case.channels_last))
    return out


def _make_inputs(case: Case, dtype, device):
    import torch

    g = torch.Generator().manual_seed(hash(case.label) % (2 ** 31))

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    d, h, w = case.size
    x = rand(case.n, case.cin, d, h, w)
    if case.op in ("conv3d_bn_act", "conv3d_bn_stats"):
        kt, kh, kw = case.kernel
        weight = rand(case.cout, case.cin // case.groups, kt, kh, kw,
                      scale=(case.cin // case.groups * kt * kh * kw) ** -0.5)
        args = dict(weight=weight, scale=rand(case.cout).abs() + 0.5, shift=rand(case.cout))
        out = torch.nn.functional.conv3d(x, weight, None, case.stride, case.padding,
                                         case.dilation, case.groups).shape
    else:
        kt, k = case.kernel
        if case.temporal_first:
            w1 = rand(case.cmid, case.cin, kt, 1, 1, scale=(case.cin * kt) ** -0.5)
            w2 = rand(case.cout, case.cmid, 1, k, k, scale=(case.cmid * k * k) ** -0.5)
        else:
            w1 = rand(case.cmid, case.cin, 1, k, k, scale=(case.cin * k * k) ** -0.5)
            w2 = rand(case.cout, case.cmid, kt, 1, 1, scale=(case.cmid * kt) ** -0.5)
        args = dict(w1=w1, scale1=rand(case.cmid).abs() + 0.5, shift1=rand(case.cmid), w2=w2,
                    scale2=rand(case.cout).abs() + 0.5, shift2=rand(case.cout))
        from .backends.reference import conv2plus1d_bn_act as ref

        out = ref(input=x, **args, stride=case.stride, padding=case.padding,
                  activation="identity", temporal_first=case.temporal_first, residual=None).shape
    residual = rand(*out) if case.residual else None
    fmt = torch.channels_last_3d if case.channels_last else torch.contiguous_format

    def cast(t):
        return None if t is None else t.to(device=device, dtype=dtype)

    x_d = cast(x).contiguous(memory_format=fmt)
    res_d = None if residual is None else cast(residual).contiguous(memory_format=fmt)
    return (x, args, residual), (x_d, {k: cast(v) for k, v in args.items()}, res_d)


def _run(case: Case, x, args, residual):
    from . import ops

    if case.op == "conv3d_bn_stats":
        return ops.conv3d_bn_stats(x, args["weight"], case.stride, case.padding, case.dilation,
                                   case.groups)
    if case.op == "conv3d_bn_act":
        return ops.conv3d_bn_act(x, args["weight"], args["scale"], args["shift"], case.stride,
                                 case.padding, case.dilation, case.groups, case.activation,
                                 residual)
    return ops.conv2plus1d_bn_act(x, args["w1"], args["scale1"], args["shift1"], args["w2"],
                                  args["scale2"], args["shift2"], case.stride, case.padding,
                                  case.activation, case.temporal_first, residual)


@dataclasses.dataclass
class CheckResult:
    backend: str
    dtype: str
    case: str
    error: Optional[float]  # relative to max |exact|; None if it could not run
    ok: bool
    note: str = ""


def run_check(backend_names: Optional[Sequence[str]] = None, quick: bool = False,
              dtypes: Sequence[str] = ("float32", "float16", "bfloat16"),
              device=None, progress=None) -> List[CheckResult]:
    """Every case through every backend (that can run here) and dtype, against float64."""
    import torch

    from . import backends

    device = torch.device(device) if device else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    names = list(backend_names) if backend_names else [
        n for n, reasons in backends.available().items() if not reasons]
    results: List[CheckResult] = []
    for name in names:
        backend = backends.get_backend(name)
        for dt in dtypes:
            dtype = getattr(torch, dt)
            if dtype not in backend.dtypes:
                continue
            for case in cases(quick):
                if progress:
                    progress(f"{name} {dt} {case.label}")
                (x, args, res), (x_d, args_d, res_d) = _make_inputs(case, dtype, device)
                if case.op == "conv3d_bn_stats":
                    kwargs = dict(input=x_d, weight=args_d["weight"], stride=case.stride,
                                  padding=case.padding, dilation=case.dilation, groups=case.groups)
                else:
                    kwargs = dict(input=x_d, residual=res_d, stride=case.stride, padding=case.padding,
                                  activation=case.activation, **args_d)
                if case.op == "conv3d_bn_act":
                    kwargs.update(dilation=case.dilation, groups=case.groups)
                else:
                    kwargs.update(temporal_first=case.temporal_first)
                with backends.use(name):
                    reasons = backend.not_supported_reasons(case.op, **kwargs)
                    if reasons:
                        results.append(CheckResult(name, dt, case.label, None, True,
                                                   "not supported: " + "; ".join(reasons)))
                        continue
                    try:
                        got = _run(case, x_d, args_d, res_d)
                    except Exception as exc:  # a crash is a failure to report, not to hide
                        results.append(CheckResult(name, dt, case.label, None, False,
                                                   f"{type(exc).__name__}: {exc}"))
                        continue
                # the exact answer for the inputs as rounded to dtype
                exact = _run(case, x_d.double(), {k: v.double() for k, v in args_d.items()},
                             None if res_d is None else res_d.double())
                if case.op == "conv3d_bn_stats":
                    # out, then mean and variance: each relative to its own largest magnitude.
                    # The statistics are of the rounded output, so in 16 bits they are compared
                    # with the float64 statistics of what the backend returned.
                    (got, mean, var), exact_out = got, exact[0]
                    ref_mean = got.double().mean(dim=(0, 2, 3, 4))
                    ref_var = got.double().var(dim=(0, 2, 3, 4), unbiased=False)
                    stat_err = max(_rel(mean, ref_mean), _rel(var, ref_var))
                    stats_ok = mean.dtype == var.dtype == torch.float64 and stat_err <= TOLERANCE["float32"]
                    exact = exact_out
                else:
                    stat_err, stats_ok = 0.0, True
                layout_ok = (got.is_contiguous(memory_format=torch.channels_last_3d)
                             if case.channels_last else got.is_contiguous())
                err = max(_rel(got, exact), stat_err)
                ok = err <= TOLERANCE[dt] and stats_ok and layout_ok and got.dtype == dtype
                note = "" if layout_ok else "output layout differs from the input's"
                results.append(CheckResult(name, dt, case.label, err, ok, note))
    return results


def _rel(got, exact) -> float:
    """max |got - exact| / max |exact|, in float64."""
    return ((got.double() - exact).abs().max() / exact.abs().max().clamp_min(1e-12)).item()


def summarize(results: Iterable[CheckResult]) -> str:
    rows: Dict[tuple, List[CheckResult]] = {}
    for r in results:
        rows.setdefault((r.backend, r.dtype), []).append(r)
    lines = ["| backend | dtype | cases | not supported | worst rel. error | tolerance | result |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for (backend, dt), rs in rows.items():
        errors = [r.error for r in rs if r.error is not None]
        skipped = sum(1 for r in rs if r.error is None and r.ok)
        failed = [r for r in rs if not r.ok]
        worst = f"{max(errors):.2e}" if errors else "—"
        lines.append(f"| {backend} | {dt} | {len(rs)} | {skipped} | {worst} | {TOLERANCE[dt]:.0e} | "
                     f"{'PASS' if not failed else f'FAIL ({len(failed)})'} |")
    failures = [r for r in results if not r.ok]
    for r in failures:
        err = "—" if r.error is None else f"{r.error:.2e}"
        lines.append(f"\nFAIL {r.backend} {r.dtype} {r.case}: error {err} {r.note}")
    return "\n".join(lines)


def run_compile_check(archs: Sequence[str], name_filter: Optional[str] = None):
    """AOT-compile every Triton kernel variant and every CUDA source for ``archs``; returns
    ``(rows, ok)`` with one dict per kernel and arch."""
    rows: List[dict] = []
    try:
        from .triton.aot import compile_all_in_subprocess

        for rep in compile_all_in_subprocess(archs, name_filter=name_filter):
            rows.append(dict(source="triton", kernel=rep.name, arch=rep.arch,
                             registers=rep.registers, shared_bytes=rep.shared_bytes,
                             spill_stores=rep.spill_stores, spill_loads=rep.spill_loads,
                             error=rep.error))
    except ImportError as exc:
        rows.append(dict(source="triton", kernel="*", arch=",".join(archs), error=str(exc)))
    from . import cuda_sources

    filters = [f for f in (name_filter or "").split(",") if f]
    for path in cuda_sources.cuda_sources():
        if filters and not any(f in os.path.basename(path) for f in filters):
            continue
        for arch in archs:
            rep = cuda_sources.compile_source(path, arch)
            source = f"cuda {os.path.basename(path)}"
            if not rep.ok:
                rows.append(dict(source=source, kernel="*", arch=arch, error=rep.error.strip()[-400:]))
                continue
            for k in rep.kernels:
                rows.append(dict(source=source, kernel=cuda_sources._short_name(k.name), arch=arch,
                                 registers=k.registers, shared_bytes=k.shared,
                                 spill_stores=k.spill_stores, spill_loads=k.spill_loads,
                                 error=None))
    ok = all(not r.get("error") and not r.get("spill_stores") and not r.get("spill_loads")
             for r in rows)
    return rows, ok


def _compile_table(rows: List[dict]) -> str:
    lines = ["| source | kernel | arch | registers | shared bytes | spill st/ld | result |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        spills = f"{r.get('spill_stores') or 0}/{r.get('spill_loads') or 0}"
        bad = r.get("error") or r.get("spill_stores") or r.get("spill_loads")
        result = "ok" if not bad else ("ERROR: " + str(r["error"])[:120] if r.get("error") else "SPILL")
        lines.append(f"| {r['source']} | {r['kernel']} | {r['arch']} | {r.get('registers', '—')} | "
                     f"{r.get('shared_bytes', '—')} | {spills} | {result} |")
    return "\n".join(lines)


def main(args) -> int:
    import torch

    if args.compile:
        archs = [a.strip() for a in args.arch.split(",") if a.strip()]
        rows, ok = run_compile_check(archs, args.kernel)
        print(_compile_table(rows))
        print(f"\n{len(rows)} kernel builds, {'all ok' if ok else 'FAILURES above'}")
        return 0 if ok else 1
    if not torch.cuda.is_available():
        # before the Triton kernels are defined, so they run through the interpreter
        os.environ.setdefault("TRITON_INTERPRET", "1")
    names = args.backend.split(",") if args.backend else None

    def progress(message: str) -> None:
        if args.verbose:
            print(f"  checking {message}", file=sys.stderr, flush=True)

    results = run_check(names, quick=args.quick, progress=progress)
    print(summarize(results))
    return 0 if all(r.ok for r in results) else 1
