"""Archive downloads against a real HTTP server on 127.0.0.1: retries with backoff on connection
errors and 5xx answers, credentials from netrc, and what neither may change (bounds, redaction,
the origin a credential goes to)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import FetchError
from reva_plugins._sources import _download
from reva_plugins._sources._download import RETRIES, download

WHEEL = "reva_test_plugin-1.0-py3-none-any.whl"
BODY = b"PK\x03\x04 not really a wheel, but bytes to hash" * 100
USER, PASSWORD = "netrc-user", "s3cret-from-netrc"


@dataclass
class Script:
    """What the server does: fail the first ``fail`` requests as ``how``, then serve ``BODY``
    (to requests with ``auth`` when it is set), or redirect to ``redirect``."""

    fail: int = 0
    how: str = "503"
    auth: str | None = None
    redirect: str | None = None
    seen: list[str | None] = field(default_factory=list)  # each request's Authorization


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    script: Script

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the dropped connections are on purpose


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        script = self.server.script
        script.seen.append(self.headers.get("Authorization"))
        if len(script.seen) <= script.fail:
            if script.how == "drop":  # close without an answer: a connection error
                self.close_connection = True
                self.wfile.flush()
                self.connection.close()
                return
            self.send_error(int(script.how))
            return
        if script.redirect:
            self.send_response(302)
            self.send_header("Location", script.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if script.auth and self.headers.get("Authorization") != script.auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="x"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start servers on 127.0.0.1 that follow a :class:`Script`; yields ``start(script) -> url
    of the wheel``."""
    servers: list[_Server] = []

    def start(script: Script) -> str:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.script = script
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/files/{WHEEL}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No netrc unless a test writes one; retries after a short backoff."""
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(_download, "_BACKOFF", 0.05)


def _fetch(url: str, root: Path, **kwargs: Any) -> tuple[Path, str]:
    return download(url, root, WHEEL, allow_http=True, **kwargs)


@pytest.mark.parametrize("how", ["503", "500", "502", "drop"])
def test_a_server_that_fails_a_few_times_then_serves_is_retried(
    serve: Any, tmp_path: Path, how: str
) -> None:
    script = Script(fail=RETRIES, how=how)
    path, digest = _fetch(serve(script), tmp_path / "downloads")
    assert path.read_bytes() == BODY
    assert digest == hashlib.sha256(BODY).hexdigest()
    assert len(script.seen) == RETRIES + 1


def test_a_server_that_keeps_failing_is_given_up_on_in_a_few_tries(
    serve: Any, tmp_path: Path
) -> None:
    script = Script(fail=1000)
    root = tmp_path / "downloads"
    with pytest.raises(FetchError, match=r"cannot download .*: HTTP 503") as failed:
        _fetch(serve(script), root)
    assert failed.value.exit_code == 1
    assert len(script.seen) == RETRIES + 1
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("how", ["404", "403", "401"])
def test_a_client_error_is_not_retried(serve: Any, tmp_path: Path, how: str) -> None:
    script = Script(fail=1, how=how)
    with pytest.raises(FetchError, match=f"HTTP {how}"):
        _fetch(serve(script), tmp_path / "downloads")
    assert len(script.seen) == 1


def test_retries_stay_within_the_download_deadline(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_download, "_BACKOFF", 60.0)
    script = Script(fail=1000)
    started = time.monotonic()
    with pytest.raises(FetchError, match="HTTP 503"):
        _fetch(serve(script), tmp_path / "downloads", max_seconds=1.0)
    assert time.monotonic() - started < 30  # no 60 s backoff past a 1 s deadline
    assert len(script.seen) == 1


def _write_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str) -> Path:
    netrc = tmp_path / "my-netrc"
    netrc.write_text(f"machine {machine}\n  login {USER}\n  password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    return netrc


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_come_from_netrc_when_the_url_has_none(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Script(auth=_basic(USER, PASSWORD))
    url = serve(script)
    with pytest.raises(FetchError, match="HTTP 401") as refused:  # no netrc yet
        _fetch(url, tmp_path / "a")
    assert PASSWORD not in str(refused.value)
    _write_netrc(tmp_path, monkeypatch, "127.0.0.1")
    path, _ = _fetch(url, tmp_path / "b")
    assert path.read_bytes() == BODY
    assert script.seen[-1] == _basic(USER, PASSWORD)


def test_home_netrc_is_read_without_NETRC(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    (home / ".netrc").chmod(0o600)
    monkeypatch.delenv("NETRC")
    script = Script(auth=_basic(USER, PASSWORD))
    path, _ = _fetch(serve(script), tmp_path / "downloads")
    assert path.read_bytes() == BODY


def test_credentials_in_the_url_win_over_netrc(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_netrc(tmp_path, monkeypatch, "127.0.0.1")
    script = Script(auth=_basic("url-user", "url-pw"))
    url = serve(script).replace("http://", "http://url-user:url-pw@")
    path, _ = _fetch(url, tmp_path / "downloads")
    assert path.read_bytes() == BODY
    assert script.seen == [_basic("url-user", "url-pw")]


def test_a_netrc_entry_of_another_host_is_not_sent(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_netrc(tmp_path, monkeypatch, "example.com")
    script = Script()
    _fetch(serve(script), tmp_path / "downloads")
    assert script.seen == [None]


def test_a_netrc_credential_never_follows_a_redirect_to_another_origin(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_netrc(tmp_path, monkeypatch, "127.0.0.1")
    other = Script()
    elsewhere = serve(other).replace("127.0.0.1", "localhost")  # another origin, same server
    first = Script(redirect=elsewhere)
    path, _ = _fetch(serve(first), tmp_path / "downloads")
    assert path.read_bytes() == BODY
    assert first.seen == [_basic(USER, PASSWORD)]
    assert other.seen == [None]


def test_a_netrc_credential_is_never_shown(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_netrc(tmp_path, monkeypatch, "127.0.0.1")
    script = Script(fail=1000, auth=_basic(USER, PASSWORD))
    with pytest.raises(FetchError) as failed:
        _fetch(serve(script), tmp_path / "downloads")
    assert PASSWORD not in str(failed.value)
    assert USER not in str(failed.value)
    assert script.seen[0] == _basic(USER, PASSWORD)


def test_a_broken_netrc_is_no_credential_and_no_error(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken-netrc"
    broken.write_bytes(b"machine\n\xff\xfe login")
    monkeypatch.setenv("NETRC", str(broken))
    script = Script()
    path, _ = _fetch(serve(script), tmp_path / "downloads")
    assert path.read_bytes() == BODY
    assert script.seen == [None]
