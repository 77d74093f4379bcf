"""Driver specs: classify what a config's ``driver`` names and resolve it to a content identity."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import _auth, _git
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
_TRANSPORT = re.compile(r"^(git\+)?[A-Za-z][\w+.-]*::")


@dataclass(frozen=True)
class Resolved:
    """A source pinned to its content: what keys the env and what the installer is given."""

    kind: str
    spec: str
    identity: str
    install_args: tuple[str, ...] = ()
    mutable: bool = False
    pins: Mapping[str, str] = field(default_factory=dict)


class NeedsNetwork(SourceError):
    """Resolving this source would touch the network, and the loader is offline."""


@dataclass(frozen=True)
class ResolveContext:
    """What resolving may use: the network or not, where downloads go, how to ask an index."""

    offline: bool = False
    downloads: Path | None = None
    find_version: Callable[[str], str] | None = None


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

    def resolve(self, ctx: ResolveContext) -> Resolved:
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

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """Digest the source tree (ignoring VCS data, caches, build outputs and venvs)."""
        digest = tree_digest(self.path)
        return Resolved(self.kind, self.spec, f"tree:{digest}", (str(self.path),))


@dataclass(frozen=True)
class LocalFile:
    """A wheel or sdist file, keyed by its sha256 (checked against ``sha256`` when pinned)."""

    path: Path
    sha256: str | None = None

    @property
    def kind(self) -> str:
        """``wheel`` or ``sdist``."""
        return "wheel" if self.path.suffix == ".whl" else "sdist"

    @property
    def spec(self) -> str:
        """The file's path."""
        return str(self.path)

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """Hash the file and check the pin."""
        digest = file_digest(self.path)
        check_sha256(self.spec, self.sha256, digest)
        return Resolved(
            self.kind, self.spec, f"sha256:{digest}", (str(self.path),), pins={"sha256": digest}
        )


@dataclass(frozen=True)
class GitSource:
    """A pip-style VCS URL; a branch or tag is re-resolved on each load, a commit never."""

    git: _git.GitURL
    kind: str = "git"

    @property
    def spec(self) -> str:
        """The URL without credentials."""
        return self.git.display()

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """``git ls-remote`` the ref (unless it is a full commit) and pin the install to it."""
        if ctx.offline and not self.git.pinned:
            raise NeedsNetwork(f"{self.spec}: resolving {self.git.ref or 'HEAD'} needs the network")
        commit = _git.resolve(self.git)
        return Resolved(
            self.kind,
            self.spec,
            f"git:{self.git.bare_url}@{commit}#{self.git.subdirectory or ''}",
            (self.git.with_commit(commit),),
            mutable=not self.git.pinned,
            pins={"commit": commit},
        )


@dataclass(frozen=True)
class ArchiveURL:
    """An ``https://…/x.whl`` or ``.tar.gz`` URL, downloaded and keyed by its sha256."""

    url: str
    sha256: str | None = None

    @property
    def kind(self) -> str:
        """``wheel-url`` or ``sdist-url``."""
        return "wheel-url" if self.filename.endswith(".whl") else "sdist-url"

    @property
    def spec(self) -> str:
        """The URL without credentials."""
        return _git.strip_credentials(self.url)

    @property
    def filename(self) -> str:
        """The archive's file name (pip and uv read name and version from it)."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """A pinned archive already downloaded costs nothing; otherwise download and hash it."""
        assert ctx.downloads is not None
        if self.sha256:
            cached = ctx.downloads / self.sha256 / self.filename
            if cached.is_file():
                return self._resolved(cached, self.sha256)
        if ctx.offline:
            raise NeedsNetwork(f"{self.spec}: downloading the archive needs the network")
        path = download(self.url, ctx.downloads, self.filename)
        digest = file_digest(path)
        check_sha256(self.spec, self.sha256, digest)
        final = ctx.downloads / digest / self.filename
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        shutil.rmtree(path.parent, ignore_errors=True)
        return self._resolved(final, digest)

    def _resolved(self, path: Path, digest: str) -> Resolved:
        return Resolved(
            self.kind,
            self.spec,
            f"sha256:{digest}",
            (str(path),),
            mutable=self.sha256 is None,
            pins={"sha256": digest, "url": self.spec},
        )


@dataclass(frozen=True)
class RequirementSource:
    """A PEP 508 requirement installed from the configured index; a range is resolved to the
    newest matching version on each load, an exact ``==`` pin is not."""

    requirement: Requirement
    kind: str = "requirement"

    @property
    def spec(self) -> str:
        """The requirement, normalised."""
        return str(self.requirement)

    @property
    def exact_version(self) -> str | None:
        """The version of an ``==``/``===`` pin without wildcards."""
        specs = list(self.requirement.specifier)
        if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
            return specs[0].version
        return None

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """Pin to one version (asking the index for a range)."""
        version = self.exact_version
        if version is None:
            if ctx.offline:
                raise NeedsNetwork(f"{self.spec}: choosing a version needs the package index")
            assert ctx.find_version is not None
            version = ctx.find_version(self.spec)
        extras = f"[{','.join(sorted(self.requirement.extras))}]" if self.requirement.extras else ""
        pinned = f"{canonicalize_name(self.requirement.name)}{extras}=={version}"
        return Resolved(
            self.kind,
            self.spec,
            f"req:{pinned}",
            (pinned,),
            mutable=self.exact_version is None,
            pins={"version": version},
        )


def check_sha256(spec: str, expected: str | None, actual: str) -> None:
    """Raise a :class:`SourceError` when a pinned sha256 does not match."""
    if expected and expected.lower() != actual:
        raise SourceError(f"sha256 mismatch for {spec}: expected {expected}, got {actual}")


def download(url: str, downloads: Path, filename: str) -> Path:
    """Fetch ``url`` into a fresh temp folder under ``downloads``; return the file."""
    downloads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="dl-", dir=downloads))
    target = folder / filename
    try:
        with _auth.urlopen(url, timeout=60) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (OSError, ValueError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise SourceError(f"cannot download {_git.strip_credentials(url)}: {exc}") from None
    return target


def classify(
    spec: str, *, base_dir: Path, sha256: str | None = None, allowed: tuple[str, ...] = ("*",)
) -> Source | InProcess | PrebuiltVenv:
    """What ``spec`` names, tried in SPEC order: name, venv, file or folder, VCS URL, archive
    URL, requirement."""
    if not any(fnmatch.fnmatchcase(spec, pattern) for pattern in allowed):
        raise SourceError(
            f"driver {_git.strip_credentials(spec)!r} is not allowed by [plugins] "
            f"allowed_sources {list(allowed)}"
        )
    if _is_bare_name(spec):
        return InProcess(spec)
    if _TRANSPORT.match(spec):
        raise SourceError(
            f"unsupported URL scheme in driver {_git.strip_credentials(spec)!r}: git remote "
            "helpers (name::…) are never run; use git+https://, git+ssh:// or git+file://"
        )
    if _looks_like_path(spec):
        return _classify_path(spec, base_dir, sha256)
    if _git.is_git_spec(spec):
        return GitSource(_git.parse(spec))
    if "://" in spec or spec.startswith(("ext::", "fd::")):
        return _classify_url(spec, sha256)
    try:
        requirement = Requirement(spec)
    except InvalidRequirement:
        pass
    else:
        if requirement.url:
            raise SourceError(
                f"driver {spec!r}: write the URL itself (git+…, https://…) instead of 'name @ URL'"
            )
        return RequirementSource(requirement)
    raise SourceError(
        f"cannot tell what driver {spec!r} is: expected an installed driver name, a path to a "
        "venv, wheel, sdist or package folder, a git+… URL, an archive URL or a requirement "
        "with a version specifier"
    )


def _classify_path(spec: str, base_dir: Path, sha256: str | None) -> Source | PrebuiltVenv:
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


def _classify_url(spec: str, sha256: str | None) -> ArchiveURL:
    shown = _git.strip_credentials(spec)
    scheme = spec.split(":", 1)[0].lower()
    if scheme not in ("https", "http", "file"):
        raise SourceError(
            f"unsupported URL scheme {scheme!r} in driver {shown!r} (use git+https://, "
            "git+ssh://, git+file://, https://…/x.whl or https://…/x.tar.gz)"
        )
    url, _, fragment = spec.partition("#")
    pinned = sha256
    if fragment:
        name, _, value = fragment.partition("=")
        if name != "sha256" or len(value) != 64:
            raise SourceError(
                f"driver {shown!r}: the only URL fragment accepted is #sha256=<64 hex>"
            )
        if pinned and pinned != value.lower():
            raise SourceError(f"driver {shown!r}: #sha256 and plugin.sha256 disagree")
        pinned = value.lower()
    archive = ArchiveURL(url, pinned)
    if not archive.filename.endswith((".whl", *SDIST_SUFFIXES)):
        raise SourceError(
            f"driver URL {shown!r} is neither a git URL (git+https://…) nor an archive "
            "(.whl, .tar.gz, .zip)"
        )
    return archive


def _is_bare_name(spec: str) -> bool:
    return spec.replace("-", "").replace("_", "").replace(".", "").isalnum() and not (
        spec.startswith(".") or spec.endswith((".whl", *SDIST_SUFFIXES))
    )


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or (os.sep in spec and not _git.is_git_spec(spec) and "://" not in spec and "@" not in spec)
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
