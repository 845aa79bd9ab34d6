"""Timing primitives: one place that decides how a GPU and a CPU are timed.

GPU: ``triton.testing.do_bench`` (flushes L2 between runs, reports quantiles).
CPU: ``torch.utils.benchmark.Timer.blocked_autorange``, which picks the number of runs per block
so the timer's overhead is negligible and reports the median over blocks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

__all__ = ["Timing", "time_callable"]


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int


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
