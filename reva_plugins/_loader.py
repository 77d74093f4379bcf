"""From a configured driver to something runnable: an in-process object or a launch spec."""

from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from . import _protocol, _python
from ._config import Config, ServiceConfig
from ._errors import EnvBuildError, SourceError
from ._installers import InstallOptions, select
from ._process import LaunchSpec
from ._redact import redact
from ._sources import (
    Classified,
    InProcess,
    LocalFile,
    LocalFolder,
    NeedsNetwork,
    PrebuiltVenv,
    ResolveContext,
    Resolved,
    Source,
    SourcePolicy,
    classify,
)
from ._store import Env, Store, default_cache_dir, make_key
from ._subprocess import CommandFailed
from .services import SERVICES, ServiceType

log = logging.getLogger("reva_plugins.loader")


@dataclass(frozen=True)
class EntryPoint:
    """A plugin entry point: its name, ``module:attr`` value and distribution."""

    name: str
    value: str
    distribution: str = ""
    version: str = ""


@dataclass(frozen=True)
class InProcessPlan:
    """Load ``entry_point`` into the core itself."""

    service: ServiceType
    entry_point: EntryPoint
    config: dict[str, Any]
    kind: str = "in-process"

    @property
    def entry_name(self) -> str:
        """The name of the entry point the plan loads."""
        return self.entry_point.name


@dataclass(frozen=True)
class IsolatedPlan:
    """Run the plugin in ``env`` as a child process."""

    launch: LaunchSpec
    env_key: str | None
    kind: str
    built: bool = False
    build_seconds: float = 0.0

    @property
    def entry_name(self) -> str:
        """The name of the entry point the plan starts."""
        return str(self.launch.entry["name"])


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
    driver: str, *, base_dir: Path, sha256: str | None = None, allowed: tuple[str, ...] = ("*",)
) -> Classified:
    """The one way from a driver spec to a source: classify it, then apply ``allowed_sources``
    to its normalised origin (see :class:`SourcePolicy` for what each kind is matched on).

    Every command and the testing kit plan through here (by way of :class:`Loader`); nothing
    else classifies a spec or switches on source kinds.
    """
    source = classify(driver, base_dir=base_dir, sha256=sha256)
    SourcePolicy(allowed, base_dir).check(driver, source)
    return source


def absolute_spec(spec: str, base_dir: Path) -> str:
    """``spec`` with a relative path made absolute against ``base_dir``; any other kind as is.

    For specs given on a command line (relative to the working directory) that are then planned
    against another folder (``conformance --config``)."""
    source = classify(spec, base_dir=base_dir)
    if isinstance(source, (LocalFolder, LocalFile, PrebuiltVenv)):
        return str(source.path)
    return spec


class Loader:
    """Turns service configs into plans, building envs in the store as needed."""

    def __init__(self, config: Config, *, refresh: bool = False) -> None:
        self.config = config
        self.settings = config.plugins
        self.refresh = refresh
        self.store = Store(self.settings.cache_dir or default_cache_dir())
        self.store.ensure()
        self._interpreters = _python.InterpreterCache(self.store.root / "interpreters.json")

    def close(self) -> None:
        """Stop marking the envs this loader handed out as in use."""
        self.store.close()

    def source(self, svc: ServiceConfig) -> Classified:
        """``svc``'s driver classified and checked against ``allowed_sources``."""
        return classify_driver(
            svc.driver,
            base_dir=self.config.base_dir,
            sha256=svc.plugin.sha256,
            allowed=self.settings.allowed_sources,
        )

    def prepare(self, svc: ServiceConfig) -> Prepared:
        """Build ``svc``'s env if it is missing (``env build``); start nothing."""
        source = self.source(svc)
        if isinstance(source, (InProcess, PrebuiltVenv)):
            return Prepared(source.kind, None)
        env, built, seconds = self.env_for(svc, source)
        return Prepared(str(env.metadata.get("kind", source.kind)), env.key, built, seconds)

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
            return IsolatedPlan(self.launch_spec(svc, service, source.python, ep), None, "venv")
        env, built, seconds = self.env_for(svc, source)
        entry_points = _as_entry_points(env.metadata.get("entry_points", {}))
        ep = choose_entry_point(svc, service, entry_points.get(service.group, {}))
        launch = self.launch_spec(svc, service, env.python, ep)
        return IsolatedPlan(launch, env.key, env.metadata.get("kind", source.kind), built, seconds)

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
            entry={
                "group": service.group,
                "name": ep.name,
                "value": ep.value,
                "distribution": ep.distribution,
                "version": ep.version,
            },
            env=opts.env,
            cwd=self.config.base_dir,
            start_timeout=opts.start_timeout or self.settings.start_timeout,
            call_timeout=opts.call_timeout or self.settings.call_timeout,
            restart=opts.restart,
            max_concurrency=opts.max_concurrency,
            config=svc.driver_config(ep.name, Path(svc.driver).name),
            limits=opts.limits,
        )

    def install_options(self) -> InstallOptions:
        """The package sources every build of this config uses."""
        return InstallOptions(
            index_url=self.settings.index_url,
            find_links=self.settings.find_links,
            offline=self.settings.offline,
        )

    def env_for(self, svc: ServiceConfig, source: Source) -> tuple[Env, bool, float]:
        """The cached env for ``source`` (built now if missing); whether built; seconds taken."""
        label = f"{svc.service} ({redact(svc.driver)})"
        interpreter = _python.find(
            svc.plugin.python or self.settings.python,
            self._interpreters,
            key=f"{svc.key}.plugin.python" if svc.plugin.python else "plugins.python",
        )
        installer = select(self.settings.installer, app_data=self.store.root / "virtualenv")
        options = self.install_options()
        ctx = ResolveContext(
            offline=self.settings.offline,
            downloads=self.store.root / "downloads",
            find_version=lambda req: installer.find_version(req, interpreter, options),
            max_download_bytes=self.settings.max_download_mb << 20,
            allow_http=self.settings.allow_http,
        )
        try:
            resolved = source.resolve(ctx)
        except NeedsNetwork as exc:
            return self._newest_cached(source, interpreter, exc), False, 0.0
        check_wheel(resolved, interpreter)
        key = make_key(
            {
                "identity": resolved.identity,
                "python": interpreter.identity,
                "installer": installer.name,
                "options": options.key_material(),
                "protocol": list(_protocol.PROTOCOL_VERSIONS),
            }
        )
        began = time.perf_counter()

        def build(venv: Path) -> dict[str, Any]:
            log.info(
                "building env %s for %s with %s …", key, label, installer.name,
                extra={"progress": "start", "progress_label": label},
            )  # fmt: skip
            try:
                installer.create(venv, interpreter)
                installer.install(venv, resolved.install_args, options)
            except CommandFailed as exc:
                raise EnvBuildError(
                    f"building the env failed: {' '.join(exc.argv[:3])} … exited with "
                    f"{exc.returncode}",
                    plugin=label,
                    command=exc.argv,
                    returncode=exc.returncode,
                    output_tail=exc.tail,
                ) from None
            finally:
                log.debug("installer done for %s", label, extra={"progress": "end"})
            return env_metadata(
                venv, resolved, interpreter, installer.name, installer.version(), options
            )

        env, built = self.store.get_or_build(key, build, label=label, force=self.refresh)
        seconds = time.perf_counter() - began
        if built:
            log.info("built env %s for %s in %.2f s", key, label, seconds)
        return env, built, seconds

    def _newest_cached(
        self, source: Source, interpreter: _python.Interpreter, why: NeedsNetwork
    ) -> Env:
        """Offline and the source moves: the newest env built from the same spec, if any."""
        for env in self.store.all():
            meta = env.metadata
            if (
                meta.get("spec") == source.spec
                and meta.get("python", {}).get("executable") == interpreter.executable
                and env.health() is None
            ):
                log.info(
                    "offline: using env %s built %s for %s",
                    env.key,
                    meta.get("created"),
                    source.spec,
                )
                self.store.use(env.key)
                return env
        raise SourceError(
            f"offline, and no env for {source.spec} is cached ({why}); run once online, or pin "
            "a commit, sha256 or exact version"
        )


def check_wheel(resolved: Resolved, interpreter: _python.Interpreter) -> None:
    """Refuse early (exit 2) a wheel whose tags do not fit the plugin's interpreter."""
    if not resolved.kind.startswith("wheel") or interpreter.implementation != "CPython":
        return
    filename = Path(resolved.install_args[0]).name
    try:
        _name, _version, _build, wheel_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise SourceError(f"{resolved.spec}: {exc}") from None
    major, minor = (int(p) for p in interpreter.version.split(".")[:2])
    platforms = list(tags.platform_tags())
    supported = {
        *tags.cpython_tags((major, minor), platforms=platforms),
        *tags.compatible_tags((major, minor), interpreter=f"cp{major}{minor}", platforms=platforms),
    }
    if not wheel_tags & supported:
        shown = ", ".join(sorted(str(t) for t in wheel_tags))
        raise SourceError(
            f"wheel {filename} does not fit Python {interpreter.version} ({shown}); build it for "
            "that Python or set plugin.python"
        )


def env_metadata(
    venv: Path,
    resolved: Resolved,
    interpreter: _python.Interpreter,
    installer: str,
    installer_version: str,
    options: InstallOptions,
) -> dict[str, Any]:
    """What an env records about itself (written last, so its presence marks a complete env)."""
    dists = list(importlib_metadata.distributions(path=[str(p) for p in site_packages(venv)]))
    recorded = [{"name": d.metadata["Name"], "version": d.version, **_direct_url(d)} for d in dists]
    return {
        "spec": resolved.spec,
        "kind": resolved.kind,
        "identity": resolved.identity,
        "mutable": resolved.mutable,
        "resolved": cross_check(resolved, recorded),
        "python": {
            "implementation": interpreter.implementation,
            "version": interpreter.version,
            "executable": interpreter.executable,
        },
        "installer": {"name": installer, "version": installer_version},
        "options": options.key_material(),
        "protocol": list(_protocol.PROTOCOL_VERSIONS),
        "distributions": sorted(recorded, key=lambda d: str(d["name"]).lower()),
        "entry_points": _entry_points(dists),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def cross_check(resolved: Resolved, dists: list[dict[str, Any]]) -> dict[str, str]:
    """The pins of ``resolved``, checked against what PEP 610 ``direct_url.json`` recorded."""
    pins = dict(resolved.pins)
    for dist in dists:
        direct = dist.get("direct_url") or {}
        commit = direct.get("vcs_info", {}).get("commit_id")
        if commit and "commit" in pins:
            if commit != pins["commit"]:
                raise EnvBuildError(
                    f"the installer checked out {commit}, not the resolved {pins['commit']}",
                    plugin=resolved.spec,
                )
            pins.setdefault("version", dist["version"])
        archive = direct.get("archive_info", {})
        if archive and "sha256" in pins:
            recorded = archive.get("hashes", {}).get("sha256") or archive.get("hash", "")
            if recorded.removeprefix("sha256=") == pins["sha256"]:
                pins.setdefault("version", dist["version"])
    return pins


def site_packages(venv: Path) -> list[Path]:
    """The venv's site-packages folders."""
    return sorted(venv.glob("lib/python*/site-packages"))


def scan_entry_points(venv: Path) -> dict[str, dict[str, EntryPoint]]:
    """The reva entry points a venv's distributions declare, read from its files."""
    dists = importlib_metadata.distributions(path=[str(p) for p in site_packages(venv)])
    return _as_entry_points(_entry_points(dists))


def _as_entry_points(
    recorded: dict[str, dict[str, dict[str, str]]],
) -> dict[str, dict[str, EntryPoint]]:
    return {
        group: {name: EntryPoint(**fields) for name, fields in eps.items()}
        for group, eps in recorded.items()
    }


def _entry_points(dists: Any) -> dict[str, dict[str, dict[str, str]]]:
    out: dict[str, dict[str, dict[str, str]]] = {}
    for dist in dists:
        for ep in dist.entry_points:
            if ep.group.startswith("reva."):
                out.setdefault(ep.group, {})[ep.name] = {
                    "name": ep.name,
                    "value": ep.value,
                    "distribution": dist.metadata["Name"],
                    "version": dist.version,
                }
    return out


def _direct_url(dist: importlib_metadata.Distribution) -> dict[str, Any]:
    text = dist.read_text("direct_url.json")
    if not text:
        return {}
    try:
        return {"direct_url": json.loads(text)}
    except ValueError:
        return {}


def choose_entry_point(
    svc: ServiceConfig, service: ServiceType, found: dict[str, EntryPoint]
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
