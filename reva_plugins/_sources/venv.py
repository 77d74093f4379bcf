"""The ``venv`` kind: a folder holding a ready plugin venv, used as is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ._base import AtPath, SourceHandler

_T = TypeVar("_T")


@dataclass(frozen=True)
class PrebuiltVenv(AtPath):
    """A folder holding a ready plugin venv (Reva's "compiled binary"): used as is."""

    path: Path
    kind: str = "venv"

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.path / "bin" / "python"

    @classmethod
    def at(cls, path: Path) -> PrebuiltVenv | None:
        """The folder ``path`` if it holds a venv (``pyvenv.cfg``)."""
        return cls(path) if (path / "pyvenv.cfg").is_file() else None

    def accept(self, handler: SourceHandler[_T]) -> _T:
        """``handler.prebuilt(self)``."""
        return handler.prebuilt(self)
