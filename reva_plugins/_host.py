"""The host: loads configured drivers and serves each service as a :class:`ServiceProxy`.

A call is a plain method call: ``proxy.get_user(uid)`` binds the arguments to the service's
signature and calls ``driver.invoke`` (in this process, or over the wire to a plugin process).
pluggy carries only the host's extension points (``_hooks``): lifecycle hooks, and the
``service_call`` hook that wraps calls when an application registered one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import pluggy

from . import _config, _hooks
from ._build import BuildProgress
from ._client import Cancellation
from ._defaults import DEADLINE_SLACK
from ._errors import (
    CallCancelled,
    CallTimeout,
    HandshakeError,
    RemoteError,
    RevaPluginError,
    UsageError,
    remote_error,
)
from ._hooks import PROJECT, HostSpec, hookimpl
from ._plan import InProcessPlan, IsolatedPlan, Plan, Planner
from ._process import PluginProcess, ServiceState, Supervisor
from ._redact import redact
from ._store import resolve_cache_dir
from .services import SERVICES, ServiceType

if TYPE_CHECKING:
    from pluggy import HookCaller

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


class Driver(Protocol):
    """What a proxy dispatches to: a driver in this process or in a plugin process."""

    kind: str

    def start(self) -> dict[str, Any]:
        """Load or start the driver unless it runs (idempotent); return what it says about
        itself (the handshake)."""
        ...

    def invoke(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """Call one method with keyword params, starting the driver first if need be; a
        ``cancellation`` fired meanwhile ends the call with :class:`CallCancelled`."""
        ...

    async def ainvoke(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
        cancellation: Cancellation | None = None,
    ) -> Any:
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

    def invoke(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """Call the method directly; neither ``timeout`` nor a ``cancellation`` can interrupt
        in-process code (one cancelled already stops the call before it starts)."""
        if cancellation is not None and cancellation.cancelled:
            raise CallCancelled(f"{method} was cancelled", plugin=self.label)
        func = self._methods.get(method) or self._method(method)
        active = self._active
        active.append(None)
        try:
            return func(**params)
        except Exception as exc:
            raise _typed(exc, self.label) from exc
        finally:
            active.pop()

    async def ainvoke(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """In-process code may block: it runs in a worker thread (which sees the caller's
        context variables). Nothing can interrupt it: a task cancelled meanwhile ends when the
        code returns (so whoever waits for its calls to end, a drain, waits for it too)."""
        return await uninterruptible(self.invoke, method, params, timeout, meta, cancellation)

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
        rebuild: Callable[[], tuple[IsolatedPlan, Supervisor]] | None = None,
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
            if self._rebuild is None or not gone:
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

    def invoke(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """Send the call over the wire."""
        return self._started().call(
            method, params, timeout=timeout, meta=meta, cancellation=cancellation
        )

    async def ainvoke(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """Send the call over the wire from the event loop; a start (or restart, or rebuild)
        that has to wait for a process waits in a worker thread."""
        process = self.supervisor.running()
        if process is None:
            process = await asyncio.to_thread(self._started)
        return await process.acall(
            method, params, timeout=timeout, meta=meta, cancellation=cancellation
        )

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
        )

    def close(self) -> None:
        """Shut the process down."""
        self.supervisor.close()


class _Binder:
    """Binds call arguments to a service method's parameters (a lean ``Signature.bind``)."""

    __slots__ = ("defaults", "label", "names", "nameset", "qualname", "tails")

    def __init__(self, qualname: str, sig: inspect.Signature, label: str) -> None:
        self.qualname = qualname
        self.label = label
        self.names = tuple(sig.parameters)
        self.nameset = frozenset(self.names)
        self.defaults = {
            n: p.default
            for n, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        # tails[k]: the defaults of the parameters after k positional arguments (None when one
        # of them has no default), so a positional call binds with one dict update.
        self.tails: tuple[dict[str, Any] | None, ...] = tuple(
            None
            if any(n not in self.defaults for n in self.names[k:])
            else {n: self.defaults[n] for n in self.names[k:]}
            for k in range(len(self.names) + 1)
        )

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``args`` and ``kwargs`` by parameter name, defaults filled in; UsageError if they do
        not fit the signature."""
        if not kwargs:
            if len(args) < len(self.tails) and (tail := self.tails[len(args)]) is not None:
                out = dict(zip(self.names, args, strict=False))
                out.update(tail)
                return out
        elif not args:
            out = {**self.defaults, **kwargs}
            if len(out) == len(self.names) and out.keys() <= self.nameset:
                return out
        return self._bind_or_fail(args, kwargs)

    def _bind_or_fail(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        names = self.names
        if len(args) > len(names):
            self._fail(f"takes {len(names)} arguments, {len(args)} given")
        out = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in self.nameset:
                self._fail(f"got an unexpected argument {name!r}")
            if name in out:
                self._fail(f"got multiple values for {name!r}")
            out[name] = value
        for name in names:
            if name not in out:
                if name not in self.defaults:
                    self._fail(f"is missing the argument {name!r}")
                out[name] = self.defaults[name]
        return out

    def _fail(self, message: str) -> NoReturn:
        raise UsageError(f"{self.qualname}() {message}", plugin=self.label)


class ServiceProxy:
    """A configured service: call its methods as attributes (``users.get_user(uid)``).

    A call binds its arguments to the service method's signature and hands them to the driver
    (``driver.invoke``); when the host has ``service_call`` hooks registered, they wrap it.
    """

    def __init__(
        self,
        service: ServiceType,
        driver: Driver,
        label: str,
        *,
        call_hook: HookCaller | None = None,
    ) -> None:
        self.service = service
        self.driver = driver
        self.label = label
        self._call_hook = call_hook
        self._binders = {
            name: _Binder(f"{service.name}.{name}", sig, label)
            for name, sig in service.signatures.items()
        }

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_") or method not in self.service.signatures:
            raise AttributeError(f"service {self.service.name} has no method {method!r}")
        bind = self._binders[method].bind
        invoke = self.driver.invoke
        name = self.service.name
        proxy = self

        def call(*args: Any, **kwargs: Any) -> Any:
            params = bind(args, kwargs)
            hook = proxy._call_hook
            if hook is None:
                return invoke(method, params, None, None)
            return hook(
                service=name,
                method=method,
                params=params,
                meta={},
                timeout=None,
                proxy=proxy,
                cancellation=None,
            )

        call.__name__ = method
        call.__doc__ = self.service.doc(method)
        call.__signature__ = self.service.signatures[method]  # type: ignore[attr-defined]
        self.__dict__[method] = call  # later lookups skip __getattr__
        return call

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.service.methods})

    def call(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """Call ``method`` with keyword ``params``. ``timeout`` (seconds) may shorten the driver's
        ``call_timeout``, never extend it; ``meta`` (caller context) reaches the plugin; a
        :class:`Cancellation` lets another thread end the call (:class:`CallCancelled`)."""
        arguments = self._bind(method, params)
        hook = self._call_hook
        if hook is None:
            return self.driver.invoke(method, arguments, timeout, meta or None, cancellation)
        return hook(
            service=self.service.name,
            method=method,
            params=arguments,
            meta=dict(meta) if meta else {},
            timeout=timeout,
            proxy=self,
            cancellation=cancellation,
        )

    def _bind(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        binder = self._binders.get(method)
        if binder is None:
            raise UsageError(
                f"service {self.service.name} has no method {method!r} "
                f"(methods: {', '.join(self.service.methods)})",
                plugin=self.label,
            )
        return binder.bind((), params)

    async def acall(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """:meth:`call` for asyncio code: awaits the reply without blocking the event loop.

        A plugin process is called from the loop itself (no thread per call); an in-process
        driver runs in a worker thread. ``service_call`` wrappers run on the loop around the
        awaited call, in the caller's context (e.g. a tracing span). A task cancelled while it
        awaits cancels the call in the plugin too (``$/cancel``)."""
        arguments = self._bind(method, params)
        hook = self._call_hook
        if hook is None:
            return await self.driver.ainvoke(method, arguments, timeout, meta or None, cancellation)
        began = time.monotonic()

        def cancelled() -> RevaPluginError:
            # cancelled at its deadline (by whoever set it): the call timed out
            if timeout is not None and time.monotonic() - began >= timeout - DEADLINE_SLACK:
                return CallTimeout(f"{method} timed out after {timeout:g} s", plugin=self.label)
            return CallCancelled(f"{method} was cancelled", plugin=self.label)

        sent: dict[str, Any] = dict(meta) if meta else {}  # wrappers may add to it
        kwargs = {
            "service": self.service.name,
            "method": method,
            "params": arguments,
            "meta": sent,
            "timeout": timeout,
            "proxy": self,
            "cancellation": cancellation,
        }
        return await _hooks.around(
            hook,
            kwargs,
            lambda: self.driver.ainvoke(method, arguments, timeout, sent or None, cancellation),
            innermost=lambda plugin: isinstance(plugin, _Invoke),
            cancelled=cancelled,
        )

    def start(self) -> ServiceInfo:
        """Start the driver unless it runs: import it (in-process) or spawn its plugin process and
        wait for the handshake (up to ``start_timeout``). Idempotent; a call does it implicitly.
        Raises what starting raised (e.g. :class:`HandshakeError`)."""
        self.driver.start()
        return self.driver.info()

    def ping(self) -> float:
        """A health round trip to the driver (starting it if need be), in milliseconds."""
        return self.driver.ping()

    def info(self) -> ServiceInfo:
        """What runs this service now; never starts anything."""
        return self.driver.info()


class _Invoke:
    """The innermost ``service_call`` implementation: the call itself."""

    @hookimpl(trylast=True)
    def service_call(
        self,
        method: str,
        params: dict[str, Any],
        meta: dict[str, Any],
        timeout: float | None,
        proxy: ServiceProxy,
        cancellation: Cancellation | None,
    ) -> Any:
        return proxy.driver.invoke(method, params, timeout, meta or None, cancellation)


@dataclass(frozen=True)
class ServiceCheck:
    """What checking one service found (:meth:`Host.check`): data, for a caller to present.

    ``error`` is None when the driver loaded, started and answered a ping; then ``info`` says
    what runs it. ``kind``/``env_key``/``built`` come from its plan (None/False when planning
    failed).
    """

    service: str
    #: the driver spec as configured (may hold credentials: redact before showing it)
    driver: str
    kind: str | None
    env_key: str | None
    built: bool
    info: ServiceInfo | None
    start_ms: float | None
    ping_ms: float | None
    error: RevaPluginError | None

    @property
    def ok(self) -> bool:
        """True when the service started and answered."""
        return self.error is None


class _HookManager(pluggy.PluginManager):
    """The host's plugin manager: tells the host when implementations come or go, however they
    were registered (``host.register``, ``host.hooks.register``, entry points)."""

    def __init__(self, changed: Callable[[], None]) -> None:
        super().__init__(PROJECT)
        self._changed = changed

    def register(self, plugin: object, name: str | None = None) -> str | None:
        result = super().register(plugin, name)
        self._changed()
        return result

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        result = super().unregister(plugin, name)
        self._changed()
        return result


class _Slot:
    """One service's place in the host: its own lock, so loading (and building) one service
    never waits for another."""

    __slots__ = ("lock", "proxy")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proxy: ServiceProxy | None = None


class Host:
    """Loads the drivers a configuration names and serves them as :class:`ServiceProxy` objects.

    ``Host(config_dict, base_dir=...)`` or ``Host.from_file("revad.toml")``; use it as a context
    manager, or call :meth:`close`, so no plugin process outlives it. Thread-safe: each service
    loads under its own lock, so a slow env build delays only that service.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | _config.Config,
        *,
        base_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        installer: str | None = None,
        offline: bool | None = None,
        refresh: bool = False,
        progress: BuildProgress | None = None,
    ) -> None:
        """``progress`` is told when an env build starts and ends (see :class:`BuildProgress`)."""
        if not isinstance(config, _config.Config):
            config = _config.parse(config, base_dir=Path(base_dir or Path.cwd()).resolve())
        self.config = config.with_overrides(
            cache_dir=resolve_cache_dir(cache_dir) if cache_dir else None,
            installer=installer,
            offline=offline or None,
        )
        #: turns each service's config into a plan (building its env)
        self.planner = Planner(self.config, refresh=refresh, progress=progress)
        self._slots: dict[str, _Slot] = {}
        self._plans: dict[str, Plan] = {}
        self._lock = threading.Lock()  # guards _slots and _closed; never held while loading
        self._closed = False
        self._call_hook: HookCaller | None = None
        self._invoke = _Invoke()
        #: the host's extension points (see ``reva_plugins._hooks``)
        self.hooks: pluggy.PluginManager = _HookManager(self._refresh_call_hook)
        self.hooks.add_hookspecs(HostSpec)
        self.hooks.register(self._invoke, name="reva-plugins.invoke")

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Host:
        """A host for the TOML configuration at ``path``."""
        return cls(_config.load_file(path), **options)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register an object implementing host hooks (``plugin_started``, ``service_call`` …,
        see ``reva_plugins._hooks``); they apply to every service, loaded or not."""
        self.hooks.register(plugin, name=name)

    def unregister(self, plugin: object) -> None:
        """Undo :meth:`register`."""
        self.hooks.unregister(plugin)

    def _refresh_call_hook(self) -> None:
        # Decided here, once per (un)registration, so a call without wrappers skips pluggy.
        caller = self.hooks.hook.service_call
        wrapped = any(impl.plugin is not self._invoke for impl in caller.get_hookimpls())
        with self._lock:
            self._call_hook = caller if wrapped else None
            for slot in self._slots.values():
                if slot.proxy is not None:
                    slot.proxy._call_hook = self._call_hook

    @property
    def services(self) -> tuple[str, ...]:
        """The names of the configured services."""
        return tuple(svc.service for svc in self.config.services)

    def service(self, name: str) -> ServiceProxy:
        """The proxy for service ``name``, loading its driver (and building its env) if need be.

        Loading does not start a plugin process: the first call (or ``proxy.start()``) does.
        """
        svc = self.config.service(name)
        with self._lock:
            self._check_open()
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = _Slot()
            if slot.proxy is not None:
                return slot.proxy
        with slot.lock:
            if slot.proxy is None:
                self._check_open()
                proxy = self._load(svc)
                with self._lock:
                    if self._closed:  # closed while building: never start what was built
                        proxy.driver.close()
                        self._check_open()
                    proxy._call_hook = self._call_hook
                    slot.proxy = proxy
            return slot.proxy

    def _check_open(self) -> None:
        if self._closed:
            raise RevaPluginError("the host is closed")

    def _load(self, svc: _config.ServiceConfig) -> ServiceProxy:
        plan = self.planner.plan(svc)
        self._plans[svc.service] = plan
        if plan.built and plan.env_key:
            self.hooks.hook.env_built(
                service=svc.service, env_key=plan.env_key, seconds=plan.build_seconds
            )
        label = f"{svc.service} ({redact(svc.driver)})"
        driver = plan.handle(_DriverMaker(self, svc.service, label))
        return ServiceProxy(SERVICES[svc.service], driver, label)

    def _replan(self, name: str) -> tuple[IsolatedPlan, Supervisor]:
        """Plan ``name`` again (its env vanished from the cache) and supervise the new plan."""
        plan = self.planner.plan(self.config.service(name))
        if not isinstance(plan, IsolatedPlan):
            raise RevaPluginError(f"{name}: its driver no longer runs in a plugin process")
        self._plans[name] = plan
        return plan, self._supervisor(plan)

    def _supervisor(self, plan: IsolatedPlan) -> Supervisor:
        service = plan.launch.service
        hook = self.hooks.hook

        def started(process: PluginProcess) -> None:
            hook.plugin_started(
                service=service,
                pid=process.pid or 0,
                handshake=dict(process.handshake),
                seconds=process.start_ms / 1000,
                restarts=supervisor.restarts,
            )

        def exited(process: PluginProcess, returncode: int | None, expected: bool) -> None:
            hook.plugin_exited(
                service=service, pid=process.pid or 0, returncode=returncode, expected=expected
            )
            failure = supervisor.failure
            if not expected and failure is not None:
                hook.service_failed(service=service, error=failure)

        def restarting(restarts: int, delay: float) -> None:
            hook.plugin_restarting(service=service, restarts=restarts, delay=delay)

        supervisor = Supervisor(
            plan.launch, on_start=started, on_exit=exited, on_restart=restarting
        )
        return supervisor

    def check(self) -> list[ServiceCheck]:
        """Load, start and ping every configured service; one result each (never raises a
        :class:`RevaPluginError`: a service's failure is its result's ``error``)."""
        return [self._check_one(svc) for svc in self.config.services]

    def _check_one(self, svc: _config.ServiceConfig) -> ServiceCheck:
        info = start_ms = ping_ms = error = None
        try:
            proxy = self.service(svc.service)
            began = time.perf_counter()
            info = proxy.start()
            start_ms = (time.perf_counter() - began) * 1000
            ping_ms = proxy.ping()
        except RevaPluginError as exc:
            error = exc
        plan = self._plans.get(svc.service)
        return ServiceCheck(
            service=svc.service,
            driver=svc.driver,
            kind=plan.kind if plan else None,
            env_key=plan.env_key if plan else None,
            built=plan.built if plan else False,
            info=info,
            start_ms=start_ms,
            ping_ms=ping_ms,
            error=error,
        )

    def close(self) -> None:
        """Stop every plugin process; the host cannot be used afterwards.

        Does not wait for a service that is still loading (building its env): that load ends
        with "the host is closed" and starts nothing.
        """
        with self._lock:
            self._closed = True
            proxies = [slot.proxy for slot in self._slots.values() if slot.proxy is not None]
            self._slots = {}
        for proxy in proxies:
            proxy.driver.close()
        self.planner.close()


class _DriverMaker:
    """Makes the driver a plan calls for (see :class:`PlanHandler`)."""

    def __init__(self, host: Host, service: str, label: str) -> None:
        self.host = host
        self.service = service
        self.label = label

    def in_process(self, plan: InProcessPlan) -> Driver:
        return InProcessDriver(plan, self.label)

    def isolated(self, plan: IsolatedPlan) -> Driver:
        host, name = self.host, self.service
        return IsolatedDriver(plan, host._supervisor(plan), lambda: host._replan(name))
