"""Lock files: what a config's drivers resolve to, pinned with hashes (``CONFIG.lock``).

A lock holds, per service, the driver's resolved identity (tree digest, commit, sha256 or exact
version), the wheel a local source was built to, and every distribution its env installs, each
with its hashes, for each target Python. This module reads, validates and writes it; the format
is ``docs/lock.md``. Building what it pins is :mod:`._resolvers`, making it :mod:`._locker`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from . import _python
from ._config import Config
from ._errors import ConfigError
from ._fs import NotRegular, read_regular, remove_tree
from ._installers import Pin
from ._sources import LOCKED_KINDS, Resolved, lock_entry_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

LOCK_FORMAT = 1
"""The version of the lock file format this core reads and writes (``version = 1``)."""
MAX_LOCK_BYTES = 16 << 20
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    targets: Mapping[str, tuple[Pin, ...]] = field(default_factory=dict)

    def at(self, python: str) -> LockEntry | None:
        """What the driver installs on Python ``python`` (None if it is not a target)."""
        packages = self.targets.get(python)
        if packages is None:
            return None
        return LockEntry(**vars(self), python=python, packages=packages)

    def entries(self) -> list[LockEntry]:
        """One entry per target Python."""
        return [e for python in sorted(self.targets) if (e := self.at(python)) is not None]


@dataclass(frozen=True)
class LockEntry(LockedService):
    """A service's lock at one of its target Pythons: what its env installs there."""

    python: str = ""
    packages: tuple[Pin, ...] = ()

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
        raw = read_regular(path, MAX_LOCK_BYTES)
    except NotRegular:
        raise ConfigError("the lock file is not a regular file", file=shown) from None
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            why = f"the lock file is larger than {MAX_LOCK_BYTES} bytes"
        else:
            why = f"cannot read the lock file: {exc.strerror or exc}"
        raise ConfigError(why, file=shown) from None
    return loads(raw, path)


def loads(raw: bytes, path: Path | None = None) -> LockFile:
    """Parse lock text; every field is checked (a lock can be written by anyone with the repo)."""
    shown = str(path) if path else "<lock>"
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"the lock file is not valid TOML: {exc}", file=shown) from None
    version = data.get("version")
    # Only the integer the format defines: TOML's true and 1.0 compare equal to 1 in Python.
    if type(version) is not int or version != LOCK_FORMAT:
        raise ConfigError(
            f"lock format {version!r} is not {LOCK_FORMAT}; run 'reva-plugins lock' "
            "with this version of reva-plugins",
            file=shown,
            key="version",
        )
    services = data.get("services", {})
    if not isinstance(services, dict):
        raise ConfigError("must be a table", file=shown, key="services")
    parsed = {name: _service(name, table, shown) for name, table in services.items()}
    return LockFile(parsed, path)


def _packages(raw_packages: Any, key: str, shown: str) -> tuple[Pin, ...]:
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
        packages.append(Pin(name, version, tuple(hashes)))
    return tuple(packages)


def _targets(raw: Any, key: str, shown: str) -> dict[str, tuple[Pin, ...]]:
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
    if kind not in LOCKED_KINDS:
        raise ConfigError(
            f"must be one of {', '.join(LOCKED_KINDS)}", file=shown, key=f"{key}.kind"
        )
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
    problem = lock_entry_problem(kind, pins, wheel)
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


def version_key(python: str) -> tuple[int, ...]:
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
        for python in sorted(locked.targets, key=version_key):
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


def python_drift(locked: LockedService, interpreter: _python.Interpreter) -> str:
    """The reason of a driver running on a Python the lock has no packages for."""
    pythons = ", ".join(sorted(locked.targets, key=version_key))
    return (
        f"the lock was made for Python {pythons}, the driver now runs on "
        f"{interpreter.short_version} (lock --python {interpreter.short_version} adds it)"
    )


def pins(entry: LockEntry, *, with_plugin: bool) -> list[Pin]:
    """What ``entry`` installs by hash (with the plugin's own wheel if asked)."""
    out = list(entry.packages)
    if with_plugin and entry.wheel:
        out.append(Pin(entry.plugin, entry.wheel_version, (f"sha256:{entry.wheel_sha256}",)))
    return out


def matches(entry: LockedService, wanted: Sequence[str]) -> bool:
    """True when ``entry``'s service or plugin is one of ``wanted``."""
    return entry.service in wanted or canonicalize_name(entry.plugin) in {
        canonicalize_name(w) for w in wanted
    }
