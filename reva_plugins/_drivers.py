"""Drivers: what a service proxy dispatches a call to. :class:`InProcessDriver` calls an entry
point loaded into the core; :class:`IsolatedDriver` sends the call to a plugin process kept
running by a :class:`~._supervisor.Supervisor`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any, Protocol

from . import _protocol
from ._call import Call
from ._errors import HandshakeError, RemoteError, RevaPluginError, remote_error
from ._plan import InProcessPlan, IsolatedPlan
from ._plugin_stderr import escape
from ._process import PluginProcess
from ._redact import redact
from ._supervisor import ServiceState, Supervisor

log = logging.getLogger("reva_plugins.host")


@dataclass(frozen=True)
class ServiceInfo:
    """What runs a service now (``ServiceProxy.info()``): a snapshot, for status pages,
    metrics and tests."""

    service: str
    #: ``in-process``, or the source kind of the plugin's env (``folder``, ``wheel``, ``venv`` …)
    kind: str
    state: ServiceState
    #: the plugin process's id while it runs; None in-process or when no process runs
    pid: int | None
    #: the env in the cache (None in-process and for a prebuilt venv)
    env_key: str | None
    #: the interpreter the driver runs on
    python: str
    #: the entry point, and the distribution and version that declare it
    entry_point: str
    distribution: str
    version: str
    #: seconds since the running process started (in-process: since the driver loaded)
    uptime: float | None
    #: how many times the plugin was restarted after a crash
    restarts: int
    calls_in_flight: int
    #: what confines the plugin: ``landlock ABI 7``, ``off`` (in-process drivers too) or
    #: ``unavailable: why``
    sandbox: str = _protocol.SANDBOX_OFF


class Driver(Protocol):
    """What a proxy dispatches to: a driver in this process or in a plugin process."""

    kind: str

    def start(self) -> dict[str, Any]:
        """Load or start the driver unless it runs (idempotent); return what it says about
        itself (the handshake)."""
        ...

    def invoke(self, call: Call) -> Any:
        """Make ``call``, starting the driver first if need be; its ``cancellation`` fired
        meanwhile ends it with :class:`CallCancelled`."""
        ...

    async def ainvoke(self, call: Call) -> Any:
        """:meth:`invoke` for a coroutine: never blocks the running event loop."""
        ...

    def ping(self) -> float:
        """A health round trip, in milliseconds."""
        ...

    def info(self) -> ServiceInfo:
        """What runs now; never starts anything."""
        ...

    def close(self) -> None:
        """Stop the driver."""
        ...


class InProcessDriver:
    """An entry point loaded into the core; its exceptions are typed like remote ones."""

    kind = "in-process"

    def __init__(self, plan: InProcessPlan, label: str) -> None:
        self.plan = plan
        self.label = label
        self._obj: Any = None
        self._methods: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()
        self._loaded_at: float | None = None
        # one item per call in flight: deque appends and pops are atomic, a counter is not
        self._active: collections.deque[None] = collections.deque()

    def start(self) -> dict[str, Any]:
        """Import the entry point, instantiate it and configure it once."""
        with self._lock:
            if self._obj is None:
                ep = self.plan.entry_point
                ep_obj = importlib_metadata.EntryPoint(ep.name, ep.value, self.plan.service.group)
                try:
                    target = ep_obj.load()
                    obj = target() if callable(target) else target
                    configure = getattr(obj, "configure", None)
                    if callable(configure):
                        configure(dict(self.plan.config))
                except Exception as exc:
                    raise _typed(exc, self.label) from exc
                self._obj = obj
                self._loaded_at = time.time()
        ep = self.plan.entry_point
        methods = sorted(
            n for n in dir(self._obj) if not n.startswith("_") and callable(getattr(self._obj, n))
        )
        return {
            "entry_point": ep.name,
            "distribution": ep.distribution,
            "version": ep.version,
            "methods": methods,
        }

    def invoke(self, call: Call) -> Any:
        """Call the method directly; neither a timeout nor a cancellation can interrupt
        in-process code (one cancelled already stops the call before it starts)."""
        cancellation = call.cancellation
        if cancellation is not None and cancellation.cancelled:
            raise call.cancelled(self.label)
        func = self._methods.get(call.method) or self._method(call.method)
        active = self._active
        active.append(None)
        try:
            return func(**call.params)
        except Exception as exc:
            raise _typed(exc, self.label) from exc
        finally:
            active.pop()

    async def ainvoke(self, call: Call) -> Any:
        """In-process code may block: it runs in a worker thread (which sees the caller's
        context variables). Nothing can interrupt it: a task cancelled meanwhile ends when the
        code returns (so whoever waits for its calls to end, a drain, waits for it too)."""
        return await uninterruptible(self.invoke, call)

    def _method(self, method: str) -> Callable[..., Any]:
        if self._obj is None:
            self.start()
        func: Callable[..., Any] | None = getattr(self._obj, method, None)
        if not callable(func):
            raise RemoteError(
                f"method not found: {method}", type="MethodNotFound", plugin=self.label
            )
        self._methods[method] = func
        return func

    def ping(self) -> float:
        """Nothing to round-trip: the driver is loaded or not."""
        self.start()
        return 0.0

    def info(self) -> ServiceInfo:
        """The driver runs in this process, on this interpreter."""
        ep = self.plan.entry_point
        loaded = self._loaded_at
        return ServiceInfo(
            service=self.plan.service.name,
            kind=self.kind,
            state="running" if self._obj is not None else "stopped",
            pid=None,
            env_key=None,
            python=sys.executable,
            entry_point=ep.name,
            distribution=ep.distribution,
            version=ep.version,
            uptime=None if loaded is None or self._obj is None else time.time() - loaded,
            restarts=0,
            calls_in_flight=len(self._active),
        )

    def close(self) -> None:
        """Drop the object."""
        with self._lock:
            self._obj = None
            self._methods = {}


async def uninterruptible(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` in a worker thread (seeing the caller's context variables), awaited; a
    task cancelled meanwhile is cancelled once the call has returned, not before."""
    call = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await call
        raise


def _typed(exc: Exception, label: str) -> RevaPluginError:
    if isinstance(exc, RevaPluginError):
        return exc
    return remote_error(str(exc) or type(exc).__name__, type_name=type(exc).__name__, plugin=label)


class IsolatedDriver:
    """A plugin in its own venv and process, kept alive by a :class:`Supervisor`.

    ``rebuild`` re-plans the service (building its env again) and returns a new supervisor; it
    is used once per failed start whose cause is the env's interpreter gone from the cache.
    """

    def __init__(
        self,
        plan: IsolatedPlan,
        supervisor: Supervisor,
        rebuild: Callable[[], tuple[IsolatedPlan, Supervisor]],
    ) -> None:
        self.plan = plan
        self.kind = plan.kind
        self.supervisor = supervisor
        self._rebuild = rebuild
        self._rebuild_lock = threading.Lock()

    def _started(self) -> PluginProcess:
        """The running process, started (or restarted) if need be; rebuilt if its env is gone."""
        supervisor = self.supervisor
        try:
            return supervisor.start()
        except HandshakeError:
            gone = self.plan.env_key is not None and not self.plan.launch.python.exists()
            if not gone:
                raise
        with self._rebuild_lock:
            if self.supervisor is supervisor:  # not already rebuilt by another thread
                log.warning(
                    "%s: its env %s is gone from the cache; rebuilding it",
                    redact(self.plan.launch.label),
                    self.plan.env_key,
                )
                self.plan, self.supervisor = self._rebuild()
                supervisor.close()
        return self.supervisor.start()

    def start(self) -> dict[str, Any]:
        """Start the process (if not running) and return its handshake."""
        return self._started().handshake

    def invoke(self, call: Call) -> Any:
        """Send the call over the wire."""
        process = self.supervisor.current  # running() inline: every call's path
        if process is None or not process.alive:
            process = self._started()
        return process.invoke(call)

    async def ainvoke(self, call: Call) -> Any:
        """Send the call over the wire from the event loop; a start (or restart, or rebuild)
        that has to wait for a process waits in a worker thread."""
        process = self.supervisor.running()
        if process is None:
            process = await asyncio.to_thread(self._started)
        return await process.ainvoke(call)

    def ping(self) -> float:
        """Round-trip ``$/ping``."""
        return self._started().ping()

    def info(self) -> ServiceInfo:
        """The supervisor's state and its current process."""
        launch = self.plan.launch
        supervisor = self.supervisor
        process = supervisor.process
        running = process is not None and process.alive
        handshake = process.handshake if process is not None else {}
        return ServiceInfo(
            service=launch.service,
            kind=self.kind,
            state=supervisor.state,
            pid=process.pid if running and process is not None else None,
            env_key=self.plan.env_key,
            python=str(launch.python),
            entry_point=str(launch.entry.get("name") or handshake.get("entry_point", "")),
            distribution=str(launch.entry.get("distribution") or handshake.get("distribution", "")),
            version=str(launch.entry.get("version") or handshake.get("version", "")),
            uptime=time.time() - process.started_at if running and process is not None else None,
            restarts=supervisor.restarts,
            calls_in_flight=process.calls_in_flight if running and process is not None else 0,
            # before a start: what is planned ("landlock": its ABI is known once it runs); the
            # handshake's words are the plugin's (its code may write the first line): escaped
            sandbox=escape(str(handshake.get("sandbox") or "landlock"))
            if launch.sandbox
            else launch.sandbox_state,
        )

    def close(self) -> None:
        """Shut the process down."""
        self.supervisor.close()
