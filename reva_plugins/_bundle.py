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
_MAX_NAME_BYTES = 255

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
        return _refuse(self.source, why)

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
        raise SourceError(f"bundle {shown(str(path))}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        return _verify(path.resolve(), path)
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(f"bundle {shown(str(path))}: not a folder or a tar file")
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
    return SourceError(f"bundle {shown(str(source))}: {shown(why)}; refusing it")


def shown(text: str) -> str:
    """``text`` safe in a one-line message: every unprintable character (ESC, newline, NUL,
    bidi controls, undecodable bytes) shown as its escape, as ``_cli_env.shown`` does, so a
    member name or manifest entry can neither forge a line nor drive the terminal."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted (None when it may). ``.`` and names that start
    with ``./`` (what ``tar cf x.tar -C dir .`` writes) are the bundle's folder and its files."""
    name = member.name
    parts = PurePosixPath(name).parts
    if not name or "\0" in name or "\\" in name or name.startswith("/"):
        return "an absolute or unreadable name"
    if ".." in parts:
        return "a name with '..'"
    if any(len(part.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES for part in parts):
        return f"a name with a part longer than {_MAX_NAME_BYTES} bytes"
    if member.issym() or member.islnk():
        return "a link"
    # A sparse member declares its full size but carries only its data: a few KB of tar would
    # write gigabytes of holes. Bundles never hold one.
    if member.issparse() or member.type == tarfile.GNUTYPE_SPARSE:
        return "a sparse file"
    if not (member.isreg() or member.isdir()):
        return "not a regular file or folder"
    if not parts and not member.isdir():
        return "the bundle's own folder ('.') but not a folder"
    if member.size > MAX_MEMBER_BYTES:
        return f"larger than {MAX_MEMBER_BYTES >> 20} MB"
    return None


@dataclass(frozen=True)
class _Member:
    """A checked tar member and its name inside the bundle (``./`` and ``//`` dropped)."""

    info: tarfile.TarInfo
    name: str


def _extract(path: Path, dest: Path) -> None:
    """Extract the tar at ``path`` into the new folder ``dest``.

    Nothing is written before the whole tar is checked (here on every Python, not left to
    ``tarfile``): every member a plain file or folder inside it, no name twice, no file where
    another member needs a folder, sizes within the caps and within the tar file itself, and
    the files exactly those its ``manifest.json`` lists.
    """
    try:
        with tarfile.open(path, "r:") as tar:
            members = _checked_members(tar, path)
            _check_manifest(tar, members, path)
            dest.mkdir()
            for member in members:
                _write_member(tar, member, dest, path)
    except tarfile.TarError as exc:
        raise _refuse(path, f"it is not a readable tar file ({exc})") from None


def _checked_members(tar: tarfile.TarFile, path: Path) -> list[_Member]:
    size = os.stat(path).st_size
    members: list[_Member] = []
    # Each name a member has or implies (its parent folders): True for a folder.
    folder: dict[str, bool] = {}
    named: set[str] = set()
    total = 0
    for info in tar:
        if len(members) >= MAX_MEMBERS:
            raise _refuse(path, f"it has more than {MAX_MEMBERS} members")
        problem = member_problem(info)
        if problem:
            raise _refuse(path, f"member {info.name!r} is {problem}")
        parts = PurePosixPath(info.name).parts
        if not parts:  # "." itself: the folder the bundle is extracted into
            continue
        name = "/".join(parts)
        if name in named:
            raise _refuse(path, f"member {info.name!r} appears twice")
        named.add(name)
        if folder.get(name) and not info.isdir():
            raise _refuse(path, f"member {info.name!r} is a file where other members need a folder")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if folder.get(parent) is False:
                raise _refuse(path, f"member {info.name!r} is inside {parent!r}, a file")
            folder[parent] = True
        folder[name] = info.isdir()
        if info.offset_data + info.size > size:
            raise _refuse(path, f"member {info.name!r} runs past the end of the tar file")
        total += info.size
        if total > MAX_TOTAL_BYTES:
            raise _refuse(path, f"it holds more than {MAX_TOTAL_BYTES >> 30} GB")
        members.append(_Member(info, name))
    return members


def _check_manifest(tar: tarfile.TarFile, members: list[_Member], path: Path) -> None:
    """The files of the tar are exactly those its manifest lists (checked before any is
    written; their hashes are checked once they are)."""
    found = [m for m in members if m.name == MANIFEST]
    if not found:
        raise _refuse(path, f"it has no {MANIFEST}")
    info = found[0].info
    if not info.isreg() or info.size > MAX_MANIFEST_BYTES:
        raise _refuse(path, f"{MANIFEST} is not a regular file of sane size")
    src = tar.extractfile(info)
    files = _parse_manifest(src.read(MAX_MANIFEST_BYTES + 1) if src else b"", path)
    present = {m.name for m in members if not m.info.isdir()} - {MANIFEST}
    _check_listed(files, present, path)


def _check_listed(files: Mapping[str, str], present: set[str], source: Path) -> None:
    missing = sorted(set(files) - present)
    extra = sorted(present - set(files))
    if missing:
        raise _refuse(source, f"{missing[0]} is in the manifest but not in the bundle")
    if extra:
        raise _refuse(source, f"{extra[0]} is not in the manifest")


def _write_member(tar: tarfile.TarFile, member: _Member, dest: Path, source: Path) -> None:
    target = dest.joinpath(*member.name.split("/"))
    if not is_inside(target, dest):
        raise _refuse(source, f"member {member.info.name!r} is outside the bundle")
    try:
        if member.info.isdir():
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # The parents were created by us just now, inside ``dest``; O_NOFOLLOW|O_EXCL never
        # follow or overwrite anything.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            src = tar.extractfile(member.info)
            assert src is not None  # member_problem let only files and folders through
            left = member.info.size
            while left > 0:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            # The member's own time, not the extraction's, so two hosts hold equal files.
            os.utime(out.fileno(), (member.info.mtime, member.info.mtime))
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise _refuse(source, f"member {member.info.name!r} cannot be written ({why})") from None


def _read_manifest(root: Path, source: Path) -> dict[str, str]:
    file = root / MANIFEST
    try:
        info = os.lstat(file)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            raise _refuse(source, f"{MANIFEST} is not a regular file of sane size")
        raw = file.read_bytes()
    except OSError:
        raise _refuse(source, f"it has no {MANIFEST}") from None
    return _parse_manifest(raw, source)


def _parse_manifest(raw: bytes, source: Path) -> dict[str, str]:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _refuse(source, f"{MANIFEST} is not a regular file of sane size")
    try:
        data = json.loads(raw)
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
    _check_listed(files, present, source)
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
