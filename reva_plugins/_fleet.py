"""Fleets: lock what a config resolves to, export it as a bundle, import it on another host.

The logic of ``reva-plugins lock`` and ``env export``/``env import`` over a :class:`Planner`
(the lock file itself is :mod:`._lockfile`, locking :mod:`._locker`, the bundle :mod:`._bundle`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import _bundle, _installers, _lockfile, _python
from ._config import Config, ServiceConfig
from ._errors import ConfigError, SourceError, UsageError
from ._locker import Locker, differences
from ._lockfile import version_key
from ._plan import Planner, Prepared, check_fits
from ._resolvers import drift

if TYPE_CHECKING:
    from ._sources import Resolved, Source

log = logging.getLogger("reva_plugins.fleet")


def _isolated(planner: Planner) -> list[tuple[str, Source]]:
    """The services whose driver runs in an env of its own, with their sources."""
    out = []
    for svc in planner.config.services:
        source = planner.built_source(svc)
        if source is not None:
            out.append((svc.service, source))
    return out


class _Locking:
    """What locking and checking a lock share: the locker (uv when installed, whatever the
    builds use) and the target interpreters, found once. A driver several services share is
    locked once."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        root = planner.store.root
        self.locker = Locker(
            _installers.for_locking(app_data=root / "virtualenv"),
            planner.builder.install_options(),
            planner.builder.wheel_cache,
        )
        self._done: dict[tuple[str, str, tuple[str, ...]], _lockfile.LockedService] = {}

    def interpreter(self, python: str, key: str) -> _python.Interpreter:
        """The interpreter of target Python ``python`` on this host (ConfigError naming ``key``
        when there is none: a lock is made and checked with the Pythons it targets)."""
        return _python.find(python, self.planner.builder.interpreters, key=key)

    def lock(
        self,
        svc: ServiceConfig,
        resolved: Resolved,
        interpreter: _python.Interpreter,
        pythons: Sequence[str],
        key: str,
    ) -> _lockfile.LockedService:
        """``svc``'s table for ``pythons`` (the driver's own Python runs on ``interpreter``)."""
        targets = {
            python: interpreter
            if python == interpreter.short_version
            else self.interpreter(python, key)
            for python in pythons
        }
        memo = (resolved.identity, interpreter.identity, tuple(sorted(pythons)))
        if memo not in self._done:
            log.info("locking %s …", svc.key)
            self._done[memo] = self.locker.lock(svc, resolved, interpreter, targets)
        return dataclasses.replace(self._done[memo], service=svc.service)


def lock(
    planner: Planner, upgrade: str | None = None, pythons: Sequence[str] = ()
) -> tuple[_lockfile.LockFile, list[str]]:
    """Resolve the config's drivers into a lock; return it and the services (re-)resolved.

    Entries of an existing lock that still match the config are kept (a branch or a range is
    not moved) unless ``upgrade`` names them (a service or plugin name; ``*`` for all).
    ``pythons`` adds target Pythons: each service is locked for the targets its entry already
    has, these, and the Python its driver runs on. Every target must be installed here.
    """
    config = planner.config
    path = _lockfile.lock_path(config)
    if path is None:
        raise ConfigError("locking needs a config file")
    for python in pythons:
        if not re.fullmatch(r"\d+\.\d+", python):
            raise UsageError(f"--python {python!r}: give a version such as 3.12")
    locking = _Locking(planner)
    for python in pythons:  # before anything is resolved or written
        locking.interpreter(python, "--python")
    old = None
    if path.exists():
        try:
            old = _lockfile.read(path)
        except ConfigError:
            if upgrade != "*":  # `lock --upgrade` rewrites a lock that cannot be read
                raise
    if (
        upgrade not in (None, "*")
        and not any(upgrade == s.service for s in config.services)
        and not (old and any(_lockfile.matches(e, [str(upgrade)]) for e in old.services.values()))
    ):
        raise ConfigError(f"--upgrade {upgrade}: no service or locked plugin has this name")
    planner.use_lock = False
    services: dict[str, _lockfile.LockedService] = {}
    changed = []
    for svc in config.services:
        source = planner.built_source(svc)
        if source is None:
            continue
        prev = old.services.get(svc.service) if old else None
        wanted = upgrade == "*" or (
            upgrade is not None and prev is not None and _lockfile.matches(prev, [upgrade])
        )
        locked = _lock_service(locking, svc, source, prev, pythons, path, upgrade=wanted)
        services[svc.service] = locked
        if prev != locked:
            changed.append(svc.service)
    result = _lockfile.LockFile(services, path)
    _lockfile.write(result, path, Path(str(config.file)).name)
    return result, changed


def _lock_service(
    locking: _Locking,
    svc: ServiceConfig,
    source: Source,
    prev: _lockfile.LockedService | None,
    pythons: Sequence[str],
    path: Path,
    *,
    upgrade: bool,
) -> _lockfile.LockedService:
    """``svc``'s table: ``prev`` kept when the config still asks for it and ``upgrade`` is
    False (with any target Python it lacks added), else its driver resolved anew; the targets
    are ``prev``'s, ``pythons`` and the driver's own Python."""
    builder = locking.planner.builder
    interpreter = builder.interpreter(svc)
    ctx = builder.resolve_context(builder.installer(), interpreter, builder.install_options())
    had = set(prev.targets) if prev else set()
    # The driver's own Python always: after `lock`, every command on this host finds its entry.
    targets = sorted(had | set(pythons) | {interpreter.short_version}, key=version_key)
    key = f"{path}: services.{svc.service}.python"
    view = prev.entries()[0] if prev else None
    if upgrade or prev is None or view is None or drift(view, source, ctx, view.python) is not None:
        check_fits(source, interpreter)
        resolved = source.resolve(ctx)
        return locking.lock(svc, resolved, interpreter, targets, key)
    missing = [python for python in targets if python not in had]
    if not missing:
        return prev
    check_fits(source, interpreter)
    resolved = source.repin(view, ctx)
    return _with_targets(svc, prev, locking.lock(svc, resolved, interpreter, missing, key))


def _with_targets(
    svc: ServiceConfig, prev: _lockfile.LockedService, added: _lockfile.LockedService
) -> _lockfile.LockedService:
    """``prev`` with the targets of ``added``, its same driver locked for more Pythons."""
    same = dataclasses.replace(added, spec=prev.spec, targets=prev.targets)
    why = differences(prev, same)
    if why:
        raise SourceError(
            f"{svc.key}: cannot add a target Python: {why[0]}; 'reva-plugins lock --upgrade "
            f"{svc.service}' locks it anew for every target"
        )
    return dataclasses.replace(prev, targets={**prev.targets, **added.targets})


def stale(planner: Planner, pythons: Sequence[str] = ()) -> list[str]:
    """Why the lock beside the config is not what locking the config gives now (empty when it
    is): drift from the config, a target Python missing, and any difference between each entry
    and its pins locked again (plugin wheels rebuilt, dependencies resolved with hashes for
    every target Python). Builds the plugin wheels into the cache, where export finds them."""
    config = planner.config
    path = _lockfile.lock_path(config)
    if path is None or not path.exists():
        return [f"{path or config.source_name}: there is no lock file"]
    current = _lockfile.read(path)
    locking = _Locking(planner)
    problems = []
    installer = planner.builder.installer()
    options = planner.builder.install_options()
    seen = set()
    relock = "run 'reva-plugins lock'"
    for name, source in _isolated(planner):
        svc = config.service(name)
        seen.add(name)
        locked = current.services.get(name)
        if locked is None:
            problems.append(f"{svc.key}: the lock has no entry for this service ({relock})")
            continue
        interpreter = planner.builder.interpreter(svc)
        entry = locked.at(interpreter.short_version)
        if entry is None:
            problems.append(f"{svc.key}: {_lockfile.python_drift(locked, interpreter)}")
            continue
        problems += [
            f"{svc.key}: the lock has no packages for Python {python} (lock --python {python} "
            "adds it)"
            for python in pythons
            if python not in locked.targets
        ]
        ctx = planner.builder.resolve_context(installer, interpreter, options)
        why = drift(entry, source, ctx, entry.python)
        if why:
            problems.append(f"{svc.key}: {why} ({relock})")
            continue
        check_fits(source, interpreter)
        resolved = source.repin(entry, ctx)
        key = f"{current.shown}: services.{name}.python"
        now = locking.lock(svc, resolved, interpreter, sorted(locked.targets), key)
        problems += [
            f"{svc.key}: {why} ('reva-plugins lock --upgrade {name}' locks it anew)"
            for why in differences(locked, now)
        ]
    for name in sorted(set(current.services) - seen):
        problems.append(f"{path}: services.{name} is locked but no longer configured ({relock})")
    return problems


def export(planner: Planner, out: Path, fmt: _bundle.Format) -> int:
    """Bundle every wheel the config's lock pins into ``out``; return the number of wheels.

    The lock must be exactly what locking the config gives now (:func:`stale`), which also
    rebuilds each plugin wheel this cache lacks and checks it against the lock's sha256."""
    path = _lockfile.lock_path(planner.config)
    if path is None or not path.exists():
        raise ConfigError(
            f"{planner.config.source_name}: there is no lock file; run 'reva-plugins lock' first"
        )
    problems = stale(planner)
    if problems:
        raise ConfigError(problems[0])
    current = _lockfile.read(path)
    return _bundle.export(current, path.read_bytes(), _Locking(planner).locker, out, fmt)


def import_bundle(
    config: Config, bundle: Path, python: str | None = None
) -> list[tuple[str, Prepared]]:
    """Build every env the bundle's lock pins from the bundle alone (no network)."""
    settings = dataclasses.replace(config.plugins, bundle=bundle, offline=True)
    planner = Planner(dataclasses.replace(config, plugins=settings, file=None))
    with contextlib.closing(planner):
        current = planner.lock()
        assert current is not None
        return [
            (name, planner.prepare_locked(locked, python))
            for name, locked in sorted(current.services.items())
        ]
