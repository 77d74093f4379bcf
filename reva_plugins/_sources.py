"""Driver specs: classify what a config's ``driver`` names and resolve it to a content identity."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._errors import SourceError

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tgz", ".tar.bz2")
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


@dataclass(frozen=True)
class Resolved:
    """A source pinned to its content: what keys the env and what the installer is given."""

    kind: str
    spec: str
    identity: str
    install_args: tuple[str, ...] = ()
    mutable: bool = False


class Source(Protocol):
    """One kind of driver spec (folder, wheel, git URL …)."""

    @property
    def kind(self) -> str:
        """A short name of the kind, shown by ``check``."""
        ...

    @property
    def spec(self) -> str:
        """The spec as written (credentials stripped)."""
        ...

    def resolve(self) -> Resolved:
        """Pin the source to its content; may read files or ask a remote."""
        ...


@dataclass(frozen=True)
class InProcess:
    """A bare name: an entry point installed in the core's own environment."""

    name: str
    kind: str = "in-process"

    @property
    def spec(self) -> str:
        """The name as written."""
        return self.name


@dataclass(frozen=True)
class PrebuiltVenv:
    """A folder holding a ready plugin venv (Reva's "compiled binary"): used as is."""

    path: Path
    kind: str = "venv"

    @property
    def spec(self) -> str:
        """The venv's path."""
        return str(self.path)

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.path / "bin" / "python"


@dataclass(frozen=True)
class LocalFolder:
    """A package folder (``pyproject.toml`` or ``setup.py``), keyed by a digest of its tree."""

    path: Path
    kind: str = "folder"

    @property
    def spec(self) -> str:
        """The folder's path."""
        return str(self.path)

    def resolve(self) -> Resolved:
        """Digest the source tree (ignoring VCS data, caches, build outputs and venvs)."""
        digest = tree_digest(self.path)
        return Resolved(self.kind, self.spec, f"tree:{digest}", (str(self.path),))


@dataclass(frozen=True)
class LocalFile:
    """A wheel or sdist file, keyed by its sha256 (checked against ``sha256`` when pinned)."""

    path: Path
    sha256: str | None = None
    kind: str = "file"

    @property
    def spec(self) -> str:
        """The file's path."""
        return str(self.path)

    def resolve(self) -> Resolved:
        """Hash the file and check the pin."""
        digest = file_digest(self.path)
        if self.sha256 and digest != self.sha256:
            raise SourceError(
                f"sha256 mismatch for {self.path}: expected {self.sha256}, got {digest}"
            )
        kind = "wheel" if self.path.suffix == ".whl" else "sdist"
        return Resolved(kind, self.spec, f"sha256:{digest}", (str(self.path),))


def classify(
    spec: str, *, base_dir: Path, sha256: str | None = None, allowed: tuple[str, ...] = ("*",)
) -> Source | InProcess | PrebuiltVenv:
    """What ``spec`` names, tried in SPEC order: name, venv, file or folder, URL, requirement."""
    if not any(fnmatch.fnmatchcase(spec, pattern) for pattern in allowed):
        raise SourceError(
            f"driver {spec!r} is not allowed by [plugins] allowed_sources {list(allowed)}"
        )
    if _is_bare_name(spec):
        return InProcess(spec)
    if _looks_like_path(spec):
        path = (base_dir / Path(spec).expanduser()).resolve()
        if not path.exists():
            raise SourceError(f"driver path {spec!r} does not exist ({path})")
        if path.is_dir():
            if (path / "pyvenv.cfg").is_file():
                return PrebuiltVenv(path)
            if (path / "pyproject.toml").is_file() or (path / "setup.py").is_file():
                return LocalFolder(path)
            raise SourceError(
                f"driver folder {path} is neither a venv (pyvenv.cfg) nor a package "
                "(pyproject.toml or setup.py)"
            )
        if path.name.endswith((".whl", *SDIST_SUFFIXES)):
            return LocalFile(path, sha256)
        raise SourceError(f"driver file {path} is not a wheel (.whl) or sdist (.tar.gz, .zip)")
    raise SourceError(
        f"cannot tell what driver {spec!r} is: expected an installed driver name, a path to a "
        "venv, wheel, sdist or package folder, a git+… URL, an archive URL or a requirement"
    )


def _is_bare_name(spec: str) -> bool:
    return spec.replace("-", "").replace("_", "").replace(".", "").isalnum() and not (
        spec.startswith(".") or spec.endswith((".whl", *SDIST_SUFFIXES))
    )


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or os.sep in spec
        or spec.endswith((".whl", *SDIST_SUFFIXES))
    ) and "://" not in spec


def file_digest(path: Path) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """A sha256 over the relative paths, modes and contents of a source tree."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _SKIP_DIRS
            and not d.endswith(".egg-info")
            and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))
        )
        for name in sorted(filenames):
            if name.endswith(_SKIP_SUFFIXES):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            try:
                st = os.stat(full)
                with open(full, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            digest.update(f"{rel}\0{st.st_mode & 0o111:o}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()
