"""Resolvers: what a driver's source resolves to for a build, and how it is installed.

Planning picks one per config: :class:`Unlocked` (resolved anew on each load), :class:`Locked`
(``CONFIG.lock``'s pins, installed by hash from the index) or :class:`Bundled` (a lock's pins,
installed offline from a bundle's checked wheels). Each gives an :class:`~._build.Install`, the
value the builder turns into an env: its key material and its install step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import _python
from ._build import Install
from ._bundle import Bundle
from ._config import ServiceConfig
from ._errors import ConfigError
from ._installers import Installer, InstallOptions
from ._lockfile import LockedService, LockEntry, LockFile, pins, python_drift, version_key
from ._redact import redact
from ._sources import ResolveContext, Resolved, Source


class Resolver(Protocol):
    """How planning turns a service's source into what the builder installs."""

    def resolve(
        self,
        svc: ServiceConfig,
        source: Source,
        interpreter: _python.Interpreter,
        ctx: ResolveContext,
    ) -> Install:
        """``source`` (``svc``'s driver, run on ``interpreter``) resolved for a build."""
        ...


# -- unlocked ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnlockedInstall:
    """A source resolved anew: keyed by its identity and the install options."""

    label: str
    resolved: Resolved

    def key_material(self, options: InstallOptions, installer: str) -> Mapping[str, Any]:
        """The identity, the package sources and the installer (which resolves the
        dependencies)."""
        return {
            "identity": self.resolved.identity,
            "options": options.key_material(),
            "installer": installer,
        }

    def install(self, installer: Installer, venv: Path, options: InstallOptions) -> None:
        """Install the resolved source with its dependencies."""
        installer.install(venv, self.resolved.install_args, options)


class Unlocked:
    """No lock: every load resolves the source (a branch or a range moves)."""

    def resolve(
        self,
        svc: ServiceConfig,
        source: Source,
        interpreter: _python.Interpreter,
        ctx: ResolveContext,
    ) -> Install:
        """``source`` resolved now."""
        return UnlockedInstall(svc.label, source.resolve(ctx))


# -- locked --------------------------------------------------------------------------------------


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


def drift(entry: LockEntry, source: Source, ctx: ResolveContext, python: str) -> str | None:
    """Why ``source``, run on Python ``python``, no longer matches ``entry`` (None if it does)."""
    if source.kind != entry.kind:
        return f"the lock pins a {entry.kind} source, the config now gives a {source.kind}"
    if python != entry.python:
        return f"the lock entry is for Python {entry.python}, the driver runs on {python}"
    return source.drift(entry, ctx)


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
    versions = sorted(locked.targets, key=lambda v: (v == own, version_key(v)), reverse=True)
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


def _pinned(
    lock: LockFile,
    svc: ServiceConfig,
    source: Source,
    interpreter: _python.Interpreter,
    ctx: ResolveContext,
) -> tuple[LockEntry, Resolved]:
    """``svc``'s entry and what ``source`` resolves to under it: the lock's pins, after checking
    that the config still asks for them. Never asks a remote (a git branch or a version range is
    not re-resolved). Raises a drift error (exit 2) that says which driver and why."""
    entry = entry_for(lock, svc, interpreter)
    why = drift(entry, source, ctx, interpreter.short_version)
    if why:
        raise drift_error(lock, svc, why)
    return entry, source.pinned(entry, ctx)


def _install_pinned(
    installer: Installer,
    venv: Path,
    entry: LockEntry,
    resolved: Resolved,
    options: InstallOptions,
    wheels: Path,
) -> None:
    """Install what ``entry`` pins into ``venv``, every file checked against its hash.

    ``wheels``: a folder that may hold the plugin's wheel (a bundle's or the lock's wheel
    cache); then the plugin installs from it by hash like everything else, else from its source
    (pinned by its identity) without dependencies.
    """
    plugin_wheel = bool(entry.wheel) and (wheels / entry.wheel).is_file()
    if plugin_wheel:
        options = options.with_links(wheels)
    elif entry.wheel:  # a plugin of the index has no wheel of its own: it is one of the pins
        installer.install(venv, resolved.install_args, options, deps=False)
    installer.install_pinned(venv, pins(entry, with_plugin=plugin_wheel), options)


@dataclass(frozen=True)
class _LockedKey:
    entry: LockEntry

    def key_material(self, options: InstallOptions, installer: str) -> Mapping[str, Any]:
        """The identity and everything the lock installs: the same wherever its wheels come
        from (index, cache or bundle) and whichever installer installs them, since the hashes
        fix what gets installed (so ``env import`` with uv serves a config that says pip)."""
        return {"identity": self.entry.identity, "lock": self.entry.digest()}


@dataclass(frozen=True)
class LockedInstall(_LockedKey):
    """A lock entry installed by hash from the index: the plugin's wheel from this cache if it
    was built here, else from its source (an archive fetched now)."""

    label: str
    resolved: Resolved
    wheels: Path
    source: Source | None
    ctx: ResolveContext

    def install(self, installer: Installer, venv: Path, options: InstallOptions) -> None:
        """Install with the lock's hashes."""
        with contextlib.suppress(OSError):  # used now: env prune keeps it
            os.utime(self.wheels)
        resolved = self.resolved
        if self.source is not None and not (self.wheels / self.entry.wheel).is_file():
            resolved = self.source.fetch_late(self.entry, self.ctx) or resolved
        _install_pinned(installer, venv, self.entry, resolved, options, self.wheels)


@dataclass(frozen=True)
class Locked:
    """``CONFIG.lock``: each driver is built exactly as the lock pins it (drift is an error)."""

    lock: LockFile
    #: The folder of plugin wheels locking built (``<sha256>/<wheel>``).
    wheel_cache: Path

    def resolve(
        self,
        svc: ServiceConfig,
        source: Source,
        interpreter: _python.Interpreter,
        ctx: ResolveContext,
    ) -> Install:
        """``source`` at the lock's pins."""
        entry, resolved = _pinned(self.lock, svc, source, interpreter, ctx)
        wheels = self.wheel_cache / entry.wheel_sha256
        return LockedInstall(entry, svc.label, resolved, wheels, source, ctx)


# -- bundled -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundledInstall(_LockedKey):
    """A lock entry installed offline from a bundle, once the bundle is checked against it."""

    label: str
    resolved: Resolved
    bundle: Bundle

    def install(self, installer: Installer, venv: Path, options: InstallOptions) -> None:
        """Install from the bundle's wheels only."""
        self.bundle.check(self.entry)
        offline = InstallOptions.only_from(self.bundle.wheels)
        _install_pinned(installer, venv, self.entry, self.resolved, offline, self.bundle.wheels)


@dataclass(frozen=True)
class Bundled:
    """``[plugins] bundle``: each driver is built as the lock (beside the config, else the
    bundle's) pins it, from the bundle's wheels alone."""

    lock: LockFile
    bundle: Bundle

    def resolve(
        self,
        svc: ServiceConfig,
        source: Source,
        interpreter: _python.Interpreter,
        ctx: ResolveContext,
    ) -> Install:
        """``source`` at the lock's pins."""
        entry, resolved = _pinned(self.lock, svc, source, interpreter, ctx)
        return BundledInstall(entry, svc.label, resolved, self.bundle)

    def entry(self, entry: LockEntry) -> Install:
        """A lock entry with no config (``env import``)."""
        label = f"{entry.service} ({redact(entry.spec)})"
        return BundledInstall(entry, label, entry.resolved(), self.bundle)
