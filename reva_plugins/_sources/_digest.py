"""Reading local content safely: a file's sha256 and a package folder's tree digest (never
blocking on a FIFO or device, bounded in size)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from .._errors import SourceError
from .._fs import open_regular

log = logging.getLogger("reva_plugins.sources")

MAX_TREE_BYTES = 1 << 30
"""What :func:`tree_digest` reads at most from one package folder."""
MAX_TREE_ENTRIES = 200_000
"""How many files and folders :func:`tree_digest` visits at most in one package folder."""
_CHUNK = 1 << 20
_SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        "build",
        "dist",
        ".venv",
        "venv",
        ".nox",
        ".tox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
        ".eggs",
    }
)
_SKIP_SUFFIXES = (".pyc", ".pyo")


def is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def file_digest(path: Path) -> str:
    """The sha256 of a regular file, hex (a FIFO or device is an error, never read)."""
    digest = hashlib.sha256()
    try:
        with open_regular(path) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def tree_digest(
    root: Path, *, max_bytes: int = MAX_TREE_BYTES, max_entries: int = MAX_TREE_ENTRIES
) -> str:
    """A sha256 over the relative paths, modes and contents of a source tree.

    Hashes regular files (path, executable bits, length, content) and symlinks (path and target
    text; never followed, never read through). A file is opened without blocking and checked to
    be regular before it is read. Skips VCS data, caches, build outputs, ``*.egg-info`` and
    venvs, and (with a debug log) what cannot be read.

    A FIFO, socket or device, or a symlink to one, is a :class:`SourceError` naming it: the
    build backend would open it and block (or read ``/dev/zero`` for ever), so skipping it here
    would only move the hang into the build. So is a tree holding more than ``max_bytes`` of file
    content or ``max_entries`` entries.
    """
    digest = hashlib.sha256()
    budget = max_bytes
    too_large = SourceError(f"package folder {root} holds more than {max_bytes} bytes of files")
    entries = 0
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        folder = os.path.join(root, rel_dir)
        try:
            with os.scandir(folder) as it:
                found = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            log.debug("tree digest: cannot list %s: %s", folder, exc)
            continue
        subdirs: list[str] = []
        for entry in found:
            entries += 1
            if entries > max_entries:
                raise SourceError(
                    f"package folder {root} holds more than {max_entries} files and folders"
                )
            rel = os.path.join(rel_dir, entry.name)
            try:
                if entry.is_symlink():
                    _check_link_target(entry.path, rel, root)
                    digest.update(os.fsencode(f"{rel}\0link\0{os.readlink(entry.path)}\0"))
                elif entry.is_dir(follow_symlinks=False):
                    if _walks_into(entry):
                        subdirs.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    if not entry.name.endswith(_SKIP_SUFFIXES):
                        budget = _digest_file(digest.update, entry.path, rel, budget, too_large)
                else:
                    raise _special_file(root, rel, entry.stat(follow_symlinks=False).st_mode)
            except OSError as exc:
                log.debug("tree digest: skipping %s: %s", rel, exc)
        # Depth first, in name order: the same order (and digest) as the os.walk it replaces.
        pending.extend(reversed(subdirs))
    return digest.hexdigest()


def _check_link_target(path: str, rel: str, root: Path) -> None:
    """Refuse a symlink to a FIFO, socket or device (``stat`` follows it without opening)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        log.debug("tree digest: %s is a dangling or looping symlink: %s", rel, exc)
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _special_file(root, rel, mode, link=True)


def _special_file(root: Path, rel: str, mode: int, *, link: bool = False) -> SourceError:
    what = (
        "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a special file"
    )
    via = "a symlink to " if link else ""
    return SourceError(
        f"package folder {root}: {rel} is {via}{what}; a build would block on it (remove it, "
        "or move it out of the folder)"
    )


def _walks_into(entry: os.DirEntry[str]) -> bool:
    return (
        entry.name not in _SKIP_DIRS
        and not entry.name.endswith(".egg-info")
        and not os.path.lexists(os.path.join(entry.path, "pyvenv.cfg"))
    )


def _digest_file(
    update: Callable[[bytes], None], path: str, rel: str, budget: int, too_large: SourceError
) -> int:
    """Hash one regular file into ``update``; return the read budget left."""
    with open_regular(path, follow=False) as f:
        st = os.fstat(f.fileno())
        if st.st_size > budget:
            raise too_large
        update(os.fsencode(f"{rel}\0{st.st_mode & 0o111:o}\0{st.st_size}\0"))
        while chunk := f.read(min(_CHUNK, budget + 1)):
            budget -= len(chunk)
            if budget < 0:
                raise too_large
            update(chunk)
    return budget


def check_sha256(spec: str, expected: str | None, actual: str) -> None:
    """Raise a :class:`SourceError` when a pinned sha256 does not match."""
    if expected and expected.lower() != actual:
        raise SourceError(f"sha256 mismatch for {spec}: expected {expected}, got {actual}")
