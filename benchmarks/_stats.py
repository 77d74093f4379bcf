"""Small measuring helpers: latency percentiles, medians, process memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def latencies(func: Callable[[], object], n: int, warmup: int = 50) -> dict[str, float]:
    """p50/p99 (and mean) of ``n`` sequential calls, in microseconds."""
    for _ in range(min(warmup, n)):
        func()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        began = clock()
        func()
        samples.append(clock() - began)
    samples.sort()
    return {
        "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
        "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6, 1),
        "mean_us": round(statistics.fmean(samples) * 1e6, 1),
        "n": n,
    }


def median_ms(func: Callable[[], object], n: int) -> float:
    """The median wall time of ``n`` runs of ``func``, in milliseconds."""
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        func()
        samples.append(time.perf_counter() - began)
    return round(statistics.median(samples) * 1000, 2)


def memory_of(pid: int) -> dict[str, float]:
    """RSS and PSS of a process in MiB (Linux ``smaps_rollup``)."""
    values = {"rss_mib": 0.0, "pss_mib": 0.0}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    values[f"{name.lower()}_mib"] = round(int(rest.split()[0]) / 1024, 2)
    except OSError:
        pass
    return values


def ratio(ours: float | None, baseline: float | None) -> float | None:
    """ours / baseline, rounded; None when either is missing."""
    if not ours or not baseline:
        return None
    return round(ours / baseline, 2)
