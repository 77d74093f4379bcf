"""``reva-plugins serve``: the configured services as CS3 gRPC services, with health checking,
reflection, metrics, an access log, graceful shutdown and zero-downtime reload."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from cs3.rpc.v1beta1 import code_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client.exposition import MetricsHandler

from .. import _config
from .._errors import ConfigError, RevaPluginError, UsageError
from .._hooks import hookimpl
from .._host import Host
from .._redact import redact
from . import _cs3
from ._metrics import Metrics
from ._reload import Generation, HostOptions, Reloader, served_services, unserved_tables

log = logging.getLogger("reva_plugins.serve")
access = logging.getLogger("reva_plugins.serve.access")

#: The largest request accepted, in bytes: CS3 identity requests are a few hundred bytes.
MAX_REQUEST_BYTES = 1 << 20
#: The largest TLS certificate or key file read.
MAX_PEM_BYTES = 1 << 20
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class _HealthHooks:
    """Lifecycle hooks of one generation's host: a crashed plugin's API is NOT_SERVING until
    its restart (started here at once, with the supervisor's backoff) completes."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.generation: Generation | None = None  # set once built; None while building

    @hookimpl
    def plugin_started(self, service: str) -> None:
        """The plugin answers again: its API serves."""
        if self._current():
            self.server.set_health(service, serving=True)

    @hookimpl
    def plugin_exited(self, service: str, pid: int, returncode: int | None, expected: bool) -> None:
        """A crash: NOT_SERVING, and restart it in the background."""
        if expected or not self._current():
            return
        log.warning("%s plugin (pid %d) exited unexpectedly; restarting it", service, pid)
        self.server.set_health(service, serving=False)
        threading.Thread(
            target=self._restart, args=(service,), name=f"restart-{service}", daemon=True
        ).start()

    def _current(self) -> bool:
        gen = self.generation
        return gen is not None and gen is self.server.reloader.current

    def _restart(self, service: str) -> None:
        gen = self.generation
        if gen is None or service not in gen.proxies:
            return
        try:
            gen.proxies[service].driver.start()
        except RevaPluginError as exc:
            if self._current():
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.error("%s stays NOT_SERVING: %s", service, redact(first))


class Server:
    """The gRPC server for one config file; :meth:`run` serves until SIGTERM/SIGINT.

    ``hooks`` are host hook objects (``service_call`` wrappers, lifecycle hooks; see
    ``reva_plugins._hooks``) registered on every generation's host, the first and each reload's,
    before any of its plugins starts. Building the server builds the envs and starts the plugins.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        address: str | None = None,
        options: HostOptions | None = None,
        pidfile: Path | None = None,
        hooks: Sequence[object] = (),
    ) -> None:
        self.path = Path(path)
        self.pidfile = pidfile
        self.metrics = Metrics()
        self.user_hooks = tuple(hooks)
        # Counting calls is a wrapper around each; without an endpoint nobody reads the counts,
        # so calls skip pluggy (fixed at start, as the metrics address is).
        self._count_calls: bool | None = None
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._hooks: dict[int, _HealthHooks] = {}
        self.reloader = Reloader(
            self.path,
            options or HostOptions(),
            self._register,
            self._swapped,
            self._grace,
        )
        gen = self.reloader.first()
        self._attach(gen)
        self.settings = gen.config.serve
        self.address = address or self.settings.address
        self._configure_access_log(self.settings.access_log)
        self.server: grpc.Server | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self._metrics_server: Any = None

    # -- generations -------------------------------------------------------------------------

    def _register(self, host: Host, previous: Generation | None) -> None:
        hooks = _HealthHooks(self)
        self._hooks[id(host)] = hooks
        host.register(hooks)
        for user_hooks in self.user_hooks:
            host.register(user_hooks)
        if self._count_calls is None:
            self._count_calls = bool(host.config.serve.metrics_address)
        # last, so it wraps the user's wrappers too: the latency is all the call cost
        host.register(self.metrics.hooks(calls=self._count_calls))

    def _attach(self, gen: Generation) -> None:
        hooks = self._hooks.pop(id(gen.host), None)
        if hooks is not None:
            hooks.generation = gen

    def _swapped(self, old: Generation, new: Generation) -> None:
        self._attach(new)
        for name in set(old.proxies) - set(new.proxies):
            self.metrics.plugin_pid(name, None)
        self._set_all_health(new)
        now, was = new.config.serve, self.settings
        fixed = ("address", "workers", "tls_cert", "tls_key", "metrics_address")
        for name in fixed:
            if getattr(now, name) != getattr(was, name):
                key = "metrics.address" if name == "metrics_address" else f"grpc.{name}"
                log.warning("reload: %s changed; it applies after a restart", key)
        self.settings = dataclasses.replace(
            was, access_log=now.access_log, shutdown_grace=now.shutdown_grace
        )
        self._configure_access_log(now.access_log)
        self.metrics.reloads.labels("swapped").inc()

    def _grace(self) -> float:
        return self.settings.shutdown_grace

    def set_health(self, service: str, *, serving: bool) -> None:
        """Set the health of ``service``'s CS3 API, and the server's overall health."""
        api = _cs3.APIS.get(service)
        if api is not None:
            self.health.set(api, SERVING if serving else NOT_SERVING)

    def _set_all_health(self, gen: Generation) -> None:
        for api in _cs3.APIS.values():
            served = any(_cs3.APIS[name] == api for name in gen.proxies)
            self.health.set(
                api, SERVING if served else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
        self.health.set("", SERVING)

    def _configure_access_log(self, level: str) -> None:
        self._access_level = _LEVELS.get(level)
        access.disabled = self._access_level is None

    # -- RPCs ----------------------------------------------------------------------------------

    def _handler(self, rpc: _cs3.Rpc) -> Callable[[Any, grpc.ServicerContext], Any]:
        metrics = self.metrics
        reloader = self.reloader

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            began = time.perf_counter()
            gen = reloader.current
            assert gen is not None
            gen.enter()
            try:
                proxy = gen.proxies.get(rpc.service)
                if proxy is None:  # a reload dropped the service; this API is going away
                    raise _cs3.Unserved(rpc.service)

                def invoke(method: str, params: dict[str, Any]) -> Any:
                    remaining = context.time_remaining()
                    timeout = None
                    if remaining is not None and remaining < _config.TIMEOUT_SECONDS[1]:
                        timeout = max(remaining, _config.TIMEOUT_SECONDS[0])
                    return proxy.call(method, params, timeout=timeout)

                response = _cs3.convert(rpc, invoke, request)
                code = code_pb2.CODE_OK
            except Exception as exc:  # noqa: BLE001 (every failure is a CS3 status)
                code, message = _cs3.error_status(rpc, exc)
                first = str(exc).splitlines()[0] if str(exc) else ""
                log.log(
                    logging.ERROR if code in _SERVER_FAULTS else logging.DEBUG,
                    "%s %s: %s: %s",
                    rpc.api,
                    rpc.name,
                    type(exc).__name__,
                    redact(first[:500]),
                )
                response = _cs3.failed(rpc, code, message)
            finally:
                gen.leave()
            seconds = time.perf_counter() - began
            outcome = _cs3.CODE_NAMES.get(code, str(code))
            metrics.rpc_answered(rpc.api, rpc.name, outcome)
            if self._access_level is not None and access.isEnabledFor(self._access_level):
                self._log_access(gen, rpc, outcome, seconds, context)
            return response

        return handle

    def _log_access(
        self,
        gen: Generation,
        rpc: _cs3.Rpc,
        outcome: str,
        seconds: float,
        context: grpc.ServicerContext,
    ) -> None:
        pid = self.metrics.pids().get(rpc.service, 0)
        fields = {
            "service": rpc.api,
            "method": rpc.name,
            "status": outcome,
            "duration_ms": round(seconds * 1000, 3),
            "plugin_pid": pid,
            "generation": gen.number,
            "peer": context.peer(),
        }
        assert self._access_level is not None
        access.log(
            self._access_level,
            " ".join(f"{k}={v}" for k, v in fields.items()),
            extra={"rpc": fields},
        )

    def _generic_handlers(self, gen: Generation) -> list[grpc.GenericRpcHandler]:
        handlers: list[grpc.GenericRpcHandler] = []
        for api in _cs3.APIS.values():
            methods = {
                rpc.name: grpc.unary_unary_rpc_method_handler(
                    self._handler(rpc),
                    request_deserializer=rpc.request.FromString,
                    response_serializer=rpc.response.SerializeToString,
                )
                for rpc in _cs3.RPCS
                if rpc.api == api
            }
            handlers.append(grpc.method_handlers_generic_handler(api, methods))
        return handlers

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving (and the metrics endpoint, if configured)."""
        gen = self.reloader.current
        assert gen is not None
        for name in unserved_tables(gen.config):
            log.info("[grpc.services.%s]: no CS3 API served by reva-plugins; skipped", name)
        if not gen.proxies:
            raise ConfigError(
                f"no service to serve (configure one of: {', '.join(_cs3.APIS)})",
                file=str(self.path),
            )
        settings = self.settings
        executor = futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="rpc"
        )
        server = grpc.server(
            executor,
            handlers=self._generic_handlers(gen),
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [*_cs3.APIS.values(), health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        self._set_all_health(gen)
        credentials = self._credentials()
        try:
            if credentials is None:
                self.port = server.add_insecure_port(self.address)
            else:
                self.port = server.add_secure_port(self.address, credentials)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen on {self.address}: {exc}", key="grpc.address"
            ) from None
        if not self.port:
            raise ConfigError(f"cannot listen on {self.address}", key="grpc.address")
        server.start()
        self.server = server
        if settings.metrics_address:
            self._start_metrics(settings.metrics_address)
        served = ", ".join(f"{n} as {_cs3.APIS[n]}" for n in served_services(gen.config))
        host = self.address.rpartition(":")[0]
        log.info(
            "serving %s on %s:%d (%s)",
            served or "no service",
            host,
            self.port,
            "TLS" if credentials else "plaintext",
        )
        if self.pidfile is not None:
            _write_pidfile(self.pidfile)

    def _credentials(self) -> grpc.ServerCredentials | None:
        s = self.settings
        if s.tls_cert is None or s.tls_key is None:
            return None
        cert = _read_pem(s.tls_cert, "grpc.tls_cert", self.path)
        key = _read_pem(s.tls_key, "grpc.tls_key", self.path)
        return grpc.ssl_server_credentials([(key, cert)])

    def _start_metrics(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        bind = host.strip("[]") or "0.0.0.0"  # noqa: S104 (as the operator wrote it)
        handler = MetricsHandler.factory(self.metrics.registry)
        try:
            server = (_HTTPServer6 if ":" in bind else ThreadingHTTPServer)(
                (bind, int(port)), handler
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {address}: {exc.strerror}", key="metrics.address"
            ) from None
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        self._metrics_server = server
        self.metrics_port = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)

    def request_reload(self) -> None:
        """Reload in the background (what SIGHUP does)."""
        threading.Thread(target=self.reload, name="reload", daemon=True).start()

    def reload(self) -> str:
        """Reload now: build the next generation, swap it in, drain the previous one."""
        result = self.reloader.reload()
        if result in ("failed", "unchanged"):
            self.metrics.reloads.labels(result).inc()
        return result

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let those in flight end within the grace, close the plugins."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self.health.enter_graceful_shutdown()
        if self.server is not None:
            log.info("shutting down: draining RPCs in flight (up to %g s)", grace)
            self.server.stop(grace).wait()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        gen = self.reloader.current
        if gen is not None:
            gen.host.close()
        if self.pidfile is not None:
            _remove_pidfile(self.pidfile)
        log.info("stopped")

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; SIGHUP reloads. Call from the main thread."""
        received: list[int] = []

        def on_signal(signum: int, frame: object) -> None:
            if signum == signal.SIGHUP:
                self._reload_requested.set()
            else:
                received.append(signum)
                self._stop.set()

        previous = {
            sig: signal.signal(sig, on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            self.start()
            while not self._stop.is_set():
                if self._reload_requested.wait(0.5):
                    self._reload_requested.clear()
                    log.info("SIGHUP: reloading %s", self.path)
                    self.request_reload()
            log.info("%s received", signal.Signals(received[0]).name if received else "stop")
        finally:
            try:
                self.stop()  # a second SIGTERM while draining changes nothing
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)


class _HTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


_SERVER_FAULTS = (code_pb2.CODE_INTERNAL, code_pb2.CODE_UNAVAILABLE)


def _write_pidfile(path: Path) -> None:
    """Write our pid; never through a symlink (someone else's file) or into a non-file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        raise UsageError(f"--pidfile {path}: cannot write it: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"--pidfile {path}: not a regular file")
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    finally:
        os.close(fd)


def _remove_pidfile(path: Path) -> None:
    """Remove the pid file if it is still ours (another server may have taken the name)."""
    try:
        with open(path, "rb") as f:
            ours = f.read(64).strip() == str(os.getpid()).encode("ascii")
        if ours:
            path.unlink()
    except OSError:
        pass


def _read_pem(path: Path, key: str, config: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", file=str(config), key=key
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path} is not a regular file", file=str(config), key=key)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_PEM_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PEM_BYTES or b"-----BEGIN" not in data:
        raise ConfigError(f"{path} is not a PEM file", file=str(config), key=key)
    return data
