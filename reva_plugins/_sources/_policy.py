"""``[plugins] allowed_sources``: which origins a driver may come from."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import _urls
from .._errors import SourceError
from .._redact import redact
from ._base import Origin


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

    def check(self, spec: str, origin: Origin) -> None:
        """Raise a :class:`SourceError` unless ``origin`` (of the source ``spec`` names) is
        allowed."""
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
