"""Downloading archives: streamed into the downloads folder, hashed on the way, bounded in
size and time; the checked local name of an archive URL."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import ssl
import tempfile
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from packaging.utils import parse_sdist_filename, parse_wheel_filename

from .. import _auth, _urls
from .._errors import FetchError, SourceError
from .._fs import open_regular, remove_tree
from .._holds import hold_download
from .._redact import redact
from ._digest import check_sha256

log = logging.getLogger("reva_plugins.download")

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tgz", ".tar.bz2")
_MAX_NAME_BYTES = 255
_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT = 60.0
MAX_DOWNLOAD_SECONDS = 3600.0
"""How long one download may take in all (a server dripping bytes never hangs a load)."""
RETRIES = 3
"""How many times a download is tried again after a connection error or a 5xx answer."""
_BACKOFF = 0.5  # seconds before the first retry, doubled for each next one
_MAX_BACKOFF = 8.0
# Control, format (bidi overrides, zero-width), surrogate and line/paragraph separator characters.
UNSHOWABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


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
        or any(unicodedata.category(c) in UNSHOWABLE for c in name)
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
    the remote are a :class:`FetchError` (exit 1); a connection error or a 5xx answer is tried
    again up to :data:`RETRIES` times, with a doubling backoff, within ``max_seconds``.
    Credentials in ``url`` (else those netrc holds for its host) are sent as a Basic auth
    header, to its own origin only (:func:`._auth.urlopen`).
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


class _Transient(Exception):
    """A failure worth another try: no connection, a reset or timeout, or a 5xx answer."""

    def __init__(self, error: FetchError) -> None:
        super().__init__(error.message)
        self.error = error


def _fetch(url: str, target: Path, *, max_bytes: int, allow_http: bool, deadline: float) -> str:
    if urllib.parse.urlsplit(url).scheme.lower() == "file":
        return _copy_local(url, target, max_bytes)
    for attempt in range(RETRIES + 1):
        try:
            return _fetch_once(url, target, max_bytes, allow_http, deadline)
        except _Transient as exc:
            delay = min(_BACKOFF * 2**attempt, _MAX_BACKOFF)
            if attempt == RETRIES or time.monotonic() + delay > deadline:
                raise exc.error from None
            log.debug("%s; trying again in %.1f s", exc.error.message, delay)
            target.unlink(missing_ok=True)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _fetch_once(url: str, target: Path, max_bytes: int, allow_http: bool, deadline: float) -> str:
    shown = redact(url)
    schemes = ("https", "http") if allow_http else ("https",)
    try:
        with _auth.urlopen(
            url,
            timeout=_DOWNLOAD_TIMEOUT,
            headers={"User-Agent": "reva-plugins"},
            schemes=schemes,
            use_netrc=True,
        ) as response:
            length = _content_length(response.headers.get("Content-Length"), shown)
            if length is not None and length > max_bytes:
                raise _too_large(shown, max_bytes)
            with target.open("xb") as out:
                digest, total = _copy(response, out, max_bytes, shown, deadline)
    except urllib.error.HTTPError as exc:
        exc.close()
        error = FetchError(f"cannot download {shown}: HTTP {exc.code} {exc.reason}")
        raise (_Transient(error) if exc.code >= 500 else error) from None
    except urllib.error.URLError as exc:
        error = FetchError(f"cannot download {shown}: {exc.reason}")
        # No connection (refused, reset, timed out, no DNS answer yet) is worth another try; a
        # certificate that does not verify is not.
        transient = isinstance(exc.reason, OSError) and not isinstance(
            exc.reason, ssl.SSLCertVerificationError
        )
        raise (_Transient(error) if transient else error) from None
    except (ConnectionError, TimeoutError) as exc:  # reset or stalled after the answer began
        reason = str(exc) or type(exc).__name__
        raise _Transient(FetchError(f"cannot download {shown}: {reason}")) from None
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
        with open_regular(path) as src:
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
