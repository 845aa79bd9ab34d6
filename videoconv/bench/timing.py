"""Timing primitives: one place that decides how a GPU and a CPU are timed.

GPU: ``triton.testing.do_bench`` (flushes L2 between runs, reports quantiles).
CPU: ``torch.utils.benchmark.Timer.blocked_autorange``, which picks the number of runs per block
so the timer's overhead is negligible and reports the median over blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

__all__ = ["Timing", "time_callable"]


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int


def time_callable(fn: Callable[[], object], device: torch.device, min_run_time: float = 1.0) -> Timing:
    if device.type == "cuda":
        from triton.testing import do_bench

        # rep is in ms; quantiles give (median, p20, p80).
        median, p20, p80 = do_bench(fn, rep=int(1000 * min_run_time), quantiles=[0.5, 0.2, 0.8])
        return Timing(median, p20, p80, runs=-1)

    import torch.utils.benchmark as benchmark

    fn()  # warm-up: oneDNN picks and caches its primitives on the first call
    measurement = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(
        min_run_time=min_run_time
    )
    times = sorted(measurement.times)
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return Timing(1e3 * measurement.median, 1e3 * q(0.2), 1e3 * q(0.8), runs=len(times) * measurement.number_per_run)
