"""Planning: the one way from a service's config to what running its driver takes.

:class:`Planner` classifies the driver spec, applies ``allowed_sources``, builds or reuses the
env (``_build``) and chooses the entry point: the result is a plan, in-process or isolated (a
launch spec for a plugin process). The host, every CLI command (``check``, ``call``,
``env build``, ``conformance``, and through ``_fleet`` ``lock`` and ``env export``/``import``)
and the testing kit plan through here.

Planning tells no source kinds apart: a classified source answers through a
:class:`~._sources.SourceHandler` (in-process, prebuilt venv, or built). It picks the resolver
(``_resolvers``: unlocked, a ``CONFIG.lock``, a bundle) that turns a source into an
:class:`~._build.Install`, and hands that to the builder; the walk goes down the floors
(planning -> resolver -> builder -> store and installers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from . import _defaults, _lockfile, _protocol, _python
from ._build import Builder, BuildProgress
from ._bundle import Bundle, open_bundle
from ._config import Config, ServiceConfig
from ._confinement import plan_sandbox, run_as
from ._envinfo import scan_entry_points
from ._envmeta import EntryPointInfo
from ._errors import SourceError
from ._process import LaunchSpec
from ._redact import redact
from ._resolvers import Bundled, Locked, Resolver, Unlocked, interpreter_for
from ._sources import (
    NO_ENV,
    PREBUILT_ENV,
    Classified,
    InProcess,
    NeedsNetwork,
    PrebuiltVenv,
    Source,
    SourcePolicy,
    classify,
    shown_env,
)
from ._store import Env, Store
from ._wheels import check_tags
from .services import SERVICES, ServiceType

__all__ = [
    "NO_ENV",
    "PREBUILT_ENV",
    "InProcessPlan",
    "IsolatedPlan",
    "Plan",
    "PlanHandler",
    "Planner",
    "Prepared",
    "absolute_spec",
    "check_fits",
    "choose_entry_point",
    "classify_driver",
    "shown_env",
]

_T_co = TypeVar("_T_co", covariant=True)


class PlanHandler(Protocol[_T_co]):
    """What consumes a plan (the host makes a driver of it): one method per kind of plan, so
    nothing but this module tells plans apart."""

    def in_process(self, plan: InProcessPlan) -> _T_co:
        """Load the driver into this process."""
        ...

    def isolated(self, plan: IsolatedPlan) -> _T_co:
        """Run the driver in a plugin process."""
        ...


@dataclass(frozen=True)
class InProcessPlan:
    """Load ``entry_point`` into the core itself."""

    service: ServiceType
    entry_point: EntryPointInfo
    config: dict[str, Any]
    kind: Literal["in-process"] = "in-process"
    env_key: None = None
    built: bool = False
    build_seconds: float = 0.0

    @property
    def entry_name(self) -> str:
        """The name of the entry point the plan loads."""
        return self.entry_point.name

    def handle(self, handler: PlanHandler[_T_co]) -> _T_co:
        """``handler.in_process(self)``."""
        return handler.in_process(self)


@dataclass(frozen=True)
class IsolatedPlan:
    """Run the plugin in an env as a child process: ``env_key`` names it in the cache (None for
    a prebuilt venv)."""

    launch: LaunchSpec
    env_key: str | None
    kind: str
    built: bool = False
    build_seconds: float = 0.0

    @property
    def entry_name(self) -> str:
        """The name of the entry point the plan starts."""
        return str(self.launch.entry["name"])

    def handle(self, handler: PlanHandler[_T_co]) -> _T_co:
        """``handler.isolated(self)``."""
        return handler.isolated(self)


Plan = InProcessPlan | IsolatedPlan


@dataclass(frozen=True)
class Prepared:
    """What preparing one driver did (``env build``): its env key, or None when there is
    nothing to build (an in-process driver or a prebuilt venv)."""

    kind: str
    env_key: str | None
    built: bool = False
    seconds: float = 0.0


def classify_driver(
    driver: str,
    *,
    base_dir: Path,
    sha256: str | None = None,
    allowed: tuple[str, ...] = _defaults.ALLOWED_SOURCES,
    policy_dir: Path | None = None,
) -> Classified:
    """The one way from a driver spec to a source: classify it, then apply ``allowed_sources``
    to its normalised origin (see :class:`SourcePolicy` for what each kind is matched on).

    A relative spec resolves against ``base_dir``, a relative pattern against ``policy_dir``
    (the folder of the file the patterns come from; default ``base_dir``)."""
    source = classify(driver, base_dir=base_dir, sha256=sha256)
    SourcePolicy(allowed, policy_dir or base_dir).check(driver, source.origin)
    return source


def check_fits(source: Source, interpreter: _python.Interpreter) -> None:
    """Refuse (exit 2) a wheel whose tags do not fit ``interpreter``, before anything is fetched
    or built; any other source fits as far as can be told before building it."""
    if source.wheel_file is not None:
        check_tags(source.wheel_file, interpreter, source.spec)


def absolute_spec(spec: str, base_dir: Path) -> str:
    """``spec`` with a relative path made absolute against ``base_dir``; any other kind as is.

    For specs given on a command line (relative to the working directory) that are then planned
    against another folder (``conformance --config``)."""
    path = classify(spec, base_dir=base_dir).local_path
    return str(path) if path is not None else spec


class Planner:
    """Turns service configs into plans, building envs in the store as needed."""

    def __init__(
        self, config: Config, *, refresh: bool = False, progress: BuildProgress | None = None
    ) -> None:
        self.config = config
        self.settings = config.plugins
        self.builder = Builder(config, refresh=refresh, progress=progress)
        #: Whether a lock beside the config (or the bundle's) pins what is built; ``lock``
        #: itself turns this off to re-resolve.
        self.use_lock = True
        self._lock: _lockfile.LockFile | None = None
        self._bundle: Bundle | None = None

    def close(self) -> None:
        """Stop marking the envs this planner handed out as in use."""
        self.builder.close()

    @property
    def store(self) -> Store:
        """The env cache the builds go to."""
        return self.builder.store

    def bundle(self) -> Bundle | None:
        """The ``[plugins] bundle``, opened and checked once."""
        if self.settings.bundle is not None and self._bundle is None:
            self._bundle = open_bundle(self.settings.bundle, self.store.root)
        return self._bundle

    def lock(self) -> _lockfile.LockFile | None:
        """The lock every build follows: the one beside the config, else the bundle's."""
        if not self.use_lock:
            return None
        if self._lock is None:
            bundle = self.bundle()
            self._lock = _lockfile.beside(self.config) or (bundle.lock if bundle else None)
        return self._lock

    def resolver(self) -> Resolver:
        """How sources resolve for a build: the lock's pins (from the bundle's wheels when there
        is a bundle), else anew."""
        lock = self.lock()
        if lock is None:
            return Unlocked()
        bundle = self.bundle()
        if bundle is not None:
            return Bundled(lock, bundle)
        return Locked(lock, self.builder.wheel_cache)

    def prepare_locked(
        self, locked: _lockfile.LockedService, python: str | None = None
    ) -> Prepared:
        """Build the env a bundle's lock table pins, with no config (``env import``), for
        ``python`` or the first of its target Pythons found here."""
        bundle = self.bundle()
        assert bundle is not None
        builder = self.builder
        interpreter, entry = interpreter_for(locked, python, builder.interpreters)
        what = Bundled(bundle.lock, bundle).entry(entry)
        env, built, seconds = builder.env(
            what, interpreter, builder.installer(), builder.install_options()
        )
        return Prepared(entry.kind, env.key, built, seconds)

    def source(self, svc: ServiceConfig) -> Classified:
        """``svc``'s driver classified and checked against ``allowed_sources``."""
        return classify_driver(
            svc.driver,
            base_dir=self.config.base_dir,
            sha256=svc.plugin.sha256,
            allowed=self.settings.allowed_sources,
            policy_dir=self.settings.policy_dir,
        )

    def built_source(self, svc: ServiceConfig) -> Source | None:
        """``svc``'s driver as a source its own env is built from; None for an in-process driver
        or a prebuilt venv (nothing to build or lock)."""
        return self.source(svc).accept(_BuiltOnly())

    def env(self, svc: ServiceConfig, source: Source) -> tuple[Env, bool, float]:
        """The cached env for ``source`` (built now if missing); whether built; seconds taken.

        With a lock, the source is pinned to what the lock says (drift is an error) and the env
        is installed with the lock's hashes."""
        builder = self.builder
        interpreter = builder.interpreter(svc)
        check_fits(source, interpreter)
        installer = builder.installer()
        options = builder.install_options()
        ctx = builder.resolve_context(installer, interpreter, options)
        resolver = self.resolver()
        try:
            what = resolver.resolve(svc, source, interpreter, ctx)
        except NeedsNetwork as exc:
            return builder.newest_cached(source.spec, interpreter, exc), False, 0.0
        return builder.env(what, interpreter, installer, options)

    def prepare(self, svc: ServiceConfig) -> Prepared:
        """Build ``svc``'s env if it is missing (``env build``); start nothing."""
        return self.source(svc).accept(_Preparing(self, svc))

    def plan(self, svc: ServiceConfig) -> Plan:
        """What running ``svc``'s driver takes; builds its env if it is not cached."""
        return self.source(svc).accept(_Planning(self, svc))

    def launch_spec(
        self, svc: ServiceConfig, service: ServiceType, python: Path, ep: EntryPointInfo
    ) -> LaunchSpec:
        """How to start ``ep`` from ``python`` with the timeouts and env of ``svc``."""
        opts = svc.plugin
        config = svc.driver_config(ep.name, Path(svc.driver).name)
        file = self.config.source_name
        keep_out = (self.store.root, *([self.config.file] if self.config.file else []))
        sandbox, state = plan_sandbox(
            svc,
            self.settings,
            python=python,
            driver_config=config,
            base_dir=self.config.base_dir,
            keep_out=tuple(Path(p).resolve() for p in keep_out),
            file=file,
        )
        return LaunchSpec(
            service=svc.service,
            label=svc.label,
            python=python,
            entry={"group": service.group, **ep.to_json()},
            env=opts.env,
            cwd=self.config.base_dir,
            start_timeout=opts.start_timeout or self.settings.start_timeout,
            call_timeout=opts.call_timeout or self.settings.call_timeout,
            restart=opts.restart,
            max_concurrency=opts.max_concurrency,
            config=config,
            limits=opts.limits,
            sandbox=sandbox,
            sandbox_state=state or _protocol.SANDBOX_OFF,
            user=run_as(svc, self.settings, file=file),
        )


def _in_process_entry_point(service: ServiceType, name: str) -> EntryPointInfo:
    found = list(importlib_metadata.entry_points(group=service.group, name=name))
    if not found:
        installed = sorted(ep.name for ep in importlib_metadata.entry_points(group=service.group))
        raise SourceError(
            f"no driver named {name!r} is installed in the core's environment "
            f"(entry points in {service.group}: {', '.join(installed) or 'none'}); to install "
            f"a plugin from the package index give a version, e.g. '{name}>=0'"
        )
    ep = found[0]
    dist = ep.dist
    return EntryPointInfo(
        ep.name, ep.value, dist.name if dist else "", dist.version if dist else ""
    )


def choose_entry_point(
    svc: ServiceConfig, service: ServiceType, found: Mapping[str, EntryPointInfo]
) -> EntryPointInfo:
    """The entry point ``svc`` uses: the one named in ``plugin.entry_point``, or the only one."""
    names = ", ".join(sorted(found)) or "none"
    wanted = svc.plugin.entry_point
    if wanted:
        if wanted not in found:
            raise SourceError(
                f"{svc.key}.plugin.entry_point: {wanted!r} is not declared in {service.group} "
                f"by {redact(svc.driver)} (declared: {names})"
            )
        return found[wanted]
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise SourceError(
            f"{redact(svc.driver)} declares no entry point in the group {service.group}; add "
            f'[project.entry-points."{service.group}"] to its pyproject.toml'
        )
    raise SourceError(
        f"{redact(svc.driver)} declares several entry points in {service.group} ({names}); "
        f"choose one with {svc.key}.plugin.entry_point"
    )


class _BuiltOnly:
    """A source its own env is built from, else None."""

    def in_process(self, source: InProcess) -> Source | None:
        return None

    def prebuilt(self, source: PrebuiltVenv) -> Source | None:
        return None

    def built(self, source: Source) -> Source | None:
        return source


@dataclass(frozen=True)
class _Preparing:
    """``env build`` of one service: nothing to build in-process or for a prebuilt venv."""

    planner: Planner
    svc: ServiceConfig

    def in_process(self, source: InProcess) -> Prepared:
        return Prepared(source.kind, None)

    def prebuilt(self, source: PrebuiltVenv) -> Prepared:
        return Prepared(source.kind, None)

    def built(self, source: Source) -> Prepared:
        env, built, seconds = self.planner.env(self.svc, source)
        return Prepared(env.meta.kind or source.kind, env.key, built, seconds)


@dataclass(frozen=True)
class _Planning:
    """The plan of one service, by how its driver runs."""

    planner: Planner
    svc: ServiceConfig

    def in_process(self, source: InProcess) -> Plan:
        service = SERVICES[self.svc.service]
        ep = _in_process_entry_point(service, source.name)
        return InProcessPlan(service, ep, self.svc.driver_config(ep.name))

    def prebuilt(self, source: PrebuiltVenv) -> Plan:
        service = SERVICES[self.svc.service]
        entry_points = scan_entry_points(source.path)
        ep = choose_entry_point(self.svc, service, entry_points.get(service.group, {}))
        launch = self.planner.launch_spec(self.svc, service, source.python, ep)
        return IsolatedPlan(launch, None, source.kind)

    def built(self, source: Source) -> Plan:
        service = SERVICES[self.svc.service]
        env, built, seconds = self.planner.env(self.svc, source)
        ep = choose_entry_point(self.svc, service, env.meta.entry_points.get(service.group, {}))
        launch = self.planner.launch_spec(self.svc, service, env.python, ep)
        return IsolatedPlan(launch, env.key, env.meta.kind or source.kind, built, seconds)
