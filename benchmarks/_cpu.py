"""Where a figure's time goes: CPU time and context switches of the core and of a plugin, and
pinning both to CPUs (every thread of them: Linux pins threads, not processes)."""

from __future__ import annotations

import dataclasses
import os
import resource


@dataclasses.dataclass(frozen=True)
class Usage:
    """CPU seconds and context switches (voluntary, involuntary) of one process so far."""

    cpu_s: float
    voluntary: int
    involuntary: int

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_s - other.cpu_s,
            self.voluntary - other.voluntary,
            self.involuntary - other.involuntary,
        )


def core_usage() -> Usage:
    """This process, threads that have ended included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return Usage(ru.ru_utime + ru.ru_stime, ru.ru_nvcsw, ru.ru_nivcsw)


def process_usage(pid: int) -> Usage:
    """Another process: the sum over its live threads (``/proc/<pid>/task/*``; a plugin's pool
    threads never end). CPU time from ``schedstat`` (nanoseconds), switches from ``status``."""
    cpu_ns = voluntary = involuntary = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return Usage(0.0, 0, 0)
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/schedstat", encoding="ascii") as f:
                cpu_ns += int(f.read().split()[0])
            with open(f"{base}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
        except OSError:
            continue  # the thread ended meanwhile
    return Usage(cpu_ns / 1e9, voluntary, involuntary)


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (0: this process) to ``cpus``; threads started later inherit
    it from the thread that starts them."""
    for tid in os.listdir(f"/proc/{pid or os.getpid()}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            continue


def all_cpus() -> set[int]:
    """Every CPU this process may run on at start."""
    return set(range(os.cpu_count() or 1))


def per_call(core: Usage, plugin: Usage, calls: int) -> dict[str, float]:
    """CPU microseconds and context switches per call, core and plugin."""
    return {
        "core_cpu_us_per_call": round(core.cpu_s / calls * 1e6, 1),
        "plugin_cpu_us_per_call": round(plugin.cpu_s / calls * 1e6, 1),
        "core_ctx_switches_per_call": round((core.voluntary + core.involuntary) / calls, 2),
        "plugin_ctx_switches_per_call": round((plugin.voluntary + plugin.involuntary) / calls, 2),
        "core_involuntary_per_call": round(core.involuntary / calls, 2),
    }
