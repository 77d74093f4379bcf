"""Fleets: lock what a config resolves to, export it as a bundle, import it on another host.

The logic of ``reva-plugins lock`` and ``env export``/``env import`` over a :class:`Planner`
(the lock file itself is :mod:`._lock`, the bundle :mod:`._bundle`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import _bundle, _lock
from ._config import Config
from ._errors import ConfigError, UsageError
from ._plan import Planner, Prepared
from ._wheels import check_wheel

if TYPE_CHECKING:
    from ._sources import Source

log = logging.getLogger("reva_plugins.fleet")


def _isolated(planner: Planner) -> list[tuple[str, Source]]:
    """The services whose driver runs in an env of its own, with their sources."""
    out = []
    for svc in planner.config.services:
        source = planner.built_source(svc)
        if source is not None:
            out.append((svc.service, source))
    return out


def lock(
    planner: Planner, upgrade: str | None = None, pythons: Sequence[str] = ()
) -> tuple[_lock.LockFile, list[str]]:
    """Resolve the config's drivers into a lock; return it and the services (re-)resolved.

    Entries of an existing lock that still match the config are kept (a branch or a range is
    not moved) unless ``upgrade`` names them (a service or plugin name; ``*`` for all).
    ``pythons``: the Python versions to lock each driver's dependencies for (default: the
    version of the interpreter the driver runs on).
    """
    config = planner.config
    path = _lock.lock_path(config)
    if path is None:
        raise ConfigError("locking needs a config file")
    for python in pythons:
        if not re.fullmatch(r"\d+\.\d+", python):
            raise UsageError(f"--python {python!r}: give a version such as 3.12")
    old = _lock.read(path) if path.exists() and upgrade != "*" else None
    planner.builder.use_lock = False
    locker = _lock.Locker(planner.builder.install_options(), planner.store.root / "wheels")
    services: dict[str, _lock.LockedService] = {}
    done: dict[tuple[str, str, tuple[str, ...]], _lock.LockedService] = {}
    changed = []
    if (
        upgrade not in (None, "*")
        and not any(upgrade == s.service for s in config.services)
        and not (old and any(_lock.matches(e, [str(upgrade)]) for e in old.services.values()))
    ):
        raise ConfigError(f"--upgrade {upgrade}: no service or locked plugin has this name")
    installer = planner.builder.installer()
    options = planner.builder.install_options()
    for svc in config.services:
        source = planner.built_source(svc)
        if source is None:
            continue
        interpreter = planner.builder.interpreter(svc)
        targets = tuple(dict.fromkeys(pythons)) or (interpreter.short_version,)
        ctx = planner.builder.resolve_context(installer, interpreter, options)
        prev = old.services.get(svc.service) if old else None
        wanted = upgrade is not None and prev is not None and _lock.matches(prev, [upgrade])
        if prev is not None and not wanted and set(prev.targets) == set(targets):
            view = prev.at(targets[0])
            if view is not None and _lock.drift(view, source, ctx, view.python) is None:
                services[svc.service] = prev
                continue
        resolved = source.resolve(ctx)
        check_wheel(resolved, interpreter)
        memo = (resolved.identity, interpreter.identity, targets)
        if memo in done:
            locked = dataclasses.replace(done[memo], service=svc.service)
        else:
            log.info("locking %s …", svc.key)
            locked = locker.lock(svc, resolved, interpreter, targets)
        done[memo] = locked
        services[svc.service] = locked
        if prev != locked:
            changed.append(svc.service)
    result = _lock.LockFile(services, path)
    _lock.write(result, path, Path(str(config.file)).name)
    return result, changed


def stale(planner: Planner) -> list[str]:
    """Why the lock beside the config no longer matches it (empty when it does)."""
    config = planner.config
    path = _lock.lock_path(config)
    if path is None or not path.exists():
        return [f"{path or config.source_name}: there is no lock file"]
    current = _lock.read(path)
    problems = []
    installer = planner.builder.installer()
    options = planner.builder.install_options()
    seen = set()
    for name, source in _isolated(planner):
        svc = config.service(name)
        seen.add(name)
        locked = current.services.get(name)
        if locked is None:
            problems.append(f"{svc.key}: the lock has no entry for this service")
            continue
        interpreter = planner.builder.interpreter(svc)
        entry = locked.at(interpreter.short_version)
        if entry is None:
            problems.append(f"{svc.key}: {_lock.python_drift(locked, interpreter)}")
            continue
        ctx = planner.builder.resolve_context(installer, interpreter, options)
        why = _lock.drift(entry, source, ctx, entry.python)
        if why:
            problems.append(f"{svc.key}: {why}")
    for name in sorted(set(current.services) - seen):
        problems.append(f"{path}: services.{name} is locked but no longer configured")
    return problems


def export(planner: Planner, out: Path, fmt: _bundle.Format) -> int:
    """Bundle every wheel the config's lock pins into ``out``; return the number of wheels."""
    path = _lock.lock_path(planner.config)
    if path is None or not path.exists():
        raise ConfigError(
            f"{planner.config.source_name}: there is no lock file; run 'reva-plugins lock' first"
        )
    problems = stale(planner)
    if problems:
        raise ConfigError(f"{problems[0]} (run 'reva-plugins lock' first)")
    current = _lock.read(path)
    locker = _lock.Locker(planner.builder.install_options(), planner.store.root / "wheels")
    return _bundle.export(current, path.read_bytes(), locker, out, fmt)


def import_bundle(
    config: Config, bundle: Path, python: str | None = None
) -> list[tuple[str, Prepared]]:
    """Build every env the bundle's lock pins from the bundle alone (no network)."""
    settings = dataclasses.replace(config.plugins, bundle=bundle, offline=True)
    planner = Planner(dataclasses.replace(config, plugins=settings, file=None))
    try:
        current = planner.builder.lock()
        assert current is not None
        return [
            (name, planner.prepare_locked(locked, python))
            for name, locked in sorted(current.services.items())
        ]
    finally:
        planner.close()
