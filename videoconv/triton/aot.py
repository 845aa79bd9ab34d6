"""Ahead-of-time compilation of the Triton kernels for a GPU that is not here.

``triton.compile`` lowers a kernel to PTX and a cubin for any CUDA target without a driver;
the resource usage that decides occupancy (registers, spills) is then read from ``ptxas -v`` on
the PTX, run with Triton's own ptxas. ``videoconv check --compile`` and the tests use this to
prove that every autotune configuration of every kernel builds for sm_80 and sm_90 and does not
spill, on a machine without a GPU.

Must run in a process where ``TRITON_INTERPRET`` is not set (interpreted kernels cannot be
compiled); :func:`compile_all_in_subprocess` takes care of that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Iterable, List, Optional

from ._common import AotVariant

__all__ = ["KernelReport", "compile_variant", "all_variants", "compile_all",
           "compile_all_in_subprocess", "parse_arch"]

#: Modules that define ``aot_variants()``; each is imported lazily.
KERNEL_MODULES = (
    "videoconv.triton.conv3d_bn_act",
    "videoconv.triton.conv3d_bn_stats",
    "videoconv.triton.depthwise_conv3d_bn_act",
    "videoconv.triton.conv2plus1d_bn_act",
)


@dataclasses.dataclass
class KernelReport:
    name: str
    arch: str
    registers: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    shared_bytes: Optional[int] = None
    num_warps: Optional[int] = None
    num_stages: Optional[int] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.spill_stores and not self.spill_loads


def parse_arch(arch: str) -> int:
    """``"sm_90"``, ``"90"`` or ``"9.0"`` -> 90."""
    text = arch.strip().lower().replace("sm_", "").rstrip("a")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major) * 10 + int(minor)
    return int(text)


def _ptxas(cc: int) -> str:
    # The ptxas Triton itself uses for this target: triton 3.9 bundles an older ptxas for sm_80
    # and a newer one ("ptxas-blackwell") for sm_90+, and its PTX needs the matching one.
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(cc).path


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_resources(ptx: str, cc: int) -> Dict[str, int]:
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [_ptxas(cc), "-v", f"--gpu-name={target}", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True, check=True,
        )
    log = out.stdout + out.stderr
    used = _PTXAS_USED.search(log)
    spill = _PTXAS_SPILL.search(log)
    return {
        "registers": int(used.group(1)) if used else None,
        "spill_stores": int(spill.group(1)) if spill else 0,
        "spill_loads": int(spill.group(2)) if spill else 0,
    }


def compile_variant(variant: AotVariant, arch: str) -> KernelReport:
    """Compile one variant for ``arch`` and report its resources (or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cc = parse_arch(arch)
    report = KernelReport(name=variant.name, arch=f"sm_{cc}", num_warps=variant.num_warps,
                          num_stages=variant.num_stages)
    try:
        signature = dict(variant.signature)
        for key in variant.constexprs:
            signature[key] = "constexpr"
        src = ASTSource(fn=variant.fn, signature=signature, constexprs=dict(variant.constexprs))
        compiled = triton.compile(
            src, target=GPUTarget("cuda", cc, 32),
            options={"num_warps": variant.num_warps, "num_stages": variant.num_stages},
        )
        report.shared_bytes = int(compiled.metadata.shared)
        for key, value in _ptxas_resources(compiled.asm["ptx"], cc).items():
            setattr(report, key, value)
    except Exception as exc:  # a compile error is a result to report, not a crash
        report.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return report


def all_variants(modules: Iterable[str] = KERNEL_MODULES) -> List[AotVariant]:
    import importlib

    variants: List[AotVariant] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that kernel is not written yet
                continue
            raise
        variants.extend(module.aot_variants())
    return variants


def compile_all(archs: Iterable[str], modules: Iterable[str] = KERNEL_MODULES,
                name_filter: Optional[str] = None) -> List[KernelReport]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 is set: interpreted kernels cannot be compiled; "
                           "use compile_all_in_subprocess()")
    reports = []
    for variant in all_variants(modules):
        if name_filter and not any(f and f in variant.name for f in name_filter.split(",")):
            continue  # a comma-separated list of substrings: any one selects the variant
        for arch in archs:
            reports.append(compile_variant(variant, arch))
    return reports


def compile_all_in_subprocess(archs: Iterable[str], modules: Iterable[str] = KERNEL_MODULES,
                              name_filter: Optional[str] = None,
                              timeout: float = 1800) -> List[KernelReport]:
    """:func:`compile_all` in a fresh interpreter without ``TRITON_INTERPRET``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    code = (
        "import json, sys, dataclasses\n"
        "from videoconv.triton.aot import compile_all\n"
        "args = json.loads(sys.argv[1])\n"
        "reports = compile_all(args['archs'], args['modules'], args['filter'])\n"
        "print('@@JSON@@' + json.dumps([dataclasses.asdict(r) for r in reports]))\n"
    )
    payload = json.dumps({"archs": list(archs), "modules": list(modules), "filter": name_filter})
    out = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True,
                         env=env, timeout=timeout)
    if out.returncode != 0 or "@@JSON@@" not in out.stdout:
        raise RuntimeError(f"AOT compile subprocess failed (exit {out.returncode}):\n"
                           f"{out.stderr[-4000:]}")
    rows = json.loads(out.stdout.split("@@JSON@@", 1)[1])
    return [KernelReport(**row) for row in rows]
