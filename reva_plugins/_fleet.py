"""Fleets: lock what a config resolves to, export it as a bundle, import it on another host.

The logic of ``reva-plugins lock`` and ``env export``/``env import`` over a :class:`Loader`
(the lock file itself is :mod:`._lock`, the bundle :mod:`._bundle`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from . import _bundle, _lock
from ._config import Config
from ._errors import ConfigError
from ._loader import Loader, Prepared, check_wheel
from ._sources import InProcess, PrebuiltVenv, Source

log = logging.getLogger("reva_plugins.fleet")


def _isolated(loader: Loader) -> list[tuple[str, Source]]:
    """The services whose driver runs in an env of its own, with their sources."""
    out = []
    for svc in loader.config.services:
        source = loader.source(svc)
        if not isinstance(source, (InProcess, PrebuiltVenv)):
            out.append((svc.service, source))
    return out


def lock(loader: Loader, upgrade: str | None = None) -> tuple[_lock.LockFile, list[str]]:
    """Resolve the config's drivers into a lock; return it and the services (re-)resolved.

    Entries of an existing lock that still match the config are kept (a branch or a range is
    not moved) unless ``upgrade`` names them (a service or plugin name; ``*`` for all).
    """
    config = loader.config
    path = _lock.lock_path(config)
    if path is None:
        raise ConfigError("locking needs a config file")
    old = _lock.read(path) if path.exists() and upgrade != "*" else None
    loader.use_lock = False
    locker = _lock.Locker(loader.install_options(), loader.store.root / "wheels")
    entries: dict[str, _lock.LockEntry] = {}
    done: dict[tuple[str, str], _lock.LockEntry] = {}
    changed = []
    if (
        upgrade not in (None, "*")
        and not any(upgrade == s.service for s in config.services)
        and not (old and any(_lock.matches(e, [str(upgrade)]) for e in old.entries.values()))
    ):
        raise ConfigError(f"--upgrade {upgrade}: no service or locked plugin has this name")
    installer = loader.installer()
    options = loader.install_options()
    for svc in config.services:
        source = loader.source(svc)
        if isinstance(source, (InProcess, PrebuiltVenv)):
            continue
        interpreter = loader.interpreter(svc)
        ctx = loader.resolve_context(installer, interpreter, options)
        prev = old.entries.get(svc.service) if old else None
        wanted = upgrade is not None and prev is not None and _lock.matches(prev, [upgrade])
        if prev is not None and not wanted and _lock.drift(prev, source, ctx, interpreter) is None:
            entries[svc.service] = prev
            continue
        resolved = source.resolve(ctx)
        check_wheel(resolved, interpreter)
        memo = (resolved.identity, interpreter.identity)
        if memo in done:
            entry = dataclasses.replace(done[memo], service=svc.service)
        else:
            log.info("locking %s …", svc.key)
            entry = locker.lock(svc, resolved, interpreter)
        done[memo] = entry
        entries[svc.service] = entry
        if prev is None or prev.digest() != entry.digest() or prev.spec != entry.spec:
            changed.append(svc.service)
    result = _lock.LockFile(entries, path)
    _lock.write(result, path, Path(str(config.file)).name)
    return result, changed


def stale(loader: Loader) -> list[str]:
    """Why the lock beside the config no longer matches it (empty when it does)."""
    config = loader.config
    path = _lock.lock_path(config)
    if path is None or not path.exists():
        return [f"{path or config.source_name}: there is no lock file"]
    current = _lock.read(path)
    problems = []
    installer = loader.installer()
    options = loader.install_options()
    services = set()
    for name, source in _isolated(loader):
        svc = config.service(name)
        services.add(name)
        entry = current.entries.get(name)
        if entry is None:
            problems.append(f"{svc.key}: the lock has no entry for this service")
            continue
        interpreter = loader.interpreter(svc)
        ctx = loader.resolve_context(installer, interpreter, options)
        why = _lock.drift(entry, source, ctx, interpreter)
        if why:
            problems.append(f"{svc.key}: {why}")
    for name in sorted(set(current.entries) - services):
        problems.append(f"{path}: services.{name} is locked but no longer configured")
    return problems


def export(loader: Loader, out: Path, fmt: _bundle.Format) -> int:
    """Bundle every wheel the config's lock pins into ``out``; return the number of wheels."""
    path = _lock.lock_path(loader.config)
    if path is None or not path.exists():
        raise ConfigError(
            f"{loader.config.source_name}: there is no lock file; run 'reva-plugins lock' first"
        )
    problems = stale(loader)
    if problems:
        raise ConfigError(f"{problems[0]} (run 'reva-plugins lock' first)")
    current = _lock.read(path)
    locker = _lock.Locker(loader.install_options(), loader.store.root / "wheels")
    return _bundle.export(current, path.read_bytes(), locker, out, fmt)


def import_bundle(
    config: Config, bundle: Path, python: str | None = None
) -> list[tuple[str, Prepared]]:
    """Build every env the bundle's lock pins from the bundle alone (no network)."""
    settings = dataclasses.replace(config.plugins, bundle=bundle, offline=True)
    loader = Loader(dataclasses.replace(config, plugins=settings, file=None))
    try:
        current = loader.lock()
        assert current is not None
        return [
            (name, loader.prepare_locked(entry, python))
            for name, entry in sorted(current.entries.items())
        ]
    finally:
        loader.close()
