"""The CUDA C++ sources of videoconv (csrc/cuda/*.cu): where they and their headers are, and a
compile check that needs no GPU.

On machines without a CUDA torch the extension is built for the CPU only, so the ``.cu`` files
would never be compiled. :func:`compile_source` compiles one of them with ``nvcc -c`` (object
thrown away) for a given architecture, with the flags of the real build, and reads ``ptxas -v``'s
per-kernel report: registers, spill stores/loads, shared memory. tests/test_cuda_sources.py runs
it over every source for sm_80 and sm_90 and requires zero spills.

CUTLASS is header-only; its headers come from the ``nvidia-cutlass`` wheel (``pip install
nvidia-cutlass``), which ships them under ``cutlass_library/source/include``.
:func:`cutlass_include_dirs` finds them (``CUTLASS_PATH`` — a CUTLASS checkout — takes
precedence).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import time
from typing import Dict, List, Optional

__all__ = [
    "KernelReport",
    "CompileReport",
    "repo_root",
    "cuda_sources",
    "cutlass_include_dirs",
    "find_nvcc",
    "nvcc_flags",
    "compile_source",
    "parse_ptxas",
]


def repo_root() -> str:
    """The source tree holding csrc/ (the checkout this package is installed from)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_sources() -> List[str]:
    """Paths of csrc/cuda/*.cu, sorted (empty when the package is installed without csrc/)."""
    return sorted(glob.glob(os.path.join(repo_root(), "csrc", "cuda", "*.cu")))


def cutlass_include_dirs() -> List[str]:
    """Include directories of the CUTLASS C++ headers (``cutlass/cutlass.h``), or [] if absent.

    ``CUTLASS_PATH`` (a CUTLASS source tree) first, then the ``nvidia-cutlass`` wheel, whose
    ``cutlass_library`` package carries the headers in ``source/include`` (and the CUTLASS
    utilities in ``source/tools/util/include``).
    """
    roots = []
    env = os.environ.get("CUTLASS_PATH")
    if env:
        roots.append(env)
    try:
        spec = importlib.util.find_spec("cutlass_library")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        roots.append(os.path.join(os.path.dirname(spec.origin), "source"))
    for root in roots:
        include = os.path.join(root, "include")
        if os.path.isfile(os.path.join(include, "cutlass", "cutlass.h")):
            dirs = [include]
            util = os.path.join(root, "tools", "util", "include")
            if os.path.isdir(util):
                dirs.append(util)
            return dirs
    return []


def find_nvcc() -> Optional[str]:
    """The nvcc to use: ``$CUDA_HOME/bin/nvcc`` if set, else the one on PATH."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


#: nvcc flags of the extension's CUDA build (setup.py) and of the compile check, arch excluded.
#: C++20 because torch 2.13's headers use C++20 features (torch.utils.cpp_extension compiles
#: extensions with -std=c++20; CUTLASS 4 accepts it). --expt-relaxed-constexpr: CUTLASS calls
#: constexpr host functions from device code.
BUILD_NVCC_FLAGS = ["-std=c++20", "-O3", "--use_fast_math", "--expt-relaxed-constexpr", "-DNDEBUG"]


def nvcc_flags() -> List[str]:
    """Flags of the compile check: the build's, plus what torch.utils.cpp_extension adds itself.

    The half/bfloat16 defines are torch's own (they turn off cuda_fp16.h/cuda_bf16.h's implicit
    conversions that clash with c10::Half). ``C10_CUDA_NO_CMAKE_CONFIGURE_FILE`` lets the c10/cuda
    headers compile without the configure-time header a CPU-only torch wheel lacks.
    """
    return BUILD_NVCC_FLAGS + [
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        # torch's headers warn about C++20 bit-field initialisers etc.; keep the log readable.
        "-diag-suppress=3306,20012,20013,20014,20015,186,177,550",
    ]


def _include_flags() -> List[str]:
    from torch.utils.cpp_extension import include_paths

    dirs = list(include_paths()) + [sysconfig.get_paths()["include"]] + cutlass_include_dirs()
    dirs.append(os.path.join(repo_root(), "csrc"))
    return [f"-I{d}" for d in dirs]


@dataclasses.dataclass
class KernelReport:
    """ptxas's report of one kernel (one entry function) for one architecture."""

    name: str           # mangled name
    arch: str
    registers: int = 0
    spill_stores: int = 0  # bytes
    spill_loads: int = 0   # bytes
    stack_frame: int = 0   # bytes
    shared: int = 0        # static shared memory, bytes (dynamic shared memory is not included)

    @property
    def short_name(self) -> str:
        """The demangled-ish name: the kernel's function/template name, shortened for tables."""
        return _short_name(self.name)


@dataclasses.dataclass
class CompileReport:
    source: str
    arch: str
    ok: bool
    seconds: float
    kernels: List[KernelReport]
    error: str = ""      # compiler output when ok is False
    command: str = ""

    def spills(self) -> Dict[str, int]:
        """Kernel name -> spill bytes (stores + loads), only for kernels that spill."""
        return {k.name: k.spill_stores + k.spill_loads for k in self.kernels
                if k.spill_stores or k.spill_loads}

    def table(self) -> str:
        rows = [f"{os.path.basename(self.source)} [{self.arch}] {self.seconds:.1f}s"]
        for k in self.kernels:
            rows.append(
                f"  {k.short_name[:90]:<90} regs={k.registers:<4} smem={k.shared:<6} "
                f"spill_st={k.spill_stores} spill_ld={k.spill_loads} stack={k.stack_frame}"
            )
        return "\n".join(rows)


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str, arch: str = "") -> List[KernelReport]:
    """Per-kernel reports from ``ptxas -v`` output (``-Xptxas -v`` through nvcc)."""
    kernels: List[KernelReport] = []
    current: Optional[KernelReport] = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = KernelReport(name=m.group(1), arch=m.group(2) or arch)
            kernels.append(current)
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current.stack_frame, current.spill_stores, current.spill_loads = map(int, m.groups())
        m = _USED.search(line)
        if m:
            current.registers = int(m.group(1))
            s = _SMEM.search(line)
            current.shared = int(s.group(1)) if s else 0
    return kernels


# Itanium-mangled pieces of CUTLASS's kernel type (c++filt cannot demangle nvcc's names for
# kernels in anonymous namespaces, so the label is read from the mangled name).
_MANGLED_TRIPLE = re.compile(r"ILi(\d+)ELi(\d+)ELi(\d+)EE")
_MANGLED_ELEMENT = re.compile(
    r"Conv3dFpropActivationTileAccessIteratorOptimizedI.*?MatrixShapeILi\d+ELi\d+EEE"
    r"(f|NS_6half_tE|NS_10bfloat16_tE)")
_MANGLED_STAGES = re.compile(r"Li(\d+)EbEENS_8epilogue")
_ELEMENT_NAMES = {"f": "float", "NS_6half_tE": "half_t", "NS_10bfloat16_tE": "bfloat16_t"}


def _short_name(mangled: str) -> str:
    if "Conv3dBnActKernel" in mangled:
        # CUTLASS's full type is kilobytes long: dtype, threadblock/warp tiles and stages say it.
        shapes = _MANGLED_TRIPLE.findall(mangled)
        element = _MANGLED_ELEMENT.search(mangled)
        stages = _MANGLED_STAGES.search(mangled)
        dtype = _ELEMENT_NAMES.get(element.group(1), "?") if element else "?"
        tile = "x".join(shapes[0]) if shapes else "?"
        warp = "x".join(shapes[1]) if len(shapes) > 1 else "?"
        return (f"Conv3dBnActKernel<{dtype}, tile {tile}, warp {warp}"
                f"{', stages ' + stages.group(1) if stages else ''}>")
    try:
        demangled = subprocess.run(["c++filt", mangled], capture_output=True, text=True,
                                   timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        demangled = ""
    name = demangled or mangled
    name = name.replace("cutlass::", "").replace("videoconv::cuda::", "")
    name = name.replace("(anonymous namespace)::", "")
    return re.sub(r"\s+", " ", name)


def compile_source(path: str, arch: str = "sm_80", extra_flags: Optional[List[str]] = None,
                   timeout: float = 900) -> CompileReport:
    """Compile one .cu file with ``nvcc -c`` for ``arch`` ("sm_80", "sm_90", ...) and report.

    The object file goes to a temporary directory and is deleted. Returns a
    :class:`CompileReport`; ``ok`` is False (with the compiler output in ``error``) when nvcc
    fails or is missing.
    """
    nvcc = find_nvcc()
    if nvcc is None:
        return CompileReport(path, arch, False, 0.0, [], error="nvcc not found (set CUDA_HOME)")
    number = arch.replace("sm_", "")
    with tempfile.TemporaryDirectory(prefix="videoconv_nvcc_") as tmp:
        cmd = [nvcc, "-c", path, "-o", os.path.join(tmp, "out.o"),
               f"-gencode=arch=compute_{number},code=sm_{number}", "-Xptxas", "-v",
               "-Xcompiler", "-fPIC"] + nvcc_flags() + _include_flags() + list(extra_flags or [])
        start = time.monotonic()
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return CompileReport(path, arch, False, time.monotonic() - start, [],
                                 error=f"nvcc timed out after {exc.timeout} s", command=" ".join(cmd))
        seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    kernels = parse_ptxas(output, arch)
    ok = result.returncode == 0
    return CompileReport(path, arch, ok, seconds, kernels, error="" if ok else output[-20000:],
                         command=" ".join(cmd))
