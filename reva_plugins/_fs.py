"""Removing files safely: only what lies inside a folder the core created, checked by containment.

Every ``rmtree``/``unlink`` of the package goes through :func:`remove_tree`, which refuses a path
that is not strictly inside ``within`` once both are resolved. A path computed from untrusted input
(a URL's file name, a key from a metadata file) can then never reach outside the cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["is_inside", "remove_tree"]


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
