"""Per-plugin Prometheus metrics, implemented on the host's hooks.

:class:`MetricsHooks` is an ordinary hook object (``host.register(metrics.hooks())``), attached the
way an application attaches its own: lifecycle hooks count starts, exits, restarts, env builds
and failures; :class:`CallMetricsHooks` adds a ``service_call`` wrapper that counts every plugin
call by service, plugin method and outcome, times it and counts the calls in flight. The server
registers one on each generation's host. What the CS3 clients saw (a status code per RPC) is
counted by the server itself, in :attr:`Metrics.rpcs`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .._errors import RevaPluginError
from .._hooks import hookimpl
from ._files import listen_error

#: Latency buckets in seconds: a plugin call is ~0.1 ms to a few seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: The ``outcome`` of a plugin call that returned.
OK = "ok"
#: Connections to the metrics endpoint served at once, and the seconds one may stay idle.
METRICS_CONNECTIONS = 16
METRICS_IDLE = 10.0


class Metrics:
    """The server's metrics, in their own registry (exposed on ``[metrics] address``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "reva_plugins_calls",
            "plugin calls, by service, plugin method and outcome (ok, or the error's type)",
            ["service", "method", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "reva_plugins_call_seconds",
            "plugin call latency, by service and plugin method",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "reva_plugins_calls_in_flight", "plugin calls in flight", ["service"], registry=r
        )
        self.rpcs = Counter(
            "reva_plugins_rpcs",
            "CS3 RPCs answered, by API, RPC and CS3 status code",
            ["api", "method", "code"],
            registry=r,
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
            "plugin processes restarted after a crash",
            ["service"],
            registry=r,
        )
        self.failures = Counter(
            "reva_plugins_service_failures",
            "services marked failed after crashing too often",
            ["service"],
            registry=r,
        )
        self.start_seconds = Histogram(
            "reva_plugins_plugin_start_seconds",
            "time from launch to a completed handshake and configure",
            ["service"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.build_seconds = Histogram(
            "reva_plugins_env_build_seconds",
            "time to build a plugin env (not counted when a cached env is reused)",
            ["service"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "reva_plugins_reloads", "configuration reloads, by result", ["result"], registry=r
        )
        self._pids: dict[str, int] = {}
        # Label lookups take a lock and build a key each time; the children are cached instead
        # (a race only looks one up twice: ``labels`` returns the same child).
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        r.register(_RssCollector(self))

    def hooks(self, *, calls: bool = True) -> MetricsHooks:
        """A hook object for one host (``host.register(metrics.hooks())``); with ``calls``, it
        also wraps every call (``service_call``)."""
        return CallMetricsHooks(self) if calls else MetricsHooks(self)

    def rpc_answered(self, api: str, method: str, code: str) -> None:
        """Count a CS3 RPC answered with status ``code``."""
        key = ("rpc", api, method, code)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self.rpcs.labels(api, method, code)
        counter.inc()

    def call_started(self, service: str) -> Any:
        """Count a plugin call in flight; returns the gauge to decrement."""
        key = ("in_flight", service)
        gauge = self._children.get(key)
        if gauge is None:
            gauge = self._children[key] = self.in_flight.labels(service)
        gauge.inc()
        return gauge

    def call_finished(self, service: str, method: str, outcome: str, seconds: float) -> None:
        """Count a plugin call done, with its outcome and latency."""
        children = self._children
        key = ("calls", service, method, outcome)
        counter = children.get(key)
        if counter is None:
            counter = children[key] = self.calls.labels(service, method, outcome)
        counter.inc()
        histogram = children.get(("latency", service, method))
        if histogram is None:
            histogram = children[("latency", service, method)] = self.latency.labels(
                service, method
            )
        histogram.observe(seconds)

    def plugin_pid(self, service: str, pid: int | None) -> None:
        """The current process of ``service`` (None: none running)."""
        with self._lock:
            if pid is None:
                self._pids.pop(service, None)
            else:
                self._pids[service] = pid

    def forget_pid(self, service: str, pid: int) -> None:
        """``pid`` of ``service`` exited: forget it unless a newer process replaced it."""
        with self._lock:
            if self._pids.get(service) == pid:
                del self._pids[service]

    def pid(self, service: str) -> int:
        """The current plugin process of ``service`` (0: none), without a copy of them all."""
        return self._pids.get(service, 0)  # one dict read: atomic

    def pids(self) -> dict[str, int]:
        """The current plugin process of each service."""
        with self._lock:
            return dict(self._pids)


class MetricsHooks:
    """The lifecycle hooks of one host, feeding :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @hookimpl
    def env_built(self, service: str, seconds: float) -> None:
        """Time the env build."""
        self.metrics.build_seconds.labels(service).observe(seconds)

    @hookimpl
    def plugin_started(self, service: str, pid: int, seconds: float) -> None:
        """Count and time the start (also a restart inside a call); it is the current process."""
        m = self.metrics
        m.starts.labels(service).inc()
        m.start_seconds.labels(service).observe(seconds)
        m.plugin_pid(service, pid)  # a reload's new process replaces the old one here

    @hookimpl
    def plugin_exited(self, service: str, pid: int, expected: bool) -> None:
        """Count the exit."""
        self.metrics.exits.labels(service, "true" if expected else "false").inc()
        self.metrics.forget_pid(service, pid)

    @hookimpl
    def plugin_restarting(self, service: str) -> None:
        """Count the restart after a crash."""
        self.metrics.restarts.labels(service).inc()

    @hookimpl
    def service_failed(self, service: str, error: RevaPluginError) -> None:
        """Count the service marked failed."""
        self.metrics.failures.labels(service).inc()


class CallMetricsHooks(MetricsHooks):
    """:class:`MetricsHooks` plus the call wrapper: calls by outcome, latency, in flight."""

    @hookimpl(wrapper=True)
    def service_call(self, service: str, method: str) -> Generator[None, Any, Any]:
        """Count and time the call around the host's own (and any inner wrapper)."""
        metrics = self.metrics
        in_flight = metrics.call_started(service)
        began = time.perf_counter()
        outcome = OK
        try:
            return (yield)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            seconds = time.perf_counter() - began
            in_flight.dec()
            metrics.call_finished(service, method, outcome, seconds)


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


def merged(pages: Iterable[str]) -> bytes:
    """One Prometheus page for every worker process (see :func:`merged_families`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(merged_families(pages)))
    return generate_latest(registry)


def merged_families(pages: Iterable[str]) -> list[Metric]:
    """The samples of ``pages`` (each worker's) with the same name and labels added up (a
    ``_created`` time is the earliest). Counters, histograms and the in-flight gauge add up
    across workers; a plugin's RSS is labelled by its pid, so each stays its own."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for page in pages:
        for family in text_string_to_metric_families(page):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            kept = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = kept.get(key)
                if old is None:
                    kept[key] = sample.value
                elif sample.name.endswith("_created"):
                    kept[key] = min(old, sample.value)
                else:
                    kept[key] = old + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class WorkersCollector(Collector):
    """The metrics of every worker process, asked for when scraped (the parent's endpoint)."""

    def __init__(self, pages: Callable[[], list[str]]) -> None:
        self.pages = pages

    def collect(self) -> Iterator[Metric]:
        yield from merged_families(self.pages())


class _Fixed(Collector):
    """Families already made (the merged pages)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def serve_metrics(address: str, registry: CollectorRegistry) -> MetricsHTTPServer:
    """``registry`` on ``http://ADDRESS/metrics``, served by a thread of its own from now on;
    the one-line error of ``metrics.address`` if it cannot listen."""
    host, _, port = address.rpartition(":")
    bind = host.strip("[]") or "0.0.0.0"  # noqa: S104 (as the operator wrote it)
    handler = type("Handler", (MetricsHandler.factory(registry),), {"timeout": METRICS_IDLE})
    try:
        server = (MetricsHTTPServer6 if ":" in bind else MetricsHTTPServer)(
            (bind, int(port)), handler
        )
    except OSError as exc:
        raise listen_error(address, "metrics.address", exc.strerror or str(exc)) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class MetricsHTTPServer(ThreadingHTTPServer):
    """The metrics endpoint: a thread per connection, but at most ``METRICS_CONNECTIONS`` at
    once (one more is closed unanswered), each closed after ``METRICS_IDLE`` seconds without
    a request, so idle connections cannot pile up threads."""

    daemon_threads = True
    #: socketserver's backlog of 5 drops the SYNs of a burst (each client then waits a second
    #: to retry); a burst is accepted at once instead, and closed there if no slot is free.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own if a slot is free, else close it."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread; its slot is free again when it ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsHTTPServer6(MetricsHTTPServer):
    address_family = socket.AF_INET6
