"""The env cache: one venv per content key, built atomically under a per-key file lock.

Layout under the cache root: ``envs/<key>`` (venvs, each with its ``reva-env.json`` written last),
``locks/`` (``<key>.lock`` for builds, ``<key>.inuse`` held shared by every running host that uses
the env), ``tmp/`` (builds in progress) and ``downloads/<sha256>/`` (fetched archives, each held
shared by every process that resolved it: :func:`._holds.hold_download`). The metadata
record of an env is :mod:`._envmeta`.
Everything this module deletes goes through :func:`reva_plugins._fs.remove_tree`, and only ever
names the core itself makes (:data:`LAYOUT`): a folder that is not a cache is never adopted, and
what someone else put into a cache is left alone.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from ._envmeta import (
    KEY_LENGTH,
    KEY_PATTERN,
    METADATA,
    EnvMetadata,
    MetadataError,
    is_key,
    read_metadata,
)
from ._errors import ConfigError, EnvBuildError, EnvInUse, UsageError
from ._fs import is_inside, open_regular, remove_tree
from ._holds import download_unheld, held_exclusively

log = logging.getLogger("reva_plugins.store")

__all__ = [
    "CACHE_ENV",
    "LAYOUT",
    "BrokenEnv",
    "Env",
    "EnvMetadata",
    "Pruned",
    "Store",
    "default_cache_dir",
    "dir_size",
    "env_health",
    "make_key",
    "resolve_cache_dir",
]

CACHE_ENV = "REVA_PLUGINS_CACHE_DIR"
LAST_USED = "reva-env.last-used"
KEY_SCHEMA = 1
TMP_GRACE_SECONDS = 3600.0
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by reva-plugins.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_KEY = KEY_PATTERN
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The signature line and our own comment: another program's tag has the first, never both.
_TAG_HEAD = "".join(CACHEDIR_TAG.splitlines(keepends=True)[:2]).encode()
_MAX_TAG_BYTES = 4096
# Temp folders of builds (``<key>-…``, ``<key>-old-…`` for discarded envs) and bundle extractions.
_TMP_BUILD = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}-.+", re.DOTALL)
_TMP_BUNDLE = re.compile(r"bundle-.+", re.DOTALL)
LAYOUT: dict[str, re.Pattern[str] | None] = {
    "envs": _KEY,
    "locks": re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}\.(?:lock|inuse|owner)"),
    "tmp": re.compile(f"{_TMP_BUILD.pattern}|{_TMP_BUNDLE.pattern}", re.DOTALL),
    "downloads": re.compile(r"[0-9a-f]{64}|dl-.+", re.DOTALL),
    "wheels": re.compile(r"[0-9a-f]{64}|build-.+", re.DOTALL),
    "bundles": _KEY,
    "virtualenv": None,  # virtualenv's own app data: its layout is virtualenv's
}
"""The folders the core makes in a cache dir and what it names their entries (None: any)."""
# Whose entries decide whether a folder without our tag is a cache: the folders the first
# ensure() makes and downloads/. wheels/ and bundles/ are content stores prune only ever takes
# digest-named entries from: a stray entry put there by hand does not make the cache a stranger's.
_DECIDING = frozenset({"envs", "locks", "tmp", "downloads"})
_LAYOUT_FILES = re.compile(r"interpreters\.json|interpreters\.[0-9]+\.tmp")


def resolve_cache_dir(value: str | os.PathLike[str]) -> Path:
    """``value`` as an absolute path, resolved once where the cache dir is chosen.

    A relative cache dir would otherwise name a different folder (or none) once a plugin is
    started from its own working directory.
    """
    try:
        return Path(value).expanduser().resolve()
    except (ValueError, OSError, RuntimeError) as exc:
        raise ConfigError(f"cache dir {str(value)!r} is not a usable path: {exc}") from None


def default_cache_dir() -> Path:
    """``$REVA_PLUGINS_CACHE_DIR``, else the platform's user cache dir (absolute)."""
    if os.environ.get(CACHE_ENV):
        return resolve_cache_dir(os.environ[CACHE_ENV])
    return resolve_cache_dir(platformdirs.user_cache_dir("reva-plugins"))


def make_key(material: dict[str, Any]) -> str:
    """A short, stable hash of everything that decides an env's content."""
    blob = json.dumps({"schema": KEY_SCHEMA, **material}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


# -- envs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """A built plugin environment and its validated metadata."""

    key: str
    path: Path
    meta: EnvMetadata

    @property
    def python(self) -> Path:
        """The env's interpreter."""
        return self.path / "bin" / "python"

    def health(self) -> str | None:
        """None when the env is usable; otherwise why not."""
        return env_health(self.path, self.meta.python.version)


@dataclass(frozen=True)
class BrokenEnv:
    """An entry of ``envs/`` that is not a usable env: ``why`` says what is wrong with it."""

    key: str
    path: Path
    why: str

    def health(self) -> str:
        """Always broken."""
        return f"broken: {self.why}"


def env_health(path: Path, expected_version: str | None) -> str | None:
    """Check a venv without running it: its interpreter exists and matches ``pyvenv.cfg``."""
    python = path / "bin" / "python"
    if not python.exists():
        return f"interpreter {python} is missing"
    try:
        cfg = read_pyvenv_cfg(path)
    except (OSError, UnicodeDecodeError):
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
    """The cache dir: ``envs/<key>`` (venvs), ``locks/``, ``tmp/`` and ``downloads/``.

    A store also marks the envs it hands out as in use (a shared lock on ``locks/<key>.inuse``)
    until :meth:`close`, so ``prune`` and ``remove`` in other processes leave them alone.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = resolve_cache_dir(root)
        self.envs = self.root / "envs"
        self.locks = self.root / "locks"
        self.tmp = self.root / "tmp"
        self.downloads = self.root / "downloads"
        self._held: dict[str, int] = {}
        self._mutex = threading.Lock()

    def ensure(self) -> None:
        """Create the layout and the ``CACHEDIR.TAG``; a cache dir that cannot be is exit 2.

        An existing folder is adopted only if it is empty or already a reva-plugins cache (our
        ``CACHEDIR.TAG``, or nothing in it but :data:`LAYOUT`): a cache dir pointed by mistake
        at a folder holding someone's files is a :class:`ConfigError`, before anything is
        written there.
        """
        if os.path.lexists(self.root) and not self.root.is_dir():
            raise ConfigError(f"cache dir {self.root} exists and is not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cache dir {self.root} cannot be created: {_why(exc)}") from None
        foreign = _foreign_entry(self.root)
        if foreign is not None:
            raise ConfigError(
                f"cache dir {self.root} is neither empty nor a reva-plugins cache (it holds "
                f"{foreign}); point the cache dir at a new or empty folder"
            )
        tag = self.root / "CACHEDIR.TAG"
        # Written first, so a concurrent ensure() sees a cache (or a prefix of our tag).
        with contextlib.suppress(OSError):
            fd = os.open(tag, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(CACHEDIR_TAG)
        for folder in (self.envs, self.locks, self.tmp):
            try:
                folder.mkdir(exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cache dir {self.root}: {folder.name}/ cannot be created: {_why(exc)}"
                ) from None
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(f"cache dir {self.root}: {folder.name}/ is not writable")

    # -- reading ----------------------------------------------------------------------------------

    def entry(self, name: str) -> Env | BrokenEnv | None:
        """What ``envs/<name>`` holds: an env, a broken entry (and why), or None if nothing."""
        path = self._entry_path(name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return BrokenEnv(name, path, f"cannot stat it: {_why(exc)}")
        if stat.S_ISLNK(info.st_mode):
            with contextlib.suppress(OSError):
                return BrokenEnv(name, path, f"a symlink to {os.readlink(path)}, not an env folder")
            return BrokenEnv(name, path, "a symlink, not an env folder")
        if not stat.S_ISDIR(info.st_mode):
            return BrokenEnv(name, path, "a file, not an env folder")
        if not is_key(name):
            return BrokenEnv(name, path, f"not an env key ({KEY_LENGTH} hex digits)")
        try:
            return Env(name, path, read_metadata(path))
        except MetadataError as exc:
            return BrokenEnv(name, path, str(exc))

    def scan(self) -> list[Env | BrokenEnv]:
        """Every entry of ``envs/``: envs newest first, then broken entries by name."""
        found = [entry for name in _listing(self.envs) if (entry := self.entry(name)) is not None]
        envs = sorted((e for e in found if isinstance(e, Env)), key=_created_at, reverse=True)
        return [*envs, *(e for e in found if isinstance(e, BrokenEnv))]

    def all(self) -> list[Env]:
        """Every usable-looking env in the cache (valid metadata), newest first."""
        return [env for env in self.scan() if isinstance(env, Env)]

    def find(self, prefix: str) -> Env | BrokenEnv:
        """The entry whose key is ``prefix`` or starts with it (it must be unique)."""
        entries = self.scan() if prefix else []
        exact = [e for e in entries if e.key == prefix]
        matches = exact or [e for e in entries if e.key.startswith(prefix)]
        if len(matches) != 1:
            known = "several envs" if matches else "no env"
            raise UsageError(
                f"{known} in {self.envs} match {prefix!r} (see 'reva-plugins env list')"
            )
        return matches[0]

    def last_used(self, env: Env | BrokenEnv) -> float:
        """When ``env`` was last loaded (seconds since the epoch; 0 if never recorded)."""
        try:
            used = os.lstat(env.path / LAST_USED).st_mtime
        except OSError:
            used = 0.0
        if isinstance(env, BrokenEnv):
            # A broken entry may have no stamp: its own age stands in for it.
            with contextlib.suppress(OSError):
                used = max(used, os.lstat(env.path).st_mtime)
        return used

    # -- in use -----------------------------------------------------------------------------------

    def use(self, key: str) -> None:
        """Mark env ``key`` in use by this store (a shared lock) until :meth:`close`.

        Taken before the env is looked up or built, so a ``prune`` or ``remove`` in another
        process either finished before or skips the env.
        """
        self._check_key(key)
        with self._mutex:
            if key in self._held:
                return
            try:
                fd = os.open(self.locks / f"{key}.inuse", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW)
            except OSError as exc:
                log.warning("cannot mark env %s in use: %s", key, _why(exc))
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as exc:
                os.close(fd)
                log.warning("cannot mark env %s in use: %s", key, _why(exc))
                return
            self._held[key] = fd
        self._stamp(self.envs / key)

    def close(self) -> None:
        """Record the envs held as used now and release them."""
        with self._mutex:
            held, self._held = self._held, {}
        for key, fd in held.items():
            self._stamp(self.envs / key)
            os.close(fd)

    @contextlib.contextmanager
    def _unused(self, key: str) -> Iterator[bool]:
        """Hold ``key`` exclusively if no host uses it; yields whether that worked."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        with held_exclusively(self.locks / f"{key}.inuse", flags, unopenable=False) as held:
            yield held

    # -- building ---------------------------------------------------------------------------------

    @staticmethod
    def _stamp(folder: Path) -> None:
        # O_NOFOLLOW: a planted symlink must not make us create or touch a file elsewhere.
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(folder).st_mode):
                fd = os.open(folder / LAST_USED, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
                try:
                    os.utime(fd)
                finally:
                    os.close(fd)

    def get_or_build(
        self, key: str, build: Callable[[Path], dict[str, Any]], *, label: str, force: bool = False
    ) -> tuple[Env, bool]:
        """The env for ``key``, building it with ``build(tmp_dir) -> metadata`` if need be.

        Mark in use, check, lock, check again, build in a temp dir, write the metadata last,
        rename into place. Returns the env and whether this call built it.
        """
        self._check_key(key)
        self.ensure()
        self.use(key)
        env = None if force else self._usable(key)
        if env is not None:
            return env, False
        with self._locked(key, label):
            env = None if force else self._usable(key, warn=True)
            if env is not None:
                return env, False
            self._clean_stale(key)
            return self._build(key, build, label), True

    def _usable(self, key: str, *, warn: bool = False) -> Env | None:
        entry = self.entry(key)
        if entry is None:
            return None
        problem = entry.why if isinstance(entry, BrokenEnv) else entry.health()
        if problem is None and isinstance(entry, Env):
            self._stamp(entry.path)
            return entry
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
            with contextlib.suppress(OSError, ValueError):
                remove_tree(owner, within=self.locks)
            lock.release()

    def _clean_stale(self, key: str) -> None:
        """Remove what an interrupted build of ``key`` left (we hold its lock)."""
        for leftover in self.tmp.glob(f"{key}-*"):
            remove_tree(leftover, within=self.tmp)
        if os.path.lexists(self.envs / key):
            self._discard(self.envs / key)

    def _discard(self, path: Path) -> None:
        """Move ``envs/<name>`` into ``tmp/`` first (so no half-deleted env is ever visible),
        then delete it there."""
        if not is_inside(path, self.envs):
            raise ValueError(f"refusing to discard {path}: it is not inside {self.envs}")
        trash = Path(tempfile.mkdtemp(prefix=f"{path.name[:KEY_LENGTH]}-old-", dir=self.tmp))
        try:
            os.replace(path, trash / "env")  # renames a symlink itself, never its target
        finally:
            remove_tree(trash, within=self.tmp)

    def _build(self, key: str, build: Callable[[Path], dict[str, Any]], label: str) -> Env:
        work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self.tmp))
        venv = work / "env"
        target = self.envs / key
        try:
            try:
                meta = EnvMetadata.from_json({**build(venv), "key": key})
            except MetadataError as exc:
                raise EnvBuildError(
                    f"the new env's metadata is invalid: {exc}", plugin=label
                ) from None
            problem = env_health(venv, meta.python.version)
            if problem:
                raise EnvBuildError(f"the new env is not healthy: {problem}", plugin=label)
            (venv / METADATA).write_text(json.dumps(meta.to_json(), indent=2), encoding="utf-8")
            (venv / LAST_USED).touch()
            os.replace(venv, target)
        finally:
            remove_tree(work, within=self.tmp)
        return Env(key, target, meta)

    # -- removing ---------------------------------------------------------------------------------

    def remove(self, name: str) -> bool:
        """Delete one env (or broken entry) of ``envs/``; False if there is none.

        Raises :class:`EnvInUse` when a running host holds it.
        """
        path = self._entry_path(name)
        self.ensure()
        if not os.path.lexists(path):
            return False
        if not is_key(name):
            raise UsageError(
                f"envs/{_safe(name)} is not an env reva-plugins built (env keys are "
                f"{KEY_LENGTH} hex digits): it is left alone; delete it yourself if it is yours"
            )
        with self._unused(name) as free:
            if not free:
                raise EnvInUse(f"env {name} is in use by a running host; stop the host first")
            with self._locked(name, "removal"):
                if os.path.lexists(path):
                    self._discard(path)
        return True

    def prune(self, unused_days: float) -> Pruned:
        """Remove envs not used for ``unused_days`` (skipping those in use), downloads no env
        refers to that are as old, and leftovers of interrupted builds and downloads."""
        if not (isinstance(unused_days, (int, float)) and 0 <= unused_days < 1e6):
            raise UsageError(f"--unused-days must be a number of days >= 0, not {unused_days!r}")
        self.ensure()
        now = time.time()
        cutoff = now - unused_days * 86400
        result = Pruned()
        for entry in self.scan():
            if not is_key(entry.key):
                log.warning("left envs/%s alone: not an env reva-plugins built", _safe(entry.key))
                continue
            if self.last_used(entry) >= cutoff:
                continue
            try:
                if self.remove(entry.key):
                    result.envs.append(entry)
            except EnvInUse:
                log.info("kept env %s: a running host uses it", entry.key)
                result.in_use.append(entry.key)
        result.downloads.extend(self._prune_downloads(cutoff, now))
        for folder, name in ((self.root / "wheels", _SHA256), (self.root / "bundles", _KEY)):
            result.built.extend(self._prune_aged(folder, name, cutoff))
        result.leftovers.extend(self._prune_tmp(now))
        return result

    def _prune_aged(self, folder: Path, name: re.Pattern[str], cutoff: float) -> list[str]:
        """Entries of ``folder`` (wheels built for locks, bundles extracted from tars) not used
        since ``cutoff``: both are made again from their source when next needed."""
        removed = []
        for entry in _listing(folder):
            path = folder / entry
            if name.fullmatch(entry) and _newest(path) < cutoff:
                remove_tree(path, within=folder)
                removed.append(f"{folder.name}/{entry}")
        return removed

    def _prune_downloads(self, cutoff: float, now: float) -> list[str]:
        envs = self.all()
        removed = []
        for name in _listing(self.downloads):
            path = self.downloads / name
            if _SHA256.fullmatch(name):
                if any(env.meta.references(name) for env in envs) or _newest(path) >= cutoff:
                    continue
                with download_unheld(path) as free:
                    if free:
                        remove_tree(path, within=self.downloads)
                        removed.append(name)
                    else:  # a process that resolved it (a build installing from it) runs
                        log.info("kept download %s: a running process uses it", name)
                continue
            if name.startswith("dl-") and _newest(path) < now - TMP_GRACE_SECONDS:
                remove_tree(path, within=self.downloads)
                removed.append(name)
        return removed

    def _prune_tmp(self, now: float) -> list[str]:
        removed = []
        for name in _listing(self.tmp):
            path = self.tmp / name
            if not (_TMP_BUILD.fullmatch(name) or _TMP_BUNDLE.fullmatch(name)):
                continue  # not a name the core makes: someone else's, left alone
            if _newest(path) >= now - TMP_GRACE_SECONDS:
                continue
            key = name[:KEY_LENGTH]
            if _TMP_BUILD.fullmatch(name):
                # A long build still running holds its key's lock: leave its folder alone.
                lock = filelock.FileLock(str(self.locks / f"{key}.lock"))
                try:
                    lock.acquire(timeout=0)
                except (filelock.Timeout, OSError):
                    continue
                try:
                    remove_tree(path, within=self.tmp)
                finally:
                    lock.release()
            else:
                remove_tree(path, within=self.tmp)
            removed.append(name)
        return removed

    # -- paths ------------------------------------------------------------------------------------

    def _entry_path(self, name: str) -> Path:
        """``envs/<name>`` for a single, plain path component ``name`` (never ``..`` or a path)."""
        if (
            not name
            or name in (".", "..")
            or "/" in name
            or "\0" in name
            or (os.sep != "/" and os.sep in name)
        ):
            raise UsageError(f"{name!r} is not an env key")
        return self.envs / name

    @staticmethod
    def _check_key(key: str) -> None:
        if not is_key(key):
            raise UsageError(f"{key!r} is not an env key ({KEY_LENGTH} hex digits)")


@dataclass
class Pruned:
    """What :meth:`Store.prune` removed, and the envs it kept because a host uses them."""

    envs: list[Env | BrokenEnv] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)


def _listing(folder: Path) -> list[str]:
    """The names in ``folder``, sorted (none when it cannot be read)."""
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _newest(path: Path) -> float:
    """The newest mtime of ``path`` and (for a real folder) what it directly holds."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0.0
    newest = info.st_mtime
    if stat.S_ISDIR(info.st_mode):
        with contextlib.suppress(OSError), os.scandir(path) as it:
            for item in it:
                with contextlib.suppress(OSError):
                    newest = max(newest, item.stat(follow_symlinks=False).st_mtime)
    return newest


def _safe(name: str) -> str:
    """``name`` fit for one line of output (control characters and stray bytes escaped)."""
    return name if name.isprintable() else ascii(name)[1:-1]


def _read_small(path: Path, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the regular file ``path``; None if it is not one."""
    try:
        with open_regular(path, follow=False) as f:
            return f.read(limit)
    except OSError:
        return None


def _foreign_entry(root: Path) -> str | None:
    """None when ``root`` may be adopted as a cache dir; else one entry that shows it is not.

    Adopted: a folder with our ``CACHEDIR.TAG``, or one holding nothing but the layout the core
    makes (:data:`LAYOUT`, the interpreter cache, a tag of ours still being written), which
    covers an empty folder, a cache whose tag was lost and a concurrent first ``ensure``. Of
    the layout's folders, the entries of ``envs/``, ``locks/``, ``tmp/`` and ``downloads/``
    are checked by name too.
    """
    content = _read_small(root / "CACHEDIR.TAG", _MAX_TAG_BYTES)
    if content is not None and content.startswith(_TAG_HEAD):
        return None
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise ConfigError(f"cache dir {root} cannot be read: {_why(exc)}") from None
    for name in names:
        path = root / name
        if name == "CACHEDIR.TAG":
            if content is None or not CACHEDIR_TAG.encode().startswith(content):
                return "another program's CACHEDIR.TAG"
        elif name in LAYOUT:
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    return f"{_safe(name)}, not a folder"
                pattern = LAYOUT[name] if name in _DECIDING else None
                inside = sorted(os.listdir(path)) if pattern is not None else []
            except OSError as exc:
                why = _why(exc)
                raise ConfigError(f"cache dir {root}: {name}/ cannot be read: {why}") from None
            if pattern is not None:
                for item in inside:
                    if not pattern.fullmatch(item):
                        return f"{name}/{_safe(item)}"
        elif not (_LAYOUT_FILES.fullmatch(name) and _read_small(path, 0) is not None):
            return _safe(name)
    return None


def _why(exc: OSError) -> str:
    if isinstance(exc, NotADirectoryError):
        return "a part of the path is a file, not a folder"
    if isinstance(exc, FileExistsError):
        return "it exists and is not a folder"
    return (exc.strerror or str(exc)).lower()


def _read_owner(owner: Path) -> str:
    try:
        return owner.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "another process holds its lock"


def _created_at(env: Env) -> datetime.datetime:
    """When ``env`` was built, to the microsecond (two builds in one second must still order)."""
    try:
        created = datetime.datetime.fromisoformat(env.meta.created)
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    if created.tzinfo is None:
        created = created.replace(tzinfo=datetime.timezone.utc)
    return created


def dir_size(path: Path) -> int:
    """Bytes used by the files under ``path`` (a symlink or file counts as itself)."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
