"""Timing primitives: one place that decides how a GPU and a CPU are timed.

GPU: ``triton.testing.do_bench`` (flushes L2 between runs, reports quantiles).
CPU: ``torch.utils.benchmark.Timer.blocked_autorange``, which picks the number of runs per block
so the timer's overhead is negligible and reports the median over blocks; or, for several
providers of one workload, :func:`time_interleaved`, which takes their blocks in turns; the
speedup of one provider over another is then a paired statistic (:func:`paired_speedup`): the
median over rounds of the two blocks' ratio, with a distribution-free confidence interval
(:func:`median_interval`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["Timing", "time_callable", "time_interleaved", "median_interval", "paired_speedup",
           "peak_memory_bytes", "pin_host_allocator"]

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (4 * 1024 * 1024 * sizeof(long)).
_MMAP_THRESHOLD_MAX = 32 << 20
_pinned: "str | None" = None


def pin_host_allocator() -> str:
    """Keep glibc's malloc from handing freed memory back to the OS between iterations, for
    the whole process; returns what was done (recorded in the benchmark's environment).

    Why: by default glibc serves large blocks with ``mmap`` (or trims the heap top) and returns
    them on ``free``, so every forward of an eager model re-faults its activations: about 13,000
    page faults (50 MB) per X3D-S forward in float32. How many depends on the allocator's
    history (its mmap threshold adapts to what was freed before), and this was one cause of
    eager X3D-S taking anywhere between 70 and 130 ms from one process to the next. Comparing
    providers then partly measures the allocator. Pinning the mmap threshold at glibc's maximum (32 MiB) and disabling trimming
    makes every provider reuse its memory, as tcmalloc/jemalloc (which PyTorch recommends for
    CPU inference) do; it is applied before any provider runs, so all of them get it.
    Not glibc (or no ``mallopt``): nothing is changed, and the string says so.
    """
    global _pinned
    if _pinned is not None:
        return _pinned
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _pinned = "default (no glibc mallopt)"
        return _pinned
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)  # int mallopt(int param, int value)
    # The largest trim threshold an int holds (2 GiB) is "never trim" for a benchmark.
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and ok
    _pinned = ("glibc malloc, trimming off and mmap threshold pinned at 32 MiB (mallopt)" if ok
               else "glibc malloc, default (mallopt refused)")
    return _pinned


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int
    #: :func:`time_interleaved` only: the mean time per call of each round's block, in round
    #: order (round r of two providers ran within a few seconds of each other); empty otherwise
    blocks_ms: Tuple[float, ...] = ()


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float]:
    """The median of ``values`` and a distribution-free confidence interval for it.

    The interval is the pair of order statistics (x_(k), x_(n+1-k)) with the largest k whose
    coverage, 1 - 2 P(Binomial(n, 1/2) <= k - 1), is at least ``confidence`` (Conover,
    "Practical Nonparametric Statistics", the sign-test interval): it assumes only that the
    values are independent draws from one distribution, not a normal one, which the per-round
    ratios of a drifting machine are not. With 10 values and 95%: (x_(2), x_(9)), coverage
    97.9%; with 20: (x_(6), x_(15)), 95.9%. Below 6 values no pair reaches 95%: the interval is
    then (min, max), whose coverage is 1 - 2 / 2^n (93.8% for 5 values)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2
    k, below = 1, 0.5**n  # below: P(B <= k - 1)
    while k < (n + 1) // 2:
        below_next = below + math.comb(n, k) / 2**n  # P(B <= k)
        if below_next > tail:
            break
        k, below = k + 1, below_next
    return statistics.median(xs), xs[k - 1], xs[n - k]


def paired_speedup(base: Timing, other: Timing,
                   confidence: float = 0.95) -> Optional[Tuple[float, float, float]]:
    """``base`` / ``other`` from two providers timed in the same turns: the median over rounds of
    the ratio of their blocks in that round, and its confidence interval (:func:`median_interval`).
    None unless both carry the same number of blocks (e.g. they were timed back to back).

    Why paired: the machine's speed drifts between rounds for both providers alike, so each
    round's ratio cancels it, while the ratio of the two overall medians mixes the rounds in
    which each median fell. What it does not cover: a change of the machine's state that slows
    the two unequally (on the project's Zen 5 VM, r3d_18 bfloat16 fused against eager gave
    1.28x [1.25-1.30] in one run and 1.19x [1.17-1.24] in another an hour later): the interval
    is the spread within the run, not across runs."""
    if not base.blocks_ms or len(base.blocks_ms) != len(other.blocks_ms):
        return None
    return median_interval([b / o for b, o in zip(base.blocks_ms, other.blocks_ms)], confidence)


def time_callable(
    fn: Callable[[], object], device: torch.device, min_run_time: float = 1.0, min_runs: int = 5
) -> Timing:
    if device.type == "cuda":
        from triton.testing import do_bench

        # rep is in ms; quantiles give (median, p20, p80).
        median, p20, p80 = do_bench(fn, rep=int(1000 * min_run_time), quantiles=[0.5, 0.2, 0.8])
        return Timing(median, p20, p80, runs=-1)

    import torch.utils.benchmark as benchmark

    fn()  # warm-up: oneDNN picks and caches its primitives on the first call
    start = time.perf_counter()
    fn()
    one_run = time.perf_counter() - start
    # A whole-model forward on 2 cores can take seconds: stretch the budget so the quantiles
    # come from at least `min_runs` runs instead of a single one.
    # Timer runs single-threaded unless told otherwise; time with every thread torch would use.
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(
        min_run_time=max(min_run_time, min_runs * one_run)
    )
    times = sorted(measurement.times)

    def quantile(q: float) -> float:
        return 1e3 * times[min(len(times) - 1, int(q * len(times)))]

    return Timing(
        1e3 * measurement.median, quantile(0.2), quantile(0.8), runs=len(times) * measurement.number_per_run
    )


def time_interleaved(fns: Dict[str, Callable[[], object]], min_run_time: float = 1.0,
                     min_runs: int = 5, rounds: int = 10) -> Dict[str, Timing]:
    """CPU: time several calls of the same workload in turns, for ratios that a drifting machine
    does not skew.

    Why: on a shared VM the speed of the same code drifts by 20-30% from one minute to the
    next (measured: a fused X3D-S forward at 58 ms, then 80-88 ms a few minutes later, with no
    change). Timed one after the other, a provider that happens to run in a slow minute looks
    slower than it is; in turns, every provider sees the same minutes. Each of ``rounds`` rounds
    runs every provider once for a block of calls sized to about ``min_run_time / rounds``
    seconds (at least one call; ``min_runs`` calls in all at least); the median and quantiles
    are over the per-call times of the blocks, as ``blocked_autorange`` reports them, and each
    Timing keeps its blocks in round order (``blocks_ms``) for :func:`paired_speedup`.

    Each callable has been called once before (the set-up call: compilation, oneDNN primitives,
    packing); one more untimed call here warms it after the others ran."""
    per_call: Dict[str, float] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        per_call[name] = max(time.perf_counter() - start, 1e-7)
    rounds = max(1, rounds)
    calls = {name: max(1, -(-min_runs // rounds), int(min_run_time / rounds / t))
             for name, t in per_call.items()}
    blocks: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            blocks[name].append((time.perf_counter() - start) / n)
    result = {}
    for name, in_order in blocks.items():
        times = sorted(in_order)
        p20, p80 = (1e3 * times[min(len(times) - 1, int(q * len(times)))] for q in (0.2, 0.8))
        result[name] = Timing(statistics.median(times) * 1e3, p20, p80, runs=rounds * calls[name],
                              blocks_ms=tuple(1e3 * t for t in in_order))
    return result


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes one call of ``fn`` allocates at its peak, above what was allocated before it.

    CUDA: the caching allocator's peak counter. CPU has no such counter, so the call runs once
    under the profiler with ``profile_memory=True`` and the allocation (+) and free (-) events
    are summed in time order; the peak of that running sum is the answer. Only allocations
    made through torch's allocator are seen (oneDNN's scratchpad and other libraries' own
    buffers are not). The result is dropped inside the measurement, as in a timed call.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocations and frees are reported on the op that made them (self_cpu_memory_usage > 0 or
    # < 0; "[memory]" when no op was running); parents repeat their children's usage, so only
    # the self figures are summed. An op's allocation is placed at its start and its frees at
    # its end (a compiled graph frees its buffers inside one long event), which can only
    # overstate the peak, never miss it.
    events = sorted((e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end,
                     e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak
