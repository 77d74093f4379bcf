"""Secrets never shown: the one helper every label, message and log line passes a spec through.

A driver spec or an index URL may carry credentials (``https://user:token@host/…``,
``git+https://token@host/…``, a presigned ``…?X-Amz-Signature=…``). Anything that shows one to a
person (the ``check`` table, JSON output, error labels, progress and log lines) shows
``redact(text)`` instead.

The userinfo of a URL is defined once, here, and :mod:`._auth` takes credentials out of a URL by
the same definition (:func:`split_userinfo`), so what is sent as a credential is always what is
hidden: the authority runs from after ``scheme://`` to the first ``/``, ``?`` or ``#`` (or the
end), as :func:`urllib.parse.urlsplit` reads it, tabs and line breaks ignored as urlsplit deletes
them; the userinfo is all of the authority before its *last* ``@`` (so it may hold ``@``, quotes
or spaces).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence

__all__ = ["REDACTED", "redact", "split_userinfo"]

REDACTED = "***"

# urlsplit deletes these from a URL before parsing it: they end nothing, and may hide anywhere.
_IGNORED = "\t\r\n"
_DELETE_IGNORED = str.maketrans("", "", _IGNORED)
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_AUTHORITY_END = re.compile(r"[/?#]")
# A query ends at its fragment; in running text also where the URL does (space, quote, <>).
_QUERY_END = re.compile(r"[#\s'\"<>]")
# Query parameters whose value is a secret: presigned archive URLs (S3, GCS, Azure SAS) and
# token-in-URL schemes carry them.
_SECRET_WORDS = ("token", "secret", "passw", "signature", "credential", "apikey", "accesskey")
_SECRET_NAMES = frozenset({"sig", "key", "pwd", "pass", "auth", "authorization"})


def split_userinfo(url: str) -> tuple[str | None, str]:
    """``(userinfo, url without "userinfo@")`` of the URL ``url`` (see the module docstring);
    ``(None, url)`` when its authority has no ``@``.

    Tabs and line breaks are taken out first, as :func:`urllib.parse.urlsplit` does.
    """
    clean = url.translate(_DELETE_IGNORED)
    match = _URL_START.search(clean)
    if match is None:
        return None, url
    begin, at = _userinfo(clean, match.end())
    if at is None:
        return None, url
    return clean[begin:at], clean[:begin] + clean[at + 1 :]


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it, and the values of its secret-looking query
    parameters (``token``, ``password``, ``sig``, ``X-Amz-Signature`` …), replaced by ``***``.

    ``ssh://git@host`` keeps its user name (a user name alone is no secret, and ssh URLs keep it
    when credentials are taken out); any other userinfo is replaced.
    """
    if "@" not in text and "?" not in text:
        return text
    # Spans are found in the text as urlsplit sees it (tabs and line breaks deleted), then
    # mapped back, so a credential split by a line break is still found whole.
    kept: Sequence[int] = range(len(text))
    clean = text
    if any(c in text for c in _IGNORED):
        kept = [i for i, c in enumerate(text) if c not in _IGNORED]
        clean = "".join(text[i] for i in kept)
    out: list[str] = []
    done = 0
    for start, end in _secret_spans(clean):
        out += [text[done : kept[start]], REDACTED]
        done = kept[end - 1] + 1
    out.append(text[done:])
    return "".join(out)


def _userinfo(text: str, begin: int) -> tuple[int, int | None]:
    """For an authority starting at ``begin``: ``(begin, index of its last '@' or None)``."""
    found = _AUTHORITY_END.search(text, begin)
    end = found.start() if found else len(text)
    at = text.rfind("@", begin, end)
    return begin, (at if at >= 0 else None)


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every secret in ``text``, in order, never overlapping."""
    spans: list[tuple[int, int]] = []
    for match in _URL_START.finditer(text):
        begin, at = _userinfo(text, match.end())
        scheme = match.group()[:-3].lower()
        if at is not None and at > begin:
            userinfo = text[begin:at]
            if ":" in userinfo or not scheme.endswith("ssh"):
                spans.append((begin, at))
        spans.extend(_query_spans(text, match.end()))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _query_spans(text: str, begin: int) -> list[tuple[int, int]]:
    """The values of secret-looking parameters in the query of the URL whose authority starts
    at ``begin``."""
    found = _AUTHORITY_END.search(text, begin)
    if found is None:
        return []
    question = text.find("?", found.start())
    stop = _QUERY_END.search(text, found.start())
    end = stop.start() if stop else len(text)
    if question < 0 or question >= end:
        return []
    spans = []
    position = question + 1
    for item in text[position:end].split("&"):
        name, sep, value = item.partition("=")
        if sep and value and _is_secret_name(name):
            start = position + len(name) + 1
            spans.append((start, start + len(value)))
        position += len(item) + 1
    return spans


def _is_secret_name(name: str) -> bool:
    lowered = urllib.parse.unquote(name).lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    return any(word in _SECRET_NAMES for word in re.split(r"[^a-z0-9]+", lowered))
