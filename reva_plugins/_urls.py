"""URLs in driver specs: refuse the ambiguous ones, and give each its normalised origin.

A URL is ambiguous when a server, git or a person could read its path differently from us: a
backslash (a separator to WHATWG parsers), a percent-encoded separator or control character
(``%2F``, ``%5C``, ``%00``), or a ``.``/``..`` segment (also written ``%2e%2e``), which one side
may collapse and the other not. Those are refused, so the path we check is the path fetched.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from ._errors import SourceError
from ._redact import redact

__all__ = ["check_url", "origin", "split"]

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
