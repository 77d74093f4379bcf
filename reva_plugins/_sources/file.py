"""The ``wheel`` and ``sdist`` kinds: a local file, keyed by its sha256."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .._errors import SourceError
from ._base import Kind, LocalPackage, ResolveContext, Resolved
from ._digest import check_sha256, file_digest
from ._download import SDIST_SUFFIXES


@dataclass(frozen=True)
class LocalFile(LocalPackage):
    """A wheel or sdist file, keyed by its sha256 (checked against ``sha256`` when pinned)."""

    NOUN: ClassVar[str] = "file"
    KINDS: ClassVar[tuple[Kind, ...]] = ("sdist", "wheel")
    REQUIRED_PINS: ClassVar[tuple[str, ...]] = ("sha256",)

    path: Path
    sha256: str | None = None

    @property
    def kind(self) -> str:
        """``wheel`` or ``sdist``."""
        return "wheel" if self.is_wheel else "sdist"

    @property
    def is_wheel(self) -> bool:
        """Whether the file is a wheel (installed as it is)."""
        return self.path.suffix == ".whl"

    @property
    def wheel_file(self) -> str | None:
        """The wheel's file name (None for an sdist)."""
        return self.path.name if self.is_wheel else None

    @classmethod
    def at(cls, path: Path, sha256: str | None, *, is_file: bool) -> LocalFile:
        """The file ``path``, which must be a wheel or sdist and a regular file."""
        if not path.name.endswith((".whl", *SDIST_SUFFIXES)):
            raise SourceError(f"driver file {path} is not a wheel (.whl) or sdist (.tar.gz, .zip)")
        if not is_file:
            raise SourceError(f"driver file {path} is not a regular file")
        return cls(path, sha256)

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """Hash the file and check the pin."""
        digest = file_digest(self.path)
        check_sha256(self.spec, self.sha256, digest)
        return Resolved(
            self.kind,
            self.spec,
            f"sha256:{digest}",
            (str(self.path),),
            pins={"sha256": digest},
            wheel_from="file" if self.is_wheel else "build",
            local=True,
        )

    @classmethod
    def sample(cls, kind: str, folder: Path, workdir: Path) -> str:
        """A spec of ``kind`` (``sdist`` or ``wheel``) for the package folder ``folder`` (the
        plugin authors' kit): built with pypa/build into ``workdir/dist``."""
        out = workdir / "dist"
        subprocess.run(
            [sys.executable, "-m", "build", f"--{kind}", "--outdir", str(out), str(folder)],
            check=True,
            capture_output=True,
        )
        return str(next(out.glob("*.whl" if kind == "wheel" else "*.tar.gz")))
