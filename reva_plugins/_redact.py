"""Secrets never shown: the one helper every label, message and log line passes a spec through.

A driver spec or an index URL may carry credentials (``https://user:token@host/…``,
``git+https://token@host/…``). Anything that shows one to a person (the ``check`` table, JSON
output, error labels, progress and log lines) shows ``redact(text)`` instead.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact"]

REDACTED = "***"

# scheme://userinfo@ — userinfo is anything up to the last '@' before the host's end
# (no '/', '?', '#', whitespace or quote in between).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"]+)@")


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``.

    ``ssh://git@host`` keeps its user name (a user name alone is no secret); any userinfo with a
    password or token part (``user:secret@``, or a lone token on http(s)) is replaced.
    """
    if "@" not in text:
        return text
    return _USERINFO.sub(_replace, text)


def _replace(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    if ":" not in userinfo and scheme.lower().rstrip(":/").endswith("ssh"):
        return match.group(0)
    return f"{scheme}{REDACTED}@"
