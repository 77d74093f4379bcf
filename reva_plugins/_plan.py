"""Planning: the one way from a service's config to what running its driver takes.

:class:`Planner` classifies the driver spec, applies ``allowed_sources``, builds or reuses the
env (``_build``) and chooses the entry point: the result is a plan, in-process or isolated (a
launch spec for a plugin process). The host, every CLI command (``check``, ``call``,
``env build``, ``conformance``, and through ``_fleet`` ``lock`` and ``env export``/``import``)
and the testing kit plan through here.

This is where source kinds are told apart, and nowhere else but ``_sources`` itself and the
lock and bundle (``_lock``, ``_bundle``: they pin what planning resolves). What a kind means
further on is handed over as data: the builder gets a :class:`~._build.Buildable` (the wheel to
tag-check, the archive to fetch late) from :func:`for_build`, and ``check`` shows where a plan
runs with :func:`shown_env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from . import _defaults, _lock
from ._build import Buildable, Builder, BuildProgress
from ._config import Config, ServiceConfig
from ._envinfo import scan_entry_points
from ._errors import SourceError
from ._process import LaunchSpec
from ._redact import redact
from ._sources import (
    ArchiveURL,
    Classified,
    InProcess,
    LocalFile,
    LocalFolder,
    PrebuiltVenv,
    Source,
    SourcePolicy,
    classify,
)
from ._store import EntryPointInfo, Store
from .services import SERVICES, ServiceType

#: An entry point: its name, ``module:attr`` value, and the distribution and version declaring it.
EntryPoint = EntryPointInfo

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
    entry_point: EntryPoint
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
    SourcePolicy(allowed, policy_dir or base_dir).check(driver, source)
    return source


def for_build(source: Source) -> Buildable:
    """``source`` with what its kind means for building its env: a wheel file (local or an
    archive URL) is tag-checked first; an archive URL may be fetched late under a lock."""
    if isinstance(source, LocalFile):
        return Buildable(source, wheel=source.path.name if source.kind == "wheel" else None)
    if isinstance(source, ArchiveURL):
        wheel = source.filename if source.kind == "wheel-url" else None
        return Buildable(source, wheel=wheel, archive=source)
    return Buildable(source)


#: What ``check`` shows in its ENV column for a plan without an env of its own in the cache.
NO_ENV = "-"
PREBUILT_ENV = "(prebuilt)"


def shown_env(kind: str | None, env_key: str | None) -> str:
    """How ``check`` names where a planned driver runs, from its plan's ``kind`` and
    ``env_key``: the env key; :data:`PREBUILT_ENV` for a venv used as is; :data:`NO_ENV`
    in-process, or when planning failed (``kind`` None)."""
    if env_key:
        return env_key
    if kind is None or kind == InProcessPlan.kind:
        return NO_ENV
    return PREBUILT_ENV


def absolute_spec(spec: str, base_dir: Path) -> str:
    """``spec`` with a relative path made absolute against ``base_dir``; any other kind as is.

    For specs given on a command line (relative to the working directory) that are then planned
    against another folder (``conformance --config``)."""
    source = classify(spec, base_dir=base_dir)
    if isinstance(source, (LocalFolder, LocalFile, PrebuiltVenv)):
        return str(source.path)
    return spec


class Planner:
    """Turns service configs into plans, building envs in the store as needed."""

    def __init__(
        self, config: Config, *, refresh: bool = False, progress: BuildProgress | None = None
    ) -> None:
        self.config = config
        self.settings = config.plugins
        self.builder = Builder(config, refresh=refresh, progress=progress)

    def close(self) -> None:
        """Stop marking the envs this planner handed out as in use."""
        self.builder.close()

    @property
    def store(self) -> Store:
        """The env cache the builds go to."""
        return self.builder.store

    def prepare_locked(self, locked: _lock.LockedService, python: str | None = None) -> Prepared:
        """Build the env a lock's service table pins, with no config (``env import``)."""
        entry, env, built, seconds = self.builder.locked_env(locked, python)
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
        source = self.source(svc)
        return None if isinstance(source, (InProcess, PrebuiltVenv)) else source

    def prepare(self, svc: ServiceConfig) -> Prepared:
        """Build ``svc``'s env if it is missing (``env build``); start nothing."""
        source = self.source(svc)
        if isinstance(source, (InProcess, PrebuiltVenv)):
            return Prepared(source.kind, None)
        env, built, seconds = self.builder.env_for(svc, for_build(source))
        return Prepared(env.meta.kind or source.kind, env.key, built, seconds)

    def plan(self, svc: ServiceConfig) -> Plan:
        """What running ``svc``'s driver takes; builds its env if it is not cached."""
        service = SERVICES[svc.service]
        source = self.source(svc)
        if isinstance(source, InProcess):
            ep = self._in_process_entry_point(service, source.name)
            return InProcessPlan(service, ep, svc.driver_config(ep.name))
        if isinstance(source, PrebuiltVenv):
            entry_points = scan_entry_points(source.path)
            ep = choose_entry_point(svc, service, entry_points.get(service.group, {}))
            launch = self.launch_spec(svc, service, source.python, ep)
            return IsolatedPlan(launch, None, source.kind)
        env, built, seconds = self.builder.env_for(svc, for_build(source))
        ep = choose_entry_point(svc, service, env.meta.entry_points.get(service.group, {}))
        launch = self.launch_spec(svc, service, env.python, ep)
        return IsolatedPlan(launch, env.key, env.meta.kind or source.kind, built, seconds)

    def _in_process_entry_point(self, service: ServiceType, name: str) -> EntryPoint:
        found = list(importlib_metadata.entry_points(group=service.group, name=name))
        if not found:
            installed = sorted(
                ep.name for ep in importlib_metadata.entry_points(group=service.group)
            )
            raise SourceError(
                f"no driver named {name!r} is installed in the core's environment "
                f"(entry points in {service.group}: {', '.join(installed) or 'none'}); to install "
                f"a plugin from the package index give a version, e.g. '{name}>=0'"
            )
        ep = found[0]
        dist = ep.dist
        return EntryPoint(
            ep.name, ep.value, dist.name if dist else "", dist.version if dist else ""
        )

    def launch_spec(
        self, svc: ServiceConfig, service: ServiceType, python: Path, ep: EntryPoint
    ) -> LaunchSpec:
        """How to start ``ep`` from ``python`` with the timeouts and env of ``svc``."""
        opts = svc.plugin
        return LaunchSpec(
            service=svc.service,
            label=f"{svc.service} ({redact(svc.driver)})",
            python=python,
            entry={"group": service.group, **ep.to_json()},
            env=opts.env,
            cwd=self.config.base_dir,
            start_timeout=opts.start_timeout or self.settings.start_timeout,
            call_timeout=opts.call_timeout or self.settings.call_timeout,
            restart=opts.restart,
            max_concurrency=opts.max_concurrency,
            config=svc.driver_config(ep.name, Path(svc.driver).name),
            limits=opts.limits,
        )


def choose_entry_point(
    svc: ServiceConfig, service: ServiceType, found: Mapping[str, EntryPoint]
) -> EntryPoint:
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
