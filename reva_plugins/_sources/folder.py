"""The ``folder`` kind: a package folder (``pyproject.toml`` or ``setup.py``), keyed by a
digest of its tree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ._base import Kind, LocalPackage, ResolveContext, Resolved
from ._digest import tree_digest


@dataclass(frozen=True)
class LocalFolder(LocalPackage):
    """A package folder (``pyproject.toml`` or ``setup.py``), keyed by a digest of its tree."""

    NOUN: ClassVar[str] = "folder"
    KINDS: ClassVar[tuple[Kind, ...]] = ("folder",)

    path: Path
    kind: str = "folder"

    @classmethod
    def at(cls, path: Path) -> LocalFolder | None:
        """The folder ``path`` if it holds a package (``pyproject.toml`` or ``setup.py``)."""
        if (path / "pyproject.toml").is_file() or (path / "setup.py").is_file():
            return cls(path)
        return None

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """Digest the source tree (ignoring VCS data, caches, build outputs and venvs)."""
        digest = tree_digest(self.path)
        return Resolved(
            self.kind,
            self.spec,
            f"tree:{digest}",
            (str(self.path),),
            wheel_from="build",
            local=True,
        )

    @classmethod
    def sample(cls, kind: str, folder: Path, workdir: Path) -> str:
        """A spec of this kind for the package folder ``folder`` (the plugin authors' kit):
        the folder itself."""
        return str(folder)
