"""Per-plugin Prometheus metrics: a lifecycle hook implementation plus a call observer.

The lifecycle side is an ordinary hook object (``host.register(metrics.hooks(host_id))``), the
same way an operator attaches their own. Calls are counted through :class:`CallObserver`, which
the servicer calls around every plugin-backed RPC; when the host grows call hooks (a wrapper
around every call), ``observe_call`` becomes that hook's body and the servicer stops calling it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .._hooks import hookimpl

#: Latency buckets in seconds: a plugin call is ~0.1 ms to a few seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class CallObserver(Protocol):
    """Sees every RPC served: where calls are counted (metrics, or anything else)."""

    def call_started(self, service: str, method: str) -> None:
        """An RPC for ``service`` (the plugin service type) began."""

    def call_finished(self, service: str, method: str, outcome: str, seconds: float) -> None:
        """It ended with ``outcome`` (the CS3 status code name) after ``seconds``."""


class Metrics:
    """The server's metrics, in their own registry (exposed on ``[metrics] address``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "reva_plugins_calls",
            "RPCs served, by plugin service, CS3 method and outcome (status code)",
            ["service", "method", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "reva_plugins_call_seconds",
            "RPC latency through the plugin, by service and method",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "reva_plugins_calls_in_flight", "RPCs being served", ["service"], registry=r
        )
        self.starts = Counter(
            "reva_plugins_plugin_starts", "plugin processes started", ["service"], registry=r
        )
        self.exits = Counter(
            "reva_plugins_plugin_exits",
            "plugin processes exited (expected: a shutdown or reload; else a crash)",
            ["service", "expected"],
            registry=r,
        )
        self.restarts = Counter(
            "reva_plugins_plugin_restarts",
            "plugin processes started again after a crash",
            ["service"],
            registry=r,
        )
        self.start_seconds = Histogram(
            "reva_plugins_plugin_start_seconds",
            "time from launch to a completed handshake",
            ["service"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.build_seconds = Histogram(
            "reva_plugins_env_build_seconds",
            "time to plan a driver and build (or reuse) its env",
            ["service", "built"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "reva_plugins_reloads", "configuration reloads, by result", ["result"], registry=r
        )
        self._pids: dict[str, int] = {}
        self._children: dict[object, Any] = {}
        self._lock = threading.Lock()
        r.register(_RssCollector(self))

    # -- the call observer -------------------------------------------------------------------

    def call_started(self, service: str, method: str) -> None:
        """Count an RPC in flight."""
        gauge = self._children.get(service)
        if gauge is None:
            gauge = self._children[service] = self.in_flight.labels(service)
        gauge.inc()

    def call_finished(self, service: str, method: str, outcome: str, seconds: float) -> None:
        """Count it done, with its outcome and latency."""
        # Label lookups take a lock and build a key each time; the children are cached instead.
        children = self._children
        children[service].dec()
        counter = children.get((service, method, outcome))
        if counter is None:
            counter = children[(service, method, outcome)] = self.calls.labels(
                service, method, outcome
            )
        counter.inc()
        histogram = children.get((service, method))
        if histogram is None:
            histogram = children[(service, method)] = self.latency.labels(service, method)
        histogram.observe(seconds)

    # -- lifecycle -------------------------------------------------------------------------

    def hooks(self) -> MetricsHooks:
        """A lifecycle hook object for one host (``host.register(metrics.hooks())``)."""
        return MetricsHooks(self)

    def observe_load(self, service: str, build_s: float, start_s: float, built: bool) -> None:
        """A driver was planned (its env built or reused) and its process started."""
        self.build_seconds.labels(service, "true" if built else "false").observe(build_s)
        self.start_seconds.labels(service).observe(start_s)

    def plugin_pid(self, service: str, pid: int | None) -> None:
        """The current process of ``service`` (None: none running)."""
        with self._lock:
            if pid is None:
                self._pids.pop(service, None)
            else:
                self._pids[service] = pid

    def pids(self) -> dict[str, int]:
        """The current plugin process of each service."""
        with self._lock:
            return dict(self._pids)


class MetricsHooks:
    """``plugin_started`` / ``plugin_exited`` for one host, feeding :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._crashed: set[str] = set()

    @hookimpl
    def plugin_started(self, service: str, handshake: dict[str, Any]) -> None:
        """Count the start (a restart if the service's last process crashed)."""
        m = self.metrics
        m.starts.labels(service).inc()
        if service in self._crashed:
            self._crashed.discard(service)
            m.restarts.labels(service).inc()
        pid = handshake.get("pid")
        if isinstance(pid, int):  # a reload's new process replaces the old one here
            m.plugin_pid(service, pid)

    @hookimpl
    def plugin_exited(self, service: str, pid: int, returncode: int | None, expected: bool) -> None:
        """Count the exit; a crash makes the next start a restart."""
        self.metrics.exits.labels(service, "true" if expected else "false").inc()
        if not expected:
            self._crashed.add(service)
        if self.metrics.pids().get(service) == pid:  # not if a newer process replaced it
            self.metrics.plugin_pid(service, None)


def rss_bytes(pid: int) -> int | None:
    """The resident set size of process ``pid`` (Linux ``/proc``); None if unknown."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _RssCollector(Collector):
    """Reads each current plugin's RSS when scraped (nothing runs between scrapes)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "reva_plugins_plugin_rss_bytes",
            "resident memory of the plugin process",
            labels=["service", "pid"],
        )
        for service, pid in sorted(self.metrics.pids().items()):
            rss = rss_bytes(pid)
            if rss is not None:
                family.add_metric([service, str(pid)], rss)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "reva_plugins_plugin_rss_bytes", "resident memory", labels=["service", "pid"]
        )
