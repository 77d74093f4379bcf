"""Lock files: what a config's drivers resolve to, pinned with hashes (``CONFIG.lock``).

A lock holds, per service, the driver's resolved identity (tree digest, commit, sha256 or exact
version), the wheel a local source was built to, and every distribution its env installs, each
with its hashes, for each target Python. With a lock beside the config, the loader
builds exactly that (see :func:`pinned` and :func:`install`); the format is ``docs/lock.md``.
Every uv or pip command behind it runs through the :class:`Installer` it is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from . import _git, _protocol, _python
from ._config import Config, ServiceConfig
from ._errors import ConfigError, EnvBuildError, SourceError
from ._fs import remove_tree
from ._installers import Installer, InstallOptions, Pin
from ._redact import redact
from ._sources import (
    ArchiveURL,
    GitSource,
    LocalFile,
    LocalFolder,
    RequirementSource,
    ResolveContext,
    Resolved,
    Source,
    file_digest,
)
from ._store import make_key
from ._subprocess import CommandFailed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

LOCK_FORMAT = 1
"""The version of the lock file format this core reads and writes (``version = 1``)."""
MAX_LOCK_BYTES = 16 << 20
LOCAL_KINDS = ("folder", "sdist", "git", "sdist-url")
"""Kinds whose plugin is built to a wheel when locked (a wheel source is its own wheel)."""
KINDS = ("folder", "sdist", "wheel", "git", "wheel-url", "sdist-url", "requirement")
"""The source kinds a lock entry may have (in-process drivers and prebuilt venvs are not locked)."""
PATH_KINDS = ("folder", "sdist", "wheel")
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


LockedPackage = Pin
"""One distribution of a locked env: exact version and the hashes any of its files may have."""

#: The pins each kind of entry must have (``pins`` may hold no others but ``url``).
REQUIRED_PINS = {
    "folder": (),
    "sdist": ("sha256",),
    "wheel": ("sha256",),
    "git": ("commit",),
    "wheel-url": ("sha256", "url"),
    "sdist-url": ("sha256", "url"),
    "requirement": ("version",),
}


@dataclass(frozen=True)
class LockEntry:
    """What one service's driver is locked to."""

    service: str
    spec: str
    kind: str
    identity: str
    python: str
    plugin: str
    wheel: str = ""
    wheel_sha256: str = ""
    pins: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[LockedPackage, ...] = ()

    def digest(self) -> str:
        """A hash of everything this entry makes the installer install (env key material)."""
        blob = json.dumps(
            {
                "identity": self.identity,
                "wheel_sha256": self.wheel_sha256,
                "packages": [[p.name, p.version, list(p.hashes)] for p in self.packages],
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def wheel_version(self) -> str:
        """The version of the plugin's own wheel ('' when the plugin is a package of the index)."""
        return str(parse_wheel_filename(self.wheel)[1]) if self.wheel else ""

    def resolved(self, install_args: tuple[str, ...] = ()) -> Resolved:
        """The entry as a resolved source (what env metadata records)."""
        return Resolved(
            self.kind, self.spec, self.identity, install_args, mutable=False, pins=dict(self.pins)
        )


@dataclass(frozen=True)
class LockedService:
    """One service's table of a lock: its driver's pins, and per target Python (``3.12``) every
    distribution its env installs."""

    service: str
    spec: str
    kind: str
    identity: str
    plugin: str
    wheel: str = ""
    wheel_sha256: str = ""
    pins: Mapping[str, str] = field(default_factory=dict)
    targets: Mapping[str, tuple[LockedPackage, ...]] = field(default_factory=dict)

    def at(self, python: str) -> LockEntry | None:
        """What the driver installs on Python ``python`` (None if it is not a target)."""
        packages = self.targets.get(python)
        if packages is None:
            return None
        return LockEntry(
            self.service, self.spec, self.kind, self.identity, python, self.plugin,
            self.wheel, self.wheel_sha256, self.pins, packages,
        )  # fmt: skip

    def entries(self) -> list[LockEntry]:
        """One entry per target Python."""
        return [e for python in sorted(self.targets) if (e := self.at(python)) is not None]

    @classmethod
    def of(cls, entries: Sequence[LockEntry]) -> LockedService:
        """The service table of per-Python entries of one driver."""
        first = entries[0]
        return cls(
            first.service, first.spec, first.kind, first.identity, first.plugin, first.wheel,
            first.wheel_sha256, first.pins, {e.python: e.packages for e in entries},
        )  # fmt: skip


@dataclass(frozen=True)
class LockFile:
    """A whole lock file: one table per service that runs an isolated driver."""

    services: Mapping[str, LockedService]
    path: Path | None = None

    @property
    def shown(self) -> str:
        """How messages name the lock."""
        return str(self.path) if self.path else "<lock>"


def lock_path(config: Config) -> Path | None:
    """``CONFIG.lock`` beside the config file (None for a config that is not a file)."""
    return Path(f"{config.file}.lock") if config.file else None


def beside(config: Config) -> LockFile | None:
    """The lock beside ``config``'s file, if there is one."""
    path = lock_path(config)
    if path is None or not os.path.lexists(path):
        return None
    return read(path)


# -- reading and writing -------------------------------------------------------------------------


def read(path: Path) -> LockFile:
    """Read and validate a lock file (a regular file of bounded size); ConfigError names it.

    A symlink is followed, as for the config itself (Kubernetes mounts ConfigMap files as
    symlinks); what it points at must be a regular file, checked on the open descriptor.
    """
    shown = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError("the lock file is not a regular file", file=shown)
            raw = f.read(MAX_LOCK_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the lock file: {exc.strerror or exc}", file=shown) from None
    if len(raw) > MAX_LOCK_BYTES:
        raise ConfigError(f"the lock file is larger than {MAX_LOCK_BYTES} bytes", file=shown)
    return loads(raw, path)


def loads(raw: bytes, path: Path | None = None) -> LockFile:
    """Parse lock text; every field is checked (a lock can be written by anyone with the repo)."""
    shown = str(path) if path else "<lock>"
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"the lock file is not valid TOML: {exc}", file=shown) from None
    if data.get("version") != LOCK_FORMAT:
        raise ConfigError(
            f"lock format {data.get('version')!r} is not {LOCK_FORMAT}; run 'reva-plugins lock' "
            "with this version of reva-plugins",
            file=shown,
            key="version",
        )
    services = data.get("services", {})
    if not isinstance(services, dict):
        raise ConfigError("must be a table", file=shown, key="services")
    parsed = {name: _service(name, table, shown) for name, table in services.items()}
    return LockFile(parsed, path)


def _packages(raw_packages: Any, key: str, shown: str) -> tuple[LockedPackage, ...]:
    if not isinstance(raw_packages, list):
        raise ConfigError("must be an array", file=shown, key=key)
    packages = []
    for index, item in enumerate(raw_packages):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise ConfigError("must be a table", file=shown, key=where)
        name, version, hashes = item.get("name"), item.get("version"), item.get("hashes")
        if not (isinstance(name, str) and _NAME.match(name)):
            raise ConfigError("name is not a distribution name", file=shown, key=where)
        if not isinstance(version, str) or not _is_version(version):
            raise ConfigError("version is not a version", file=shown, key=where)
        if not (
            isinstance(hashes, list) and hashes and all(_HASH.fullmatch(str(h)) for h in hashes)
        ):
            raise ConfigError("hashes must be sha256:<64 hex> strings", file=shown, key=where)
        packages.append(LockedPackage(name, version, tuple(hashes)))
    return tuple(packages)


def _targets(raw: Any, key: str, shown: str) -> dict[str, tuple[LockedPackage, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("must be a table of Python versions", file=shown, key=key)
    out = {}
    for python, table in raw.items():
        where = f"{key}.{_toml(python)}"
        if not re.fullmatch(r"\d+\.\d+", python):
            raise ConfigError("must be a Python version such as 3.12", file=shown, key=where)
        if not isinstance(table, dict) or set(table) != {"packages"}:
            raise ConfigError("must hold packages = [...] only", file=shown, key=where)
        out[python] = _packages(table["packages"], f"{where}.packages", shown)
    return out


def _service(service: str, table: Any, shown: str) -> LockedService:
    key = f"services.{service}"

    def text(name: str, *, required: bool = True) -> str:
        value = table.get(name, None if required else "")
        if not isinstance(value, str) or (required and not value):
            raise ConfigError("must be a non-empty string", file=shown, key=f"{key}.{name}")
        if not value.isprintable():
            raise ConfigError("holds control characters", file=shown, key=f"{key}.{name}")
        return value

    if not isinstance(table, dict):
        raise ConfigError("must be a table", file=shown, key=key)
    pins = table.get("pins", {})
    if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
        raise ConfigError("must be a table of strings", file=shown, key=f"{key}.pins")
    wheel = text("wheel", required=False)
    wheel_sha256 = text("wheel_sha256", required=False)
    if wheel and (
        not re.fullmatch(r"[A-Za-z0-9_.+!-]+\.whl", wheel)
        or not re.fullmatch("[0-9a-f]{64}", wheel_sha256)
        or not _is_wheel_name(wheel)
    ):
        raise ConfigError("wheel must be a wheel file name with its sha256", file=shown, key=key)
    spec, plugin, kind = text("spec"), text("plugin"), text("kind")
    # Names, versions and pins end up in requirement files and on command lines: a lock
    # written by someone else must not smuggle options (`x --index-url …`) in through them.
    if not _NAME.match(plugin):
        raise ConfigError("is not a distribution name", file=shown, key=f"{key}.plugin")
    if kind not in KINDS:
        raise ConfigError(f"must be one of {', '.join(KINDS)}", file=shown, key=f"{key}.kind")
    problem = _pins_problem(pins)
    if problem:
        raise ConfigError(problem, file=shown, key=f"{key}.pins")
    locked = LockedService(
        service=service,
        spec=spec,
        kind=kind,
        identity=text("identity"),
        plugin=plugin,
        wheel=wheel,
        wheel_sha256=wheel_sha256,
        pins=dict(pins),
        targets=_targets(table.get("python"), f"{key}.python", shown),
    )
    problem = _kind_problem(kind, pins, wheel)
    if problem:
        raise ConfigError(problem, file=shown, key=key)
    return locked


def _pins_problem(pins: Mapping[str, str]) -> str | None:
    patterns = {
        "commit": "[0-9a-f]{40}|[0-9a-f]{64}",
        "sha256": "[0-9a-f]{64}",
        "version": None,
        "url": r"[^\s\x00-\x1f\x7f]+",
    }
    for name, value in pins.items():
        if name not in patterns:
            return f"unknown pin {name!r} (expected: {', '.join(patterns)})"
        pattern = patterns[name]
        valid = _is_version(value) if pattern is None else re.fullmatch(pattern, value)
        if not valid:
            return f"{name} = {value[:80]!r} is not a valid {name}"
    return None


def _kind_problem(kind: str, pins: Mapping[str, str], wheel: str) -> str | None:
    """What a ``kind`` entry lacks (a lock whose fields contradict each other is refused here,
    before anything reads a pin it does not have)."""
    missing = [name for name in REQUIRED_PINS[kind] if name not in pins]
    if missing:
        return f"a {kind} entry needs pins.{missing[0]}"
    if (kind == "requirement") == bool(wheel):
        return f"a {kind} entry {'has no' if wheel else 'needs a'} plugin wheel"
    return None


def _is_wheel_name(name: str) -> bool:
    try:
        parse_wheel_filename(name)
    except ValueError:
        return False
    return True


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def _version_key(python: str) -> tuple[int, ...]:
    return tuple(int(part) for part in python.split("."))


def _toml(value: str) -> str:
    # A JSON string with ASCII escapes is also a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def dumps(lock: LockFile, config_name: str) -> str:
    """The lock as TOML: one table per service, one line per package (diff-friendly)."""
    out = [
        f"# reva-plugins lock file, format {LOCK_FORMAT}: `reva-plugins lock {config_name}`.",
        "# Every command run with the config builds exactly this; see docs/lock.md.",
        f"version = {LOCK_FORMAT}",
    ]
    for service in sorted(lock.services):
        locked = lock.services[service]
        out += ["", f"[services.{_toml(service)}]"]
        for name in ("spec", "kind", "identity", "plugin", "wheel", "wheel_sha256"):
            value = getattr(locked, name)
            if value:
                out.append(f"{name} = {_toml(value)}")
        if locked.pins:
            pins = ", ".join(f"{k} = {_toml(v)}" for k, v in sorted(locked.pins.items()))
            out.append(f"pins = {{ {pins} }}")
        for python in sorted(locked.targets, key=_version_key):
            out += ["", f"[services.{_toml(service)}.python.{_toml(python)}]"]
            packages = locked.targets[python]
            if not packages:
                out.append("packages = []")
                continue
            out.append("packages = [")
            for pkg in packages:
                hashes = ", ".join(_toml(h) for h in pkg.hashes)
                out.append(
                    f"  {{ name = {_toml(pkg.name)}, version = {_toml(pkg.version)}, "
                    f"hashes = [{hashes}] }},"
                )
            out.append("]")
    return "\n".join(out) + "\n"


def write(lock: LockFile, path: Path, config_name: str) -> None:
    """Write the lock atomically (a reader never sees half a lock)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the lock file: {exc.strerror or exc}", file=str(path)
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(lock, config_name))
        os.replace(tmp, path)
    except BaseException as exc:
        remove_tree(Path(tmp), within=path.parent)
        if isinstance(exc, OSError):
            raise ConfigError(
                f"cannot write the lock file: {exc.strerror or exc}", file=str(path)
            ) from None
        raise


# -- drift: does the config still ask for what the lock pins? -------------------------------------


def drift_error(lock: LockFile, svc: ServiceConfig, why: str) -> ConfigError:
    """The one-line error of a lock that no longer matches the config (exit 2)."""
    return ConfigError(
        f"{svc.key}: {why} (run 'reva-plugins lock' to update {lock.shown})", file=None
    )


def entry_for(lock: LockFile, svc: ServiceConfig, interpreter: _python.Interpreter) -> LockEntry:
    """``svc``'s entry for ``interpreter``'s Python; a drift error when the lock has none."""
    locked = lock.services.get(svc.service)
    if locked is None:
        raise drift_error(lock, svc, "the lock has no entry for this service")
    entry = locked.at(interpreter.short_version)
    if entry is None:
        raise drift_error(lock, svc, python_drift(locked, interpreter))
    return entry


def interpreter_for(
    locked: LockedService, request: str | None, cache: _python.InterpreterCache
) -> tuple[_python.Interpreter, LockEntry]:
    """The interpreter to build ``locked`` with, and its entry: ``request`` (a version or path),
    else the core's own Python if it is a target, else the newest target found here."""
    if request is not None:
        interpreter = _python.find(request, cache, key="--python")
        entry = locked.at(interpreter.short_version)
        if entry is None:
            raise ConfigError(f"{locked.service}: {python_drift(locked, interpreter)}")
        return interpreter, entry
    own = _python.current().short_version
    versions = sorted(locked.targets, key=lambda v: (v == own, _version_key(v)), reverse=True)
    for version in versions:
        try:
            interpreter = _python.find(version, cache, key="--python")
        except ConfigError:
            continue
        entry = locked.at(version)
        assert entry is not None
        return interpreter, entry
    raise ConfigError(
        f"{locked.service}: the lock targets Python {', '.join(versions)}; none is installed "
        "here (give --python)"
    )


def python_drift(locked: LockedService, interpreter: _python.Interpreter) -> str:
    """The reason of a driver running on a Python the lock has no packages for."""
    pythons = ", ".join(sorted(locked.targets, key=_version_key))
    return (
        f"the lock was made for Python {pythons}, the driver now runs on "
        f"{interpreter.short_version} (lock --python {interpreter.short_version} adds it)"
    )


def pinned(
    lock: LockFile,
    entry: LockEntry,
    svc: ServiceConfig,
    source: Source,
    ctx: ResolveContext,
    interpreter: _python.Interpreter,
) -> Resolved:
    """What ``source`` resolves to under the lock: the lock's pins, after checking that the
    config still asks for them. Never asks a remote (a git branch or a version range is not
    re-resolved). Raises a drift error (exit 2) that says which driver and why."""
    why = drift(entry, source, ctx, interpreter.short_version)
    if why:
        raise drift_error(lock, svc, why)
    if isinstance(source, GitSource):
        return entry.resolved((source.git.with_commit(entry.pins["commit"]),))
    if isinstance(source, RequirementSource):
        return entry.resolved((f"{entry.plugin}=={entry.pins['version']}",))
    if isinstance(source, ArchiveURL):  # fetched only if an env must be built without its wheel
        return entry.resolved((source.url,))
    return source.resolve(ctx)


def repin(entry: LockEntry, source: Source, ctx: ResolveContext) -> Resolved:
    """``source`` resolved at ``entry``'s pins: what locking it now gives without moving it (the
    locked commit, the locked version with the config's extras, the archive fetched again and
    checked against the locked sha256, the folder or file digested). Call it when ``source``
    does not drift from ``entry``."""
    pinned: Source = source
    if isinstance(source, GitSource):
        pinned = GitSource(dataclasses.replace(source.git, ref=entry.pins["commit"]))
    elif isinstance(source, RequirementSource):
        requirement = Requirement(str(source.requirement))
        requirement.specifier = SpecifierSet(f"=={entry.pins['version']}")
        pinned = RequirementSource(requirement)
    elif isinstance(source, ArchiveURL):
        pinned = ArchiveURL(source.url, sha256=entry.pins["sha256"])
    return dataclasses.replace(pinned.resolve(ctx), spec=source.spec, mutable=False)


def differences(locked: LockedService, now: LockedService) -> list[str]:
    """How ``locked`` differs from ``now``, what locking its pins gives now: one line each."""
    out = []
    for name in ("spec", "kind", "identity", "plugin", "wheel"):
        have, want = getattr(locked, name), getattr(now, name)
        if have != want:
            out.append(f"the lock's {name} is {have!r}, locking it now gives {want!r}")
    if locked.wheel_sha256 != now.wheel_sha256:
        out.append(
            f"building the plugin's wheel now gives sha256:{now.wheel_sha256[:16]}…, the lock "
            f"pins sha256:{locked.wheel_sha256[:16]}… (the lock was edited, or the plugin's "
            "build is not reproducible)"
        )
    if dict(locked.pins) != dict(now.pins):
        have, want = dict(locked.pins), dict(now.pins)
        out.append(f"the lock's pins are {have}, locking it now gives {want}")
    for python in sorted(set(locked.targets) | set(now.targets), key=_version_key):
        out += [f"Python {python}: {why}" for why in _package_differences(
            locked.targets.get(python, ()), now.targets.get(python, ())
        )]  # fmt: skip
    return out


def _package_differences(
    locked: Sequence[LockedPackage], now: Sequence[LockedPackage]
) -> list[str]:
    have = {canonicalize_name(p.name): p for p in locked}
    want = {canonicalize_name(p.name): p for p in now}
    out = []
    for name in sorted(have.keys() | want.keys()):
        old, new = have.get(name), want.get(name)
        if old is None and new is not None:
            out.append(f"the lock has no {new.name}, resolving now gives {new.name} {new.version}")
        elif new is None and old is not None:
            out.append(f"the lock has {old.name} {old.version}, resolving now installs none")
        elif old is not None and new is not None and old.version != new.version:
            out.append(
                f"the lock has {old.name} {old.version}, resolving now gives "
                f"{new.name} {new.version}"
            )
        elif old is not None and new is not None and set(old.hashes) != set(new.hashes):
            out.append(
                f"the hashes of {old.name} {old.version} in the lock are not the ones resolving "
                "gives now"
            )
    if not out and tuple(locked) != tuple(now):
        out.append("the packages are not listed as 'reva-plugins lock' writes them")
    return out


def drift(entry: LockEntry, source: Source, ctx: ResolveContext, python: str) -> str | None:
    """Why ``source``, run on Python ``python``, no longer matches ``entry`` (None if it does)."""
    if source.kind != entry.kind:
        return f"the lock pins a {entry.kind} source, the config now gives a {source.kind}"
    if python != entry.python:
        return f"the lock entry is for Python {entry.python}, the driver runs on {python}"
    if isinstance(source, RequirementSource):
        name = canonicalize_name(source.requirement.name)
        version = entry.pins.get("version", "")
        if name != canonicalize_name(entry.plugin) or not source.requirement.specifier.contains(
            version, prereleases=True
        ):
            return (
                f"the lock pins {entry.plugin} {version}, the config now asks for "
                f"{redact(source.spec)}"
            )
        return None
    if isinstance(source, GitSource):
        wanted = source.git.ref
        commit = entry.pins.get("commit", "")
        same_repo = _git.parse(entry.spec).bare_url == source.git.bare_url
        same_dir = _git.parse(entry.spec).subdirectory == source.git.subdirectory
        if not (same_repo and same_dir) or (source.git.pinned and wanted != commit):
            return (
                f"the lock pins {entry.spec} at {commit[:12]}, the config now asks for "
                f"{source.spec}"
            )
        return None
    if isinstance(source, ArchiveURL):
        if source.spec != entry.spec or (
            source.sha256 and source.sha256.lower() != entry.pins.get("sha256")
        ):
            return f"the lock pins {entry.spec}, the config now asks for {source.spec}"
        return None
    if isinstance(source, (LocalFolder, LocalFile)):
        now = source.resolve(ctx).identity
        if now != entry.identity:
            what = "folder" if isinstance(source, LocalFolder) else "file"
            return (
                f"the lock pins {_short(entry.identity)} for {source.spec}, the {what} now "
                f"is {_short(now)}"
            )
        return None
    return f"a {source.kind} source cannot be locked"


def _short(identity: str) -> str:
    kind, _, value = identity.partition(":")
    return f"{kind}:{value[:12]}"


# -- keys and installs ----------------------------------------------------------------------------


def env_key(entry: LockEntry, interpreter: _python.Interpreter, installer: str) -> str:
    """The env key of a locked driver: the same wherever its wheels come from (index, cache or
    bundle), since the hashes fix what gets installed."""
    return make_key(
        {
            "identity": entry.identity,
            "lock": entry.digest(),
            "python": interpreter.identity,
            "installer": installer,
            "protocol": list(_protocol.PROTOCOL_VERSIONS),
        }
    )


def pins(entry: LockEntry, *, with_plugin: bool) -> list[Pin]:
    """What ``entry`` installs by hash (with the plugin's own wheel if asked)."""
    out = list(entry.packages)
    if with_plugin and entry.wheel:
        out.append(Pin(entry.plugin, entry.wheel_version, (f"sha256:{entry.wheel_sha256}",)))
    return out


def install(
    installer: Installer,
    venv: Path,
    entry: LockEntry,
    resolved: Resolved,
    options: InstallOptions,
    *,
    wheels: Path | None,
) -> None:
    """Install what ``entry`` pins into ``venv``, every file checked against its hash.

    ``wheels``: a folder holding the plugin's wheel (a bundle's or the lock's wheel cache); then
    the plugin installs from it by hash like everything else, else from its source (pinned by
    its identity) without dependencies.
    """
    plugin_wheel = wheels is not None and bool(entry.wheel) and (wheels / entry.wheel).is_file()
    if plugin_wheel and wheels is not None:
        options = options.with_links(wheels)
    elif entry.kind != "requirement":
        installer.install(venv, resolved.install_args, options, deps=False)
    installer.install_pinned(venv, pins(entry, with_plugin=plugin_wheel), options)


# -- locking: resolving a driver to an entry ------------------------------------------------------


@dataclass(frozen=True)
class Locker:
    """Resolves drivers to lock entries with ``installer``: the plugin built to a wheel (kept in
    ``wheel_cache``), its dependencies resolved with hashes for each target Python."""

    installer: Installer
    options: InstallOptions
    wheel_cache: Path

    def lock(
        self,
        svc: ServiceConfig,
        resolved: Resolved,
        interpreter: _python.Interpreter,
        targets: Mapping[str, _python.Interpreter] | None = None,
    ) -> LockedService:
        """The lock table of ``svc`` whose source resolved to ``resolved`` (its plugin built with
        ``interpreter``), for each target Python of ``targets`` (``{"3.12": interpreter}``;
        default: ``interpreter``'s own version)."""
        label = f"{svc.key} ({redact(svc.driver)})"
        wheel, wheel_sha256 = "", ""
        if resolved.kind in LOCAL_KINDS or resolved.kind.startswith("wheel"):
            built = self.wheel_of(resolved, interpreter, label)
            wheel, wheel_sha256 = built.name, file_digest(built)
            plugin = canonicalize_name(parse_wheel_filename(built.name)[0])
            resolve_input = str(built)
        else:
            plugin = canonicalize_name(Requirement(resolved.install_args[0]).name)
            resolve_input = resolved.install_args[0]
        locked_for = {}
        for python, target in sorted((targets or {interpreter.short_version: interpreter}).items()):
            packages = self.resolve(resolve_input, target, label)
            if resolved.kind != "requirement":
                packages = [p for p in packages if canonicalize_name(p.name) != plugin]
            locked_for[python] = tuple(sorted(packages, key=lambda p: canonicalize_name(p.name)))
        return LockedService(
            service=svc.service,
            # A path as the config writes it (relative to the config), so a lock made on one
            # machine reads the same on another.
            spec=redact(svc.driver) if resolved.kind in PATH_KINDS else resolved.spec,
            kind=resolved.kind,
            identity=resolved.identity,
            plugin=plugin,
            wheel=wheel,
            wheel_sha256=wheel_sha256,
            pins=dict(resolved.pins),
            targets=locked_for,
        )

    def resolve(
        self, requirement: str, interpreter: _python.Interpreter, label: str
    ) -> list[LockedPackage]:
        """Every distribution ``requirement`` installs on ``interpreter``, with hashes."""
        try:
            return self.installer.resolve_pinned(requirement, interpreter, self.options)
        except CommandFailed as exc:
            raise SourceError(f"{label}: resolving its dependencies failed:\n{exc.tail}") from None

    def wheel_of(self, resolved: Resolved, interpreter: _python.Interpreter, label: str) -> Path:
        """The plugin as a wheel: the file itself, or built (reproducibly) into the wheel cache.
        Built every time it is asked for, so callers can compare it with what a lock pins."""
        arg = resolved.install_args[0]
        self.wheel_cache.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="build-", dir=self.wheel_cache))
        try:
            if resolved.kind.startswith("wheel"):
                shutil.copyfile(arg, out / Path(arg).name)
            else:
                try:
                    self.installer.build_wheel(arg, out, interpreter, self.options)
                except CommandFailed as exc:
                    raise EnvBuildError.of_command(
                        f"building the plugin's wheel failed: {exc.argv[0]} exited with "
                        f"{exc.returncode}",
                        exc,
                        plugin=label,
                    ) from None
            built = sorted(out.glob("*.whl"))
            if len(built) != 1:
                raise EnvBuildError(f"building {arg} gave {len(built)} wheels", plugin=label)
            digest = file_digest(built[0])
            final = self.wheel_cache / digest
            final.mkdir(exist_ok=True)
            os.replace(built[0], final / built[0].name)
            return final / built[0].name
        finally:
            remove_tree(out, within=self.wheel_cache)

    def cached_wheel(self, entry: LockEntry | LockedService) -> Path | None:
        """The wheel ``entry`` pins, if this cache holds it (checked against its sha256)."""
        path = self.wheel_cache / entry.wheel_sha256 / entry.wheel
        if entry.wheel and path.is_file() and file_digest(path) == entry.wheel_sha256:
            return path
        return None


def matches(entry: LockEntry | LockedService, wanted: Sequence[str]) -> bool:
    """True when ``entry``'s service or plugin is one of ``wanted``."""
    return entry.service in wanted or canonicalize_name(entry.plugin) in {
        canonicalize_name(w) for w in wanted
    }
