"""Every CUDA C++ source compiles for sm_80 and sm_90, and no kernel spills registers.

Runs without a GPU: ``nvcc -c`` with the flags of the real build (videoconv/cuda_sources.py),
``ptxas -v`` read per kernel. Skips, saying why, when nvcc or the CUTLASS headers (``pip install
nvidia-cutlass``) are missing. The per-kernel table (registers, spills, static shared memory) is
printed (``pytest -s`` or ``-rP`` shows it).

Cost: each source is compiled once per architecture, at most two nvcc processes at a time
(``VIDEOCONV_NVCC_JOBS`` overrides); about two minutes on two idle cores, dominated by the six
CUTLASS instantiations of conv3d_bn_act.cu and the torch headers every file includes.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

from videoconv import cuda_sources
from videoconv.cuda_sources import CompileReport, parse_ptxas

ARCHES = ("sm_80", "sm_90")
SOURCES = cuda_sources.cuda_sources()

# Kernels each source must contain per architecture (a dropped instantiation is a failure, not
# a silently smaller table).
EXPECTED_KERNELS = {
    # 3 dtypes x {128x128, 128x64} tiles of the CUTLASS implicit GEMM
    "conv3d_bn_act.cu": ("Conv3dBnActKernel", 6),
    # 3 dtypes x {vector, scalar} x {fwd, dgrad, wgrad} + 3 reductions
    "depthwise_conv3d_bn_act.cu": ("depthwise_", 21),
    # 3 dtypes
    "conv2plus1d_bn_act.cu": ("conv2plus1d_kernel", 3),
    # 3 dtypes x {channels_last rows, NCDHW planes} + the float64 merge
    "conv3d_bn_stats.cu": ("channel_stats_", 7),
}


def _skip_reason():
    if cuda_sources.find_nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
    if not cuda_sources.cutlass_include_dirs():
        return "CUTLASS headers not found (pip install nvidia-cutlass, or set CUTLASS_PATH)"
    if not SOURCES:
        return "csrc/cuda/*.cu not found (package installed without its sources)"
    return None


@pytest.fixture(scope="module")
def reports():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    jobs = max(1, int(os.environ.get("VIDEOCONV_NVCC_JOBS", "2")))
    pairs = [(src, arch) for src in SOURCES for arch in ARCHES]
    start = time.monotonic()
    # Threads suffice: each job is an nvcc subprocess.
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(lambda p: cuda_sources.compile_source(*p), pairs))
    total = time.monotonic() - start
    print(f"\ncompiled {len(pairs)} (source, arch) pairs with {jobs} jobs in {total:.1f} s")
    for report in done:
        print(report.table())
    return {(os.path.basename(r.source), r.arch): r for r in done}


def _ids():
    return [f"{os.path.basename(s)}-{a}" for s in SOURCES for a in ARCHES]


@pytest.mark.parametrize("source,arch", [(os.path.basename(s), a) for s in SOURCES for a in ARCHES],
                         ids=_ids())
def test_compiles_without_spills(reports, source, arch):
    report: CompileReport = reports[(source, arch)]
    assert report.ok, f"nvcc failed for {source} ({arch}):\n{report.error}"
    assert report.kernels, f"ptxas reported no kernels for {source} ({arch})"
    spilling = {k.short_name: (k.spill_stores, k.spill_loads) for k in report.kernels
                if k.spill_stores or k.spill_loads}
    assert not spilling, f"{source} ({arch}) kernels spill (stores, loads bytes): {spilling}"
    marker, count = EXPECTED_KERNELS.get(source, ("", 1))
    found = [k for k in report.kernels if marker in k.short_name]
    assert len(found) >= count, (
        f"{source} ({arch}): expected {count} kernels matching {marker!r}, found "
        f"{[k.short_name for k in report.kernels]}"
    )


def test_every_source_has_an_expected_kernel_count():
    assert {os.path.basename(s) for s in SOURCES} <= set(EXPECTED_KERNELS), (
        "a new .cu file needs an entry in EXPECTED_KERNELS"
    )


def test_parse_ptxas():
    text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 42 registers, used 1 barriers, 1024 bytes smem, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3barv' for 'sm_90'
ptxas info    : Function properties for _Z3barv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 352 bytes cmem[0]
"""
    foo, bar = parse_ptxas(text)
    assert (foo.name, foo.arch, foo.registers, foo.shared) == ("_Z3fooPf", "sm_90", 42, 1024)
    assert (foo.stack_frame, foo.spill_stores, foo.spill_loads) == (16, 8, 4)
    assert (bar.registers, bar.shared, bar.spill_stores) == (8, 0, 0)
    assert foo.short_name.startswith("foo")
