"""Driver specs: what a config's ``driver`` names (one class per kind, one module each) and the
few things every kind shares.

A kind is one class (a :class:`Source`, or :class:`InProcess`/:class:`PrebuiltVenv`, which get
no env of their own) owning all its kind means: recognising its spec (:func:`classify` asks the
kinds in SPEC order, after the checks every spec gets), its ``allowed_sources`` origin,
resolving to pins, drift against a lock entry and the pins it requires, the build hints (the
wheel to tag-check, the archive to fetch late) and the kit's sample spec. Nothing outside this
package tells kinds apart: planning hands a classified source a :class:`SourceHandler`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from .. import _git
from .._errors import SourceError
from .._redact import redact
from ._base import NeedsNetwork, ResolveContext, Resolved, Source, SourceHandler
from ._digest import file_digest, tree_digest
from ._download import SDIST_SUFFIXES, UNSHOWABLE, archive_filename, download
from ._policy import SourcePolicy
from .archive import HEX64, ArchiveURL
from .file import LocalFile
from .folder import LocalFolder
from .git import GitSource
from .inprocess import InProcess
from .requirement import RequirementSource
from .venv import PrebuiltVenv

__all__ = [
    "LOCKED_KINDS",
    "NO_ENV",
    "PREBUILT_ENV",
    "SAMPLE_KINDS",
    "ArchiveURL",
    "Classified",
    "InProcess",
    "LocalFolder",
    "NeedsNetwork",
    "PrebuiltVenv",
    "ResolveContext",
    "Resolved",
    "Source",
    "SourceHandler",
    "SourcePolicy",
    "archive_filename",
    "classify",
    "download",
    "file_digest",
    "lock_entry_problem",
    "sample_spec",
    "shown_env",
    "tree_digest",
]

Classified = Source | InProcess | PrebuiltVenv

#: The kinds that get an env of their own, in the order a lock's error message lists them.
_BUILT: tuple[type[Source], ...] = (
    LocalFolder,
    LocalFile,
    GitSource,
    ArchiveURL,
    RequirementSource,
)
_LOCKED: Mapping[str, type[Source]] = {kind: cls for cls in _BUILT for kind in cls.KINDS}
LOCKED_KINDS: tuple[str, ...] = tuple(_LOCKED)
"""The source kinds a lock entry may have (in-process drivers and prebuilt venvs are not locked)."""


def lock_entry_problem(kind: str, pins: Mapping[str, str], wheel: str) -> str | None:
    """What a lock entry of ``kind`` (one of :data:`LOCKED_KINDS`) lacks: a lock whose fields
    contradict each other is refused before anything reads a pin it does not have."""
    cls = _LOCKED[kind]
    missing = [name for name in cls.REQUIRED_PINS if name not in pins]
    if missing:
        return f"a {kind} entry needs pins.{missing[0]}"
    if bool(wheel) != cls.LOCKS_A_WHEEL:
        return f"a {kind} entry {'has no' if wheel else 'needs a'} plugin wheel"
    return None


#: The kinds that make a spec from a package folder (the plugin authors' kit).
_SAMPLED: Mapping[str, type[LocalFolder | LocalFile | GitSource]] = {
    kind: cls for cls in (LocalFolder, LocalFile, GitSource) for kind in cls.KINDS
}
SAMPLE_KINDS: tuple[str, ...] = tuple(_SAMPLED)
"""The kinds :func:`sample_spec` makes: ``folder``, ``sdist``, ``wheel``, ``git``."""


def sample_spec(kind: str, folder: Path, workdir: Path) -> str:
    """A driver spec of ``kind`` for the package folder ``folder`` (files go to ``workdir``)."""
    cls = _SAMPLED.get(kind)
    if cls is None:
        raise ValueError(f"unknown source kind {kind!r} (one of {', '.join(SAMPLE_KINDS)})")
    return cls.sample(kind, folder, workdir)


#: What ``check`` shows in its ENV column for a plan without an env of its own in the cache.
NO_ENV = "-"
PREBUILT_ENV = "(prebuilt)"


def shown_env(kind: str | None, env_key: str | None) -> str:
    """How ``check`` names where a planned driver runs, from its plan's ``kind`` and
    ``env_key``: the env key; :data:`PREBUILT_ENV` for a venv used as is; :data:`NO_ENV`
    in-process, or when planning failed (``kind`` None)."""
    if env_key:
        return env_key
    if kind is None or kind == InProcess.kind:
        return NO_ENV
    return PREBUILT_ENV


MAX_SPEC_LENGTH = 8192
_TRANSPORT = re.compile(r"^(git\+)?[A-Za-z][\w+.-]*::")
# Requirement syntax: a relative path holding one of these must be written ./… to count as a path.
_REQUIREMENT_SYNTAX = re.compile(r"[<>=!~;\[\],@ ]")


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
    if sha256 is not None and not HEX64.match(sha256):
        raise SourceError(f"driver {shown!r}: sha256 must be 64 hexadecimal digits")
    in_process = InProcess.recognise(spec)
    if in_process is not None:
        return in_process
    if _TRANSPORT.match(spec):
        raise SourceError(
            f"unsupported URL scheme in driver {shown!r}: git remote "
            "helpers (name::…) are never run; use git+https://, git+ssh:// or git+file://"
        )
    if _looks_like_path(spec):
        return _classify_path(spec, base_dir, sha256)
    found = (
        GitSource.recognise(spec)
        or ArchiveURL.recognise(spec, sha256)
        or RequirementSource.recognise(spec)
    )
    if found is not None:
        return found
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
    bad = next((c for c in spec if unicodedata.category(c) in UNSHOWABLE), None)
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
            found = PrebuiltVenv.at(path) or LocalFolder.at(path)
            if found is not None:
                return found
            raise SourceError(
                f"driver folder {path} is neither a venv (pyvenv.cfg) nor a package "
                "(pyproject.toml or setup.py)"
            )
        is_file = path.is_file()
    except (OSError, RuntimeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SourceError(f"driver path {shown!r}: {reason}") from None
    return LocalFile.at(path, sha256, is_file=is_file)


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or (os.sep in spec and not _git.is_git_spec(spec) and "://" not in spec and "@" not in spec)
        or spec.endswith((".whl", *SDIST_SUFFIXES))
    ) and "://" not in spec
