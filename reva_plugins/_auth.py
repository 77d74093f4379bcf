"""Credentials in URLs: taken out of every URL a child sees and passed some other way.

A command line is readable by every user of the machine (``ps``, ``/proc/PID/cmdline``), so git,
uv and pip get credential-free URLs and their credentials through the environment (readable
only by the same user): an ``Authorization`` header in git's config for that URL, the index URL
in ``UV_INDEX_URL``/``PIP_INDEX_URL``. Downloads send an ``Authorization: Basic`` header that is
never forwarded to another origin on a redirect. A download URL without credentials takes them
from ``~/.netrc`` (or the file ``$NETRC`` names) by its host, as pip and uv do.
"""

from __future__ import annotations

import base64
import http.client
import netrc
import os
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from ._errors import FetchError
from ._redact import redact, split_userinfo

__all__ = [
    "Credential",
    "git_auth_env",
    "netrc_credential",
    "split",
    "urlopen",
    "without_credentials",
]


@dataclass(frozen=True)
class Credential:
    """A user and password (or a lone token as the user) taken from a URL."""

    user: str
    password: str

    def basic(self) -> str:
        """The value of an ``Authorization: Basic`` header."""
        raw = f"{self.user}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def split(url: str) -> tuple[str, Credential | None]:
    """``(url without credentials, credential)``.

    An ssh URL keeps its user name (``git@host``: the account to log in as, not a secret) and
    loses any password; other URLs lose their whole userinfo.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    bare, user, password = _split_userinfo(url)
    if user is None and password is None:
        return url, None
    if scheme.endswith("ssh"):
        parts = urllib.parse.urlsplit(bare)
        host = f"{urllib.parse.quote(user or '', safe='')}@{parts.netloc}" if user else parts.netloc
        return urllib.parse.urlunsplit(parts._replace(netloc=host)), None
    return bare, Credential(user or "", password or "")


def _split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, user, password)``; user and password are percent-decoded.

    The userinfo is found by :func:`._redact.split_userinfo`, the definition :func:`redact`
    hides: whatever is taken out here as a credential is what every message shows as ``***``.
    """
    userinfo, rest = split_userinfo(url)
    if userinfo is None:
        return url, None, None
    user, sep, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(urllib.parse.urlsplit(rest))
    return (
        bare,
        urllib.parse.unquote(user) or None,
        urllib.parse.unquote(password) if sep else None,
    )


def without_credentials(url: str) -> str:
    """The URL an env is keyed on and recorded with: credentials do not change content."""
    return split(url)[0]


def git_auth_env(urls: Iterable[str]) -> dict[str, str]:
    """git configuration (through ``GIT_CONFIG_COUNT``/``_KEY_n``/``_VALUE_n``, never argv)
    that sends each URL's credential as an ``Authorization`` header to that URL's origin only.

    Keyed on the origin (scheme, host, port), not the path: the installers may spell the
    repository path differently (with or without ``.git``) from the spec.
    """
    env: dict[str, str] = {}
    count = 0
    for url in urls:
        bare, credential = split(url.removeprefix("git+"))
        if credential is None:
            continue
        parts = urllib.parse.urlsplit(bare)
        origin = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/", "", ""))
        env[f"GIT_CONFIG_KEY_{count}"] = f"http.{origin}.extraHeader"
        env[f"GIT_CONFIG_VALUE_{count}"] = f"Authorization: {credential.basic()}"
        count += 1
    if count:
        env["GIT_CONFIG_COUNT"] = str(count)
    return env


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "") + f":{parts.port or ''}"


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to ``schemes`` (never ftp, file or data), and re-sends the
    ``Authorization`` header only when it stays on the same origin."""

    def __init__(self, url: str, header: str | None, schemes: tuple[str, ...]) -> None:
        self.origin = _origin(url)
        self.header = header
        self.schemes = schemes

    def http_error_302(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
    ) -> IO[bytes] | None:
        # Checked before urllib's own handling, whose error would echo the Location unredacted.
        location = headers.get("location") or headers.get("uri") or ""
        newurl = urllib.parse.urljoin(req.full_url, location)
        if urllib.parse.urlsplit(newurl).scheme.lower() not in self.schemes:
            fp.close()
            raise FetchError(
                f"cannot download {redact(req.full_url)}: it redirects to {redact(newurl)!r}; "
                f"only {' or '.join(s + '://' for s in self.schemes)} is followed"
            )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and self.header and _origin(new.full_url) == self.origin:
            new.add_unredirected_header("Authorization", self.header)
        return new


def netrc_credential(url: str) -> Credential | None:
    """The credential the netrc file holds for ``url``'s host (its ``machine`` entry, else its
    ``default``), as pip and uv read it: the file ``$NETRC`` names, else ``~/.netrc``. None when
    there is none, or the file is missing or unreadable (as pip, a broken netrc is no error)."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return None
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        found = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError, UnicodeDecodeError):
        return None
    if found is None:
        return None
    login, _account, password = found
    if not login and not password:
        return None
    return Credential(login or "", password or "")


def urlopen(
    url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    schemes: tuple[str, ...] = ("https", "http"),
    use_netrc: bool = False,
) -> Any:
    """Open ``url`` with urllib; credentials in it (else, with ``use_netrc``, the netrc file's
    for its host) become a Basic auth header (same origin only); redirects are followed only to
    ``schemes``."""
    bare, credential = split(url)
    if credential is None and use_netrc:
        credential = netrc_credential(bare)
    request = urllib.request.Request(bare, headers=dict(headers or {}))  # noqa: S310 - scheme checked by the caller
    header = credential.basic() if credential is not None else None
    if header is not None:
        # An unredirected header is not copied onto a redirect; _Redirects re-adds it when the
        # redirect stays on the same scheme, host and port.
        request.add_unredirected_header("Authorization", header)
    opener = urllib.request.build_opener(_Redirects(bare, header, schemes))
    return opener.open(request, timeout=timeout)
