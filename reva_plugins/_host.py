"""The host: loads configured drivers and exposes each service as a proxy dispatched by pluggy."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Protocol

import pluggy

from . import _config
from ._errors import HandshakeError, RemoteError, RevaPluginError, UsageError, remote_error
from ._hooks import PROJECT, LifecycleSpec, hookimpl, hookspec
from ._loader import InProcessPlan, IsolatedPlan, Loader, Plan
from ._process import PluginProcess, Supervisor
from ._redact import redact
from ._store import resolve_cache_dir
from .services import SERVICES, ServiceType

log = logging.getLogger("reva_plugins.host")

_NO_OPTIONS: tuple[float | None, dict[str, Any] | None] = (None, None)
_call_options: contextvars.ContextVar[tuple[float | None, dict[str, Any] | None]] = (
    contextvars.ContextVar("reva_call_options", default=_NO_OPTIONS)
)


class Driver(Protocol):
    """What a proxy dispatches to: a driver in this process or in a plugin process."""

    kind: str

    def start(self) -> dict[str, Any]:
        """Load or start the driver; return what it says about itself."""
        ...

    def invoke(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
    ) -> Any:
        """Call one method with keyword params."""
        ...

    def ping(self) -> float:
        """A health round trip, in milliseconds."""
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
        self._lock = threading.Lock()

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
    ) -> Any:
        """Call the method directly; ``timeout`` cannot interrupt in-process code."""
        if self._obj is None:
            self.start()
        func = getattr(self._obj, method, None)
        if not callable(func):
            raise RemoteError(
                f"method not found: {method}", type="MethodNotFound", plugin=self.label
            )
        try:
            return func(**params)
        except Exception as exc:
            raise _typed(exc, self.label) from exc

    def ping(self) -> float:
        """Nothing to round-trip: the driver is loaded or not."""
        self.start()
        return 0.0

    def close(self) -> None:
        """Drop the object."""
        self._obj = None


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

    def _process(self) -> PluginProcess:
        supervisor = self.supervisor
        try:
            return supervisor.process
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
        return self.supervisor.process

    def start(self) -> dict[str, Any]:
        """Start the process (if not running) and return its handshake."""
        return self._process().handshake

    def invoke(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
    ) -> Any:
        """Send the call over the wire."""
        return self._process().call(method, params, timeout=timeout, meta=meta)

    def ping(self) -> float:
        """Round-trip ``$/ping``."""
        return self._process().ping()

    def close(self) -> None:
        """Shut the process down."""
        self.supervisor.close()


class _Binder:
    """Binds call arguments to a service method's parameters (a lean ``Signature.bind``)."""

    __slots__ = ("defaults", "names", "qualname")

    def __init__(self, qualname: str, sig: inspect.Signature) -> None:
        self.qualname = qualname
        self.names = tuple(sig.parameters)
        self.defaults = {
            n: p.default
            for n, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        names = self.names
        if len(args) > len(names):
            raise TypeError(f"{self.qualname}() takes {len(names)} arguments, {len(args)} given")
        out = dict(zip(names, args, strict=False)) if args else {}
        for name, value in kwargs.items():
            if name not in self.names:
                raise TypeError(f"{self.qualname}() got an unexpected argument {name!r}")
            if name in out:
                raise TypeError(f"{self.qualname}() got multiple values for {name!r}")
            out[name] = value
        if len(out) < len(names):
            for name in names:
                if name not in out:
                    if name not in self.defaults:
                        raise TypeError(f"{self.qualname}() is missing the argument {name!r}")
                    out[name] = self.defaults[name]
        return out


class ServiceProxy:
    """A configured service: call its methods as attributes (``users.get_user(uid)``)."""

    def __init__(self, service: ServiceType, driver: Driver, label: str) -> None:
        self.service = service
        self.driver = driver
        self.label = label
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(_hookspecs(service))
        self._pm.register(_forwarders(service, driver), name=label)
        self._pm.check_pending()
        self._binders = {
            name: _Binder(f"{service.name}.{name}", sig) for name, sig in service.signatures.items()
        }
        self._hooks: dict[str, Callable[..., Any]] = {
            name: getattr(self._pm.hook, name) for name in service.methods
        }

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_") or method not in self.service.signatures:
            raise AttributeError(f"service {self.service.name} has no method {method!r}")
        binder, hook = self._binders[method], self._hooks[method]

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._dispatch(hook, self._bind(binder, args, kwargs), None, None)

        call.__name__ = method
        call.__doc__ = self.service.doc(method)
        call.__signature__ = self.service.signatures[method]  # type: ignore[attr-defined]
        self.__dict__[method] = call  # later lookups skip __getattr__
        return call

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.service.methods})

    def _bind(
        self, binder: _Binder, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        try:
            return binder.bind(args, kwargs)
        except TypeError as exc:
            raise UsageError(str(exc), plugin=self.label) from None

    @staticmethod
    def _dispatch(
        hook: Callable[..., Any],
        arguments: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None,
    ) -> Any:
        if timeout is None and meta is None and _call_options.get() is _NO_OPTIONS:
            return hook(**arguments)
        token = _call_options.set((timeout, meta))
        try:
            return hook(**arguments)
        finally:
            _call_options.reset(token)

    def call(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Any:
        """Call ``method`` with keyword ``params``; ``timeout`` and caller ``meta`` are optional."""
        binder = self._binders.get(method)
        if binder is None:
            raise UsageError(
                f"service {self.service.name} has no method {method!r} "
                f"(methods: {', '.join(self.service.methods)})",
                plugin=self.label,
            )
        return self._dispatch(self._hooks[method], self._bind(binder, (), params), timeout, meta)

    async def acall(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Any:
        """:meth:`call` for asyncio code: awaits the reply without blocking the event loop."""
        call = functools.partial(self.call, method, params, timeout=timeout, meta=meta)
        return await asyncio.get_running_loop().run_in_executor(None, call)


def _hookspecs(service: ServiceType) -> type:
    """pluggy hookspecs for ``service``'s methods; its spec is a plain class without markers."""
    marked: dict[str, Any] = {}
    for method in service.methods:
        stub = getattr(service.spec, method)
        clone = types.FunctionType(stub.__code__, stub.__globals__, method, stub.__defaults__)
        clone.__qualname__ = f"{service.spec.__name__}.{method}"
        marked[method] = hookspec(firstresult=True)(clone)
    return type(f"{service.spec.__name__}Hooks", (), marked)


def _forwarders(service: ServiceType, driver: Driver) -> types.SimpleNamespace:
    """One pluggy hookimpl per service method, forwarding its arguments to ``driver``.

    pluggy reads a hookimpl's argument names from its code object, so each forwarder is compiled
    with the spec's parameter names (identifiers from our own service modules, never user input).
    """

    def invoke(method: str, params: dict[str, Any]) -> Any:
        timeout, meta = _call_options.get()
        return driver.invoke(method, params, timeout, meta)

    impls: dict[str, Callable[..., Any]] = {}
    for method, sig in service.signatures.items():
        names = [name for name in sig.parameters if name.isidentifier()]
        params = ", ".join(f"{name!r}: {name}" for name in names)
        source = (
            f"def {method}({', '.join(names)}):\n    return _invoke({method!r}, {{{params}}})\n"
        )
        namespace: dict[str, Any] = {"_invoke": invoke}
        exec(compile(source, f"<reva forwarder {service.name}.{method}>", "exec"), namespace)  # noqa: S102
        impls[method] = hookimpl(namespace[method])
    return types.SimpleNamespace(**impls)


@dataclass(frozen=True)
class CheckResult:
    """One row of ``reva-plugins check``."""

    service: str
    driver: str
    kind: str
    env: str
    ok: bool
    status: str
    start_ms: float | None = None
    ping_ms: float | None = None
    built: bool = False
    exit_code: int = 0


class Host:
    """Loads the drivers a configuration names and serves them as :class:`ServiceProxy` objects.

    ``Host(config_dict, base_dir=...)`` or ``Host.from_file("revad.toml")``; use it as a context
    manager, or call :meth:`close`, so no plugin process outlives it.
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
    ) -> None:
        if not isinstance(config, _config.Config):
            config = _config.parse(config, base_dir=Path(base_dir or Path.cwd()).resolve())
        self.config = config.with_overrides(
            cache_dir=resolve_cache_dir(cache_dir) if cache_dir else None,
            installer=installer,
            offline=offline or None,
        )
        self.hooks = pluggy.PluginManager(PROJECT)
        self.hooks.add_hookspecs(LifecycleSpec)
        self.loader = Loader(self.config, refresh=refresh)
        self._proxies: dict[str, ServiceProxy] = {}
        self._plans: dict[str, Plan] = {}
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Host:
        """A host for the TOML configuration at ``path``."""
        return cls(_config.load_file(path), **options)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register an object implementing the lifecycle hooks (``plugin_started`` …)."""
        self.hooks.register(plugin, name=name)

    @property
    def services(self) -> tuple[str, ...]:
        """The names of the configured services."""
        return tuple(svc.service for svc in self.config.services)

    def service(self, name: str) -> ServiceProxy:
        """The proxy for service ``name``, loading its driver (and building its env) if need be."""
        with self._lock:
            if self._closed:
                raise RevaPluginError("the host is closed")
            proxy = self._proxies.get(name)
            if proxy is None:
                proxy = self._proxies[name] = self._load(name)
            return proxy

    def _load(self, name: str) -> ServiceProxy:
        svc = self.config.service(name)
        plan = self.loader.plan(svc)
        self._plans[name] = plan
        label = f"{svc.service} ({redact(svc.driver)})"
        driver: Driver
        if isinstance(plan, InProcessPlan):
            driver = InProcessDriver(plan, label)
        else:
            driver = IsolatedDriver(plan, self._supervisor(plan), lambda: self._replan(name))
        return ServiceProxy(SERVICES[svc.service], driver, label)

    def _replan(self, name: str) -> tuple[IsolatedPlan, Supervisor]:
        """Plan ``name`` again (its env vanished from the cache) and supervise the new plan."""
        plan = self.loader.plan(self.config.service(name))
        assert isinstance(plan, IsolatedPlan)
        self._plans[name] = plan
        return plan, self._supervisor(plan)

    def _supervisor(self, plan: IsolatedPlan) -> Supervisor:
        service = plan.launch.service

        def started(process: PluginProcess) -> None:
            self.hooks.hook.plugin_started(service=service, handshake=dict(process.handshake))

        def exited(process: PluginProcess, returncode: int | None, expected: bool) -> None:
            self.hooks.hook.plugin_exited(
                service=service, pid=process.pid or 0, returncode=returncode, expected=expected
            )

        return Supervisor(plan.launch, on_start=started, on_exit=exited)

    def check(self) -> list[CheckResult]:
        """Load, start and ping every configured service; one result each (never raises)."""
        return [self._check_one(svc) for svc in self.config.services]

    def _check_one(self, svc: _config.ServiceConfig) -> CheckResult:
        try:
            proxy = self.service(svc.service)
            plan = self._plans[svc.service]
            began = time.perf_counter()
            info = proxy.driver.start()
            start_ms = (time.perf_counter() - began) * 1000
            ping_ms = proxy.driver.ping()
        except RevaPluginError as exc:
            plan_or_none = self._plans.get(svc.service)
            return CheckResult(
                svc.service,
                redact(svc.driver),
                plan_or_none.kind if plan_or_none else "-",
                _env_key(plan_or_none),
                ok=False,
                status=redact(str(exc).splitlines()[0]),
                exit_code=exc.exit_code,
            )
        version = f" {info.get('distribution', '')} {info.get('version', '')}".rstrip()
        return CheckResult(
            svc.service,
            redact(svc.driver),
            plan.kind,
            _env_key(plan),
            ok=True,
            status=f"ok{version}",
            start_ms=round(start_ms, 1),
            ping_ms=round(ping_ms, 3),
            built=isinstance(plan, IsolatedPlan) and plan.built,
        )

    def close(self) -> None:
        """Stop every plugin process; the host cannot be used afterwards."""
        with self._lock:
            self._closed = True
            proxies, self._proxies = list(self._proxies.values()), {}
        for proxy in proxies:
            proxy.driver.close()
        self.loader.close()


def _env_key(plan: Plan | None) -> str:
    if isinstance(plan, IsolatedPlan):
        return plan.env_key or "(prebuilt)"
    return "-"
