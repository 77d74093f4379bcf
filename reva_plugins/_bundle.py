"""Bundles: every wheel a locked config needs, to build its envs on a host with no network.

A bundle is a folder (or an uncompressed tar of one) holding ``manifest.json`` (the sha256 of
every other file), ``lock.toml`` (the lock it was exported from) and ``wheels/``. Opening one
checks it whole before anything is installed from it: a tar is extracted member by member by
this module (regular files and folders only, no ``..``, no absolute names, bounded sizes) into a
folder the core creates in its cache; every file must be in the manifest with its hash; and every
wheel a driver installs must carry a hash its lock entry pins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    canonicalize_version,
    parse_wheel_filename,
)

from . import _lockfile
from ._errors import EnvBuildError, SourceError
from ._fs import is_inside, remove_tree
from ._locker import Locker
from ._sources import file_digest
from ._subprocess import CommandFailed

log = logging.getLogger("reva_plugins.bundle")

BUNDLE_FORMAT = 1
"""The version of the bundle layout (``manifest.json`` ``format``)."""
MANIFEST = "manifest.json"
LOCK = "lock.toml"
WHEELS = "wheels"
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_MANIFEST_BYTES = 16 << 20
_CHUNK = 1 << 20

Format = Literal["tar", "dir"]


@dataclass(frozen=True)
class Bundle:
    """An opened, checked bundle: its folder, its lock and the sha256 of each file."""

    root: Path
    source: Path
    lock: _lockfile.LockFile
    files: Mapping[str, str]

    @property
    def wheels(self) -> Path:
        """The folder of wheels (what installers get as ``--find-links``)."""
        return self.root / WHEELS

    def refuse(self, why: str) -> SourceError:
        """The error of a bundle that cannot be used (exit 2), naming it."""
        return SourceError(f"bundle {self.source}: {why}; refusing it")

    def check_all(self) -> None:
        """:meth:`check` for every entry of the bundle's own lock, and no wheel here that it
        does not pin: all of it before anything is installed from the bundle."""
        used: set[str] = set()
        for locked in sorted(self.lock.services.values(), key=lambda e: e.service):
            for entry in locked.entries():
                used |= self.check(entry)
        for filename, _name, _version in self._wheels():
            if filename not in used:
                raise self.refuse(f"{WHEELS}/{filename} is a wheel its lock does not pin")

    def check(self, entry: _lockfile.LockEntry) -> set[str]:
        """Every wheel ``entry`` installs is here with a hash the lock pins for it; return their
        file names."""
        used = set()
        if entry.wheel:
            used.add(entry.wheel)
            found = self.files.get(f"{WHEELS}/{entry.wheel}")
            if found is None:
                raise self.refuse(f"it has no {WHEELS}/{entry.wheel} ({entry.service}'s plugin)")
            if found != entry.wheel_sha256:
                raise self.refuse(
                    f"{WHEELS}/{entry.wheel} is not the wheel the lock pins for {entry.service}"
                )
        wheels = list(self._wheels())
        for pkg in entry.packages:
            name, version = canonicalize_name(pkg.name), canonicalize_version(pkg.version)
            pinned = {h.removeprefix("sha256:") for h in pkg.hashes}
            present = False
            for filename, wheel_name, wheel_version in wheels:
                if (wheel_name, wheel_version) != (name, version):
                    continue
                if self.files[f"{WHEELS}/{filename}"] not in pinned:
                    raise self.refuse(
                        f"{WHEELS}/{filename} matches no hash the lock pins for "
                        f"{pkg.name} {pkg.version}"
                    )
                present = True
                used.add(filename)
            if not present:
                raise self.refuse(f"it has no wheel of {pkg.name} {pkg.version} ({entry.service})")
        return used

    def _wheels(self) -> Iterable[tuple[str, str, str]]:
        for rel in self.files:
            if rel.startswith(f"{WHEELS}/") and rel.endswith(".whl"):
                filename = rel.split("/", 1)[1]
                with contextlib.suppress(InvalidWheelFilename):
                    name, version, _build, _tags = parse_wheel_filename(filename)
                    yield filename, str(name), canonicalize_version(version)


# -- opening ------------------------------------------------------------------------------------


def open_bundle(path: Path, cache_root: Path) -> Bundle:
    """Check the bundle at ``path`` (a folder, or a tar extracted once into ``cache_root``)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SourceError(f"bundle {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        return _verify(path.resolve(), path)
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(f"bundle {path}: not a folder or a tar file")
    digest = file_digest(path)
    bundles = cache_root / "bundles"
    target = bundles / digest[:24]
    if os.path.lexists(target):
        with contextlib.suppress(OSError):  # used now: env prune keeps it
            os.utime(target, follow_symlinks=False)
        return _verify(target, path)
    tmp_root = cache_root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bundle-", dir=tmp_root))
    try:
        _extract(path, work / "b")
        # Checked before it moves into place: a refused bundle leaves nothing in the cache.
        bundle = _verify(work / "b", path)
        bundles.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(work / "b", target)
        except OSError:  # another process extracted the same bundle first
            return _verify(target, path)
        return dataclasses.replace(bundle, root=target)
    finally:
        remove_tree(work, within=tmp_root)


def _refuse(source: Path, why: str) -> SourceError:
    return SourceError(f"bundle {source}: {why}; refusing it")


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted (None when it may)."""
    name = member.name
    parts = PurePosixPath(name).parts
    if not name or "\0" in name or "\\" in name or name.startswith("/"):
        return "an absolute or unreadable name"
    if any(p in ("..",) for p in parts) or not parts:
        return "a name with '..'"
    if member.issym() or member.islnk():
        return "a link"
    if not (member.isreg() or member.isdir()):
        return "not a regular file or folder"
    if member.size > MAX_MEMBER_BYTES:
        return f"larger than {MAX_MEMBER_BYTES >> 20} MB"
    return None


def _extract(path: Path, dest: Path) -> None:
    """Extract the tar at ``path`` into the new folder ``dest``, refusing any member that is not
    a plain file or folder inside it (checked here on every Python, not left to ``tarfile``)."""
    try:
        with tarfile.open(path, "r:") as tar:
            members: list[tarfile.TarInfo] = []
            seen: set[str] = set()
            total = 0
            for member in tar:
                if len(members) >= MAX_MEMBERS:
                    raise _refuse(path, f"it has more than {MAX_MEMBERS} members")
                problem = member_problem(member)
                if problem:
                    raise _refuse(path, f"member {member.name!r} is {problem}")
                normal = str(PurePosixPath(member.name))
                if normal in seen:
                    raise _refuse(path, f"member {member.name!r} appears twice")
                seen.add(normal)
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise _refuse(path, f"it holds more than {MAX_TOTAL_BYTES >> 30} GB")
                members.append(member)
            dest.mkdir()
            for member in members:
                _write_member(tar, member, dest)
    except tarfile.TarError as exc:
        raise _refuse(path, f"it is not a readable tar file ({exc})") from None


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    target = dest.joinpath(*PurePosixPath(member.name).parts)
    if not is_inside(target, dest):
        raise SourceError(f"bundle member {member.name!r} is outside the bundle; refusing it")
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # The parents were created by us just now, inside ``dest``; O_NOFOLLOW|O_EXCL never follow
    # or overwrite anything.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        src = tar.extractfile(member)
        if src is None:
            return
        left = member.size
        while left > 0:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        # The member's own time, not the extraction's, so two hosts hold equal files.
        os.utime(out.fileno(), (member.mtime, member.mtime))


def _read_manifest(root: Path, source: Path) -> dict[str, str]:
    file = root / MANIFEST
    try:
        info = os.lstat(file)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            raise _refuse(source, f"{MANIFEST} is not a regular file of sane size")
        data = json.loads(file.read_bytes())
    except OSError:
        raise _refuse(source, f"it has no {MANIFEST}") from None
    except (ValueError, RecursionError):
        raise _refuse(source, f"{MANIFEST} is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise _refuse(source, f"{MANIFEST} is not a bundle manifest of format {BUNDLE_FORMAT}")
    files = data.get("files")
    if not isinstance(files, dict):
        raise _refuse(source, f"{MANIFEST} lists no files")
    out: dict[str, str] = {}
    for rel, digest in files.items():
        parts = PurePosixPath(rel).parts
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or rel.startswith("/")
            or ".." in parts
            or "\\" in rel
            or str(PurePosixPath(rel)) != rel
        ):
            raise _refuse(source, f"{MANIFEST} has a bad entry {rel!r}")
        out[rel] = digest
    return out


def _verify(root: Path, source: Path) -> Bundle:
    """Every file is listed with its hash, nothing else is there, the lock is readable."""
    files = _read_manifest(root, source)
    present: set[str] = set()
    for dirpath, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise _refuse(source, f"{rel} is a link or special file")
            if stat.S_ISREG(mode) and rel != MANIFEST:
                present.add(rel)
    missing = sorted(set(files) - present)
    extra = sorted(present - set(files))
    if missing:
        raise _refuse(source, f"{missing[0]} is in the manifest but not in the bundle")
    if extra:
        raise _refuse(source, f"{extra[0]} is not in the manifest")
    for rel in sorted(files):
        if file_digest(root / rel) != files[rel]:
            raise _refuse(
                source, f"{rel} does not match the sha256 in its manifest (tampered or damaged)"
            )
    if LOCK not in files:
        raise _refuse(source, f"it has no {LOCK}")
    lock = _lockfile.loads((root / LOCK).read_bytes(), source / LOCK)
    bundle = Bundle(root, source, lock, files)
    bundle.check_all()
    return bundle


# -- exporting ----------------------------------------------------------------------------------


def export(
    lock: _lockfile.LockFile,
    lock_text: bytes,
    locker: Locker,
    out: Path,
    fmt: Format,
) -> int:
    """Write the bundle of ``lock`` to ``out`` (a tar file or a new folder); return how many
    wheels it holds."""
    if os.path.lexists(out) and not (fmt == "dir" and out.is_dir() and not any(out.iterdir())):
        raise SourceError(f"{out} exists; give a new path to export to")
    parent = out.resolve().parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=parent))
    except OSError as exc:
        raise SourceError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        wheels = staging / WHEELS
        wheels.mkdir()
        (staging / LOCK).write_bytes(lock_text)
        for locked in lock.services.values():
            _add_plugin_wheel(locked, locker, wheels)
            for entry in locked.entries():
                _download(entry, locker, wheels)
        files = {
            p.relative_to(staging).as_posix(): file_digest(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        manifest = {"format": BUNDLE_FORMAT, "files": dict(sorted(files.items()))}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _verify(staging, out)
        if fmt == "dir":
            if out.is_dir():
                out.rmdir()
            os.replace(staging, out)
        else:
            tmp_tar = staging / ".bundle.tar"
            _write_tar(staging, tmp_tar, [MANIFEST, *files])
            os.replace(tmp_tar, out)
        return sum(1 for rel in files if rel.endswith(".whl"))
    finally:
        if staging.exists():
            remove_tree(staging, within=parent)


def _add_plugin_wheel(entry: _lockfile.LockedService, locker: Locker, wheels: Path) -> None:
    if not entry.wheel:
        return
    wheel = locker.cached_wheel(entry)
    if wheel is None:
        raise SourceError(
            f"{entry.service}: the wheel the lock pins ({entry.wheel}) is not in this cache; "
            "build it first ('reva-plugins env export' does)"
        )
    target = wheels / entry.wheel
    if target.exists() and file_digest(target) != entry.wheel_sha256:
        raise SourceError(
            f"{entry.service}: another service's plugin wheel has the name {entry.wheel} but other "
            "content; a bundle holds one file per name (give the plugins other versions)"
        )
    shutil.copyfile(wheel, target)


def _download(entry: _lockfile.LockEntry, locker: Locker, wheels: Path) -> None:
    """The wheels of ``entry``'s packages, checked by the installer against the lock's hashes."""
    try:
        locker.installer.download(
            _lockfile.pins(entry, with_plugin=False), wheels, entry.python, locker.options
        )
    except CommandFailed as exc:
        raise EnvBuildError.of_command(
            f"downloading the wheels of {entry.service} failed (a dependency without a "
            "wheel for this Python cannot be bundled)",
            exc,
            plugin=entry.service,
        ) from None


def _write_tar(root: Path, target: Path, names: list[str]) -> None:
    """A reproducible tar: sorted members, no owners, fixed times and modes."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        folders = sorted({str(PurePosixPath(n).parent) for n in names} - {"."})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(names):
            path = root / name
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with path.open("rb") as f:
                tar.addfile(info, f)
