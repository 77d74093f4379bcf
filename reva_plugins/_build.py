"""Env build or reuse: from a source to a cached env in the store, with the chosen interpreter
and installer. Reports each build to a :class:`BuildProgress`.

The builder never tells source kinds apart nor reads a lock: a resolver (``_resolvers``) hands
it an :class:`Install`, which carries its key material and its install step; the env key has
one recipe, here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from . import _python
from ._config import Config, ServiceConfig
from ._envinfo import env_metadata
from ._errors import EnvBuildError, SourceError
from ._installers import Installer, InstallOptions, select
from ._sources import NeedsNetwork, ResolveContext, Resolved
from ._store import Env, Store, default_cache_dir, make_key
from ._subprocess import CommandFailed
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


class Install(Protocol):
    """A source resolved for a build (what a resolver gives): what keys its env and how it is
    installed into a fresh venv."""

    @property
    def label(self) -> str:
        """How messages name the driver (a redacted service/driver)."""
        ...

    @property
    def resolved(self) -> Resolved:
        """What the env's metadata records."""
        ...

    def key_material(self, options: InstallOptions, installer: str) -> Mapping[str, Any]:
        """What decides the env's content (``installer`` installs it), besides the interpreter
        and the protocol."""
        ...

    def install(self, installer: Installer, venv: Path, options: InstallOptions) -> None:
        """Install the driver and its dependencies into ``venv``."""
        ...


class Builder:
    """Builds (or finds) envs in one store, with one config's interpreter, installer and install
    options. It never reads a lock: it builds what a resolver gives it (an :class:`Install`)."""

    def __init__(
        self, config: Config, *, refresh: bool = False, progress: BuildProgress | None = None
    ) -> None:
        self.config = config
        self.settings = config.plugins
        self.refresh = refresh
        self.progress = progress
        self.store = Store(self.settings.cache_dir or default_cache_dir())
        self.store.ensure()
        self.interpreters = _python.InterpreterCache(self.store.root / "interpreters.json")

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

    def interpreter(self, svc: ServiceConfig) -> _python.Interpreter:
        """The base interpreter of ``svc``'s env."""
        return _python.find(
            svc.plugin.python or self.settings.python,
            self.interpreters,
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

    @property
    def wheel_cache(self) -> Path:
        """Where locking keeps the plugin wheels it builds (``<sha256>/<wheel>``)."""
        return self.store.root / "wheels"

    def env(
        self,
        what: Install,
        interpreter: _python.Interpreter,
        installer: Installer,
        options: InstallOptions,
    ) -> tuple[Env, bool, float]:
        """The env for ``what``: cached, or built now; whether built; seconds taken."""
        label = what.label
        key = make_key(
            {
                **what.key_material(options, installer.name),
                "python": interpreter.identity,
                "protocol": list(PROTOCOL_VERSIONS),
            }
        )
        began = time.perf_counter()

        def build(venv: Path) -> dict[str, Any]:
            log.info("building env %s for %s with %s …", key, label, installer.name)
            if self.progress is not None:
                self.progress.started(label)
            ok = False
            try:
                installer.create(venv, interpreter)
                what.install(installer, venv, options)
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
                venv, key, what.resolved, interpreter, installer.name, installer.version(), options
            )
            return meta.to_json()

        env, built = self.store.get_or_build(key, build, label=label, force=self.refresh)
        seconds = time.perf_counter() - began
        if built:
            log.info("built env %s for %s in %.2f s", key, label, seconds)
        return env, built, seconds

    def newest_cached(self, spec: str, interpreter: _python.Interpreter, why: NeedsNetwork) -> Env:
        """Offline and the source moves: the newest env built from the same spec, if any."""
        for env in self.store.all():
            meta = env.meta
            if (
                meta.spec == spec
                and meta.python.executable == interpreter.executable
                and env.health() is None
            ):
                log.info("offline: using env %s built %s for %s", env.key, meta.created, spec)
                self.store.use(env.key)
                return env
        raise SourceError(
            f"offline, and no env for {spec} is cached ({why}); run once online, or pin "
            "a commit, sha256 or exact version"
        )
