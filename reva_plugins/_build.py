"""Env build or reuse: from a source to a cached env in the store, with the chosen interpreter
and installer. Reports each build to a :class:`BuildProgress`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from . import _python
from ._config import Config, ServiceConfig
from ._envinfo import env_metadata
from ._errors import EnvBuildError, SourceError
from ._installers import InstallOptions, select
from ._redact import redact
from ._sources import NeedsNetwork, ResolveContext, Source
from ._store import Env, Store, default_cache_dir, make_key
from ._subprocess import CommandFailed
from ._wheels import check_wheel
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


class Builder:
    """Builds (or finds) the env a source needs in one store, with one config's install options."""

    def __init__(
        self, config: Config, *, refresh: bool = False, progress: BuildProgress | None = None
    ) -> None:
        self.settings = config.plugins
        self.refresh = refresh
        self.progress = progress
        self.store = Store(self.settings.cache_dir or default_cache_dir())
        self.store.ensure()
        self._interpreters = _python.InterpreterCache(self.store.root / "interpreters.json")

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
                installer.install(venv, resolved.install_args, options)
                ok = True
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
                log.debug("installer done for %s", label)
                if self.progress is not None:
                    self.progress.finished(label, time.perf_counter() - began, ok)
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
