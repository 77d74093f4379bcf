"""URLs in driver specs: refuse the ambiguous ones, and give each its normalised origin.

A URL is ambiguous when a server, git or a person could read its path differently from us: a
backslash (a separator to WHATWG parsers), a percent-encoded separator or control character
(``%2F``, ``%5C``, ``%00``), or a ``.``/``..`` segment (also written ``%2e%2e``), which one side
may collapse and the other not. Those are refused, so the path we check is the path fetched.
"""

from __future__ import annotations

import fnmatch
import os
import re
import urllib.parse
from typing import NamedTuple

from ._errors import SourceError
from ._redact import redact

__all__ = ["check_url", "match_pattern", "origin", "split"]

_BAD_ESCAPE = re.compile(r"%(?:2f|5c|[01][0-9a-f]|7f)", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22}


def split(url: str) -> urllib.parse.SplitResult:
    """``urlsplit`` whose failures (a bad IPv6 host, a port that is not a number) are a
    :class:`SourceError`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise SourceError(f"invalid URL {redact(url)!r}: {exc}") from None
    try:
        _ = parts.port
    except ValueError:
        # Neither the URL nor urllib's message (which quotes the "port") is shown: a password
        # holding a raw '/' ends the authority early, and its first part reads as a port.
        raise SourceError(
            f"invalid URL {parts.scheme}://…: its port is not a number (in a user name or "
            "password write ':' as %3A and '/' as %2F)"
        ) from None
    return parts


def check_url(url: str) -> urllib.parse.SplitResult:
    """Refuse an ambiguous URL (see the module docstring); return its parts."""
    parts = split(url)
    shown = redact(url)
    if "\\" in url:
        raise SourceError(f"ambiguous URL {shown!r}: a backslash is read as '/' by some parsers")
    if _BAD_ESCAPE.search(parts.path):
        raise SourceError(
            f"ambiguous URL {shown!r}: its path percent-encodes a separator or control character"
        )
    try:
        segments = urllib.parse.unquote(parts.path, errors="strict").split("/")
    except UnicodeDecodeError:
        raise SourceError(f"invalid URL {shown!r}: its path is not UTF-8") from None
    if any(segment in (".", "..") for segment in segments):
        raise SourceError(
            f"ambiguous URL {shown!r}: its path has a '.' or '..' segment; write the path it means"
        )
    return parts


def origin(url: str) -> str:
    """``scheme://host[:port]/path`` of a checked URL: scheme and host lower-cased, a default
    port dropped, no credentials, query or fragment; a ``file:`` path is resolved (symlinks
    followed)."""
    parts = split(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        try:
            path = os.path.realpath(urllib.parse.unquote(parts.path, errors="strict"))
            return f"{scheme}://{urllib.parse.quote(path)}"
        except (UnicodeError, ValueError):  # a lone surrogate, a NUL: no file has that name
            raise SourceError(f"invalid URL {redact(url)!r}: not a file path") from None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"


class _Parts(NamedTuple):
    scheme: str
    host: str
    port: str
    path: str | None


def _parts(text: str, *, pattern: bool) -> _Parts:
    """Scheme, host, port (``""`` for the scheme's default) and path of an origin as
    :func:`origin` writes it, or of a pattern (whose path is None when it has none)."""
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    authority, slash, path = rest.partition("/")
    if authority.startswith("[") and "]" in authority:  # an IPv6 literal: its ':' are no port
        close = authority.index("]") + 1
        host, port = authority[:close], authority[close:].removeprefix(":")
    else:
        host, _, port = authority.partition(":")
    if port == str(_DEFAULT_PORTS.get(scheme.removeprefix("git+"), "")):
        port = ""
    return _Parts(scheme, host.lower(), port, f"/{path}" if slash else (None if pattern else "/"))


def match_pattern(pattern: str, url: str) -> bool:
    """Whether the ``allowed_sources`` pattern ``scheme://host[:port][/path]`` matches the
    normalised URL ``url`` (an :func:`origin`), one component at a time.

    The scheme must be equal (case-insensitive). The host glob is matched against the host
    alone, so no ``*`` in it can match a ``/`` or reach into the path; an IPv6 literal
    (``[::1]``) is compared as written. The port glob is matched against the port, a default
    port counting as none: a pattern without a port allows only the scheme's default port
    (write ``:*`` for any). The path glob (``*`` matches ``/`` there) is matched against the
    path; a pattern without a path allows every path on the hosts it names.
    """
    want = _parts(pattern, pattern=True)
    have = _parts(url, pattern=False)
    if want.scheme != have.scheme:
        return False
    if want.host.startswith("["):
        host_ok = want.host == have.host
    else:
        host_ok = fnmatch.fnmatchcase(have.host, want.host)
    if not host_ok or not fnmatch.fnmatchcase(have.port, want.port):
        return False
    return want.path is None or fnmatch.fnmatchcase(have.path or "/", want.path)
