"""The ``in-process`` kind: a bare name, an entry point installed in the core's own
environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from packaging.utils import canonicalize_name

from ._base import Origin, SourceHandler
from ._download import SDIST_SUFFIXES

_T = TypeVar("_T")


@dataclass(frozen=True)
class InProcess:
    """A bare name: an entry point installed in the core's own environment."""

    name: str
    kind: str = "in-process"

    @property
    def spec(self) -> str:
        """The name as written."""
        return self.name

    @property
    def origin(self) -> Origin:
        """The name, canonicalised like a distribution name."""
        return Origin("name", canonicalize_name(self.name))

    @property
    def local_path(self) -> Path | None:
        """None: a name."""
        return None

    @classmethod
    def recognise(cls, spec: str) -> InProcess | None:
        """A bare name (letters, digits, ``-``, ``_``, ``.``; not a file name)."""
        bare = spec.replace("-", "").replace("_", "").replace(".", "").isalnum()
        if bare and not (spec.startswith(".") or spec.endswith((".whl", *SDIST_SUFFIXES))):
            return cls(spec)
        return None

    def accept(self, handler: SourceHandler[_T]) -> _T:
        """``handler.in_process(self)``."""
        return handler.in_process(self)
