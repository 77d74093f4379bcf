"""``reva-plugins serve``: the configured services as CS3 gRPC services, with health checking,
reflection, metrics, an access log, an admin API, graceful shutdown and zero-downtime reload.

The gRPC server is grpcio's asyncio flavour, on an event loop of its own thread: an RPC awaits
its plugin call on that loop (``ServiceProxy.acall``), which writes the request and reads the
reply itself, so no RPC costs a thread hand-off on the way to the plugin and back. Everything
that may block (a reload, the admin API's answers, a plugin's start or restart, in-process
drivers) runs in the loop's worker threads; the rest of this class is plain threads, as before.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from cs3.rpc.v1beta1 import code_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from .. import _config, _defaults
from .._errors import CallCancelled, CallTimeout, RevaPluginError
from .._hooks import hookimpl
from .._host import Host
from .._plugin_stderr import escape
from .._redact import redact
from . import _cs3
from ._admin import ADMIN_API, AdminAPI, describe_admin_api
from ._commands import is_server_pid
from ._files import (
    check_free,
    check_key_pair,
    check_pidfile,
    listen_error,
    read_config_pem,
    remove_pidfile,
    write_pidfile,
)
from ._log import log_fields
from ._loop import EventLoopThread
from ._metrics import METRICS_CONNECTIONS, Metrics, MetricsHTTPServer, serve_metrics
from ._reload import (
    Backend,
    Generation,
    HostOptions,
    Outcome,
    Reloader,
    require_served,
    unserved_tables,
)
from ._siblings import ControlServer, WorkerRole

__all__ = ["ADMIN_API", "METRICS_CONNECTIONS", "Server"]

log = logging.getLogger("reva_plugins.serve")
access = logging.getLogger("reva_plugins.serve.access")
#: the metrics endpoint moved to ``_metrics``; the names tests and embedders used stay
_MetricsHTTPServer = MetricsHTTPServer

#: The largest request accepted, in bytes: CS3 identity requests are a few hundred bytes.
MAX_REQUEST_BYTES = 1 << 20
#: Seconds between the main thread's looks at the signals received (SIGHUP, SIGTERM, SIGINT).
SIGNAL_POLL = 0.05
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_OK = code_pb2.CODE_OK
_SERVER_FAULTS = (code_pb2.CODE_INTERNAL, code_pb2.CODE_UNAVAILABLE)


class _HealthHooks:
    """Lifecycle hooks of one backend's host: a crashed plugin's API is NOT_SERVING until its
    restart (started here at once, with the supervisor's backoff) completes."""

    def __init__(self, server: Server, service: str, host: Host) -> None:
        self.server = server
        self.service = service
        self.host = host

    @hookimpl
    def plugin_started(self, service: str) -> None:
        """The plugin answers again: its API serves."""
        if self._current() is not None:
            self.server.set_health(service, serving=True)

    @hookimpl
    def plugin_exited(self, service: str, pid: int, returncode: int | None, expected: bool) -> None:
        """A crash: NOT_SERVING, and restart it in the background."""
        backend = self._current()
        if expected or backend is None:
            return
        log.warning("%s plugin (pid %d) exited unexpectedly; restarting it", service, pid)
        self.server.set_health(service, serving=False)
        threading.Thread(
            target=self._restart, args=(backend,), name=f"restart-{service}", daemon=True
        ).start()

    def _current(self) -> Backend | None:
        """This hook's backend if it is the one serving now (not one being built or retired)."""
        gen = self.server.reloader.current
        backend = None if gen is None else gen.backends.get(self.service)
        return backend if backend is not None and backend.host is self.host else None

    def _restart(self, backend: Backend) -> None:
        try:
            backend.proxy.start()
        except RevaPluginError as exc:
            if self._current() is not None:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.error("%s stays NOT_SERVING: %s", self.service, escape(redact(first)))


class Server:
    """The gRPC server for one config file; :meth:`run` serves until SIGTERM/SIGINT.

    Making one reads and validates the config (a :class:`ConfigError` at once); :meth:`start`
    binds the ports first and only then builds the envs and starts the plugins, so a port
    already taken fails in a second. ``address`` overrides ``[grpc] address`` (the command
    line's ``--address``). ``hooks`` are host hook objects (``service_call`` wrappers,
    lifecycle hooks; see ``reva_plugins._hooks``) registered on every host the server makes,
    at start and on each reload, before any of its plugins starts. ``worker`` makes it one of
    the worker processes of ``[grpc] processes`` (see ``_workers``): it shares the port the
    parent reserved, leaves the pid file and the metrics endpoint to the parent, and answers
    the admin API for its siblings too.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        address: str | None = None,
        options: HostOptions | None = None,
        pidfile: Path | None = None,
        hooks: Sequence[object] = (),
        worker: WorkerRole | None = None,
    ) -> None:
        self.path = Path(path)
        self.pidfile = None if worker is not None else pidfile
        self.worker = worker
        self._control: ControlServer | None = None
        self.metrics = Metrics()
        self.user_hooks = tuple(hooks)
        self.config = _config.load_file(self.path)
        self.settings = self.config.serve
        self.address = address or self.settings.address
        #: how messages name where the address came from
        self.address_source = "--address" if address else "grpc.address"
        # Counting calls is a wrapper around each; without an endpoint nobody reads the counts,
        # so calls skip pluggy (fixed at start, as the metrics address is).
        self._count_calls = bool(self.settings.metrics_address)
        self.health = health.aio.HealthServicer()
        self.loop = EventLoopThread()
        self._started_at = time.time()
        self.reloader = Reloader(
            self.path, options or HostOptions(), self._register, self._swapped, self._grace
        )
        self._configure_access_log(self.settings.access_log)
        self.server: grpc.aio.Server | None = None
        #: the CS3 APIs this server has served (a dropped one answers UNAVAILABLE; the others
        #: are not registered at all: UNIMPLEMENTED, and not listed by reflection)
        self._apis: set[str] = set()
        self._reflection: Any = None
        self._slots: asyncio.Semaphore | None = None  # RPCs served at once (``workers``)
        self.port = 0
        self.metrics_port: int | None = None
        self._metrics_server: Any = None

    # -- generations -------------------------------------------------------------------------

    def _register(self, host: Host, service: str) -> None:
        host.register(_HealthHooks(self, service, host))
        for user_hooks in self.user_hooks:
            host.register(user_hooks)
        # last, so it wraps the user's wrappers too: the latency is all the call cost
        host.register(self.metrics.hooks(calls=self._count_calls))

    def _swapped(self, old: Generation, new: Generation, fresh: tuple[str, ...]) -> None:
        self._serve_apis(new)
        for name in set(old.backends) - set(new.backends):
            self.metrics.plugin_pid(name, None)
        for name, api in _cs3.APIS.items():
            if name not in new.backends:
                self._health(api, SERVICE_UNKNOWN)
            elif name in fresh:  # started and pinged; a kept backend's health stays as it is
                self._health(api, SERVING)
        now, was = new.config.serve, self.settings
        fixed = ("address", "workers", "processes", "tls_cert", "tls_key", "metrics_address")
        for name in fixed:
            if getattr(now, name) != getattr(was, name):
                key = "metrics.address" if name == "metrics_address" else f"grpc.{name}"
                log.warning("reload: %s changed; it applies after a restart", key)
        self.settings = dataclasses.replace(
            was, access_log=now.access_log, shutdown_grace=now.shutdown_grace
        )
        self._configure_access_log(now.access_log)

    def _reflected(self) -> list[str]:
        return [*sorted(self._apis), ADMIN_API, health.SERVICE_NAME, reflection.SERVICE_NAME]

    def _serve_apis(self, gen: Generation) -> None:
        """Register the CS3 APIs of ``gen``'s services (kept once registered: a service a
        reload drops answers UNAVAILABLE, as its clients may still call it)."""
        self._apis.update(_cs3.APIS[name] for name in gen.backends)
        if self._reflection is not None:
            # the servicer keeps the names it lists in this attribute (sorted, as it does)
            self._reflection._service_names = tuple(sorted(self._reflected()))

    def _grace(self) -> float:
        return self.settings.shutdown_grace

    def set_health(self, service: str, *, serving: bool) -> None:
        """Set the health of ``service``'s CS3 API."""
        api = _cs3.APIS.get(service)
        if api is not None:
            self._health(api, SERVING if serving else NOT_SERVING)

    def _health(self, api: str, status: Any) -> None:
        """Set ``api``'s health on the loop (from any thread; in order, without waiting)."""
        self.loop.submit(self.health.set(api, status))

    def _set_all_health(self, gen: Generation) -> None:
        for name, api in _cs3.APIS.items():
            self._health(api, SERVING if name in gen.backends else SERVICE_UNKNOWN)
        self._health("", SERVING)

    def _configure_access_log(self, level: str) -> None:
        self._access_level = _LEVELS.get(level)
        access.disabled = self._access_level is None

    # -- RPCs ----------------------------------------------------------------------------------

    def _handler(
        self, rpc: _cs3.Rpc
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        metrics = self.metrics
        reloader = self.reloader
        service = rpc.service
        convert = _cs3.convert
        ok_name = _cs3.CODE_NAMES[_OK]
        low, high = _defaults.TIMEOUT_BOUNDS

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            timed = self._access_level is not None
            began = time.perf_counter() if timed else 0.0
            gen, code, response = await self._in_turn(rpc, serve, request, context)
            if code == _OK and response.ByteSize() > _defaults.SERVE_MAX_RESPONSE_BYTES:
                code, response = _too_large(rpc, response.ByteSize())
            outcome = ok_name if code == _OK else _cs3.CODE_NAMES.get(code, str(code))
            metrics.rpc_answered(rpc.api, rpc.name, outcome)
            if timed and access.isEnabledFor(self._access_level or 0):
                self._log_access(gen, rpc, outcome, time.perf_counter() - began, context)
            if response is None:  # the client cancelled, or its deadline passed
                raise asyncio.CancelledError
            return response

        async def serve(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> tuple[Generation, int, Any]:
            while True:
                gen = reloader.current
                assert gen is not None
                backend = gen.backends.get(service)
                # False: a reload retired it after we read the generation; the one it
                # installed first has its successor
                if backend is None or backend.enter():
                    break
            try:
                if backend is None:  # a reload dropped the service; this API is going away
                    raise _cs3.Unserved(service)
                acall = backend.proxy.acall

                async def invoke(method: str, params: dict[str, Any]) -> Any:
                    # the client's deadline bounds the call; the core caps it at call_timeout
                    remaining = context.time_remaining()
                    timeout = None
                    if remaining is not None and remaining < high:
                        timeout = remaining if remaining > low else low
                    return await acall(method, params, timeout=timeout)

                return gen, _OK, await convert(rpc, invoke, request)
            except asyncio.CancelledError:  # the plugin call was cancelled too ($/cancel)
                return gen, _cancelled_code(rpc, context), None
            except Exception as exc:  # noqa: BLE001 (every failure is a CS3 status)
                code, message = _cs3.error_status(rpc, exc)
                first = str(exc).splitlines()[0] if str(exc) else ""
                log.log(
                    logging.ERROR if code in _SERVER_FAULTS else logging.DEBUG,
                    "%s %s: %s: %s",
                    rpc.api,
                    rpc.name,
                    type(exc).__name__,
                    escape(redact(first[:500])),  # a plugin's text: never raw in the log
                )
                return gen, code, _cs3.failed(rpc, code, message)
            finally:
                if backend is not None:
                    backend.leave()

        return handle

    async def _in_turn(
        self,
        rpc: _cs3.Rpc,
        serve: Callable[[Any, Any], Awaitable[tuple[Generation, int, Any]]],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[Generation, int, Any]:
        """``serve`` the RPC once one of the ``workers`` slots is free."""
        slots = self._slots
        assert slots is not None
        try:
            await slots.acquire()
        except asyncio.CancelledError:  # ended while every slot was busy: counted too
            gen = self.reloader.current
            assert gen is not None
            return gen, _cancelled_code(rpc, context), None
        try:
            return await serve(request, context)
        finally:
            slots.release()

    def _log_access(
        self,
        gen: Generation,
        rpc: _cs3.Rpc,
        outcome: str,
        seconds: float,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        fields = {
            "service": rpc.api,
            "method": rpc.name,
            "status": outcome,
            "duration_ms": round(seconds * 1000, 3),
            "plugin_pid": self.metrics.pid(rpc.service),
            "generation": gen.number,
            "peer": context.peer(),
        }
        assert self._access_level is not None
        log_fields(access, self._access_level, fields)

    def _generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        methods = {
            f"/{rpc.api}/{rpc.name}": grpc.unary_unary_rpc_method_handler(
                self._handler(rpc),
                request_deserializer=rpc.request.FromString,
                response_serializer=rpc.response.SerializeToString,
            )
            for rpc in _cs3.RPCS
        }
        handlers: list[grpc.GenericRpcHandler] = [_ServedApis(methods, self._apis)]
        handlers.append(AdminAPI(self).handler())
        return handlers

    # -- the admin API -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What runs now: the server, each service's backend, and the metrics text; of every
        worker process (``workers``, by index) when there are several."""
        return AdminAPI(self).status()

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the ports, then build the envs and start the plugins, then serve.

        On failure everything it opened is closed again (no plugin is left running) and the
        error raised: a :class:`ConfigError`/:class:`UsageError` for a port that is taken.
        """
        config = self.config
        for name in unserved_tables(config):
            log.info("[grpc.services.%s]: no CS3 API served by reva-plugins; skipped", name)
        require_served(config, self.path)
        settings = self.settings
        credentials = self._credentials()
        if self.pidfile is not None:  # before anything binds: refused in its one line
            check_pidfile(self.pidfile, is_server_pid)
        if self.worker is None:  # a worker's parent checked them and holds the port
            check_free(self.address, self.address_source)
            if settings.metrics_address:
                check_free(settings.metrics_address, "metrics.address")
        self.loop.start(workers=settings.workers)
        try:
            server = self.loop.run(self._make_server(credentials))
        except BaseException:
            self.loop.stop()
            raise
        try:
            if settings.metrics_address and self.worker is None:
                self._start_metrics(settings.metrics_address)
            if self.pidfile is not None:
                write_pidfile(self.pidfile, is_server_pid)
            gen = self.reloader.first(config)
        except BaseException:
            self.loop.run(server.stop(None))
            self.loop.stop()
            self._close_metrics()
            if self.pidfile is not None:
                remove_pidfile(self.pidfile)
            raise
        self._serve_apis(gen)
        self._set_all_health(gen)
        self.loop.run(server.start())
        self.server = server
        if self.worker is not None:  # last: its socket appearing tells the parent it serves
            self._control = ControlServer(self.worker, AdminAPI(self).answer)
            self._control.start()
        served = ", ".join(f"{n} as {_cs3.APIS[n]}" for n in gen.backends)
        log.info(
            "serving %s on %s:%d (%s)",
            served,
            self.address.rpartition(":")[0],
            self.port,
            "TLS" if credentials else "plaintext",
        )

    async def _make_server(self, credentials: grpc.ServerCredentials | None) -> grpc.aio.Server:
        """The server with every service on it, bound (on the loop: grpc.aio wants one)."""
        self._slots = asyncio.Semaphore(self.settings.workers)
        server = grpc.aio.server(
            handlers=self._generic_handlers(),
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                # a worker process shares the port with its siblings; else a port in use
                # must fail the bind, not be shared
                ("grpc.so_reuseport", 0 if self.worker is None else 1),
            ],
        )
        try:
            self._bind(server, credentials)
        except BaseException:
            await server.stop(None)
            raise
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        describe_admin_api()
        self._reflection = reflection_aio.ReflectionServicer(self._reflected())
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(self._reflection, server)
        return server

    def _bind(self, server: grpc.aio.Server, credentials: grpc.ServerCredentials | None) -> None:
        try:
            if credentials is None:
                self.port = server.add_insecure_port(self.address)
            else:
                self.port = server.add_secure_port(self.address, credentials)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise listen_error(self.address, self.address_source, "the port is not available")

    def _credentials(self) -> grpc.ServerCredentials | None:
        s = self.settings
        if s.tls_cert is None or s.tls_key is None:
            return None
        check_key_pair(s.tls_cert, s.tls_key, self.path)
        cert = read_config_pem(s.tls_cert, "grpc.tls_cert", self.path)
        key = read_config_pem(s.tls_key, "grpc.tls_key", self.path)
        return grpc.ssl_server_credentials([(key, cert)])

    def _start_metrics(self, address: str) -> None:
        host = address.rpartition(":")[0]
        server = serve_metrics(address, self.metrics.registry)
        self._metrics_server = server
        self.metrics_port = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)

    def _close_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

    def request_reload(self) -> None:
        """Reload in the background (what SIGHUP does)."""
        threading.Thread(target=self.reload, name="reload", daemon=True).start()

    def reload(self) -> Outcome:
        """Reload now: re-read the config, replace the services that changed or failed, drain
        what they replaced; returns what happened (requests made meanwhile are coalesced)."""
        outcome = self.reloader.reload()
        self.metrics.reloads.labels(outcome.result).inc()
        return outcome

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let those in flight end within the grace, close the plugins."""
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.server is not None:
            self.loop.run(self.health.enter_graceful_shutdown())
            log.info("shutting down: draining RPCs in flight (up to %g s)", grace)
            self.loop.run(self.server.stop(grace))
        self._close_metrics()
        self.reloader.close()
        self.loop.stop()  # after the hosts: their plugins' sockets leave the loop first
        if self.pidfile is not None:
            remove_pidfile(self.pidfile)
        log.info("stopped")

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; SIGHUP reloads. Call from the main thread."""
        # The handler only appends (a deque's append takes no lock): it runs on the main thread
        # between two bytecodes, possibly while that thread holds the lock an Event's set()
        # would take, and then the server's main thread hung for good (seen in a SIGHUP storm:
        # reloads stopped, and SIGTERM went unheard).
        received: collections.deque[int] = collections.deque()

        def on_signal(signum: int, frame: object) -> None:
            received.append(signum)

        previous = {
            sig: signal.signal(sig, on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            self.start()  # cleans up after itself when it fails
            try:
                stopping = None
                while stopping is None:
                    time.sleep(SIGNAL_POLL)
                    reload = False
                    while received and stopping is None:
                        signum = received.popleft()
                        if signum == signal.SIGHUP:
                            reload = True
                        else:
                            stopping = signum
                    if reload and stopping is None:
                        log.info("SIGHUP: reloading %s", self.path)
                        self.request_reload()
                log.info("%s received", signal.Signals(stopping).name)
            finally:
                self.stop()  # a second SIGTERM while draining changes nothing
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _too_large(rpc: _cs3.Rpc, size: int) -> tuple[int, Any]:
    """The answer for a response a gRPC client would refuse as too large."""
    limit = _defaults.SERVE_MAX_RESPONSE_BYTES
    message = (
        f"the answer is {size / (1 << 20):.1f} MiB, more than the {limit >> 20} MiB a gRPC "
        "client takes; narrow the query"
    )
    log.warning("%s %s: %s", rpc.api, rpc.name, message)
    code = code_pb2.CODE_RESOURCE_EXHAUSTED
    return code, _cs3.failed(rpc, code, message)


def _cancelled_code(rpc: _cs3.Rpc, context: grpc.aio.ServicerContext[Any, Any]) -> int:
    """The status of an RPC that ended before its answer: a client that cancelled (time left
    on its deadline) is CODE_CANCELLED; a deadline that passed is a timeout."""
    remaining = context.time_remaining()
    late = remaining is not None and remaining <= _defaults.DEADLINE_SLACK
    error: Exception = (
        CallTimeout(f"{rpc.name}: the client's deadline passed", plugin=rpc.service)
        if late
        else CallCancelled(f"{rpc.name} was cancelled", plugin=rpc.service)
    )
    return _cs3.error_status(rpc, error)[0]


class _ServedApis(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The CS3 methods of the APIs in ``apis`` (a set the server adds to): a CS3 API with no
    configured service is not registered, as with revad (``UNIMPLEMENTED``)."""

    def __init__(self, methods: dict[str, grpc.RpcMethodHandler], apis: set[str]) -> None:
        self._methods = methods
        self._apis = apis

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """The handler of the method called, None if its API is not served."""
        method: str = handler_call_details.method
        handler = self._methods.get(method)
        if handler is None or method[1:].partition("/")[0] not in self._apis:
            return None
        return handler
