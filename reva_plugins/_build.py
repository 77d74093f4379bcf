"""Env build or reuse: from a source to a cached env in the store, with the chosen interpreter
and installer. Reports each build to a :class:`BuildProgress`.

The builder never tells source kinds apart: planning hands it a :class:`Buildable`, the source
with what its kind implies for a build (a wheel to tag-check, an archive to fetch late).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import _bundle, _lock, _python
from ._config import Config, ServiceConfig
from ._envinfo import env_metadata
from ._errors import EnvBuildError, SourceError
from ._installers import Installer, InstallOptions, select
from ._redact import redact
from ._sources import ArchiveURL, NeedsNetwork, ResolveContext, Resolved, Source
from ._store import Env, Store, default_cache_dir, make_key
from ._subprocess import CommandFailed
from ._wheels import check_tags
from ._wire import PROTOCOL_VERSIONS

log = logging.getLogger("reva_plugins.loader")


class BuildProgress(Protocol):
    """Told when an env build starts and ends (the CLI shows a ticking elapsed time).

    Called on the thread that builds; a build found in the cache is not reported.
    """

    def started(self, label: str) -> None:
        """The installer starts building the env for ``label`` (a redacted service/driver)."""

    def finished(self, label: str, seconds: float, ok: bool) -> None:
        """The build for ``label`` ended after ``seconds``; ``ok`` is False when it failed."""


@dataclass(frozen=True)
class Buildable:
    """A source as planning hands it to the builder (see ``_plan.for_build``)."""

    source: Source
    #: The file name of the wheel the source installs as it is: its tags are checked against
    #: the plugin's Python before anything is fetched or built.
    wheel: str | None = None
    #: An archive URL, which a lock pins without fetching it: downloaded (and checked against
    #: the lock's sha256) only when a locked env is built and the plugin's wheel is not cached.
    archive: ArchiveURL | None = None

    def check_fits(self, interpreter: _python.Interpreter) -> None:
        """Refuse (exit 2) a wheel whose tags do not fit ``interpreter``; any other source fits
        as far as can be told before building it."""
        if self.wheel is not None:
            check_tags(self.wheel, interpreter, self.source.spec)


class Builder:
    """Builds (or finds) the env a source needs in one store, with one config's install options."""

    def __init__(
        self, config: Config, *, refresh: bool = False, progress: BuildProgress | None = None
    ) -> None:
        self.config = config
        self.settings = config.plugins
        self.refresh = refresh
        self.progress = progress
        self.store = Store(self.settings.cache_dir or default_cache_dir())
        self.store.ensure()
        self._interpreters = _python.InterpreterCache(self.store.root / "interpreters.json")
        #: Whether a lock beside the config (or the bundle's) pins what is built; ``lock``
        #: itself turns this off to re-resolve.
        self.use_lock = True
        self._lock: _lock.LockFile | None = None
        self._bundle: _bundle.Bundle | None = None

    def lock(self) -> _lock.LockFile | None:
        """The lock every build follows: the one beside the config, else the bundle's."""
        if not self.use_lock:
            return None
        if self._lock is None:
            bundle = self.bundle()
            self._lock = _lock.beside(self.config) or (bundle.lock if bundle else None)
        return self._lock

    def bundle(self) -> _bundle.Bundle | None:
        """The ``[plugins] bundle``, opened and checked once."""
        if self.settings.bundle is not None and self._bundle is None:
            self._bundle = _bundle.open_bundle(self.settings.bundle, self.store.root)
        return self._bundle

    def close(self) -> None:
        """Stop marking the envs this builder handed out as in use."""
        self.store.close()

    def install_options(self) -> InstallOptions:
        """The package sources every build of this config uses."""
        return InstallOptions(
            index_url=self.settings.index_url,
            find_links=self.settings.find_links,
            offline=self.settings.offline,
        )

    def env_for(self, svc: ServiceConfig, buildable: Buildable) -> tuple[Env, bool, float]:
        """The cached env for ``buildable`` (built now if missing); whether built; seconds taken.

        With a lock, the source is pinned to what the lock says (drift is an error) and the env
        is installed with the lock's hashes."""
        label = f"{svc.service} ({redact(svc.driver)})"
        source = buildable.source
        interpreter = self.interpreter(svc)
        buildable.check_fits(interpreter)
        installer = self.installer()
        options = self.install_options()
        ctx = self.resolve_context(installer, interpreter, options)
        lock = self.lock()
        entry = _lock.entry_for(lock, svc, interpreter) if lock is not None else None
        try:
            if lock is not None and entry is not None:
                resolved = _lock.pinned(lock, entry, svc, source, ctx, interpreter)
            else:
                resolved = source.resolve(ctx)
        except NeedsNetwork as exc:
            return self._newest_cached(source, interpreter, exc), False, 0.0
        return self.env(label, resolved, interpreter, installer, options, entry, buildable.archive)

    def interpreter(self, svc: ServiceConfig) -> _python.Interpreter:
        """The base interpreter of ``svc``'s env."""
        return _python.find(
            svc.plugin.python or self.settings.python,
            self._interpreters,
            key=f"{svc.key}.plugin.python" if svc.plugin.python else "plugins.python",
        )

    def installer(self) -> Installer:
        """The installer this config's builds use."""
        return select(self.settings.installer, app_data=self.store.root / "virtualenv")

    def resolve_context(
        self, installer: Installer, interpreter: _python.Interpreter, options: InstallOptions
    ) -> ResolveContext:
        """What resolving a source may use under these settings."""
        return ResolveContext(
            offline=self.settings.offline,
            downloads=self.store.root / "downloads",
            find_version=lambda req: installer.find_version(req, interpreter, options),
            max_download_bytes=self.settings.max_download_mb << 20,
            allow_http=self.settings.allow_http,
        )

    def locked_env(
        self, locked: _lock.LockedService, python: str | None = None
    ) -> tuple[_lock.LockEntry, Env, bool, float]:
        """Build the env a lock's service table pins without a config (``env import``), for
        ``python`` or the first of its target Pythons found here."""
        interpreter, entry = _lock.interpreter_for(locked, python, self._interpreters)
        label = f"{entry.service} ({redact(entry.spec)})"
        env, built, seconds = self.env(
            label, entry.resolved(), interpreter, self.installer(), self.install_options(), entry
        )
        return entry, env, built, seconds

    def env(
        self,
        label: str,
        resolved: Resolved,
        interpreter: _python.Interpreter,
        installer: Installer,
        options: InstallOptions,
        entry: _lock.LockEntry | None,
        archive: ArchiveURL | None = None,
    ) -> tuple[Env, bool, float]:
        """The env for ``resolved`` (as ``entry`` of a lock pins it, if given): cached, or built
        now; whether built; seconds taken. ``archive``: see :attr:`Buildable.archive`."""
        if entry is None:
            key = make_key(
                {
                    "identity": resolved.identity,
                    "python": interpreter.identity,
                    "installer": installer.name,
                    "options": options.key_material(),
                    "protocol": list(PROTOCOL_VERSIONS),
                }
            )
        else:
            key = _lock.env_key(entry, interpreter, installer.name)
        began = time.perf_counter()

        def build(venv: Path) -> dict[str, Any]:
            log.info("building env %s for %s with %s …", key, label, installer.name)
            if self.progress is not None:
                self.progress.started(label)
            ok = False
            try:
                installer.create(venv, interpreter)
                if entry is None:
                    installer.install(venv, resolved.install_args, options)
                else:
                    self._install_locked(installer, venv, entry, resolved, options, archive)
                ok = True
            except CommandFailed as exc:
                raise EnvBuildError.of_command(
                    f"building the env failed: {' '.join(exc.argv[:3])} … exited with "
                    f"{exc.returncode}",
                    exc,
                    plugin=label,
                ) from None
            finally:
                log.debug("installer done for %s", label)
                if self.progress is not None:
                    self.progress.finished(label, time.perf_counter() - began, ok)
            meta = env_metadata(
                venv, key, resolved, interpreter, installer.name, installer.version(), options
            )
            return meta.to_json()

        env, built = self.store.get_or_build(key, build, label=label, force=self.refresh)
        seconds = time.perf_counter() - began
        if built:
            log.info("built env %s for %s in %.2f s", key, label, seconds)
        return env, built, seconds

    def _install_locked(
        self,
        installer: Installer,
        venv: Path,
        entry: _lock.LockEntry,
        resolved: Resolved,
        options: InstallOptions,
        archive: ArchiveURL | None,
    ) -> None:
        """Install what the lock pins: from the bundle (checked, offline) if there is one, else
        from the index with the lock's hashes (the plugin's wheel from this cache if built here,
        else ``archive``, if the source is one, fetched now)."""
        bundle = self.bundle()
        if bundle is not None:
            bundle.check(entry)
            offline = InstallOptions.only_from(bundle.wheels)
            _lock.install(installer, venv, entry, resolved, offline, wheels=bundle.wheels)
            return
        wheels = self.store.root / "wheels" / entry.wheel_sha256
        with contextlib.suppress(OSError):  # used now: env prune keeps it
            os.utime(wheels)
        if archive is not None and not (wheels / entry.wheel).is_file():
            ctx = ResolveContext(
                offline=self.settings.offline,
                downloads=self.store.root / "downloads",
                max_download_bytes=self.settings.max_download_mb << 20,
                allow_http=self.settings.allow_http,
            )
            pinned = dataclasses.replace(archive, sha256=entry.pins["sha256"])
            resolved = pinned.resolve(ctx)
        _lock.install(installer, venv, entry, resolved, options, wheels=wheels)

    def _newest_cached(
        self, source: Source, interpreter: _python.Interpreter, why: NeedsNetwork
    ) -> Env:
        """Offline and the source moves: the newest env built from the same spec, if any."""
        for env in self.store.all():
            meta = env.meta
            if (
                meta.spec == source.spec
                and meta.python.executable == interpreter.executable
                and env.health() is None
            ):
                log.info(
                    "offline: using env %s built %s for %s", env.key, meta.created, source.spec
                )
                self.store.use(env.key)
                return env
        raise SourceError(
            f"offline, and no env for {source.spec} is cached ({why}); run once online, or pin "
            "a commit, sha256 or exact version"
        )
