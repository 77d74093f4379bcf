"""Hostile credentials and the build environment: tokens in URLs, indexes and git remotes never
reach a command line, a log or another origin; a build backend never sees the core's secrets.
Each test failed before its fix; SECURITY.md lists every class with its test.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from reva_plugins import (
    SourceError,
    _auth,
    _environ,
    _python,
)
from reva_plugins._installers import InstallOptions, _index_args, find_uv
from reva_plugins._redact import redact, split_userinfo
from reva_plugins._sources import (
    ArchiveURL,
)

from .conftest import SAMPLES, WriteConfig, cli
from .factory import build_dists, git, make_plugin, make_repo
from .plugin_sources import HARD_BACKEND, PLUGIN_MODULE
from .test_hostile_sources import _SOURCES_WHEEL, _sources_one_line_error, _sources_toml

# One worker for the whole file: its watchers look for the token on every process's command line,
# and a test here puts it on one on purpose (the redaction of a logged command).
pytestmark = pytest.mark.xdist_group("hostile-credentials")

_creds_TOKEN = "s3cr3t-tok-5f1d2"
_creds_USER = "deploy"
_creds_BASIC = "Basic " + base64.b64encode(f"{_creds_USER}:{_creds_TOKEN}".encode()).decode()


class _creds_Server:
    """A threaded HTTP server on 127.0.0.1 that records what it was sent."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.seen: list[tuple[str, str | None]] = []
        handler.server_record = self.seen  # type: ignore[attr-defined]
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _creds_handler(
    root: Path,
    *,
    auth: bool = True,
    delay: float = 0.0,
    redirect_to: str | None = None,
    basic: str = _creds_BASIC,
) -> type[http.server.BaseHTTPRequestHandler]:
    """Serves ``root``; with ``auth``, only to Basic deploy:TOKEN (or ``basic``); optionally
    slow or redirecting every request to another origin."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        server_record: list[tuple[str, str | None]]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.server_record.append((self.path, self.headers.get("Authorization")))
            if auth and self.headers.get("Authorization") != basic:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            time.sleep(delay)
            if redirect_to:
                self.send_response(302)
                self.send_header("Location", redirect_to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

    return Handler


@pytest.fixture(scope="module")
def creds_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("creds-wheel")
    project = make_plugin(root / "plugin", marker="from-a-private-server")
    return build_dists(project, root / "dist", sdist=False)["wheel"]


def _creds_assert_hidden(*texts: str) -> None:
    for text in texts:
        assert _creds_TOKEN not in text, text


def _creds_metadata(cache: Path) -> str:
    return "\n".join(p.read_text() for p in cache.rglob("reva-env.json"))


def _creds_cmdlines_with(
    needle: str, stop: threading.Event, found: list[str], seen: list[str]
) -> None:
    """Poll every process's command line until ``stop``; keep those holding ``needle`` (any
    process's) and, in ``seen``, this test's installer commands (its descendants only: tests
    run in parallel, another worker's installs prove nothing about this one)."""
    mine = str(os.getpid())
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or proc.name == mine:
                continue
            try:
                argv = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                )
            except OSError:
                continue
            if needle in argv:
                found.append(argv)
            if (
                " install " in argv or "ls-remote" in argv or " compile " in argv
            ) and _creds_descends_from(int(proc.name), int(mine)):
                seen.append(argv)
        time.sleep(0.005)


def _creds_descends_from(pid: int, ancestor: int) -> bool:
    """True if ``ancestor`` is among ``pid``'s parents (False once ``pid`` is gone)."""
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


# -- archive URLs with credentials --------------------------------------------------------------


@pytest.mark.slow
def test_archive_url_with_credentials_downloads_and_the_token_never_shows(
    creds_wheel: Path, tmp_path: Path, fresh_cache: Path, write_config: WriteConfig
) -> None:
    (tmp_path / "files").mkdir()
    shutil.copy(creds_wheel, tmp_path / "files")
    server = _creds_Server(_creds_handler(tmp_path / "files"))
    try:
        url = f"http://{_creds_USER}:{_creds_TOKEN}@{server.base}/{creds_wheel.name}"
        config = write_config(
            f'[plugins]\nallow_http = true\n\n[grpc.services.userprovider]\ndriver = "{url}"\n'
        )
        checked = cli("check", str(config))
        assert checked.returncode == 0, checked.stderr
        as_json = cli("check", "--json", str(config))
        verbose = cli("-v", "check", str(config))
        called = cli(
            "call", str(config), "userprovider", "get_user", '{"user_id": {"opaque_id": "nobody"}}'
        )
        listed = cli("env", "list", "--json")
    finally:
        server.close()
    assert ("/" + creds_wheel.name, _creds_BASIC) in server.seen  # the credential was used
    assert called.returncode != 0
    assert called.stderr.strip()
    rows = json.loads(as_json.stdout)
    assert rows[0]["ok"]
    assert rows[0]["driver"] == f"http://***@{server.base}/{creds_wheel.name}"
    assert json.loads(called.stderr)["error"]["plugin"].startswith("userprovider (http://***@")
    for done in (checked, as_json, verbose, called, listed):
        _creds_assert_hidden(done.stdout, done.stderr)
    _creds_assert_hidden(_creds_metadata(fresh_cache))


@pytest.mark.slow
def test_a_download_credential_is_never_sent_to_another_origin_on_redirect(
    creds_wheel: Path, tmp_path: Path, fresh_cache: Path, write_config: WriteConfig
) -> None:
    (tmp_path / "files").mkdir()
    shutil.copy(creds_wheel, tmp_path / "files")
    other = _creds_Server(_creds_handler(tmp_path / "files", auth=False))
    first = _creds_Server(_creds_handler(tmp_path / "files", redirect_to=f"http://{other.base}"))
    try:
        url = f"http://{_creds_USER}:{_creds_TOKEN}@{first.base}/{creds_wheel.name}"
        config = write_config(
            f'[plugins]\nallow_http = true\n\n[grpc.services.userprovider]\ndriver = "{url}"\n'
        )
        checked = cli("env", "build", str(config))
    finally:
        first.close()
        other.close()
    assert checked.returncode == 0, checked.stderr
    assert first.seen == [("/" + creds_wheel.name, _creds_BASIC)]
    assert other.seen == [("/" + creds_wheel.name, None)]
    _creds_assert_hidden(checked.stdout, checked.stderr)


# -- a package index with Basic auth ------------------------------------------------------------


def _creds_index(root: Path, wheel: Path) -> Path:
    """A PEP 503 index at ``root/simple`` offering ``wheel``."""
    name = "reva-test-plugin"
    (root / "files").mkdir(parents=True)
    shutil.copy(wheel, root / "files")
    (root / "simple" / name).mkdir(parents=True)
    (root / "simple" / "index.html").write_text(f'<a href="{name}/">{name}</a>\n')
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "simple" / name / "index.html").write_text(
        f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>\n'
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_index_url_with_credentials_installs_and_is_never_on_a_command_line(
    creds_wheel: Path, tmp_path: Path, fresh_cache: Path, write_config: WriteConfig, installer: str
) -> None:
    if installer == "uv" and find_uv() is None:
        pytest.skip("needs uv")
    # Slow answers keep the installer running long enough for its command line to be read.
    server = _creds_Server(_creds_handler(_creds_index(tmp_path / "index", creds_wheel), delay=0.2))
    index = f"http://{_creds_USER}:{_creds_TOKEN}@{server.base}/simple/"
    config = write_config(
        f'[plugins]\ninstaller = "{installer}"\nindex_url = "{index}"\n\n'
        '[grpc.services.userprovider]\ndriver = "reva-test-plugin>=1"\n'
    )
    stop = threading.Event()
    found: list[str] = []
    seen: list[str] = []
    watcher = threading.Thread(target=_creds_cmdlines_with, args=(_creds_TOKEN, stop, found, seen))
    watcher.start()
    try:
        checked = cli("-v", "check", "--json", str(config))
    finally:
        stop.set()
        watcher.join()
        server.close()
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)[0]["status"].startswith("ok reva-test-plugin 1.0")
    assert any(auth == _creds_BASIC for _path, auth in server.seen)
    assert seen, "no installer process was observed"
    assert found == []
    _creds_assert_hidden(checked.stdout, checked.stderr, _creds_metadata(fresh_cache))
    listed = cli("env", "list", "--json")
    _creds_assert_hidden(listed.stdout)


def test_index_and_find_links_credentials_go_to_the_environment_not_argv() -> None:
    secret_link = f"https://{_creds_USER}:{_creds_TOKEN}@example.org/wheels/"
    options = InstallOptions(
        index_url=f"https://{_creds_TOKEN}@example.org/simple/",
        find_links=("/opt/local wheels", secret_link),
    )
    uv_argv, uv_env = _index_args(options, "uv")
    pip_argv, pip_env = _index_args(options, "pip")
    _creds_assert_hidden(" ".join(uv_argv), " ".join(pip_argv))
    assert uv_env["UV_INDEX_URL"] == pip_env["PIP_INDEX_URL"] == options.index_url
    assert uv_env["UV_FIND_LINKS"] == f"/opt/local wheels,{secret_link}"
    assert pip_env["PIP_FIND_LINKS"].endswith(secret_link)
    assert pip_argv == ["--find-links", "/opt/local wheels"]


def test_index_credentials_do_not_change_the_env_key() -> None:
    plain = InstallOptions(index_url="https://example.org/simple/", find_links=("/w",))
    secret = InstallOptions(
        index_url=f"https://{_creds_USER}:{_creds_TOKEN}@example.org/simple/", find_links=("/w",)
    )
    assert plain.key_material() == secret.key_material()


# -- git over http with Basic auth (git http-backend) --------------------------------------------


def _creds_git_handler(
    project_root: Path, basic: str = _creds_BASIC
) -> type[http.server.BaseHTTPRequestHandler]:
    """Smart HTTP git, through ``git http-backend`` as CGI, for Basic deploy:TOKEN (or
    ``basic``) only."""

    class Handler(http.server.BaseHTTPRequestHandler):
        server_record: list[tuple[str, str | None]]

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._backend()

        def do_POST(self) -> None:
            self._backend()

        def _backend(self) -> None:
            self.server_record.append((self.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != basic:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {
                "PATH": os.environ["PATH"],
                "GIT_PROJECT_ROOT": str(project_root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": _creds_USER,
                "REMOTE_ADDR": "127.0.0.1",
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            }
            out = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
            ).stdout
            head, sep, content = out.partition(b"\r\n\r\n")
            if not sep:
                head, _, content = out.partition(b"\n\n")
            headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
            status = next((v.strip() for k, v in headers if k.lower() == "status"), "200 OK")
            self.send_response(int(status.split()[0]))
            for name, value in headers:
                if name.lower() != "status":
                    self.send_header(name, value.strip())
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

    return Handler


def _creds_git_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A ``git`` first on PATH that logs its argv and whether it got auth from its environment."""
    real = shutil.which("git")
    assert real
    folder, log = tmp_path / "wrapper-bin", tmp_path / "git-argv.log"
    folder.mkdir()
    wrapper = folder / "git"
    wrapper.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            printf '%s\\n' "argv: $*" "config-count: ${{GIT_CONFIG_COUNT:-0}}" >> {log}
            exec {real} "$@"
            """
        )
    )
    wrapper.chmod(0o755)
    return folder, log


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_git_http_url_with_credentials_clones_without_the_token_on_any_command_line(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig, installer: str
) -> None:
    if installer == "uv" and find_uv() is None:
        pytest.skip("needs uv")
    repos = tmp_path / "repos"
    repo = make_repo(repos / "plugins.git")
    git(repo, "config", "http.receivepack", "false")
    server = _creds_Server(_creds_git_handler(repos))
    wrapper, log = _creds_git_wrapper(tmp_path)
    url = f"git+http://{_creds_USER}:{_creds_TOKEN}@{server.base}/plugins.git@v1"
    config = write_config(
        f'[plugins]\ninstaller = "{installer}"\n\n'
        f'[grpc.services.userprovider]\ndriver = "{url}#subdirectory=plugins/demo"\n'
    )
    path = f"{wrapper}{os.pathsep}{os.environ['PATH']}"
    stop = threading.Event()
    found: list[str] = []
    seen: list[str] = []
    watcher = threading.Thread(target=_creds_cmdlines_with, args=(_creds_TOKEN, stop, found, seen))
    watcher.start()
    try:
        checked = cli("-v", "check", "--json", str(config), env={"PATH": path})
        called = cli(
            "call", str(config), "userprovider", "get_user", '{"user_id": {"opaque_id": "x"}}',
            env={"PATH": path},
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join()
        server.close()
    assert checked.returncode == 0, checked.stderr
    row = json.loads(checked.stdout)[0]
    assert row["driver"] == f"git+http://***@{server.base}/plugins.git@v1#subdirectory=plugins/demo"
    logged = log.read_text()
    assert "ls-remote" in logged
    assert " clone " in logged or " fetch " in logged  # the installer's git
    assert "config-count: 0" not in logged  # every git, ours and the installer's, got the auth
    assert found == []
    _creds_assert_hidden(checked.stdout, checked.stderr, called.stdout, called.stderr, logged)
    _creds_assert_hidden(_creds_metadata(fresh_cache))
    for env_file in fresh_cache.rglob("reva-env.json"):
        meta = json.loads(env_file.read_text())
        assert meta["identity"].startswith(f"git:http://{server.base}/plugins.git@")


# -- build steps never see the core's environment -------------------------------------------------


def _creds_env_dumping_plugin(root: Path, dump: Path) -> Path:
    """A plugin folder whose in-tree build backend writes ``os.environ`` to ``dump``."""
    project = make_plugin(root)
    pyproject = (project / "pyproject.toml").read_text()
    pyproject = pyproject.replace(
        'build-backend = "hatchling.build"',
        'build-backend = "dump_env_backend"\nbackend-path = ["."]',
    )
    (project / "pyproject.toml").write_text(pyproject)
    (project / "dump_env_backend.py").write_text(
        textwrap.dedent(
            f"""\
            import json
            import os

            from hatchling.build import *  # noqa: F403
            from hatchling import build as _hatchling


            def build_wheel(*args, **kwargs):
                with open({str(dump)!r}, "w") as f:
                    json.dump(dict(os.environ), f)
                return _hatchling.build_wheel(*args, **kwargs)


            def build_editable(*args, **kwargs):
                return build_wheel(*args, **kwargs)
            """
        )
    )
    return project


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_build_backend_does_not_see_the_cores_secrets(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig, installer: str
) -> None:
    if installer == "uv" and find_uv() is None:
        pytest.skip("needs uv")
    dump = tmp_path / "build-env.json"
    _creds_env_dumping_plugin(tmp_path / "plugin", dump)
    config = write_config(
        f'[plugins]\ninstaller = "{installer}"\n\n'
        '[grpc.services.userprovider]\ndriver = "./plugin"\n'
    )
    built = cli(
        "env", "build", str(config), env={"REVA_TEST_SECRET": _creds_TOKEN, "AWS_SECRET": "x"}
    )
    assert built.returncode == 0, built.stderr
    seen = json.loads(dump.read_text())
    assert "REVA_TEST_SECRET" not in seen
    assert "AWS_SECRET" not in seen
    assert _creds_TOKEN not in json.dumps(seen)
    assert seen.get("PATH")
    assert seen.get("HOME")


def test_the_build_environment_keeps_only_what_installing_needs() -> None:
    host = {
        "PATH": "/bin",
        "HOME": "/h",
        "LC_ALL": "C",
        "https_proxy": "http://proxy:3128",
        "NO_PROXY": "localhost",
        "PIP_FIND_LINKS": "/opt/wheels",
        "UV_CACHE_DIR": "/c",
        "SSL_CERT_FILE": "/ca.pem",
        "SSH_AUTH_SOCK": "/agent",
        "DATABASE_PASSWORD": "hunter2",
        "PYTHONPATH": "/evil",
        "GIT_CONFIG_GLOBAL": "/x",
        "UV_PUBLISH_TOKEN": "pypi-x",
        "UV_PUBLISH_PASSWORD": "x",
        "UV_TRUSTED_PUBLISHING": "always",
        "TWINE_PASSWORD": "x",
        "UV_INDEX_PRIVATE_PASSWORD": "index-auth",
    }
    env = _environ.build_environment(host)
    dropped = {"DATABASE_PASSWORD", "PYTHONPATH", "GIT_CONFIG_GLOBAL", "TWINE_PASSWORD"}
    dropped |= {"UV_PUBLISH_TOKEN", "UV_PUBLISH_PASSWORD", "UV_TRUSTED_PUBLISHING"}
    assert set(env) == set(host) - dropped
    assert _environ.scrubbed(host) == {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C"}


def test_git_gets_credentials_through_its_environment_only() -> None:
    env = _auth.git_auth_env([f"git+https://{_creds_TOKEN}@example.org:8443/org/repo.git"])
    assert env["GIT_CONFIG_COUNT"] == "1"
    assert env["GIT_CONFIG_KEY_0"] == "http.https://example.org:8443/.extraHeader"
    token_only = base64.b64encode(f"{_creds_TOKEN}:".encode()).decode()
    assert env["GIT_CONFIG_VALUE_0"] == f"Authorization: Basic {token_only}"
    assert _auth.split("ssh://git:pw@example.org/r.git") == ("ssh://git@example.org/r.git", None)


def test_the_debug_log_of_a_command_redacts_credentials(caplog: pytest.LogCaptureFixture) -> None:
    from reva_plugins._subprocess import run

    with caplog.at_level("DEBUG", logger="reva_plugins.run"):
        run([sys.executable, "-c", "pass", f"https://u:{_creds_TOKEN}@example.org/x"])
    assert "https://***@example.org/x" in caplog.text
    _creds_assert_hidden(caplog.text)


# -- userinfo holding '@', quotes or spaces; secrets in query strings ------------------------------


_creds_URLS = [
    "https://user:p@S3CRETTOK@host/a/x-1.0-py3-none-any.whl",
    "https://us@er:S3CRETTOK@host:8443/a/x.whl",
    'https://user:p"S3CRETTOK@host/a/x.whl',
    "https://user:p S3CRETTOK@host/a/x.whl",
    "https://user:p\nS3CRET\tTOK@host/a/x.whl",
    "https://S3CRETTOK@[::1]:8443/a/x.whl",
    "https://user:S3CRET%40TOK@host/a/x.whl",
    "git+https://tok@S3CRETTOK@github.com/o/r.git",
    "git+ssh://git:S3CRETTOK@host/o/r.git",
    "HTTPS://user:S3CRETTOK@Host/x.whl",
]


@pytest.mark.parametrize("url", _creds_URLS)
def test_redaction_hides_exactly_the_userinfo_credentials_are_split_from(url: str) -> None:
    userinfo, rest = split_userinfo(url)
    assert userinfo is not None
    assert "S3CRET" in userinfo
    bare, credential = _auth.split(url.removeprefix("git+"))
    # _auth sends (or, for ssh, keeps only the user of) exactly the userinfo redact hides.
    if url.startswith("git+ssh"):
        assert credential is None
        assert bare == "ssh://git@host/o/r.git"
    else:
        assert credential is not None
        assert f"{credential.user}:{credential.password}".startswith(unquote(userinfo)[:3])
        assert "S3CRET" not in bare
        assert redact(url) == rest.replace("://", "://***@", 1)
    for text in (redact(url), redact(f"cannot fetch '{url}': HTTP 404 (see {url} again)")):
        assert "S3CRET" not in text, text
        assert "TOK" not in text, text


def test_a_password_holding_a_raw_slash_is_never_echoed() -> None:
    with pytest.raises(SourceError) as refused:
        ArchiveURL(f"https://user:S3CRET/TOK@host/{_SOURCES_WHEEL}")
    assert "S3CRET" not in str(refused.value)
    assert "%2F" in str(refused.value)


@pytest.mark.parametrize(
    ("url", "hidden", "kept"),
    [
        (
            "https://b.s3.amazonaws.com/x.whl?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1"
            "&X-Amz-Signature=ab12&X-Amz-Security-Token=tt#sha256=" + "0" * 64,
            ["AKIA", "ab12", "=tt"],
            ["X-Amz-Algorithm=AWS4", "#sha256=" + "0" * 64],
        ),
        ("https://h/x.whl?AWSAccessKeyId=AKIA&Signature=s1g&Expires=9", ["AKIA", "s1g"], ["=9"]),
        ("https://a.blob.core.windows.net/c/x.whl?sv=2022&sig=Zm9v%3D&se=1", ["Zm9v"], ["sv="]),
        ("https://h/x.whl?X-Goog-Signature=g00&X-Goog-Credential=c1", ["g00", "c1"], []),
        ("https://h/x.whl?token=t0k&access_token=a1&private_token=p2&ref=main", ["t0k", "a1", "p2"], ["ref=main"]),
        ("https://h/x.whl?password=pw&secret=sc&key=k3y&api_key=ak&apiKey=AK", ["pw", "sc", "k3y", "ak", "AK"], []),
    ],
)  # fmt: skip
def test_secret_query_parameters_are_redacted(url: str, hidden: list[str], kept: list[str]) -> None:
    for text in (redact(url), redact(f"driver '{url}' is not allowed")):
        for secret in hidden:
            assert secret not in text, text
        for part in kept:
            assert part in text, text


@pytest.mark.slow
@pytest.mark.parametrize("password", ["p@S3CRETTOK", 'p"S3CRETTOK', "p S3CRETTOK", "S3CRETTOK@"])
def test_userinfo_with_at_quote_or_space_and_signed_queries_never_show_in_cli_output(
    creds_wheel: Path, tmp_path: Path, fresh_cache: Path, write_config: WriteConfig, password: str
) -> None:
    (tmp_path / "files").mkdir()
    shutil.copy(creds_wheel, tmp_path / "files")
    basic = "Basic " + base64.b64encode(f"{_creds_USER}:{password}".encode()).decode()
    server = _creds_Server(_creds_handler(tmp_path / "files", basic=basic))
    query = "?X-Amz-Signature=SIGSECRET&X-Amz-Credential=CREDSECRET&token=QTOKSECRET"
    secret_url = f"http://{_creds_USER}:{password}@{server.base}/"
    url = f"{secret_url}{creds_wheel.name}{query}"
    plugins = "[plugins]\nallow_http = true\n\n"
    config = write_config(f"{plugins}[grpc.services.userprovider]\ndriver = {_sources_toml(url)}\n")
    missing = write_config(
        f"{plugins}[grpc.services.userprovider]\n"
        f"driver = {_sources_toml(f'{secret_url}gone/{creds_wheel.name}{query}')}\n",
        name="missing.toml",
    )
    try:
        runs = {
            "check": cli("check", str(config)),
            "json": cli("check", "--json", str(config)),
            "verbose": cli("-v", "check", str(config)),
            "call": cli("call", str(config), "userprovider", "get_user", '{"user_id": {}}'),
            "build": cli("-v", "env", "build", str(config)),
            "list": cli("env", "list", "--json"),
            "missing": cli("env", "build", str(missing)),
        }
    finally:
        server.close()
    assert runs["check"].returncode == 0, runs["check"].stderr
    assert (f"/{creds_wheel.name}{query}", basic) in server.seen  # the credential was sent
    row = json.loads(runs["json"].stdout)[0]
    assert row["driver"] == (
        f"http://***@{server.base}/{creds_wheel.name}"
        "?X-Amz-Signature=***&X-Amz-Credential=***&token=***"
    )
    assert json.loads(runs["call"].stderr)["error"]["plugin"].startswith(
        "userprovider (http://***@"
    )
    assert runs["missing"].returncode == 1
    assert "HTTP 404" in runs["missing"].stderr
    texts = [t for done in runs.values() for t in (done.stdout, done.stderr)]
    texts.append(_creds_metadata(fresh_cache))
    for text in texts:
        for secret in ("S3CRETTOK", "SIGSECRET", "CREDSECRET", "QTOKSECRET"):
            assert secret not in text, text


@pytest.mark.slow
def test_git_userinfo_holding_an_at_sign_clones_and_never_shows(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig
) -> None:
    password = "p@S3CRETTOK"
    basic = "Basic " + base64.b64encode(f"{_creds_USER}:{password}".encode()).decode()
    repos = tmp_path / "repos"
    repo = make_repo(repos / "plugins.git")
    git(repo, "config", "http.receivepack", "false")
    server = _creds_Server(_creds_git_handler(repos, basic=basic))
    url = f"git+http://{_creds_USER}:{password}@{server.base}/plugins.git@v1"
    config = write_config(
        f'[grpc.services.userprovider]\ndriver = "{url}#subdirectory=plugins/demo"\n'
    )
    try:
        checked = cli("-v", "check", "--json", str(config))
        called = cli("call", str(config), "userprovider", "get_user", '{"user_id": {}}')
    finally:
        server.close()
    assert checked.returncode == 0, checked.stderr
    row = json.loads(checked.stdout)[0]
    assert row["driver"] == f"git+http://***@{server.base}/plugins.git@v1#subdirectory=plugins/demo"
    assert any(auth == basic for _path, auth in server.seen)
    for text in (checked.stdout, checked.stderr, called.stdout, called.stderr):
        assert "S3CRETTOK" not in text, text
    assert "S3CRETTOK" not in _creds_metadata(fresh_cache)


# -- the interpreter setting runs what it names: scrubbed, and only a Python passes ---------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "body",
    [
        "echo hello",
        'echo "[[], [], []]"',
        'echo \'["CPython", "not a version", "/x"]\'',
        "exit 3",
        None,  # not a program at all: no #! line
    ],
)
def test_a_python_setting_naming_a_script_is_one_line_exit_2_and_sees_no_secret(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig, body: str | None
) -> None:
    seen = tmp_path / "seen.env"
    script = tmp_path / "evil.sh"
    script.write_text(
        "this is not a program\n" if body is None else f"#!/bin/sh\nenv > {seen}\n{body}\n"
    )
    script.chmod(0o755)
    config = write_config(
        f'[plugins]\npython = "./evil.sh"\n\n[grpc.services.userprovider]\n'
        f'driver = "{SAMPLES / "json_users"}"\n'
    )
    secrets = {"REVA_TEST_SECRET": _creds_TOKEN, "AWS_SECRET_ACCESS_KEY": _creds_TOKEN}
    for args in (["check", str(config)], ["env", "build", str(config)]):
        result = cli(*args, env=secrets)
        line = _sources_one_line_error(result, 2)
        assert "plugins.python" in line, line
        assert str(script) in line, line
        assert "is not a Python interpreter" in line, line
    if body is not None:
        recorded = seen.read_text()
        assert "REVA_TEST_SECRET" not in recorded
        assert _creds_TOKEN not in recorded
        assert "PATH=" in recorded
    assert not (fresh_cache / "envs").exists() or not any((fresh_cache / "envs").iterdir())


def test_a_damaged_interpreter_cache_is_ignored(tmp_path: Path) -> None:
    cache_file = tmp_path / "interpreters.json"
    real = os.path.realpath(sys.executable)
    st_ = os.stat(real)
    cache_file.write_text(json.dumps({f"{real}:{st_.st_size}:{st_.st_mtime_ns}": [[], {}]}))
    found = _python.InterpreterCache(cache_file).query(sys.executable)
    assert found is not None
    assert found.version == ".".join(map(str, sys.version_info[:3]))


# -- installers and build backends never see publishing secrets -----------------------------------


def _creds_backend_project(root: Path, hook: str) -> Path:
    """A plugin folder whose in-tree, dependency-free build backend runs ``hook`` first."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "reva_hard_backend"\nbackend-path = ["."]\n'
        '\n[project]\nname = "reva-hard-plugin"\nversion = "1.0"\n'
    )
    module = PLUGIN_MODULE.format(marker="hard", marker_body="        return MARKER")
    hook_body = textwrap.indent(textwrap.dedent(hook).strip() or "pass", "    ")
    backend = HARD_BACKEND.replace("__MODULE__", repr(module)).replace("__HOOK__", hook_body)
    (root / "reva_hard_backend.py").write_text(backend)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_build_backend_never_sees_publishing_tokens(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig, installer: str
) -> None:
    if installer == "uv" and find_uv() is None:
        pytest.skip("needs uv")
    dump = tmp_path / "backend-env.json"
    hook = f"import json\nwith open({str(dump)!r}, 'w') as f:\n    json.dump(dict(os.environ), f)\n"
    _creds_backend_project(tmp_path / "plugin", hook)
    config = write_config(
        f'[plugins]\ninstaller = "{installer}"\n\n[grpc.services.userprovider]\n'
        'driver = "./plugin"\n'
    )
    publishing = {
        "UV_PUBLISH_TOKEN": "pypi-S3CRET-1",
        "UV_PUBLISH_PASSWORD": "S3CRET-2",
        "UV_PUBLISH_USERNAME": "__token__",
        "UV_TRUSTED_PUBLISHING": "always",
        "TWINE_PASSWORD": "S3CRET-3",
        "TWINE_USERNAME": "__token__",
        "PIP_UPLOAD_TOKEN": "S3CRET-4",
    }
    built = cli("env", "build", str(config), env={**publishing, "UV_HTTP_TIMEOUT": "77"})
    assert built.returncode == 0, built.stderr
    seen = json.loads(dump.read_text())
    assert sorted(set(publishing) & set(seen)) == []
    assert "S3CRET" not in json.dumps(seen)
    assert seen.get("UV_HTTP_TIMEOUT") == "77"  # installer settings still pass


@pytest.mark.slow
def test_what_a_build_backend_receives_is_what_security_md_says(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig
) -> None:
    """A folder, sdist or git spec is built by its own backend inside the installer, which hands
    it the installer's settings, index credentials among them (SECURITY.md says so); a wheel is
    installed without running any of the plugin's code."""
    dump = tmp_path / "backend-env.json"
    hook = f"import json\nwith open({str(dump)!r}, 'w') as f:\n    json.dump(dict(os.environ), f)\n"
    project = _creds_backend_project(tmp_path / "plugin", hook)
    secrets = {"UV_INDEX_PASSWORD": "S3CRET-index", "CORE_DB_PASSWORD": "S3CRET-core"}
    config = write_config('[grpc.services.userprovider]\ndriver = "./plugin"\n')
    built = cli("env", "build", str(config), env=secrets)
    assert built.returncode == 0, built.stderr
    seen = json.loads(dump.read_text())
    assert seen.get("UV_INDEX_PASSWORD") == "S3CRET-index"  # installer settings pass: documented
    assert "CORE_DB_PASSWORD" not in seen  # the core's own secrets never do
    dump.unlink()
    wheels = build_dists(project, tmp_path / "dist", sdist=False)
    dump.unlink()  # building the wheel here ran the backend once; installing it must not
    wheel_config = write_config(
        f'[grpc.services.userprovider]\ndriver = "{wheels["wheel"]}"\n', name="wheel.toml"
    )
    installed = cli("env", "build", str(wheel_config), env=secrets)
    assert installed.returncode == 0, installed.stderr
    assert not dump.exists()
