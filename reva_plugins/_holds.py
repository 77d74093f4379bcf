"""Download holds: a shared ``flock`` on each ``downloads/<sha256>`` folder a process resolved,
so ``env prune`` in any process leaves it alone while that process runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_held_downloads: dict[str, int] = {}
_held_mutex = threading.Lock()


def hold_download(folder: Path) -> bool:
    """Mark the download folder ``downloads/<sha256>`` in use until this process ends.

    A shared lock on the folder: ``env prune`` (which needs it exclusively) in any process
    leaves a download alone while a process that resolved it, to build from it, still runs.
    Taken before the download is moved in or used from the cache. False when the folder is
    gone or was replaced (pruned meanwhile): make it again and retry.
    """
    key = str(folder)
    with _held_mutex:
        held = _held_downloads.get(key)
        if held is not None:
            if _same_file(held, folder):
                return True
            os.close(held)
            del _held_downloads[key]
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            # Blocks only while a prune removes this very folder; then it is gone (below).
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            os.close(fd)
            return False
        if not _same_file(fd, folder):
            os.close(fd)
            return False
        _held_downloads[key] = fd
        return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, now = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


@contextlib.contextmanager
def download_unheld(path: Path) -> Iterator[bool]:
    """Hold the download ``path`` exclusively if no process holds it; yields whether it does
    (a path that is not a real folder nobody can hold)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    with held_exclusively(path, flags, unopenable=True) as held:
        yield held


@contextlib.contextmanager
def held_exclusively(path: Path, flags: int, *, unopenable: bool) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (opened with ``flags``) for the block, if nobody holds
    a lock on it; yields whether it is held, or ``unopenable`` when the path cannot be opened."""
    try:
        fd = os.open(path, flags)
    except OSError:
        yield unopenable
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
