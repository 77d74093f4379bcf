"""The env cache: one venv per content key, built atomically under a per-key file lock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from ._errors import EnvBuildError, UsageError

log = logging.getLogger("reva_plugins.store")

CACHE_ENV = "REVA_PLUGINS_CACHE_DIR"
METADATA = "reva-env.json"
LAST_USED = "reva-env.last-used"
KEY_SCHEMA = 1
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by reva-plugins.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


def default_cache_dir() -> Path:
    """``$REVA_PLUGINS_CACHE_DIR``, else the platform's user cache dir."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "reva-plugins"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reva-plugins"


def make_key(material: dict[str, Any]) -> str:
    """A short, stable hash of everything that decides an env's content."""
    blob = json.dumps({"schema": KEY_SCHEMA, **material}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Env:
    """A built plugin environment and its metadata."""

    key: str
    path: Path
    metadata: dict[str, Any]

    @property
    def python(self) -> Path:
        """The env's interpreter."""
        return self.path / "bin" / "python"

    def health(self) -> str | None:
        """None when the env is usable; otherwise why not."""
        return env_health(self.path, self.metadata.get("python", {}).get("version"))


def env_health(path: Path, expected_version: str | None) -> str | None:
    """Check a venv without running it: its interpreter exists and matches ``pyvenv.cfg``."""
    python = path / "bin" / "python"
    if not python.exists():
        return f"interpreter {python} is missing"
    try:
        cfg = read_pyvenv_cfg(path)
    except OSError:
        return "pyvenv.cfg is missing"
    version = cfg.get("version_info") or cfg.get("version") or ""
    if expected_version and not version.startswith(expected_version):
        return f"pyvenv.cfg says Python {version}, the env was built for {expected_version}"
    home = cfg.get("home")
    if home and not Path(home).exists():
        return f"the base interpreter folder {home} is gone"
    return None


def read_pyvenv_cfg(path: Path) -> dict[str, str]:
    """The key = value pairs of a venv's ``pyvenv.cfg``."""
    out: dict[str, str] = {}
    for line in (path / "pyvenv.cfg").read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep:
            out[name.strip()] = value.strip()
    return out


class Store:
    """The cache dir: ``envs/<key>`` (venvs), ``locks/`` and ``tmp/`` (builds in progress)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.envs = root / "envs"
        self.locks = root / "locks"
        self.tmp = root / "tmp"

    def ensure(self) -> None:
        """Create the layout and the ``CACHEDIR.TAG``."""
        for folder in (self.envs, self.locks, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            tag.write_text(CACHEDIR_TAG, encoding="utf-8")

    def lookup(self, key: str) -> Env | None:
        """The env for ``key`` if it is complete (its metadata is written last)."""
        path = self.envs / key
        try:
            metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return Env(key, path, metadata)

    def touch(self, env: Env) -> None:
        """Record that ``env`` was used now."""
        stamp = env.path / LAST_USED
        try:
            os.utime(stamp)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                stamp.touch()
        except OSError:
            pass

    def get_or_build(
        self, key: str, build: Callable[[Path], dict[str, Any]], *, label: str, force: bool = False
    ) -> tuple[Env, bool]:
        """The env for ``key``, building it with ``build(tmp_dir) -> metadata`` if need be.

        Check, lock, check again, build in a temp dir, write the metadata last, rename into place.
        Returns the env and whether this call built it.
        """
        env = None if force else self._usable(key)
        if env is not None:
            return env, False
        self.ensure()
        with self._locked(key, label):
            env = None if force else self._usable(key, warn=True)
            if env is not None:
                return env, False
            self._clean_stale(key)
            return self._build(key, build, label), True

    def _usable(self, key: str, *, warn: bool = False) -> Env | None:
        env = self.lookup(key)
        if env is None:
            return None
        problem = env.health()
        if problem is None:
            self.touch(env)
            return env
        if warn:
            log.warning("env %s is broken (%s); rebuilding it", key, problem)
        return None

    @contextlib.contextmanager
    def _locked(self, key: str, label: str) -> Iterator[None]:
        lock = filelock.FileLock(str(self.locks / f"{key}.lock"))
        owner = self.locks / f"{key}.owner"
        try:
            lock.acquire(timeout=0.5)
        except filelock.Timeout:
            log.info("waiting for env %s: %s", key, _read_owner(owner))
            lock.acquire()
        try:
            with contextlib.suppress(OSError):
                owner.write_text(
                    f"being built for {label} by pid {os.getpid()} on {socket.gethostname()} "
                    f"since {time.strftime('%H:%M:%S')}",
                    encoding="utf-8",
                )
            yield
        finally:
            with contextlib.suppress(OSError):
                owner.unlink()
            lock.release()

    def _clean_stale(self, key: str) -> None:
        """Remove what an interrupted build of ``key`` left (we hold its lock)."""
        for leftover in self.tmp.glob(f"{key}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if (self.envs / key).exists():
            self._discard(self.envs / key)

    def _discard(self, path: Path) -> None:
        trash = Path(tempfile.mkdtemp(prefix=f"{path.name}-old-", dir=self.tmp))
        os.replace(path, trash / "env")
        shutil.rmtree(trash, ignore_errors=True)

    def _build(self, key: str, build: Callable[[Path], dict[str, Any]], label: str) -> Env:
        work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self.tmp))
        venv = work / "env"
        try:
            metadata = build(venv)
            metadata = {"key": key, **metadata}
            problem = env_health(venv, metadata.get("python", {}).get("version"))
            if problem:
                raise EnvBuildError(f"the new env is not healthy: {problem}", plugin=label)
            (venv / METADATA).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
            (venv / LAST_USED).touch()
            os.replace(venv, self.envs / key)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        env = self.lookup(key)
        assert env is not None
        return env

    def all(self) -> list[Env]:
        """Every complete env in the cache, newest first."""
        if not self.envs.is_dir():
            return []
        found = [env for p in self.envs.iterdir() if (env := self.lookup(p.name)) is not None]
        return sorted(found, key=lambda e: str(e.metadata.get("created", "")), reverse=True)

    def last_used(self, env: Env) -> float:
        """When ``env`` was last loaded (seconds since the epoch)."""
        try:
            return (env.path / LAST_USED).stat().st_mtime
        except OSError:
            return 0.0

    def remove(self, key: str) -> bool:
        """Delete one env under its lock; False if there is none."""
        path = self.envs / key
        if not path.exists():
            return False
        self.ensure()
        with self._locked(key, "removal"):
            if path.exists():
                self._discard(path)
        return True

    def find(self, prefix: str) -> Env:
        """The env whose key is ``prefix`` or starts with it (it must be unique)."""
        matches = [env for env in self.all() if env.key.startswith(prefix)] if prefix else []
        if len(matches) != 1:
            known = "several envs" if matches else "no env"
            raise UsageError(
                f"{known} in {self.envs} match {prefix!r} (see 'reva-plugins env list')"
            )
        return matches[0]

    def prune(self, unused_days: float) -> list[Env]:
        """Remove envs not used for ``unused_days`` and leftovers of interrupted builds."""
        cutoff = time.time() - unused_days * 86400
        removed = [env for env in self.all() if self.last_used(env) < cutoff]
        for env in removed:
            self.remove(env.key)
        if self.tmp.is_dir():
            for leftover in self.tmp.iterdir():
                if leftover.stat().st_mtime < time.time() - 3600:
                    shutil.rmtree(leftover, ignore_errors=True)
        return removed


def _read_owner(owner: Path) -> str:
    try:
        return owner.read_text(encoding="utf-8")
    except OSError:
        return "another process holds its lock"


def dir_size(path: Path) -> int:
    """Bytes used by the files under ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
