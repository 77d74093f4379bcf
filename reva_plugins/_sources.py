"""Driver specs: classify what a config's ``driver`` names and resolve it to a content identity."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import http.client
import logging
import os
import re
import stat
import tempfile
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from . import _auth, _git, _urls
from ._errors import FetchError, SourceError
from ._fs import remove_tree
from ._redact import redact
from ._store import hold_download

log = logging.getLogger("reva_plugins.sources")

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tgz", ".tar.bz2")
MAX_TREE_BYTES = 1 << 30
"""What :func:`tree_digest` reads at most from one package folder."""
MAX_TREE_ENTRIES = 200_000
"""How many files and folders :func:`tree_digest` visits at most in one package folder."""
MAX_SPEC_LENGTH = 8192
_MAX_NAME_BYTES = 255
_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT = 60.0
MAX_DOWNLOAD_SECONDS = 3600.0
"""How long one download may take in all (a server dripping bytes never hangs a load)."""
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
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# Control, format (bidi overrides, zero-width), surrogate and line/paragraph separator characters.
_UNSHOWABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Requirement syntax: a relative path holding one of these must be written ./… to count as a path.
_REQUIREMENT_SYNTAX = re.compile(r"[<>=!~;\[\],@ ]")


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
    """What resolving may use: the network or not, where downloads go, how to ask an index,
    how large a download may be and whether plain ``http://`` is allowed without a pin."""

    offline: bool = False
    downloads: Path | None = None
    find_version: Callable[[str], str] | None = None
    max_download_bytes: int = 1024 << 20
    allow_http: bool = False


OriginKind = Literal["path", "name", "url"]


@dataclass(frozen=True)
class Origin:
    """Where a source comes from, normalised: what ``[plugins] allowed_sources`` matches.

    ``path``: the resolved real path (folders, wheel/sdist files, venvs); ``name``: the canonical
    name (in-process drivers, requirements); ``url``: the normalised URL (git, archives).
    """

    kind: OriginKind
    value: str


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

    @property
    def origin(self) -> Origin:
        """What ``allowed_sources`` matches."""
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

    @property
    def origin(self) -> Origin:
        """The name, canonicalised like a distribution name."""
        return Origin("name", canonicalize_name(self.name))


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
    def origin(self) -> Origin:
        """The venv's resolved path."""
        return Origin("path", str(self.path))

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.path / "bin" / "python"


Classified = Source | InProcess | PrebuiltVenv


@dataclass(frozen=True)
class LocalFolder:
    """A package folder (``pyproject.toml`` or ``setup.py``), keyed by a digest of its tree."""

    path: Path
    kind: str = "folder"

    @property
    def spec(self) -> str:
        """The folder's path."""
        return str(self.path)

    @property
    def origin(self) -> Origin:
        """The folder's resolved path."""
        return Origin("path", str(self.path))

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

    @property
    def origin(self) -> Origin:
        """The file's resolved path."""
        return Origin("path", str(self.path))

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

    @property
    def origin(self) -> Origin:
        """``git+`` and the normalised repository URL (no credentials, ref or fragment)."""
        return Origin("url", self.git.origin())

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
    """An ``https://…/x.whl`` or ``.tar.gz`` URL, downloaded and keyed by its sha256.

    Made only from a checked URL: its file name is validated on construction (see
    :func:`archive_filename`), so it can never name a path outside the downloads folder.
    """

    url: str
    sha256: str | None = None
    filename: str = field(init=False)

    def __post_init__(self) -> None:
        _urls.check_url(self.url)
        if self.sha256 is not None and not _HEX64.match(self.sha256):
            raise SourceError(f"{self.spec}: sha256 must be 64 hexadecimal digits")
        object.__setattr__(self, "filename", archive_filename(self.url))

    @property
    def kind(self) -> str:
        """``wheel-url`` or ``sdist-url``."""
        return "wheel-url" if self.filename.endswith(".whl") else "sdist-url"

    @property
    def spec(self) -> str:
        """The URL without credentials."""
        return redact(self.url)

    @property
    def origin(self) -> Origin:
        """The normalised URL (no credentials, query or fragment)."""
        return Origin("url", _urls.origin(self.url))

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """A pinned archive already downloaded costs nothing; otherwise download and hash it."""
        assert ctx.downloads is not None
        pin = self.sha256.lower() if self.sha256 else None
        if pin:
            cached = ctx.downloads / pin / self.filename
            # Held first (env prune then leaves it alone), then looked at again: a prune may
            # have removed it in between.
            if (
                _is_regular_file(cached)
                and hold_download(cached.parent)
                and _is_regular_file(cached)
            ):
                # Refresh the mtime: `env prune` ages downloads by it.
                with contextlib.suppress(OSError):
                    os.utime(cached)
                return self._resolved(cached, pin)
        scheme = urllib.parse.urlsplit(self.url).scheme.lower()
        if scheme == "http" and not pin and not ctx.allow_http:
            raise SourceError(
                f"{self.spec}: a plain http:// archive needs a sha256 pin (#sha256=… or "
                "plugin.sha256), or [plugins] allow_http = true"
            )
        if ctx.offline:
            raise NeedsNetwork(f"{self.spec}: downloading the archive needs the network")
        path, digest = download(
            self.url,
            ctx.downloads,
            self.filename,
            expected_sha256=pin,
            max_bytes=ctx.max_download_bytes,
            allow_http=ctx.allow_http or pin is not None,
        )
        return self._resolved(path, digest)

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
    def origin(self) -> Origin:
        """The canonical distribution name (no extras, version or markers)."""
        return Origin("name", canonicalize_name(self.requirement.name))

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


@dataclass(frozen=True)
class SourcePolicy:
    """``[plugins] allowed_sources``: the glob patterns a driver's origin must match.

    A pattern is matched (``fnmatch``, case-sensitive) against the source's normalised, resolved
    origin, never against the spec as written:

    - folder, wheel/sdist file, prebuilt venv: the resolved real path (absolute, symlinks
      followed, no ``.``/``..``). A *path pattern* (one starting with ``/``, ``~``, ``./`` or
      ``../``, or holding a ``/`` but no ``://``) is resolved the same way: relative to the
      config file's folder, ``~`` expanded, its leading folders up to the first glob character
      resolved (symlinks followed). ``./plugins/*`` allows everything below ``plugins/``
      (``*`` matches ``/`` in a path).
    - in-process name, requirement: the canonical name (PEP 503: lower case, runs of ``-``,
      ``_``, ``.`` made one ``-``), without extras, version or markers; the pattern is
      canonicalised the same way, so ``Reva_Plugin-*`` and ``reva-plugin-*`` are one pattern.
    - git: ``git+`` and the repository URL without credentials, ``@ref``, query or fragment,
      scheme and host lower-cased, a default port dropped (``git+https://github.com/org/repo.git``;
      a GitHub web URL counts as that ``.git`` URL); a ``file:`` path resolved.
    - archive URL: the URL without credentials, query or fragment, scheme and host lower-cased,
      a default port dropped (``https://host/path/x.whl``); a ``file:`` path resolved.

    A *URL pattern* (one with ``://``: ``scheme://host[:port][/path]``) matches URL origins
    only, component by component (:func:`._urls.match_pattern`): the scheme exactly, the host
    glob against the host alone (``*`` there never matches ``/``, so ``https://*.example.com/*``
    cannot be met by ``https://evil.com/.example.com/x.whl``), the port (none in the pattern:
    the default port only; ``:*``: any), then the path glob (``*`` matches ``/``; no path in
    the pattern: any path). Any other pattern (``*``, ``*.whl``, ``git+*``, ``reva-plugin-*``)
    is matched as written against the whole origin of every kind.
    """

    patterns: tuple[str, ...] = ("*",)
    base_dir: Path = Path("/")

    def allows(self, origin: Origin) -> bool:
        """Whether any pattern matches ``origin``."""
        return any(self._matches(pattern, origin) for pattern in self.patterns)

    def check(self, spec: str, source: Classified) -> None:
        """Raise a :class:`SourceError` unless ``source`` (classified from ``spec``) is allowed."""
        origin = source.origin
        if not self.allows(origin):
            raise SourceError(
                f"driver {redact(spec)!r} is not allowed by [plugins] allowed_sources "
                f"{[redact(p) for p in self.patterns]} (matched on its {origin.kind} "
                f"{redact(origin.value)!r})"
            )

    def _matches(self, pattern: str, origin: Origin) -> bool:
        if origin.kind == "name":
            return fnmatch.fnmatchcase(origin.value, re.sub(r"[-_.]+", "-", pattern).lower())
        if "://" in pattern:
            return origin.kind == "url" and _urls.match_pattern(pattern, origin.value)
        if origin.kind == "path" and _is_path_pattern(pattern):
            return fnmatch.fnmatchcase(origin.value, _resolve_pattern(pattern, self.base_dir))
        return fnmatch.fnmatchcase(origin.value, pattern)


def _is_path_pattern(pattern: str) -> bool:
    return pattern.startswith(("/", "~", "./", "../")) or pattern in (".", "..") or "/" in pattern


def _resolve_pattern(pattern: str, base_dir: Path) -> str:
    expanded = os.path.expanduser(pattern)
    joined = os.path.join(base_dir, expanded)
    parts = joined.split("/")
    first_glob = next(
        (i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts)
    )
    head = os.path.realpath("/".join(parts[:first_glob]) or "/")
    tail = "/".join(parts[first_glob:])
    return os.path.join(head, tail) if tail else head


def check_sha256(spec: str, expected: str | None, actual: str) -> None:
    """Raise a :class:`SourceError` when a pinned sha256 does not match."""
    if expected and expected.lower() != actual:
        raise SourceError(f"sha256 mismatch for {spec}: expected {expected}, got {actual}")


def archive_filename(url: str) -> str:
    """The local file name of an archive URL: its last path segment, percent-decoded (pip and uv
    read name and version from it), and refused unless it is one plain file name (no separator,
    NUL or control character, not ``.``/``..``, at most 255 bytes) that parses as a wheel or an
    sdist file name."""
    shown = redact(url)
    last = _urls.split(url).path.rsplit("/", 1)[-1]
    try:
        name = urllib.parse.unquote(last, errors="strict")
    except UnicodeDecodeError:
        raise SourceError(f"archive URL {shown!r}: its file name is not UTF-8") from None
    if (
        name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or any(unicodedata.category(c) in _UNSHOWABLE for c in name)
        or len(name.encode("utf-8")) > _MAX_NAME_BYTES
    ):
        raise SourceError(f"archive URL {shown!r} does not end in a plain wheel or sdist file name")
    try:
        if name.endswith(".whl"):
            parse_wheel_filename(name)
        elif name.endswith(SDIST_SUFFIXES):
            suffix = next(s for s in SDIST_SUFFIXES if name.endswith(s))
            parse_sdist_filename(name[: -len(suffix)] + ".tar.gz")
        else:
            raise SourceError(
                f"driver URL {shown!r} is neither a git URL (git+https://…) nor an archive "
                "(.whl, .tar.gz, .zip)"
            )
    except ValueError as exc:
        raise SourceError(
            f"archive URL {shown!r}: {name!r} is not a valid file name: {exc}"
        ) from None
    return name


def download(
    url: str,
    root: Path,
    filename: str,
    *,
    expected_sha256: str | None = None,
    max_bytes: int = 1024 << 20,
    allow_http: bool = False,
    max_seconds: float = MAX_DOWNLOAD_SECONDS,
) -> tuple[Path, str]:
    """Fetch ``url`` to ``root/<sha256>/<filename>``; return that path and the sha256.

    The body is streamed into a fresh temp folder the core creates under ``root``, hashed on the
    way, checked against ``expected_sha256`` and renamed into place. At most ``max_bytes`` are
    read, within ``max_seconds`` in all (each read waits at most a minute); a body shorter than
    its ``Content-Length`` is refused; a redirect may lead only to ``https://`` (or ``http://``
    with ``allow_http``). Whatever happens, the temp folder and only it is removed. Failures of
    the remote are a :class:`FetchError` (exit 1). Credentials in ``url`` are sent as a Basic
    auth header, to its own origin only (:func:`._auth.urlopen`).
    """
    if filename != os.path.basename(filename) or filename in ("", ".", ".."):
        raise SourceError(f"refusing to download {redact(url)} as {filename!r}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="dl-", dir=root))
    except OSError as exc:
        raise SourceError(f"cannot create a download folder in {root}: {exc}") from None
    try:
        target = folder / filename
        deadline = time.monotonic() + max_seconds
        digest = _fetch(url, target, max_bytes=max_bytes, allow_http=allow_http, deadline=deadline)
        check_sha256(redact(url), expected_sha256, digest)
        final = root / digest / filename
        try:
            _held_folder(final.parent)
            os.replace(target, final)
        except OSError as exc:
            raise SourceError(f"cannot store the download of {redact(url)}: {exc}") from None
        return final, digest
    finally:
        remove_tree(folder, within=root)


def _held_folder(folder: Path, attempts: int = 5) -> None:
    """Make the download folder ``folder`` and hold it for this process (so ``env prune``
    leaves it and the download moved into it alone), making it again if a prune removed it
    between the two."""
    for _ in range(attempts):
        folder.mkdir(exist_ok=True)
        if hold_download(folder):
            return
    raise OSError(f"{folder} keeps being removed")


def _fetch(url: str, target: Path, *, max_bytes: int, allow_http: bool, deadline: float) -> str:
    shown = redact(url)
    if urllib.parse.urlsplit(url).scheme.lower() == "file":
        return _copy_local(url, target, max_bytes)
    schemes = ("https", "http") if allow_http else ("https",)
    try:
        with _auth.urlopen(
            url, timeout=_DOWNLOAD_TIMEOUT, headers={"User-Agent": "reva-plugins"}, schemes=schemes
        ) as response:
            length = _content_length(response.headers.get("Content-Length"), shown)
            if length is not None and length > max_bytes:
                raise _too_large(shown, max_bytes)
            with target.open("xb") as out:
                digest, total = _copy(response, out, max_bytes, shown, deadline)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchError(f"cannot download {shown}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot download {shown}: {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise FetchError(f"cannot download {shown}: {reason}") from None
    if length is not None and total != length:
        raise FetchError(f"cannot download {shown}: truncated (got {total} of {length} bytes)")
    return digest


def _copy_local(url: str, target: Path, max_bytes: int) -> str:
    """A ``file:`` archive: a regular file only, opened without blocking (never a FIFO or
    device), read within the size cap."""
    parts = _urls.split(url)
    if parts.netloc not in ("", "localhost"):
        raise SourceError(f"archive URL {redact(url)!r}: a file: URL must name a local file")
    path = urllib.request.url2pathname(parts.path)
    try:
        with _open_regular(path) as src:
            if os.fstat(src.fileno()).st_size > max_bytes:
                raise _too_large(url, max_bytes, local=True)
            with target.open("xb") as out:
                digest, _ = _copy(src, out, max_bytes, url, None)
    except OSError as exc:
        raise SourceError(f"cannot read {url}: {exc.strerror or exc}") from None
    return digest


def _copy(
    src: IO[bytes], out: IO[bytes], max_bytes: int, shown: str, deadline: float | None
) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    # read1: whatever has arrived, so the deadline is checked while a slow server drips.
    read = getattr(src, "read1", src.read)
    while chunk := read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(shown, max_bytes)
        if deadline is not None and time.monotonic() > deadline:
            raise FetchError(f"cannot download {shown}: it did not finish in time")
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest(), total


def _content_length(value: str | None, shown: str) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit():
        raise FetchError(f"cannot download {shown}: invalid Content-Length {value[:40]!r}")
    return int(value)


def _too_large(shown: str, max_bytes: int, *, local: bool = False) -> SourceError:
    cls = SourceError if local else FetchError
    return cls(
        f"cannot download {shown}: larger than [plugins] max_download_mb = {max_bytes >> 20}"
    )


def classify(spec: str, *, base_dir: Path, sha256: str | None = None) -> Classified:
    """What ``spec`` names, tried in SPEC order: name, venv, file or folder, VCS URL, archive
    URL, requirement.

    Pure classification (it may stat files, never reads them or touches the network); the policy
    (``allowed_sources``) is applied on top by the loader's one planning entry point. Ambiguous
    specs, which a person and this function would read differently, are refused:

    - control, format or line-separator characters anywhere (a NUL included);
    - a path with a backslash, or a ``..`` after a named folder (``a/../b``, ``/x/../y``): write
      the normalised path (``..`` may only lead a relative path, as in ``../plugins/x``);
    - a relative path not written ``./…``/``../…`` that holds requirement syntax
      (``<>=!~;[],@`` or a space);
    - a URL with a backslash, a percent-encoded separator or control character, or a
      ``.``/``..`` segment (also in a GitHub ``/tree/REF/SUBDIR`` or ``#subdirectory=``).
    """
    shown = redact(spec)
    _check_text(spec, shown)
    if sha256 is not None and not _HEX64.match(sha256):
        raise SourceError(f"driver {shown!r}: sha256 must be 64 hexadecimal digits")
    if _is_bare_name(spec):
        return InProcess(spec)
    if _TRANSPORT.match(spec):
        raise SourceError(
            f"unsupported URL scheme in driver {shown!r}: git remote "
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
                f"driver {shown!r}: write the URL itself (git+…, https://…) instead of 'name @ URL'"
            )
        return RequirementSource(requirement)
    raise SourceError(
        f"cannot tell what driver {shown!r} is: expected an installed driver name, a path to a "
        "venv, wheel, sdist or package folder, a git+… URL, an archive URL or a requirement "
        "with a version specifier"
    )


def _check_text(spec: str, shown: str) -> None:
    if not spec.strip():
        raise SourceError("the driver spec is empty")
    if len(spec) > MAX_SPEC_LENGTH:
        raise SourceError(
            f"driver spec {shown[:60]!r}… is longer than {MAX_SPEC_LENGTH} characters"
        )
    bad = next((c for c in spec if unicodedata.category(c) in _UNSHOWABLE), None)
    if bad is not None:
        raise SourceError(f"driver {shown!a} contains the control character U+{ord(bad):04X}")


def _classify_path(spec: str, base_dir: Path, sha256: str | None) -> Source | PrebuiltVenv:
    shown = redact(spec)
    if "\\" in spec:
        raise SourceError(
            f"ambiguous driver path {shown!r}: a backslash is not a separator here; write '/'"
        )
    parts = spec.split("/")
    leading = spec.startswith(("./", "../")) or spec in (".", "..")
    named = not leading
    for part in parts:
        if part == ".." and named:
            raise SourceError(
                f"ambiguous driver path {shown!r}: '..' after a folder name; write the "
                "normalised path (a leading '../' is fine)"
            )
        if part not in ("", ".", ".."):
            named = True
    if not spec.startswith(("/", "./", "../", "~")) and _REQUIREMENT_SYNTAX.search(spec):
        raise SourceError(
            f"ambiguous driver path {shown!r}: it holds requirement syntax (<>=!~;[],@ or "
            "a space); write './…' for a path"
        )
    try:
        path = (base_dir / Path(spec).expanduser()).resolve()
        if not path.exists():
            raise SourceError(f"driver path {shown!r} does not exist ({path})")
        if path.is_dir():
            if (path / "pyvenv.cfg").is_file():
                return PrebuiltVenv(path)
            if (path / "pyproject.toml").is_file() or (path / "setup.py").is_file():
                return LocalFolder(path)
            raise SourceError(
                f"driver folder {path} is neither a venv (pyvenv.cfg) nor a package "
                "(pyproject.toml or setup.py)"
            )
        is_file = path.is_file()
    except (OSError, RuntimeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SourceError(f"driver path {shown!r}: {reason}") from None
    if not path.name.endswith((".whl", *SDIST_SUFFIXES)):
        raise SourceError(f"driver file {path} is not a wheel (.whl) or sdist (.tar.gz, .zip)")
    if not is_file:
        raise SourceError(f"driver file {path} is not a regular file")
    return LocalFile(path, sha256)


def _classify_url(spec: str, sha256: str | None) -> ArchiveURL:
    shown = redact(spec)
    scheme = spec.split(":", 1)[0].lower()
    if scheme not in ("https", "http", "file"):
        raise SourceError(
            f"unsupported URL scheme {scheme!r} in driver {shown!r} (use git+https://, "
            "git+ssh://, git+file://, https://…/x.whl or https://…/x.tar.gz)"
        )
    url, _, fragment = spec.partition("#")
    pinned = sha256.lower() if sha256 else None
    if fragment:
        name, _, value = fragment.partition("=")
        if name != "sha256" or not _HEX64.match(value):
            raise SourceError(
                f"driver {shown!r}: the only URL fragment accepted is #sha256=<64 hex>"
            )
        if pinned and pinned != value.lower():
            raise SourceError(f"driver {shown!r}: #sha256 and plugin.sha256 disagree")
        pinned = value.lower()
    return ArchiveURL(url, pinned)


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


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _open_regular(path: str | Path, *, follow: bool = True) -> IO[bytes]:
    """Open a regular file for reading, never blocking (a FIFO opens at once and is refused
    by the fstat check, as is a device)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_digest(path: Path) -> str:
    """The sha256 of a regular file, hex (a FIFO or device is an error, never read)."""
    digest = hashlib.sha256()
    try:
        with _open_regular(path) as f:
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
    with _open_regular(path, follow=False) as f:
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
