"""The host: loads configured drivers and serves each service as a :class:`ServiceProxy`.

A call is a plain method call: ``proxy.get_user(uid)`` binds the arguments to the service's
signature and calls ``driver.invoke`` (in this process, or over the wire to a plugin process;
see :mod:`._proxy` and :mod:`._drivers`). pluggy carries only the host's extension points
(``_hooks``): lifecycle hooks, and the ``service_call`` hook that wraps calls when an
application registered one. The host owns loading (a lock per service), the hooks, ``check()``
as data, and closing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import _config
from ._build import BuildProgress
from ._drivers import Driver, InProcessDriver, IsolatedDriver, ServiceInfo
from ._errors import RevaPluginError
from ._hooks import PROJECT, CallWrappers, HostSpec
from ._plan import InProcessPlan, IsolatedPlan, Plan, Planner
from ._process import PluginProcess
from ._proxy import DriverCall, ServiceProxy
from ._sandbox import make_undumpable
from ._store import resolve_cache_dir
from ._supervisor import Supervisor
from .services import SERVICES

log = logging.getLogger("reva_plugins.host")


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
        """``progress`` is told when an env build starts and ends (see :class:`BuildProgress`).

        A host makes its process non-dumpable first: plugins (and any process of the same user)
        cannot read its environment or memory through ``/proc`` (see SECURITY.md).
        """
        make_undumpable()
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
        self._wrappers: CallWrappers | None = None
        self._invoke = DriverCall()
        #: the host's extension points (see ``reva_plugins._hooks``)
        self.hooks: pluggy.PluginManager = _HookManager(self._refresh_wrappers)
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

    def _refresh_wrappers(self) -> None:
        # Decided here, once per (un)registration, so a call without wrappers skips them.
        caller = self.hooks.hook.service_call
        invoke = self._invoke
        wrapped = any(impl.plugin is not invoke for impl in caller.get_hookimpls())
        with self._lock:
            self._wrappers = CallWrappers(caller, lambda p: p is invoke) if wrapped else None
            for slot in self._slots.values():
                if slot.proxy is not None:
                    slot.proxy._wrappers = self._wrappers

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
                    proxy._wrappers = self._wrappers
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
        label = svc.label
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
