"""Files the core did not make: removing them safely, reading them without being fooled.

Every ``rmtree``/``unlink`` of the package goes through :func:`remove_tree`, which refuses a path
that is not strictly inside ``within`` once both are resolved. A path computed from untrusted input
(a URL's file name, a key from a metadata file) can then never reach outside the cache.

Every file a user or a plugin names (a metadata file, a pid file, a PEM file, a driver's wheel) is
opened through :func:`open_regular`: a FIFO, a device or a folder is refused at once, never read
(a FIFO would block the reader for good), and :func:`read_regular` bounds what is read.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["NotRegular", "is_inside", "open_regular", "read_regular", "remove_tree"]


class NotRegular(OSError):
    """The path names something other than a regular file (a FIFO, a device, a folder)."""


def open_regular(path: str | os.PathLike[str], *, follow: bool = True) -> BinaryIO:
    """Open a regular file for reading, never blocking on what it names: a FIFO opens at once
    (non-blocking) and is refused by the ``fstat`` check, as is anything else that is not a
    regular file (:class:`NotRegular`). ``follow=False`` refuses a symlink too."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(0, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], limit: int, *, follow: bool = True) -> bytes:
    """The content of a small regular file (see :func:`open_regular`), at most ``limit`` bytes:
    a larger file is an :class:`OSError` (``EFBIG``), never read further."""
    with open_regular(path, follow=follow) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
    return data


def is_inside(path: Path, root: Path) -> bool:
    """True when ``path`` (its parent resolved, its own name kept) lies strictly inside ``root``."""
    real_root = root.resolve()
    # Resolve the parent only: a symlink named by ``path`` is removed itself, never followed.
    real = path.parent.resolve() / path.name
    return path.name not in ("", ".", "..") and real_root in real.parents


def remove_tree(path: Path, *, within: Path) -> None:
    """Delete ``path`` (a folder, file or symlink) if it lies inside ``within``; else raise.

    Missing paths are fine. A symlink is unlinked, never followed.
    """
    if not is_inside(path, within):
        raise ValueError(f"refusing to remove {path}: it is not inside {within}")
    try:
        if path.is_symlink() or not path.is_dir():
            os.unlink(path)
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
