"""Hostile inputs: what an attacker who writes a config or publishes a plugin, and a careless
operator, can throw at the core, and what the core does instead of deleting, leaking, hanging or
crashing. Each test failed before its fix. SECURITY.md lists every class with its test.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.server
import json
import logging
import os
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import filelock
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reva_plugins import (
    ConfigError,
    HandshakeError,
    Host,
    PluginCrashed,
    ProtocolError,
    RemoteError,
    RevaPluginError,
    SourceError,
    _auth,
    _environ,
    _python,
)
from reva_plugins import _cli as cli_module
from reva_plugins._cli import main
from reva_plugins._client import Client, LineReader, _Oversized
from reva_plugins._config import (
    SERVICE_KEYS,
    ServiceConfig,
    load_driver_table,
    load_file,
    parse,
)
from reva_plugins._defaults import MAX_NESTING
from reva_plugins._drivers import IsolatedDriver
from reva_plugins._errors import FetchError, UsageError
from reva_plugins._git import parse as _sources_git_parse
from reva_plugins._installers import InstallOptions, _index_args, find_uv
from reva_plugins._plan import IsolatedPlan, classify_driver
from reva_plugins._plugin_stderr import LOG_BURST, escape
from reva_plugins._process import LaunchSpec, PluginProcess, plugin_environment
from reva_plugins._protocol import (
    BOOTSTRAP_FILE,
    PARSE_ERROR,
    dumps,
    encode_request,
    error_to_exception,
    guess_id,
    loads,
)
from reva_plugins._redact import redact, split_userinfo
from reva_plugins._sources import (
    ArchiveURL,
    ResolveContext,
    SourcePolicy,
    archive_filename,
    download,
    tree_digest,
)
from reva_plugins._store import EnvMetadata, Store, default_cache_dir, make_key
from reva_plugins._supervisor import Supervisor
from reva_plugins._urls import check_url as _sources_check_url
from reva_plugins._urls import origin as _sources_url_origin
from reva_plugins.testing import run_conformance

from .conftest import EXAMPLES, ROOT, SAMPLES, WriteConfig, cli, pid_alive, wait_until
from .factory import PLUGIN_MODULE, build_dists, git, make_plugin, make_repo

# ================================================================================================
# Specs and sources: crafted URLs and paths, downloads, allowed_sources, special files
# ================================================================================================


_SOURCES_WHEEL = "reva_test_plugin-1.0-py3-none-any.whl"


# -- a real HTTP server that misbehaves on request --------------------------------------------


class _SourcesServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    wheel = b""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the resets and half-written replies below are on purpose


class _SourcesHandler(http.server.BaseHTTPRequestHandler):
    """``/<mode>/<anything>``: the mode says how to misbehave; any other path gets the wheel."""

    server: _SourcesServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        mode = self.path.split("/")[1] if self.path.count("/") > 1 else ""
        wheel = self.server.wheel
        self.close_connection = True
        if mode == "big":
            self._headers(3 << 20)
            self.wfile.write(b"\0" * (3 << 20))
        elif mode == "big-nolen":
            self._headers(None)
            for _ in range(3):
                self.wfile.write(b"\0" * (1 << 20))
        elif mode == "short":
            self._headers(len(wheel))
            self.wfile.write(wheel[: len(wheel) // 2])
        elif mode == "drip":
            self._headers(len(wheel))
            for byte in wheel[:50]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        elif mode == "badlen":
            self.send_response(200)
            self.send_header("Content-Length", "lots")
            self.end_headers()
            self.wfile.write(wheel)
        elif mode == "garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.0\r\n\x00\xff\xfe not http\r\n\r\n")
        elif mode == "longheader":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n")
        elif mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        elif mode in ("to-ftp", "to-file"):
            target = (
                f"ftp://127.0.0.1:1/{_SOURCES_WHEEL}"
                if mode == "to-ftp"
                else f"file:///etc/{_SOURCES_WHEEL}"
            )
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._headers(len(wheel))
            self.wfile.write(wheel)

    def _headers(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture(scope="module")
def sources_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-wheel")
    built = build_dists(make_plugin(root / "project", marker="hostile"), root / "dist", sdist=False)
    assert built["wheel"].name == _SOURCES_WHEEL
    return built["wheel"]


@pytest.fixture
def sources_server(sources_wheel: Path) -> Iterator[str]:
    server = _SourcesServer(("127.0.0.1", 0), _SourcesHandler)
    server.wheel = sources_wheel.read_bytes()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _sources_snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, int, str]]:
    """Every path under ``root`` (but ``skip``) with its mode, mtime and content hash."""
    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st_ = path.lstat()
            content = ""
            if stat.S_ISREG(st_.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = (st_.st_mode, st_.st_mtime_ns, content)
    return out


def _sources_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _sources_config(folder: Path, name: str, driver: str, plugins: str = "") -> Path:
    path = folder / f"{name}.toml"
    text = f"[plugins]\n{plugins}\n[grpc.services.userprovider]\ndriver = {_sources_toml(driver)}\n"
    path.write_text(text, encoding="utf-8")
    return path


def _sources_toml(text: str) -> str:
    """A TOML basic string for ``text`` (control characters escaped)."""
    escaped = "".join(
        f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c for c in text
    )
    return f'"{escaped}"'


def _sources_downloads_empty(cache: Path) -> None:
    downloads = cache / "downloads"
    left = sorted(p.name for p in downloads.iterdir()) if downloads.exists() else []
    assert left == [], f"left in {downloads}: {left}"


# -- critical: no crafted spec reaches outside the cache ---------------------------------------


@pytest.mark.slow
def test_crafted_specs_never_touch_a_canary_next_to_the_cache(
    tmp_path: Path, fresh_cache: Path, sources_server: str, sources_wheel: Path
) -> None:
    canary = tmp_path / "canary"
    (canary / "inner").mkdir(parents=True)
    (canary / "precious.txt").write_text("do not delete", encoding="utf-8")
    (canary / "inner" / "deep.txt").write_text("nor this", encoding="utf-8")
    (canary / _SOURCES_WHEEL).write_bytes(sources_wheel.read_bytes())
    (tmp_path / "sibling.txt").write_text("a sibling of the cache", encoding="utf-8")
    configs = tmp_path / "configs"
    (configs / "plugins").mkdir(parents=True)
    base = sources_server
    digest = hashlib.sha256(sources_wheel.read_bytes()).hexdigest()
    # From <cache>/downloads/dl-XXXX, three '..' reach tmp_path: these name <tmp>/canary/<wheel>.
    up = "..%2F..%2F..%2F"
    specs = {
        "encoded-slash": f"{base}/dl/{up}canary%2F{_SOURCES_WHEEL}",
        "encoded-slash-pinned": f"{base}/dl/{up}canary%2F{_SOURCES_WHEEL}#sha256={digest}",
        "slash-dotdot": f"{base}/dl/x%2F..%2F..%2F..%2F..%2Fcanary%2F{_SOURCES_WHEEL}",
        "encoded-dots": f"{base}/dl/%2e%2e%2F%2e%2e%2F%2e%2e%2Fcanary%2F{_SOURCES_WHEEL}",
        "dot-segments": f"{base}/dl/%2e%2e/%2e%2e/%2e%2e/canary/{_SOURCES_WHEEL}",
        "encoded-backslash": f"{base}/dl/..%5C..%5C..%5Ccanary%5C{_SOURCES_WHEEL}",
        "backslash": f"{base}/dl/..\\..\\..\\canary\\{_SOURCES_WHEEL}",
        "encoded-nul": f"{base}/dl/{up}canary%2F%00{_SOURCES_WHEEL}",
        "long-name": f"{base}/dl/{'a' * 300}-1.0-py3-none-any.whl",
        "dotdot-name": f"{base}/dl/..",
        "folder-dotdot": "./plugins/../../canary",
        "wheel-dotdot": f"./plugins/../../canary/{_SOURCES_WHEEL}",
        "name-dotdot": "reva-plugin-x/../../canary",
        "github-tree-dotdot": "https://github.com/org/repo/tree/main/../../../canary",
        "github-tree-encoded": "https://github.com/org/repo/tree/main/%2e%2e/%2e%2e/canary",
        "git-subdirectory": f"git+file://{tmp_path}/repo@main#subdirectory=%2e%2e/canary",
    }
    globbed = (
        f'allowed_sources = ["{base}/dl/*", "./plugins/*", "reva-plugin-*", "https://*", "git+*"]'
    )
    paths = {name: _sources_config(configs, name, spec) for name, spec in specs.items()}
    paths["globbed"] = _sources_config(configs, "globbed", specs["encoded-slash"], globbed)
    before = _sources_snapshot(tmp_path, skip=("cache",))
    for name, config in paths.items():
        result = cli("check", str(config))
        line = _sources_one_line_error(result, 2)
        assert "userprovider" in line, (name, line)
        assert _sources_snapshot(tmp_path, skip=("cache",)) == before, f"{name} touched the canary"
    assert (canary / "precious.txt").read_text(encoding="utf-8") == "do not delete"
    _sources_downloads_empty(fresh_cache)


def test_archive_file_names_are_plain_wheel_or_sdist_names() -> None:
    ok = {
        f"https://h/a/{_SOURCES_WHEEL}": _SOURCES_WHEEL,
        "https://h/reva_x-1.0%2Blocal.tar.gz": "reva_x-1.0+local.tar.gz",
        "https://h/reva-x-2.0.zip?token=1": "reva-x-2.0.zip",
    }
    for url, name in ok.items():
        assert archive_filename(url) == name
    for url in (
        "https://h/..%2Fx-1.0.tar.gz",
        "https://h/x%00-1.0.tar.gz",
        "https://h/%2e%2e",
        "https://h/x.whl",
        "https://h/not a version-x.tar.gz",
        "https://h/%ff%fe-1.0.tar.gz",
        f"https://h/{'a' * 260}-1.0.tar.gz",
        "https://h/x-1.0.exe",
    ):
        with pytest.raises(SourceError):
            ArchiveURL(url)


# -- downloads ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "plugins", "needle"),
    [
        ("big", "max_download_mb = 1", "max_download_mb = 1"),
        ("big-nolen", "max_download_mb = 1", "max_download_mb = 1"),
        ("short", "", "truncated"),
        ("badlen", "", "Content-Length"),
        ("garbage", "", "cannot download"),
        ("longheader", "", "cannot download"),
        ("reset", "", "cannot download"),
        ("to-ftp", "", "redirects to 'ftp://"),
        ("to-file", "", "redirects to 'file://"),
        ("missing/../nope", "", "ambiguous URL"),
    ],
)
def test_misbehaving_download_servers_give_one_line_and_leave_nothing(
    tmp_path: Path, fresh_cache: Path, sources_server: str, path: str, plugins: str, needle: str
) -> None:
    url = f"{sources_server}/{path}/{_SOURCES_WHEEL}"
    config = _sources_config(tmp_path, "revad", url, f"allow_http = true\n{plugins}")
    line = _sources_one_line_error(cli("env", "build", str(config)), 2 if ".." in path else 1)
    assert needle in line, line
    _sources_downloads_empty(fresh_cache)


@pytest.mark.slow
def test_a_dripping_server_is_cut_off_at_the_deadline(tmp_path: Path, sources_server: str) -> None:
    root = tmp_path / "downloads"
    with pytest.raises(FetchError, match="did not finish in time"):
        download(f"{sources_server}/drip/{_SOURCES_WHEEL}", root, _SOURCES_WHEEL, max_seconds=0.2)
    assert list(root.iterdir()) == []


@pytest.mark.slow
def test_a_failed_pin_leaves_no_partial_download(
    tmp_path: Path, fresh_cache: Path, sources_server: str
) -> None:
    url = f"{sources_server}/dl/{_SOURCES_WHEEL}#sha256={'1' * 64}"
    line = _sources_one_line_error(cli("env", "build", str(_sources_config(tmp_path, "c", url))), 2)
    assert "sha256 mismatch" in line
    _sources_downloads_empty(fresh_cache)


@pytest.mark.slow
def test_plain_http_needs_a_pin_or_allow_http_and_a_cache_hit_refreshes_the_mtime(
    tmp_path: Path, fresh_cache: Path, sources_server: str, sources_wheel: Path
) -> None:
    url = f"{sources_server}/dl/{_SOURCES_WHEEL}"
    refused = cli("env", "build", str(_sources_config(tmp_path, "plain", url)))
    assert "allow_http = true" in _sources_one_line_error(refused, 2)
    _sources_downloads_empty(fresh_cache)
    digest = hashlib.sha256(sources_wheel.read_bytes()).hexdigest()
    pinned = _sources_config(tmp_path, "pinned", f"{url}#sha256={digest}")
    built = cli("env", "build", str(pinned))
    assert built.returncode == 0, built.stderr
    cached = fresh_cache / "downloads" / digest / _SOURCES_WHEEL
    assert sorted(p.name for p in (fresh_cache / "downloads").iterdir()) == [digest]
    os.utime(cached, (1_000_000, 1_000_000))
    again = cli("env", "build", str(pinned))
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("\t")[-1].strip() == "cached"
    assert cached.stat().st_mtime > 1_000_000
    allowed = cli("env", "build", str(_sources_config(tmp_path, "ok", url, "allow_http = true")))
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.slow
def test_file_archive_urls_read_only_regular_files_within_the_cap(
    tmp_path: Path, sources_wheel: Path
) -> None:
    downloads = tmp_path / "cache" / "downloads"
    ctx = ResolveContext(downloads=downloads)
    folder = tmp_path / "served"
    folder.mkdir()
    wheel = folder / _SOURCES_WHEEL
    wheel.write_bytes(sources_wheel.read_bytes())
    resolved = ArchiveURL(wheel.as_uri()).resolve(ctx)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert resolved.identity == f"sha256:{digest}"
    with pytest.raises(SourceError, match="max_download_mb"):
        ArchiveURL(wheel.as_uri()).resolve(
            ResolveContext(downloads=downloads, max_download_bytes=10)
        )
    for special in ("fifo", "zero"):
        path = tmp_path / special / _SOURCES_WHEEL
        path.parent.mkdir()
        if special == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
        with pytest.raises(SourceError, match="not a regular file"):
            ArchiveURL(path.as_uri()).resolve(ctx)
    assert sorted(p.name for p in downloads.iterdir()) == [digest]


# -- allowed_sources: matched on what the spec resolves to, in every command ------------------


@pytest.fixture
def sources_layout(tmp_path: Path) -> Path:
    """``conf/`` (the config folder) with ``plugins/inside`` and ``plugins/link`` -> ``outside``."""
    conf = tmp_path / "conf"
    make_plugin(conf / "plugins" / "inside")
    make_plugin(tmp_path / "outside")
    (conf / "plugins" / "link").symlink_to(tmp_path / "outside")
    (conf / "plugins" / _SOURCES_WHEEL).write_bytes(b"not opened by classification")
    return conf


@pytest.mark.parametrize(
    ("spec", "patterns", "verdict"),
    [
        ("./plugins/inside", ["./plugins/*"], "allowed"),
        ("plugins/inside", ["plugins/*"], "allowed"),
        (f"./plugins/{_SOURCES_WHEEL}", ["*.whl"], "allowed"),
        ("./plugins/link", ["./plugins/*"], "not allowed"),
        ("./plugins/../../outside", ["./plugins/*"], "ambiguous"),
        ("reva-plugin-x/../../outside", ["reva-plugin-*"], "ambiguous"),
        ("plugins/inside>=1", ["*"], "ambiguous"),
        ("../outside", ["./plugins/*"], "not allowed"),
        ("../outside", ["../outside"], "allowed"),
        ("Reva_Plugin.LDAP==1.0", ["reva-plugin-*"], "allowed"),
        ("evil-plugin==1.0", ["reva-plugin-*"], "not allowed"),
        ("json", ["JSON"], "allowed"),
        (f"https://good.example@evil.example/{_SOURCES_WHEEL}", ["https://good.example*"], "not"),
        (f"HTTPS://Good.Example:443/dl/{_SOURCES_WHEEL}", ["https://good.example/dl/*"], "allowed"),
        (f"https://good.example/dl/x/%2e%2e/{_SOURCES_WHEEL}", ["*"], "ambiguous"),
        (
            "https://github.com/cs3org/r/tree/v1/plugins/json",
            ["git+https://github.com/cs3org/*"],
            "allowed",
        ),
        (
            "git+https://u:tok@github.com/cs3org/x.git@v1",
            ["git+https://github.com/cs3org/*"],
            "allowed",
        ),
        (
            "git+https://github.com/evil/x@v1#subdirectory=cs3org",
            ["git+https://github.com/cs3org*"],
            "not",
        ),
    ],
)
def test_allowed_sources_match_the_resolved_origin(
    sources_layout: Path, spec: str, patterns: list[str], verdict: str
) -> None:
    """Relative patterns resolve against the config folder (the tests run from the repo root)."""
    assert Path.cwd() != sources_layout
    if verdict == "allowed":
        classify_driver(spec, base_dir=sources_layout, allowed=tuple(patterns))
        return
    with pytest.raises(SourceError, match=verdict):
        classify_driver(spec, base_dir=sources_layout, allowed=tuple(patterns))


@pytest.mark.parametrize(
    ("spec", "pattern", "allowed"),
    [
        # The two bypasses: a host wildcard met through the path.
        (f"https://evil.com/.example.com/{_SOURCES_WHEEL}", "https://*.example.com/*", False),
        ("git+https://evil.com/x/github.com/org/repo.git@v1", "git+https://*github.com/org/*", False),
        (f"https://evil.com/a.example.com/{_SOURCES_WHEEL}", "https://*.example.com", False),
        (f"https://example.com.evil.com/{_SOURCES_WHEEL}", "https://*.example.com/*", False),
        # The legitimate forms.
        (f"https://files.example.com/{_SOURCES_WHEEL}", "https://*.example.com/*", True),
        (f"https://a.b.example.com/dl/x/{_SOURCES_WHEEL}", "https://*.example.com/*", True),
        (f"https://u:tok@files.example.com/{_SOURCES_WHEEL}", "https://*.example.com/*", True),
        ("git+https://github.com/org/repo.git@v1", "git+https://*github.com/org/*", True),
        ("https://github.com/org/repo/tree/v1/sub", "git+https://*github.com/org/*", True),
        ("git+https://github.com/org/repo.git@v1", "git+https://github.com/org*", True),
        ("git+https://github.com/orgevil/repo.git@v1", "git+https://github.com/org/*", False),
        # No path in the pattern: every path on that host.
        (f"https://files.example.com/a/{_SOURCES_WHEEL}", "https://files.example.com", True),
        # The scheme exactly; the port component-wise (none written: the default only).
        (f"http://files.example.com/{_SOURCES_WHEEL}", "https://files.example.com/*", False),
        (f"https://files.example.com:8443/{_SOURCES_WHEEL}", "https://files.example.com/*", False),
        (f"https://files.example.com:8443/{_SOURCES_WHEEL}", "https://files.example.com:*/*", True),
        (f"https://files.example.com:443/{_SOURCES_WHEEL}", "https://files.example.com/*", True),
        (f"https://files.example.com/{_SOURCES_WHEEL}", "https://files.example.com:443/*", True),
        (f"https://[::1]:8443/{_SOURCES_WHEEL}", "https://[::1]:8443/*", True),
        (f"https://[::2]:8443/{_SOURCES_WHEEL}", "https://[::1]:8443/*", False),
        # Patterns without '://' are still matched as written against the whole origin.
        ("git+https://evil.com/x/github.com/org/repo.git@v1", "git+*", True),
    ],
)  # fmt: skip
def test_url_patterns_match_scheme_host_port_and_path_one_by_one(
    tmp_path: Path, spec: str, pattern: str, allowed: bool
) -> None:
    if allowed:
        classify_driver(spec, base_dir=tmp_path, allowed=(pattern,))
        return
    with pytest.raises(SourceError, match="not allowed"):
        classify_driver(spec, base_dir=tmp_path, allowed=(pattern,))


@pytest.mark.slow
def test_a_host_wildcard_bypass_through_the_path_is_refused_by_check(tmp_path: Path) -> None:
    plugins = 'allowed_sources = ["https://*.example.com/*", "git+https://*github.com/org/*"]'
    for name, spec in {
        "archive": f"https://evil.com/.example.com/{_SOURCES_WHEEL}",
        "git": "git+https://evil.com/x/github.com/org/repo.git@v1",
    }.items():
        line = _sources_one_line_error(
            cli("check", str(_sources_config(tmp_path, name, spec, plugins))), 2
        )
        assert "is not allowed by [plugins] allowed_sources" in line, line


@pytest.mark.slow
def test_env_build_of_a_config_honours_allowed_sources(
    sources_layout: Path, fresh_cache: Path
) -> None:
    config = _sources_config(
        sources_layout, "revad", "./plugins/link", 'allowed_sources = ["./plugins/*"]'
    )
    line = _sources_one_line_error(cli("env", "build", str(config)), 2)
    assert "not allowed" in line
    assert not (fresh_cache / "envs").exists() or not any((fresh_cache / "envs").iterdir())


def test_conformance_honours_allowed_sources(sources_layout: Path, fresh_cache: Path) -> None:
    with pytest.raises(SourceError, match="not allowed"):
        run_conformance(
            "./plugins/link",
            "userprovider",
            base_dir=sources_layout,
            plugins={"allowed_sources": ["./plugins/*"]},
            cache_dir=fresh_cache,
        )


def test_github_tree_urls_and_subdirectory_fragments_share_one_check() -> None:
    for spec in (
        "https://github.com/o/r/tree/main/../../x",
        "https://github.com/o/r/tree/main/a/%2e%2e/%2e%2e/x",
        "https://github.com/o/r/tree/main/a%2F..%2F..%2Fx",
        "git+https://h/o/r@main#subdirectory=a/../../x",
        "git+https://h/o/r@main#subdirectory=%2e%2e/x",
        "git+https://h/o/r@main#subdirectory=a\\..\\x",
    ):
        with pytest.raises(SourceError):
            _sources_git_parse(spec)
    web = _sources_git_parse("https://github.com/o/r/tree/main/plugins/x")
    vcs = _sources_git_parse("git+https://github.com/o/r.git@main#subdirectory=plugins/x")
    assert (web.url, web.ref, web.subdirectory) == (vcs.url, vcs.ref, vcs.subdirectory)
    assert web.origin() == vcs.origin() == "git+https://github.com/o/r.git"


# -- special files in a package folder ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "zero-link", "fifo-link", "socket"])
def test_special_files_in_a_package_folder_are_refused_without_blocking(
    tmp_path: Path, fresh_cache: Path, kind: str
) -> None:
    folder = make_plugin(tmp_path / "plugin")
    special = folder / "reva_test_plugin" / "special.py"
    if kind == "fifo":
        os.mkfifo(special)
    elif kind == "zero-link":
        special.symlink_to("/dev/zero")
    elif kind == "fifo-link":
        os.mkfifo(tmp_path / "pipe")
        special.symlink_to(tmp_path / "pipe")
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(special))
        sock.close()
    # A subprocess, so a regression hangs only it (and fails the test when its timeout ends).
    code = f"from reva_plugins._sources import tree_digest; tree_digest(__import__('pathlib').Path({str(folder)!r}))"
    probe = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert probe.returncode == 1, probe.stderr
    assert "SourceError" in probe.stderr, probe.stderr
    config = _sources_config(tmp_path, "revad", "./plugin")
    line = _sources_one_line_error(cli("check", str(config)), 2)
    assert "special.py is" in line, line
    assert "block" in line, line


def test_tree_digest_hashes_symlinks_by_target_text_and_bounds_what_it_reads(
    tmp_path: Path,
) -> None:
    folder = make_plugin(tmp_path / "plugin")
    outside = tmp_path / "outside.txt"
    outside.write_text("one", encoding="utf-8")
    (folder / "link.txt").symlink_to(outside)
    (folder / "dangling").symlink_to(tmp_path / "nowhere")
    first = tree_digest(folder)
    outside.write_text("two, longer", encoding="utf-8")
    assert tree_digest(folder) == first  # never read through
    (folder / "link.txt").unlink()
    (folder / "link.txt").symlink_to(tmp_path / "other.txt")
    assert tree_digest(folder) != first
    (folder / "blob.bin").write_bytes(b"x" * 5000)
    with pytest.raises(SourceError, match="holds more than 4096 bytes"):
        tree_digest(folder, max_bytes=4096)
    with pytest.raises(SourceError, match="holds more than 3 files"):
        tree_digest(folder, max_entries=3)


# -- control characters -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "driver",
    [
        "./plugin\x00/x",
        "/tmp/a\x00b.whl",
        f"https://example.org/x\x00/{_SOURCES_WHEEL}",
        "git+https://example.org/r\x00.git@main",
        "json\x00",
        "reva-plugin\x00==1",
        "./plugin\x1b[31m",
        "./plugin\u202egpj.whl",
    ],
)
def test_control_characters_in_a_spec_are_one_line_exit_2(tmp_path: Path, driver: str) -> None:
    config = _sources_config(tmp_path, "revad", driver)
    line = _sources_one_line_error(cli("check", str(config)), 2)
    assert "control character" in line, line
    assert "\x00" not in line
    assert "\x1b" not in line


# -- property: classification raises nothing but the project's errors --------------------------

_SOURCES_FRAGMENTS = [
    "./", "../", "/", "..", ".", "~", "~root", "git+", "git+https://", "git+file://", "https://",
    "http://", "file://", "ftp://", "github.com/", "/tree/", "@", "#", "#subdirectory=",
    "#sha256=", "&", "%2F", "%2e", "%00", "%ff", "%", "\\", "\x00", "\n", "\u202e", "\ud800",
    ".whl", ".tar.gz", ".zip", "-1.0-py3-none-any", "==1.0", ">=", "[x]", ";", " ", ":", "::",
    "ext::", "[::1]", ":99999", "-", "_", "a", "json", "plugins", "link", "loop", "pipe", "é",
    "*", "?", "[",
]  # fmt: skip

_SOURCES_SPECS = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=20),
    st.lists(st.one_of(st.sampled_from(_SOURCES_FRAGMENTS), st.text(max_size=3)), max_size=12).map(
        "".join
    ),
)


@pytest.fixture(scope="module")
def sources_bases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Existing base folders holding what specs may name: plugins, a venv, a FIFO, a loop."""
    root = tmp_path_factory.mktemp("hostile-bases")
    make_plugin(root / "plugins" / "p")
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("home = /nowhere\n", encoding="utf-8")
    (root / "x-1.0-py3-none-any.whl").write_bytes(b"")
    os.mkfifo(root / "pipe")
    os.mkfifo(root / "pipe.whl")
    (root / "loop").symlink_to(root / "loop")
    (root / "link").symlink_to(root / "plugins")
    (root / "with space").mkdir()
    return [root, root / "plugins", root / "link", root / "with space", Path("/")]


@pytest.mark.slow
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    spec=_SOURCES_SPECS,
    index=st.integers(min_value=0, max_value=4),
    patterns=st.lists(_SOURCES_SPECS, min_size=1, max_size=3),
    sha256=st.one_of(st.none(), st.text(max_size=70), st.just("a" * 64)),
)
def test_classification_raises_only_the_projects_errors(
    sources_bases: list[Path], spec: str, index: int, patterns: list[str], sha256: str | None
) -> None:
    base = sources_bases[index]
    for allowed in (("*",), tuple(patterns)):
        try:
            source = classify_driver(spec, base_dir=base, sha256=sha256, allowed=allowed)
        except RevaPluginError:
            continue
        origin = source.origin
        assert SourcePolicy(("*",), base).allows(origin)
        if origin.kind == "path":
            assert os.path.isabs(origin.value)
            assert ".." not in Path(origin.value).parts
        if isinstance(source, ArchiveURL):
            assert "/" not in source.filename
            assert source.filename not in (".", "..")
        subdirectory = getattr(getattr(source, "git", None), "subdirectory", None)
        if subdirectory:
            assert ".." not in subdirectory.split("/")
            assert not subdirectory.startswith("/")


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(text=_SOURCES_SPECS)
def test_url_and_git_parsers_raise_only_the_projects_errors(text: str) -> None:
    for parser in (_sources_check_url, _sources_url_origin, archive_filename, _sources_git_parse):
        with contextlib.suppress(RevaPluginError):
            parser(text)
    try:
        name = archive_filename(text)
    except RevaPluginError:
        return
    assert name == os.path.basename(name)
    assert name not in ("", ".", "..")
    assert "\x00" not in name


# ================================================================================================
# Credentials and the build environment
# ================================================================================================


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
    """Poll every process's command line until ``stop``; keep those holding ``needle``."""
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
            if " install " in argv or "ls-remote" in argv or " compile " in argv:
                seen.append(argv)
        time.sleep(0.005)


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
    uv_argv, uv_env = _index_args(options, "uv", offline_flag="--offline")
    pip_argv, pip_env = _index_args(options, "pip", offline_flag="--no-index")
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


_creds_BACKEND = '''\
"""A PEP 517 backend with no requirements: it builds the plugin's wheel by hand."""

import base64
import hashlib
import os
import time
import zipfile

NAME, VERSION = "reva_hard_plugin", "1.0"
DIST = f"{NAME}-{VERSION}"
MODULE = __MODULE__


def _hook():
__HOOK__


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _hook()
    files = {
        f"{NAME}/__init__.py": MODULE,
        f"{DIST}.dist-info/METADATA": f"Metadata-Version: 2.1\\nName: reva-hard-plugin\\nVersion: {VERSION}\\n",
        f"{DIST}.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: hard\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
        f"{DIST}.dist-info/entry_points.txt": f"[reva.userprovider]\\ndemo = {NAME}:Provider\\n",
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{DIST}.dist-info/RECORD,,")
    files[f"{DIST}.dist-info/RECORD"] = "\\n".join(record) + "\\n"
    name = f"{DIST}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return name
'''


def _creds_backend_project(root: Path, hook: str) -> Path:
    """A plugin folder whose in-tree, dependency-free build backend runs ``hook`` first."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "reva_hard_backend"\nbackend-path = ["."]\n'
        '\n[project]\nname = "reva-hard-plugin"\nversion = "1.0"\n'
    )
    module = PLUGIN_MODULE.format(marker="hard", marker_body="        return MARKER")
    hook_body = textwrap.indent(textwrap.dedent(hook).strip() or "pass", "    ")
    backend = _creds_BACKEND.replace("__MODULE__", repr(module)).replace("__HOOK__", hook_body)
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


# ================================================================================================
# The cache: broken metadata, safe removal, envs in use, the cache dir
# ================================================================================================


_store_DAY = 86400.0
_store_USERS = EXAMPLES / "users.demo.json"
_store_EINSTEIN = {
    "idp": "http://localhost:20080",
    "opaque_id": "4c510ada-c86b-4815-8820-42cdf82c3d51",
}


def _store_metadata(key: str, **changes: Any) -> dict[str, Any]:
    """A valid metadata object for ``key`` with ``changes`` applied."""
    major, minor = sys.version_info[:2]
    meta: dict[str, Any] = {
        "key": key,
        "spec": "/somewhere/plugin",
        "kind": "folder",
        "identity": "tree:abc",
        "mutable": False,
        "resolved": {},
        "python": {
            "implementation": "CPython",
            "version": f"{major}.{minor}",
            "executable": sys.executable,
        },
        "installer": {"name": "uv", "version": "0"},
        "options": {"index_url": None, "find_links": []},
        "protocol": [1],
        "distributions": [{"name": "x", "version": "1"}],
        "entry_points": {},
        "created": "2026-01-01T00:00:00+00:00",
    }
    meta.update(changes)
    return meta


def _store_fake_env(
    cache: Path, name: str, metadata: Any = None, *, raw: bytes | None = None
) -> Path:
    """An ``envs/<name>`` folder that looks like a healthy venv, with the given metadata."""
    env = cache / "envs" / name
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    major, minor, micro = sys.version_info[:3]
    (env / "pyvenv.cfg").write_text(
        f"home = {Path(sys.executable).parent}\nversion_info = {major}.{minor}.{micro}\n",
        encoding="utf-8",
    )
    if raw is not None:
        (env / "reva-env.json").write_bytes(raw)
    elif metadata is not None:
        (env / "reva-env.json").write_text(json.dumps(metadata), encoding="utf-8")
    (env / "reva-env.last-used").touch()
    return env


def _store_main(argv: list[str]) -> int:
    """The CLI in this process, leaving the logging set-up as it was (``main`` installs a
    handler bound to the current, captured, stderr)."""
    logger = logging.getLogger("reva_plugins")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        return main(argv)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _store_list(capsys: pytest.CaptureFixture[str], cache: Path) -> list[dict[str, Any]]:
    assert _store_main(["--cache-dir", str(cache), "env", "list"]) == 0  # the table prints too
    assert _store_main(["--cache-dir", str(cache), "env", "list", "--json"]) == 0
    out = capsys.readouterr().out
    rows: list[dict[str, Any]] = json.loads(out[out.index("[") :])
    return rows


def _store_json_config(driver: Path, **plugins: Any) -> dict[str, Any]:
    table = {"driver": str(driver), "drivers": {"json": {"users": str(_store_USERS)}}}
    return {"plugins": plugins, "grpc": {"services": {"userprovider": table}}}


def _store_config_file(write_config: WriteConfig) -> Path:
    driver = SAMPLES / "json_users"
    return write_config(
        f'[grpc.services.userprovider]\ndriver = "{driver}"\n'
        f'[grpc.services.userprovider.drivers.json]\nusers = "{_store_USERS}"\n'
    )


# -- 1. broken metadata -------------------------------------------------------------------------

_store_KEY = "0123456789abcdef01234567"


def _store_deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.slow
@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"[]", "must be an object"),
        (json.dumps({"python": 3}).encode(), "is missing"),
        (json.dumps(_store_metadata(_store_KEY, python=3)).encode(), "python must be an object"),
        (json.dumps(_store_metadata(_store_KEY, entry_points="x")).encode(), "entry_points"),
        (
            json.dumps(_store_metadata(_store_KEY, entry_points={"reva.x": {"a": 1}})).encode(),
            "entry_points.reva.x.a",
        ),
        (json.dumps(_store_metadata(_store_KEY, resolved={"sha256": 5})).encode(), "resolved"),
        (json.dumps(_store_metadata(_store_KEY, distributions={})).encode(), "distributions"),
        (json.dumps(_store_metadata(_store_KEY, installer={"name": 1})).encode(), "installer"),
        (json.dumps(_store_metadata(_store_KEY, mutable="no")).encode(), "mutable must be bool"),
        (json.dumps(_store_metadata(_store_KEY, protocol=[True])).encode(), "protocol"),
        (json.dumps(_store_metadata("ffffffffffffffffffffffff")).encode(), "is for env"),
        (json.dumps(_store_metadata("../../x")).encode(), "not an env key"),
        (b'{"key": NaN}', "must be str"),
        (b"\xff\xfe", "not valid JSON"),
        (_store_deep(200_000), "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_store_wrong_metadata_is_listed_broken_and_removable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes, why: str
) -> None:
    cache = tmp_path / "cache"
    _store_fake_env(cache, _store_KEY, raw=raw)
    rows = _store_list(capsys, cache)
    assert [r["key"] for r in rows] == [_store_KEY]
    assert rows[0]["health"].startswith("broken: ")
    assert why in rows[0]["health"]
    assert _store_main(["--cache-dir", str(cache), "env", "remove", _store_KEY[:6]]) == 0
    assert not (cache / "envs" / _store_KEY).exists()


def test_store_valid_metadata_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = _store_metadata(_store_KEY, future_field={"kept": True})
    assert EnvMetadata.from_json(meta).to_json() == meta
    _store_fake_env(tmp_path / "cache", _store_KEY, meta)
    assert [r["health"] for r in _store_list(capsys, tmp_path / "cache")] == ["ok"]


def test_store_unreadable_or_special_metadata_never_hangs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    keys = [make_key({"n": n}) for n in range(4)]
    os.mkfifo(_store_fake_env(cache, keys[0]) / "reva-env.json")
    (_store_fake_env(cache, keys[1]) / "reva-env.json").mkdir()
    (_store_fake_env(cache, keys[2]) / "reva-env.json").symlink_to("/dev/zero")
    _store_fake_env(cache, keys[3])  # no metadata at all
    health = {r["key"]: r["health"] for r in _store_list(capsys, cache)}
    assert health == {
        keys[0]: "broken: reva-env.json is not a regular file",
        keys[1]: "broken: reva-env.json is not a regular file",
        keys[2]: "broken: reva-env.json is not a regular file",
        keys[3]: "broken: reva-env.json is missing",
    }


@pytest.mark.slow
def test_store_check_rebuilds_an_env_with_broken_metadata(
    fresh_cache: Path, write_config: WriteConfig
) -> None:
    config = _store_config_file(write_config)
    assert cli("check", str(config)).returncode == 0
    (key,) = os.listdir(fresh_cache / "envs")
    metadata = fresh_cache / "envs" / key / "reva-env.json"
    metadata.write_text(json.dumps({"python": 3, "entry_points": "x"}), encoding="utf-8")
    checked = cli("check", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "Traceback" not in checked.stderr
    assert f"env {key} is broken (key is missing); rebuilding it" in checked.stderr
    assert EnvMetadata.from_json(json.loads(metadata.read_text())).key == key
    # The library path too: a Host rebuilds it the same way.
    metadata.write_text("[]", encoding="utf-8")
    with Host(_store_json_config(SAMPLES / "json_users")) as host:
        assert host.service("userprovider").get_user(_store_EINSTEIN)["username"] == "einstein"
    assert EnvMetadata.from_json(json.loads(metadata.read_text())).key == key


# -- 1/2. odd entries in envs/, keys that try to escape ------------------------------------------


def test_store_odd_entries_are_listed_broken_and_never_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("precious", encoding="utf-8")
    Store(cache).ensure()  # a real cache, into which odd entries were put
    link_key = make_key({"link": 1})
    (cache / "envs" / link_key).symlink_to(canary)
    file_key = make_key({"file": 1})
    (cache / "envs" / file_key).write_text("not a folder", encoding="utf-8")
    (cache / "envs" / "odd name\n").mkdir()
    os.mkdir(os.path.join(os.fsencode(cache / "envs"), b"bad-\xff"))
    health = {r["key"]: r["health"] for r in _store_list(capsys, cache)}
    assert health[link_key] == f"broken: a symlink to {canary}, not an env folder"
    assert health[file_key] == "broken: a file, not an env folder"
    assert health["odd name\\n"].startswith("broken: not an env key")
    assert health["bad-\\udcff"].startswith("broken: not an env key")
    assert _store_main(["--cache-dir", str(cache), "env", "remove", link_key]) == 0
    # Names the core never makes are someone else's: listed, never removed.
    assert _store_main(["--cache-dir", str(cache), "env", "remove", "odd"]) == 2
    assert _store_main(["--cache-dir", str(cache), "env", "prune", "--unused-days", "0"]) == 0
    assert sorted(os.listdir(os.fsencode(cache / "envs"))) == [b"bad-\xff", b"odd name\n"]
    assert (canary / "keep").read_text(encoding="utf-8") == "precious"


@pytest.mark.slow
@pytest.mark.parametrize("key", ["../../canary", "..", "../canary", "/tmp", "a/../../canary", ""])
def test_store_remove_never_escapes_the_cache(tmp_path: Path, key: str) -> None:
    cache = tmp_path / "cache" / "inner"
    canary = tmp_path / "cache" / "canary"
    canary.mkdir(parents=True)
    store = Store(cache)
    store.ensure()
    with pytest.raises(RevaPluginError) as refused:
        store.remove(key)
    assert refused.value.exit_code == 2
    assert canary.is_dir()
    assert cli("--cache-dir", str(cache), "env", "remove", key).returncode == 2
    assert canary.is_dir()
    assert (tmp_path / "cache" / "inner").is_dir()


# -- 3. envs in use, vanished envs, downloads and leftovers ---------------------------------------


@pytest.mark.slow
def test_store_prune_and_remove_spare_an_env_a_running_host_uses(fresh_cache: Path) -> None:
    host = Host(_store_json_config(SAMPLES / "json_users"))
    try:
        assert host.service("userprovider").get_user(_store_EINSTEIN)["username"] == "einstein"
        (key,) = os.listdir(fresh_cache / "envs")
        stamp = fresh_cache / "envs" / key / "reva-env.last-used"
        old = time.time() - 90 * _store_DAY
        os.utime(stamp, (old, old))
        pruned = cli("env", "prune", "--unused-days", "1")
        assert pruned.returncode == 0, pruned.stderr
        assert f"kept env {key}: a running host uses it" in pruned.stderr
        assert (fresh_cache / "envs" / key / "bin" / "python").exists()
        removed = cli("env", "remove", key)
        assert removed.returncode == 1
        assert removed.stderr.strip().splitlines() == [
            f"reva-plugins: error: env {key} is in use by a running host; stop the host first"
        ]
        assert host.service("userprovider").get_user(_store_EINSTEIN)["username"] == "einstein"
    finally:
        host.close()
    # Closing the host released the env and recorded it as used now.
    assert (fresh_cache / "envs" / key / "reva-env.last-used").stat().st_mtime > old
    assert cli("env", "prune", "--unused-days", "0").stdout.startswith(f"removed {key}")
    assert os.listdir(fresh_cache / "envs") == []


@pytest.mark.slow
def test_store_host_rebuilds_an_env_removed_under_it(
    fresh_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Host(_store_json_config(SAMPLES / "json_users")) as host:
        users = host.service("userprovider")
        assert users.get_user(_store_EINSTEIN)["username"] == "einstein"
        (key,) = os.listdir(fresh_cache / "envs")
        # Removed by hand (no lock taken), then the plugin dies: the restart must rebuild.
        shutil.rmtree(fresh_cache / "envs" / key)
        pid = users.info().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), timeout=10)
        assert wait_until(lambda: users.info().state != "running", timeout=10)
        with caplog.at_level(logging.WARNING, logger="reva_plugins"):
            assert users.get_user(_store_EINSTEIN)["username"] == "einstein"
        assert (fresh_cache / "envs" / key / "bin" / "python").exists()
        assert f"its env {key} is gone from the cache; rebuilding it" in caplog.text


@pytest.mark.slow
def test_store_prune_collects_unused_downloads_and_leftovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    store = Store(cache)
    store.ensure()
    old = time.time() - 40 * _store_DAY
    stale = time.time() - 7200

    def download(digest: str, when: float) -> Path:
        folder = cache / "downloads" / digest
        folder.mkdir(parents=True)
        (folder / "x-1.0-py3-none-any.whl").write_bytes(b"wheel")
        for path in (folder / "x-1.0-py3-none-any.whl", folder):
            os.utime(path, (when, when))
        return folder

    unused = download("a" * 64, old)
    referenced = download("b" * 64, old)
    recent = download("c" * 64, time.time())
    partial = cache / "downloads" / "dl-abc"
    partial.mkdir()
    os.utime(partial, (stale, stale))
    meta = _store_metadata(_store_KEY, resolved={"sha256": "b" * 64})
    _store_fake_env(cache, _store_KEY, meta)
    leftover = cache / "tmp" / "bundle-junk"
    leftover.mkdir()
    os.utime(leftover, (stale, stale))
    building_key = make_key({"building": 1})
    building = cache / "tmp" / f"{building_key}-xyz"
    building.mkdir()
    os.utime(building, (stale, stale))
    with filelock.FileLock(str(cache / "locks" / f"{building_key}.lock")):
        # A subprocess, so the build lock is held by another process as in real life.
        pruned = cli("--cache-dir", str(cache), "env", "prune", "--unused-days", "30")
    assert pruned.returncode == 0, pruned.stderr
    assert f"removed download {'a' * 64}" in pruned.stdout
    assert not unused.exists()
    assert not partial.exists()
    assert not leftover.exists()
    assert referenced.exists()
    assert recent.exists()
    assert building.exists()
    assert (cache / "envs" / _store_KEY).exists()


@pytest.mark.slow
@pytest.mark.parametrize("days", ["nan", "-1", "inf", "1e300"])
def test_store_prune_refuses_nonsense_days(tmp_path: Path, days: str) -> None:
    cache = tmp_path / "cache"
    _store_fake_env(cache, _store_KEY, _store_metadata(_store_KEY))
    pruned = cli("--cache-dir", str(cache), "env", "prune", "--unused-days", days)
    assert pruned.returncode == 2
    assert "--unused-days" in pruned.stderr
    assert "Traceback" not in pruned.stderr
    assert (cache / "envs" / _store_KEY).exists()


# -- 4. relative cache dirs ---------------------------------------------------------------------


@pytest.mark.slow
def test_store_relative_cache_dir_from_the_environment_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    config = conf / "revad.toml"
    config.write_text(
        f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "json_users"}"\n'
        f'[grpc.services.userprovider.drivers.json]\nusers = "{_store_USERS}"\n',
        encoding="utf-8",
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {"REVA_PLUGINS_CACHE_DIR": ".cache"}
    for _ in range(2):  # the first run builds, the second starts from the cached env
        checked = cli("check", str(config), cwd=work, env=env)
        assert checked.returncode == 0, checked.stderr
    assert (work / ".cache" / "envs").is_dir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("REVA_PLUGINS_CACHE_DIR", "rel")
    assert default_cache_dir() == work / "rel"
    assert Store("other").root == work / "other"
    monkeypatch.delenv("REVA_PLUGINS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "reva-plugins"


# -- 5. unusable cache dirs ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["file", "under-file", "proc"])
@pytest.mark.parametrize("command", ["check", "call", "env build", "env list", "env prune"])
def test_store_unusable_cache_dir_is_one_line_and_exit_2(
    tmp_path: Path, write_config: WriteConfig, where: str, command: str
) -> None:
    config = _store_config_file(write_config)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file", encoding="utf-8")
    cache = {
        "file": blocker,
        "under-file": blocker / "cache",
        "proc": Path("/proc/reva-plugins-nope/cache"),
    }[where]
    args = {
        "check": ["check", str(config)],
        "call": ["call", str(config), "userprovider", "get_user", json.dumps({"user_id": {}})],
        "env build": ["env", "build", str(SAMPLES / "json_users")],
        "env list": ["env", "list"],
        "env prune": ["env", "prune"],
    }[command]
    result = cli("--cache-dir", str(cache), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cache dir {cache}" in lines[0]
    assert blocker.read_text(encoding="utf-8") == "a file"


# -- 6. a cache dir pointed at someone's folder; only the core's own names are ever deleted -------

_store_OLD = time.mktime((2020, 1, 1, 0, 0, 0, 0, 0, -1))


def _store_age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (_store_OLD, _store_OLD), follow_symlinks=False)


def _store_users_folder(root: Path, kind: str) -> None:
    """A folder of someone's files (old, so every age rule would reach them)."""
    files = {
        "repro": ["tmp/myproject/", "envs/photos/"],
        "user-files": ["tmp/myproject/main.py", "envs/photos/cat.jpg", "downloads/notes.txt",
                       "wheels/mine.whl", "report.pdf"],
        "foreign-tag": ["CACHEDIR.TAG", "data/blob"],
        "dotfile": [".keep"],
    }[kind]  # fmt: skip
    for name in files:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{name} of a user\n", encoding="utf-8")
    if kind == "foreign-tag":
        (root / "CACHEDIR.TAG").write_text(
            "Signature: 8a477f597d28d172789f06886806bc55\n# created by some-other-tool\n"
        )
    _store_age(*root.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["repro", "user-files", "foreign-tag", "dotfile"])
def test_a_cache_dir_pointed_at_a_users_folder_is_refused_and_nothing_in_it_is_touched(
    tmp_path: Path, write_config: WriteConfig, kind: str
) -> None:
    folder = tmp_path / "canary"
    folder.mkdir()
    _store_users_folder(folder, kind)
    config = _store_config_file(write_config)
    in_config = write_config(
        f'[plugins]\ncache_dir = "{folder}"\n\n[grpc.services.userprovider]\n'
        f'driver = "{SAMPLES / "json_users"}"\n',
        name="pointed.toml",
    )
    before = _sources_snapshot(folder, skip=())
    spec = str(SAMPLES / "json_users")
    commands = [
        ["check", str(config)],
        ["call", str(config), "userprovider", "get_user", json.dumps({"user_id": {}})],
        ["env", "build", str(config)],
        ["env", "build", spec],
        ["env", "list"],
        ["env", "list", "--json"],
        ["env", "remove", "photos"],
        ["env", "remove", _store_KEY],
        ["env", "prune"],
        ["env", "prune", "--unused-days", "0"],
        ["lock", str(config)],
        ["conformance", spec, "--service", "userprovider"],
    ]
    runs = [(args, cli("--cache-dir", str(folder), *args)) for args in commands]
    runs.append((["check", "(cache_dir in the config)"], cli("check", str(in_config))))
    env = {"REVA_PLUGINS_CACHE_DIR": str(folder)}
    runs.append((["env", "prune", "($REVA_PLUGINS_CACHE_DIR)"], cli("env", "prune", env=env)))
    for args, result in runs:
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert f"cache dir {folder} is neither empty nor a reva-plugins cache" in result.stderr
        assert _sources_snapshot(folder, skip=()) == before, f"{args} touched the folder"
    assert not (tmp_path / "revad.lock").exists()


def test_a_cache_dir_is_adopted_only_when_empty_or_already_a_cache(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "cache"
    Store(fresh).ensure()
    assert (fresh / "CACHEDIR.TAG").read_text(encoding="utf-8").startswith("Signature: 8a477f")
    (tmp_path / "empty").mkdir()
    Store(tmp_path / "empty").ensure()
    # Our own cache, whatever was put into it since, is ours.
    (fresh / "envs" / "photos").mkdir()
    Store(fresh).ensure()
    # A cache whose tag was lost, with nothing but what the core makes.
    lost = tmp_path / "lost"
    for name in (f"envs/{_store_KEY}/", f"locks/{_store_KEY}.lock", f"tmp/{_store_KEY}-x1/",
                 f"downloads/{'a' * 64}/", "downloads/dl-x/", f"wheels/{'b' * 64}/",
                 f"bundles/{_store_KEY}/", "virtualenv/anything/", "interpreters.json",
                 "wheels/put-here-by-hand.whl"):  # fmt: skip
        path = lost / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if name.endswith("/") else path.write_text("{}")
    Store(lost).ensure()
    assert (lost / "CACHEDIR.TAG").is_file()
    # A concurrent first ensure() still writing our tag.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "CACHEDIR.TAG").write_text("Signature: 8a47")
    Store(partial).ensure()
    refused: dict[str, Callable[[Path], object]] = {
        "tmp/myproject": lambda p: (p / "tmp" / "myproject").mkdir(parents=True),
        "notes.txt": lambda p: (p / "notes.txt").write_text("x"),
        "envs, not a folder": lambda p: (p / "envs").symlink_to(tmp_path / "empty"),
        "another program's CACHEDIR.TAG": lambda p: (p / "CACHEDIR.TAG").write_text("Signature: x"),
        "locks/other.lock": lambda p: (p / "locks" / "other.lock").mkdir(parents=True),
    }
    for why, make in refused.items():
        folder = tmp_path / f"refused-{len(why)}"
        folder.mkdir()
        make(folder)
        listed = sorted(os.listdir(folder))
        with pytest.raises(ConfigError) as error:
            Store(folder).ensure()
        assert sorted(os.listdir(folder)) == listed  # nothing written there
        assert error.value.exit_code == 2
        assert str(error.value) == (
            f"cache dir {folder} is neither empty nor a reva-plugins cache (it holds {why}); "
            "point the cache dir at a new or empty folder"
        )


@pytest.mark.slow
def test_env_prune_and_remove_in_a_cache_delete_only_names_the_core_makes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    Store(cache).ensure()
    theirs = [
        "envs/photos/cat.jpg", "envs/notes.txt", "tmp/myproject/main.py", "tmp/junk.txt",
        "downloads/readme.txt", "downloads/mine/x.whl", "wheels/mine.whl", "bundles/mine/b",
        f"tmp/{_store_KEY}", f"downloads/{'a' * 63}/x.whl",
    ]  # fmt: skip
    for name in theirs:
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_text(f"{name} of a user\n", encoding="utf-8")
    key = make_key({"ours": 1})
    _store_fake_env(cache, key, _store_metadata(key))
    ours = [cache / "envs" / key, cache / "tmp" / f"{key}-stale", cache / "tmp" / "bundle-stale",
            cache / "downloads" / "dl-stale", cache / "downloads" / ("c" * 64),
            cache / "wheels" / ("d" * 64), cache / "bundles" / key]  # fmt: skip
    for path in ours[1:]:
        path.mkdir(parents=True)
    _store_age(*cache.rglob("*"))
    before = _sources_snapshot(cache, skip=())
    # Their entries, and what they hold (the folders around them change as ours go).
    roots = {tuple(name.split("/")[:2]) for name in theirs}
    kept = {k: v for k, v in before.items() if tuple(k.split("/")[:2]) in roots}
    pruned = cli("--cache-dir", str(cache), "env", "prune", "--unused-days", "0")
    assert pruned.returncode == 0, pruned.stderr
    assert "left envs/photos alone" in pruned.stderr
    for path in ours:
        assert not os.path.lexists(path), path
    after = _sources_snapshot(cache, skip=())
    assert {k: v for k, v in after.items() if k in kept} == kept
    for name in ("photos", "notes.txt"):
        removed = cli("--cache-dir", str(cache), "env", "remove", name)
        line = _sources_one_line_error(removed, 2)
        assert f"envs/{name} is not an env reva-plugins built" in line, line
    assert _sources_snapshot(cache, skip=()) == after


# -- 7. a download a running build installs from ------------------------------------------------


def _store_sdist(folder: Path, hook: str) -> Path:
    """An sdist of the dependency-free backend project (see ``_creds_backend_project``)."""
    project = _creds_backend_project(folder / "src" / "reva_hard_plugin-1.0", hook)
    (project / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: reva-hard-plugin\nVersion: 1.0\n", encoding="utf-8"
    )
    sdist = folder / "reva_hard_plugin-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(project, arcname=project.name)
    return sdist


@pytest.mark.slow
def test_env_prune_spares_the_download_a_running_build_installs_from(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    sdist = _store_sdist(
        tmp_path / "dist",
        f"open({str(started)!r}, 'w').close()\n"
        "deadline = time.time() + 120\n"
        f"while not os.path.exists({str(go)!r}) and time.time() < deadline:\n"
        "    time.sleep(0.02)\n",
    )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    download = fresh_cache / "downloads" / digest
    config = write_config(f'[grpc.services.userprovider]\ndriver = "{sdist.as_uri()}"\n')
    build = subprocess.Popen(
        [sys.executable, "-m", "reva_plugins", "env", "build", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert wait_until(started.exists, timeout=120), "the build backend never started"
        assert (download / sdist.name).is_file()
        pruned = cli("env", "prune", "--unused-days", "0")
        assert pruned.returncode == 0, pruned.stderr
        assert (download / sdist.name).is_file(), "env prune removed the download being built"
    finally:
        go.touch()
        out, err = build.communicate(timeout=300)
    assert build.returncode == 0, err
    key = out.split()[0]
    # The build's process is gone: only its env keeps the download now, then nothing does.
    assert cli("env", "prune", "--unused-days", "30").returncode == 0
    assert download.is_dir()
    assert cli("env", "remove", key).returncode == 0
    assert cli("env", "prune", "--unused-days", "0").returncode == 0
    assert not download.exists()


# ================================================================================================
# Configuration and command line: bounds, nesting, control characters, keys, conformance secrets
# ================================================================================================


_CONFIG_JSON_USERS = SAMPLES / "json_users"
_CONFIG_EXAMPLE = str(EXAMPLES / "revad.toml")


def _config_run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a real process, bounded: a regression that hangs or reads without end fails
    here (timeout, 1 GiB of address space) instead of taking the machine down."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "reva_plugins", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=60,
        check=False,
        preexec_fn=limit,
    )


def _config_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert exit 2 with exactly one stderr line, no traceback, containing every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _config_load(write_config: WriteConfig, text: str) -> Any:
    """``load_file`` of ``text``; the ConfigError's message (or the Config if it loads)."""
    path = write_config(text)
    try:
        return load_file(path)
    except ConfigError as exc:
        return str(exc)


def _config_service(table: dict[str, Any], tmp_path: Path) -> ServiceConfig:
    return parse({"grpc": {"services": {"userprovider": table}}}, base_dir=tmp_path).services[0]


# -- 1. numbers: timeouts, concurrency, days -------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "nan",
        "inf",
        "-inf",
        "+inf",
        "1e300",
        "0",
        "0.0",
        "-1",
        "1e-9",
        "86401",
        "9999999999999999999",
    ],
)
@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[plugins]", "plugins.start_timeout"),
        ("[plugins]", "plugins.call_timeout"),
        ("[grpc.services.userprovider.plugin]", "grpc.services.userprovider.plugin.start_timeout"),
        ("[grpc.services.userprovider.plugin]", "grpc.services.userprovider.plugin.call_timeout"),
    ],
)
def test_timeouts_must_be_finite_and_within_bounds(
    write_config: WriteConfig, table: str, key: str, value: str
) -> None:
    name = key.rsplit(".", 1)[1]
    text = f'[grpc.services.userprovider]\ndriver = "json"\n\n{table}\n{name} = {value}\n'
    message = _config_load(write_config, text)
    assert isinstance(message, str), f"{key} = {value} was accepted"
    assert f"{key}: must be a finite number of seconds from 0.001 to 86400" in message


@pytest.mark.parametrize("value", ["0.001", "86400", "1", "2.5"])
def test_timeouts_at_the_bounds_are_accepted(write_config: WriteConfig, value: str) -> None:
    config = _config_load(write_config, f"[plugins]\ncall_timeout = {value}\n")
    assert not isinstance(config, str), config
    assert config.plugins.call_timeout == float(value)


@pytest.mark.parametrize("value", ["0", "-1", "1025", "100000000000", "1.5", "nan", "true"])
def test_max_concurrency_is_a_whole_number_from_1_to_1024(
    write_config: WriteConfig, value: str
) -> None:
    text = f'[grpc.services.userprovider]\ndriver = "json"\n[grpc.services.userprovider.plugin]\nmax_concurrency = {value}\n'
    message = _config_load(write_config, text)
    assert isinstance(message, str), f"max_concurrency = {value} was accepted"
    assert "grpc.services.userprovider.plugin.max_concurrency: must be" in message
    ok = _config_load(write_config, text.replace(f"= {value}", "= 1024"))
    assert ok.services[0].plugin.max_concurrency == 1024


@pytest.mark.slow
def test_a_bad_timeout_names_file_and_key_on_one_line_exit_2(write_config: WriteConfig) -> None:
    path = write_config("[plugins]\ncall_timeout = nan\n")
    _config_one_line(cli("check", str(path)), str(path), "plugins.call_timeout", "finite")


@pytest.mark.slow
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "0", "-5", "86401", "soon"])
def test_call_timeout_flag_is_bounded(value: str) -> None:
    result = _config_run(
        "call", _CONFIG_EXAMPLE, "userprovider", "find_users", '{"query": ""}', f"--timeout={value}"
    )
    _config_one_line(result, "--timeout")


@pytest.mark.slow
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e300", "36501", "many"])
def test_env_prune_unused_days_is_bounded(value: str, fresh_cache: Path) -> None:
    result = _config_run("env", "prune", f"--unused-days={value}")
    _config_one_line(result, "--unused-days")


# -- 2. user mistakes: one line, exit 2 ------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[plugins]\ncache_dir = "cache\\u0000x"\n', "plugins.cache_dir"),
        ('[plugins]\ncache_dir = "cache\\nx"\n', "plugins.cache_dir"),
        ('[plugins]\npython = "/usr/bin/python3\\u0000"\n', "plugins.python"),
        ('[plugins]\npython = "3.12\\u001b[2J"\n', "plugins.python"),
        ('[plugins]\nfind_links = ["./wheels\\u0000"]\n', "plugins.find_links[0]"),
        ('[plugins]\nindex_url = "https://pypi.org/simple\\u0000"\n', "plugins.index_url"),
        ('[plugins]\nallowed_sources = ["./x\\u0000*"]\n', "plugins.allowed_sources[0]"),
        (
            '[grpc.services.userprovider]\ndriver = "./plugin\\u0000"\n',
            "grpc.services.userprovider.driver",
        ),
        (
            '[grpc.services.userprovider]\ndriver = "json"\n[grpc.services.userprovider.plugin]\nentry_point = "j\\u0000"\n',
            "grpc.services.userprovider.plugin.entry_point",
        ),
        (
            '[grpc.services.userprovider]\ndriver = "json"\n[grpc.services.userprovider.plugin]\npython = "./py\\u0000"\n',
            "grpc.services.userprovider.plugin.python",
        ),
        (
            '[grpc.services.userprovider]\ndriver = "json"\n[grpc.services.userprovider.plugin]\nenv = { "A\\u0000B" = "x" }\n',
            'grpc.services.userprovider.plugin.env."A\\u0000B"',
        ),
        (
            '[grpc.services.userprovider]\ndriver = "json"\n[grpc.services.userprovider.plugin]\nenv = { "A=B" = "x" }\n',
            'grpc.services.userprovider.plugin.env."A=B"',
        ),
        (
            '[grpc.services.userprovider]\ndriver = "json"\n[grpc.services.userprovider.plugin]\nenv = { A = "x\\u0000y" }\n',
            "grpc.services.userprovider.plugin.env.A",
        ),
        ('[plugins]\ncache_dir = "~no-such-user-here/cache"\n', "plugins.cache_dir"),
    ],
)
@pytest.mark.slow
def test_control_characters_and_unusable_paths_are_config_errors(
    write_config: WriteConfig, toml: str, key: str
) -> None:
    path = write_config(toml)
    line = _config_one_line(cli("check", str(path)), str(path), key)
    assert "\x00" not in line
    assert "\x1b" not in line


def test_multi_line_env_values_stay_allowed(tmp_path: Path) -> None:
    pem = "-----BEGIN KEY-----\n\tabc\r\n-----END KEY-----\n"
    svc = _config_service({"driver": "json", "plugin": {"env": {"KEY": pem}}}, tmp_path)
    assert svc.plugin.env == {"KEY": pem}


@pytest.mark.slow
@pytest.mark.parametrize(
    "value",
    [
        "a = " + "[" * 10_000 + "]" * 10_000,
        "a = " + "{b = " * 10_000 + "1" + "}" * 10_000,
        "a = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1),
        "[grpc.services.userprovider]\ndriver = 'json'\n[grpc.services.userprovider.drivers.json]\n"
        "x = " + "[" * 200 + "]" * 200,
    ],
    ids=["arrays-10k", "inline-tables-10k", "arrays-65", "driver-table-200"],
)
def test_deeply_nested_toml_is_a_config_error(
    write_config: WriteConfig, tmp_path: Path, value: str
) -> None:
    path = write_config(value + "\n")
    _config_one_line(cli("check", str(path)), str(path), "nest deeper than 64 levels")
    with pytest.raises(ConfigError, match="nest deeper"):
        load_driver_table(path)


def test_deeply_nested_data_through_the_api_is_a_config_error(tmp_path: Path) -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    table = {"driver": "json", "drivers": {"json": {"deep": deep}}}
    with pytest.raises(ConfigError, match="nest deeper"):
        Host({"grpc": {"services": {"userprovider": table}}}, base_dir=tmp_path)
    looped: dict[str, Any] = {}
    looped["self"] = looped  # a cycle is unbounded nesting too, and must not loop for ever
    with pytest.raises(ConfigError, match="nest deeper"):
        parse({"plugins": looped}, base_dir=tmp_path)


@pytest.mark.slow
def test_a_fifo_config_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "revad.toml"
    os.mkfifo(fifo)
    _config_one_line(_config_run("check", str(fifo)), str(fifo), "not a regular file")
    conf = _config_run(
        "conformance", str(_CONFIG_JSON_USERS), "--service", "userprovider", "--config", str(fifo)
    )
    _config_one_line(conf, str(fifo), "not a regular file")


@pytest.mark.slow
def test_a_device_or_a_symlink_to_one_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "zero.toml"
    link.symlink_to("/dev/zero")
    for path in ("/dev/zero", str(link)):
        _config_one_line(_config_run("check", path), path, "not a regular file")


@pytest.mark.slow
def test_an_oversized_config_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    with big.open("w") as f:
        f.write("# padding\n" * 600_000)
    _config_one_line(_config_run("check", str(big)), str(big), "larger than 4 MiB")
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    _config_one_line(_config_run("check", str(folder)), "is a directory")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"a = 1\n\xff\xfe\n")
    _config_one_line(_config_run("check", str(binary)), "not UTF-8")


@pytest.mark.slow
def test_new_onto_an_existing_file_refuses_and_leaves_it_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    _config_one_line(cli("new", str(target), "--service", "userprovider"), "not a folder")
    assert target.read_text() == "keep me\n"
    under = cli("new", str(target / "sub"), "--service", "userprovider")
    _config_one_line(under, "cannot write the plugin")
    assert target.read_text() == "keep me\n"


@pytest.mark.slow
def test_new_onto_a_symlink_refuses_and_writes_nothing(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    link = tmp_path / "link"
    link.symlink_to(elsewhere)  # dangling: following it would write into `elsewhere`
    _config_one_line(cli("new", str(link), "--service", "userprovider"), "symbolic link")
    assert not elsewhere.exists()


@pytest.mark.slow
def test_new_into_an_empty_folder_works(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = cli("new", str(tmp_path / "empty"), "--service", "authprovider")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "empty" / "pyproject.toml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../../evil", "-x", "a b", "x-", "ümlaut", "a/b", "."])
def test_new_refuses_an_invalid_distribution_name(tmp_path: Path, name: str) -> None:
    result = cli("new", str(tmp_path / "p"), "--service", "userprovider", f"--name={name}")
    _config_one_line(result, "not a valid distribution name")
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["1password", "My.Plugin_2", "reva-plugin-x"])
def test_new_with_a_valid_name_writes_code_that_compiles(tmp_path: Path, name: str) -> None:
    result = cli("new", str(tmp_path / "p"), "--service", "userprovider", f"--name={name}")
    assert result.returncode == 0, result.stderr
    for source in (tmp_path / "p").rglob("*.py"):
        compile(source.read_text(), str(source), "exec")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ('{"query": NaN}', "NaN is not a JSON number"),
        ('{"query": Infinity}', "Infinity is not a JSON number"),
        ('{"query": -Infinity}', "-Infinity is not a JSON number"),
        ('{"query": 1e400}', "1e400 is not a JSON number"),
        ('{"query": ' + "[" * 10_000 + "]" * 10_000 + "}", "nests deeper than 64 levels"),
        ('{"query": ' + "[" * 100 + "]" * 100 + "}", "nests deeper than 64 levels"),
        ('{"query": ' + '{"a":' * 10_000 + "1" + "}" * 10_001, "nests deeper than 64 levels"),
    ],
    ids=["nan", "inf", "-inf", "overflow", "deep-10k", "deep-100", "deep-objects"],
)
def test_call_params_json_refuses_what_the_wire_refuses(params: str, needle: str) -> None:
    result = _config_run("call", _CONFIG_EXAMPLE, "userprovider", "find_users", params)
    line = _config_one_line(result, "PARAMS_JSON", needle)
    assert json.loads(line)["error"]["type"] == "UsageError"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--config", "{tmp}/missing.toml"], "config file not found"),
        (["--config", "{tmp}"], "is a directory"),
        (["--config", "{tmp}/bad.toml"], "invalid TOML"),
        (["--credentials", "no-colon-here"], "--credentials: must be ID:SECRET"),
        (["--credentials", ":hunter2-value"], "--credentials: must be ID:SECRET"),
    ],
)
def test_conformance_arguments_are_checked(tmp_path: Path, extra: list[str], needle: str) -> None:
    (tmp_path / "bad.toml").write_text("users = \n")
    args = [a.format(tmp=tmp_path) for a in extra]
    result = _config_run("conformance", str(_CONFIG_JSON_USERS), "--service", "authprovider", *args)
    line = _config_one_line(result, needle)
    assert "no-colon-here" not in line
    assert "hunter2" not in line


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["call", _CONFIG_EXAMPLE],
        ["check"],
        ["nosuchcommand"],
        ["new", "x", "--service", "nosuch"],
        ["check", "revad.toml\x1b[2J"],
        ["--cache-dir", "", "env", "list"],
    ],
)
def test_usage_mistakes_are_one_line(args: list[str]) -> None:
    line = _config_one_line(_config_run(*args), "error:")
    assert "\x1b" not in line


@pytest.fixture
def config_cli_logging() -> Iterator[None]:
    """``main()`` in-process points the package's loggers at this test's stderr: undo that."""
    names = ("reva_plugins", "reva_plugins.plugin", "reva_plugins.process")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    yield
    for logger, (handlers, propagate, level) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)


@pytest.mark.usefixtures("config_cli_logging")
def test_an_internal_error_is_one_line_and_visible_as_a_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def broken(args: Any) -> int:
        raise KeyError("https://user:s3cret-token@example.org/x")

    monkeypatch.setattr(cli_module, "cmd_check", broken)
    assert cli_module.main(["check", str(tmp_path / "c.toml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "internal error: KeyError" in err
    assert "run with -v for the traceback" in err
    assert "s3cret-token" not in err
    assert "Traceback" not in err
    assert cli_module.main(["-v", "check", str(tmp_path / "c.toml")]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setattr(cli_module, "cmd_call", broken)
    assert cli_module.main(["call", str(tmp_path / "c.toml"), "userprovider", "get_user"]) == 1
    error = json.loads(capsys.readouterr().err)["error"]  # call's errors stay JSON
    assert error["type"] == "InternalError"
    assert "s3cret-token" not in error["message"]


# -- 3. keys in a service table: the guide's shape is driver config, typos are errors ---------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("dirvers", "did you mean 'drivers'?"),
        ("Drivers", "did you mean 'drivers'?"),
        ("driverr", "did you mean 'driver'?"),
        ("plugn", "did you mean 'plugin'?"),
        ("Plugin", "did you mean 'plugin'?"),
    ],
)
def test_a_misspelt_service_key_is_an_error_with_a_hint(
    write_config: WriteConfig, key: str, hint: str
) -> None:
    path = write_config(
        f'[grpc.services.userprovider]\ndriver = "json"\n\n[grpc.services.userprovider.{key}.json]\nusers = "u.json"\n'
    )
    _config_one_line(cli("check", str(path)), f"grpc.services.userprovider.{key}", hint)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (
            'sha256 = "' + "a" * 64 + '"',
            "a plugin option: put it in [grpc.services.userprovider.plugin]",
        ),
        ("max_concurrency = 2", "a plugin option"),
        ("[grpc.services.userprovider.json.users]\nfile = 'x'", "a table of tables"),
    ],
)
def test_keys_that_cannot_be_driver_config_are_errors(
    write_config: WriteConfig, value: str, needle: str
) -> None:
    path = write_config(f'[grpc.services.userprovider]\ndriver = "json"\n{value}\n')
    _config_one_line(cli("check", str(path)), needle, "drivers.<name>")


def test_keys_beside_driver_are_the_drivers_config(tmp_path: Path) -> None:
    svc = _config_service(
        {
            "driver": "./plugin",
            "users": "beside.json",
            "uri": "ldap://x",
            "ldap": {"bind": "cn=x"},
            "passwords": {"einstein": "hash"},
            "drivers": {"json": {"users": "table.json"}},
        },
        tmp_path,
    )
    assert svc.driver_config("json") == {
        "users": "table.json",  # the drivers.<name> table wins
        "uri": "ldap://x",
        "ldap": {"bind": "cn=x"},
        "passwords": {"einstein": "hash"},
    }
    assert svc.driver_config("other")["users"] == "beside.json"
    assert set(SERVICE_KEYS) == {"driver", "drivers", "plugin"}


@pytest.mark.slow
def test_the_plugin_guides_shape_reaches_the_plugin(tmp_path: Path) -> None:
    users = json.loads((EXAMPLES / "users.demo.json").read_text())
    (tmp_path / "one.json").write_text(json.dumps(users[:1]))
    (tmp_path / "two.json").write_text(json.dumps(users[1:2]))
    # The guide's plugin.toml: the driver's path, then the driver's own key in the same table.
    (tmp_path / "plugin.toml").write_text(
        f'[grpc.services.userprovider]\ndriver = "{_CONFIG_JSON_USERS}"\nusers = "one.json"\n'
    )
    with Host.from_file(tmp_path / "plugin.toml") as host:
        found = host.service("userprovider").find_users("")
    assert [u["username"] for u in found] == [users[0]["username"]]
    # Both shapes at once: the drivers.<name> table wins.
    (tmp_path / "both.toml").write_text(
        f'[grpc.services.userprovider]\ndriver = "{_CONFIG_JSON_USERS}"\nusers = "one.json"\n'
        '[grpc.services.userprovider.drivers.json]\nusers = "two.json"\n'
    )
    with Host.from_file(tmp_path / "both.toml") as host:
        found = host.service("userprovider").find_users("")
    assert [u["username"] for u in found] == [users[1]["username"]]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[plugins]\ncache_dir = ''", "plugins.cache_dir"),
        ("[plugins]\nindex_url = ''", "plugins.index_url"),
        ("[plugins]\npython = '  '", "plugins.python"),
        ("[plugins]\nfind_links = ['']", "plugins.find_links[0]"),
        ("[plugins]\nallowed_sources = ['']", "plugins.allowed_sources[0]"),
        ("[grpc.services.userprovider]\ndriver = ''", "grpc.services.userprovider.driver"),
        (
            "[grpc.services.userprovider]\ndriver = 'json'\n[grpc.services.userprovider.plugin]\nentry_point = ''",
            "grpc.services.userprovider.plugin.entry_point",
        ),
        (
            "[grpc.services.userprovider]\ndriver = 'json'\n[grpc.services.userprovider.plugin]\npython = ''",
            "grpc.services.userprovider.plugin.python",
        ),
    ],
)
def test_empty_strings_are_errors(write_config: WriteConfig, table: str, key: str) -> None:
    message = _config_load(write_config, table + "\n")
    assert isinstance(message, str), f"{key} = '' was accepted"
    assert key in message
    assert "must not be empty" in message or "non-empty" in message


# -- 4. conformance: secrets returned or echoed -------------------------------------------------

_CONFIG_LEAKY = '''
"""A plugin whose leaks are chosen by its config (one build, many behaviours)."""


class NotFound(Exception):
    pass


class InvalidCredentials(Exception):
    pass


USER = {
    "id": {"idp": "t", "opaque_id": "demo", "type": 1},
    "username": "demo",
    "mail": "demo@example.org",
    "display_name": "Demo",
    "groups": ["g"],
    "uid_number": 1,
    "gid_number": 1,
}


class Provider:
    def configure(self, config):
        self.user = dict(USER, **config.get("extra", {}))

    def get_user(self, user_id, skip_fetching_groups=False):
        if user_id.get("opaque_id") != "demo":
            raise NotFound("no such user")
        user = dict(self.user)
        if skip_fetching_groups:
            user["groups"] = []
        return user

    def get_user_by_claim(self, claim, value, skip_fetching_groups=False):
        if str(self.user.get({"uid": "uid_number"}.get(claim, claim))) == value:
            return self.get_user(self.user["id"], skip_fetching_groups)
        raise NotFound(value)

    def get_user_groups(self, user_id):
        return self.get_user(user_id)["groups"]

    def find_users(self, query, skip_fetching_groups=False):
        return [self.get_user(self.user["id"], skip_fetching_groups)]


class Auth:
    def configure(self, config):
        self.mode = config.get("mode", "ok")

    def authenticate(self, client_id, client_secret):
        if client_id != "demo" or client_secret != "the-right-secret":
            if self.mode == "echo-error":
                raise InvalidCredentials(f"wrong secret {client_secret!r} for {client_id}")
            raise InvalidCredentials("invalid client id or secret")
        user = dict(USER)
        result = {"user": user, "scopes": {"user": {"role": 1}}}
        if self.mode == "token":
            result["token"] = "abc"
        elif self.mode == "hash":
            user["opaque"] = {"ldap": {"password_hash": "$2b$08$x"}}
        elif self.mode == "echo-result":
            user["display_name"] = f"Demo ({client_secret})"
        elif self.mode == "fail-loudly":
            raise RuntimeError(f"backend down while checking {client_secret}")
        return result
'''


@pytest.fixture(scope="module")
def config_leaky_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leaky")
    project = make_plugin(
        root / "leaky",
        "reva-leaky",
        entry_points={"reva.userprovider": "leaky", "reva.authprovider": "leaky"},
    )
    (project / "reva_leaky" / "__init__.py").write_text(_CONFIG_LEAKY)
    return project


def _config_conformance(
    project: Path, service: str, config: dict[str, Any], **kw: Any
) -> dict[str, str]:
    report = run_conformance(str(project), service, config=config, **kw)
    return {c.name: f"{c.status}: {c.reason}" for c in report.checks}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"password": "x"}, "password"),
        ({"userPassword": "x"}, "userPassword"),
        ({"opaque": {"map": {"ldap": {"bind_password": "x"}}}}, "opaque.map.ldap.bind_password"),
        ({"attrs": [{"Client-Secret": "x"}]}, "attrs[0].Client-Secret"),
        ({"PWD": "x"}, "PWD"),
        ({"hash": "x"}, "hash"),
        ({"sessionToken": "x"}, "sessionToken"),
        ({"api_key": "x"}, "api_key"),
    ],
)
def test_conformance_flags_secret_like_fields_at_any_depth(
    config_leaky_plugin: Path, extra: dict[str, Any], where: str
) -> None:
    checks = _config_conformance(config_leaky_plugin, "userprovider", {"extra": extra})
    assert checks["find_users returns Users"].startswith("fail"), checks
    assert f"returns a secret ({where})" in checks["find_users returns Users"]
    assert checks["get_user returns the User asked for"].startswith("fail")


@pytest.mark.slow
def test_conformance_passes_a_user_without_secrets(config_leaky_plugin: Path) -> None:
    extra = {"pwd_last_set": 0, "secret_question_set": True, "tokens_issued": 3}
    checks = _config_conformance(config_leaky_plugin, "userprovider", {"extra": extra})
    assert all(v.startswith("pass") for v in checks.values()), checks


@pytest.mark.parametrize(
    ("mode", "check", "needle"),
    [
        ("ok", None, None),
        ("echo-error", "bad credentials raise InvalidCredentials", "echoes the client secret"),
        ("token", "good credentials return a User and scopes", "returns a secret (token)"),
        (
            "hash",
            "good credentials return a User and scopes",
            "returns a secret (user.opaque.ldap.password_hash)",
        ),
        (
            "echo-result",
            "good credentials return a User and scopes",
            "echoes the client secret (in user.display_name)",
        ),
        ("fail-loudly", "good credentials return a User and scopes", "RemoteError"),
    ],
)
@pytest.mark.slow
def test_conformance_flags_auth_results_and_errors_that_leak_the_secret(
    config_leaky_plugin: Path, mode: str, check: str | None, needle: str | None
) -> None:
    secret = "the-right-secret"
    checks = _config_conformance(
        config_leaky_plugin, "authprovider", {"mode": mode}, credentials=("demo", secret)
    )
    if check is None:
        assert all(v.startswith("pass") for v in checks.values()), checks
        return
    assert needle is not None
    assert checks[check].startswith("fail"), checks
    assert needle in checks[check]
    assert all(secret not in reason for reason in checks.values()), checks


@pytest.mark.slow
def test_conformance_cli_shows_no_secret(config_leaky_plugin: Path, tmp_path: Path) -> None:
    (tmp_path / "driver.toml").write_text('mode = "fail-loudly"\n')
    result = cli(
        "conformance",
        str(config_leaky_plugin),
        "--service=authprovider",
        f"--config={tmp_path / 'driver.toml'}",
        "--credentials=demo:the-right-secret",
        "--json",
    )
    assert result.returncode == 1, result.stderr
    assert "the-right-secret" not in result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert "***" in checks["good credentials return a User and scopes"]["reason"]


# -- 5. property-based: config parsing raises nothing but ConfigError ---------------------------

_CONFIG_SCALARS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["", " ", "json", "./x", "~", "~nobody-here/x", "/", "a\x00b", "3.12", "..", "\x1b"]
    ),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
_CONFIG_KEYS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        [
            "plugins", "grpc", "services", "userprovider", "authprovider", "driver", "drivers",
            "plugin", "dirvers", "cache_dir", "installer", "python", "start_timeout",
            "call_timeout", "allowed_sources", "offline", "index_url", "find_links",
            "max_download_mb", "allow_http", "entry_point", "sha256", "env", "max_concurrency",
            "restart", "memory_mb", "cpu_seconds", "open_files", "network", "json", "users",
        ]
    ),
)  # fmt: skip
_CONFIG_VALUES = st.recursive(
    _CONFIG_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_CONFIG_KEYS, inner, max_size=5),
    max_leaves=30,
)
_CONFIG_SERVICE = st.builds(
    lambda extra, base: {**extra, **base},
    st.dictionaries(_CONFIG_KEYS, _CONFIG_VALUES, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "driver": _CONFIG_SCALARS,
            "drivers": st.dictionaries(_CONFIG_KEYS, _CONFIG_VALUES, max_size=3),
            "plugin": st.dictionaries(_CONFIG_KEYS, _CONFIG_VALUES, max_size=6),
        },
    ),
)
_CONFIG_DATA = st.fixed_dictionaries(
    {},
    optional={
        "plugins": st.dictionaries(_CONFIG_KEYS, _CONFIG_VALUES, max_size=6) | _CONFIG_VALUES,
        "grpc": st.fixed_dictionaries(
            {},
            optional={
                "services": st.dictionaries(
                    st.sampled_from(["userprovider", "authprovider", "gateway"])
                    | st.text(max_size=5),
                    _CONFIG_SERVICE | _CONFIG_VALUES,
                    max_size=3,
                )
            },
        )
        | _CONFIG_VALUES,
    },
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(data=_CONFIG_DATA)
def test_parse_raises_only_config_errors(data: dict[str, Any]) -> None:
    try:
        config = parse(data, base_dir=ROOT / "tests")
    except ConfigError as exc:
        message = str(exc)
    else:
        message = ""
        for svc in config.services:
            svc.driver_config("json")
    assert "\n" not in message
    assert "\x00" not in message


_CONFIG_LINES = st.sampled_from(
    [
        "[plugins]", "[grpc.services.userprovider]", "[grpc.services.userprovider.plugin]",
        "[grpc.services.userprovider.drivers.json]", 'driver = "json"', "driver = 1",
        "start_timeout = nan", "call_timeout = inf", "call_timeout = 1e300", "max_concurrency = 0",
        'cache_dir = ""', 'python = "\\u0000"', 'env = { A = "b" }', "users = 'x.json'",
        "a = " + "[" * 80 + "]" * 80, 'dirvers = { json = { users = "x" } }',
        "[[grpc.services]]", "x = 1979-05-27",
    ]
)  # fmt: skip


@pytest.mark.slow
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.lists(_CONFIG_LINES | st.text(max_size=20), max_size=12).map("\n".join))
def test_load_file_raises_only_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "revad.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(ConfigError):
        load_file(path)


# ================================================================================================
# The wire: nesting, non-finite numbers, early output, crashes under load
# A hostile wire: deep nesting, NaN, garbage and prints before the bootstrap, crashes under load;
# ================================================================================================


_wire_DEEP = 100_000

_wire_PLUGIN = '''
"""A plugin that attacks the core through the wire."""

import os
import time

import __main__

MODE = os.environ.get("HOSTILE_MODE", "")


def _wire():
    return int(__main__.WIRE_FD)


if MODE == "deep_handshake":
    os.write(_wire(), b"[" * 100000 + b"\\n")
if MODE == "nan_handshake":
    os.write(_wire(), b'{"jsonrpc":"2.0","method":"$/handshake","params":{"pid":NaN}}\\n')


class Hostile:
    def configure(self, config):
        pass

    def echo(self, value, delay=0.0):
        if delay:
            time.sleep(delay)
        return value

    def raw(self, data, context):
        """Write ``data`` (latin-1 text; ``{id}`` is this call's id) to the wire, then reply."""
        os.write(_wire(), data.replace("{id}", str(context.id)).encode("latin-1"))
        return "real reply"

    def get_user(self, user_id, context, skip_fetching_groups=False):
        """The CLI calls only a service's methods: this one misbehaves as ``opaque_id`` says."""
        kind = user_id.get("opaque_id")
        if kind in ("nan", "inf"):
            return getattr(self, kind)()
        if kind == "raw":
            return self.raw(user_id["data"], context)
        return user_id

    def nan(self):
        return {"x": float("nan")}

    def inf(self):
        return [1, float("-inf")]

    def deep(self):
        value = []
        for _ in range(100000):
            value = [value]
        return value

    def crash(self, code=7):
        os._exit(code)
'''


def _wire_make_plugin(root: Path) -> Path:
    (root / "reva_wire_hostile").mkdir(parents=True)
    (root / "reva_wire_hostile" / "__init__.py").write_text(_wire_PLUGIN, encoding="utf-8")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "reva-wire-hostile"
            version = "0.1"

            [project.entry-points."reva.userprovider"]
            hostile = "reva_wire_hostile:Hostile"
            """
        ),
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def wire_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wire_make_plugin(tmp_path_factory.mktemp("wire") / "hostile")


def _wire_config(project: Path) -> dict[str, Any]:
    driver = {"driver": str(project), "plugin": {"max_concurrency": 16}}
    return {"grpc": {"services": {"userprovider": driver}}}


@pytest.fixture(scope="module")
def wire_spec(
    wire_project: Path, tmp_path_factory: pytest.TempPathFactory, session_dirs: dict[str, Path]
) -> LaunchSpec:
    host = Host(_wire_config(wire_project), base_dir=tmp_path_factory.mktemp("wirehost"))
    plan = host.planner.plan(host.config.service("userprovider"))
    assert isinstance(plan, IsolatedPlan)
    return plan.launch


@pytest.fixture
def wire_start(wire_spec: LaunchSpec) -> Iterator[Any]:
    started: list[PluginProcess] = []

    def start(**changes: Any) -> PluginProcess:
        process = PluginProcess(dataclasses.replace(wire_spec, **changes))
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.close()


def _wire_strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in output")

    return json.loads(text, parse_constant=refuse)


# -- deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_deeply_nested_reply_fails_only_its_own_call(wire_start: Any) -> None:
    process = wire_start()
    deep = '{"jsonrpc":"2.0","id":{id},"result":' + "[" * _wire_DEEP + "\n"
    results: dict[int, Any] = {}

    def echo(i: int) -> None:
        results[i] = process.call("echo", {"value": i, "delay": 0.01 * (i % 4)})

    threads = [threading.Thread(target=echo, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    with pytest.raises(ProtocolError, match="nested too deeply"):
        process.call("raw", {"data": deep})
    for thread in threads:
        thread.join()
    assert results == {i: i for i in range(12)}
    assert process.call("echo", {"value": "still fine"}) == "still fine"


@pytest.mark.slow
def test_a_deeply_nested_reply_with_its_id_last_fails_its_call(wire_start: Any) -> None:
    process = wire_start()
    deep = '{"jsonrpc":"2.0","result":' + "[" * _wire_DEEP + ',"id":{id}}\n'
    with pytest.raises(ProtocolError, match="nested too deeply"):
        process.call("raw", {"data": deep}, timeout=60)
    assert process.call("echo", {"value": 1}) == 1


@pytest.mark.slow
def test_a_deeply_nested_handshake_is_a_handshake_error(wire_start: Any) -> None:
    with pytest.raises(HandshakeError, match=r"not a handshake: invalid JSON.*nested too deeply"):
        wire_start(env={"HOSTILE_MODE": "deep_handshake"}, start_timeout=10)


@pytest.mark.slow
def test_nan_in_the_handshake_is_a_handshake_error(wire_start: Any) -> None:
    with pytest.raises(HandshakeError, match="NaN is not valid JSON"):
        wire_start(env={"HOSTILE_MODE": "nan_handshake"}, start_timeout=10)


@pytest.mark.slow
def test_a_deeply_nested_result_is_an_error_reply(wire_start: Any) -> None:
    process = wire_start()
    with pytest.raises(RemoteError, match="deep: result is not valid JSON"):
        process.call("deep", {})
    assert process.call("echo", {"value": 1}) == 1


class _WireBootstrap:
    """The bootstrap run directly, its wire a socketpair held by the test."""

    def __init__(self, spec: LaunchSpec) -> None:
        parent, child = socket.socketpair()
        entry = dict(
            spec.entry,
            wire_fd=child.fileno(),
            service="userprovider",
            max_concurrency=spec.max_concurrency,
            max_line=spec.max_line,
            log_level="info",
        )
        self.proc = subprocess.Popen(
            [str(spec.python), "-I", str(BOOTSTRAP_FILE), json.dumps(entry)],
            env=plugin_environment(spec),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(child.fileno(),),
            start_new_session=True,
        )
        child.close()
        parent.settimeout(30)
        self.sock = parent
        self.file = parent.makefile("rb")
        assert json.loads(self.file.readline())["method"] == "$/handshake"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any]:
        message = json.loads(self.file.readline())
        assert isinstance(message, dict)
        return message

    def close(self) -> None:
        self.sock.close()
        self.file.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def wire_bootstrap(wire_spec: LaunchSpec) -> Iterator[_WireBootstrap]:
    bootstrap = _WireBootstrap(wire_spec)
    yield bootstrap
    bootstrap.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "line",
    [
        b"[" * _wire_DEEP + b"\n",
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":' + b"[" * _wire_DEEP + b"\n",
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":NaN}}\n',
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":-Infinity}}\n',
        b"\xff\xfe garbage\n",
        b'"\xed\xa0\x80"\n',
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":"\\ud800"}}\n',
    ],
)
def test_the_bootstrap_answers_bad_json_with_a_parse_error(
    wire_bootstrap: _WireBootstrap, line: bytes
) -> None:
    wire_bootstrap.send(line)
    reply = wire_bootstrap.reply()
    assert reply["id"] is None
    assert reply["error"]["code"] == PARSE_ERROR
    wire_bootstrap.send(b'{"jsonrpc":"2.0","id":2,"method":"echo","params":{"value":"ok"}}\n')
    assert wire_bootstrap.reply() == {"jsonrpc": "2.0", "id": 2, "result": "ok"}


@pytest.mark.slow
def test_the_bootstrap_survives_an_empty_method_name(wire_bootstrap: _WireBootstrap) -> None:
    wire_bootstrap.send(b'{"jsonrpc":"2.0","id":3,"method":""}\n')
    assert wire_bootstrap.reply()["error"]["code"] == -32601
    wire_bootstrap.send(b'{"jsonrpc":"2.0","id":4,"method":"echo","params":{"value":4}}\n')
    assert wire_bootstrap.reply()["result"] == 4


# -- NaN and infinity --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nan", "inf"])
def test_a_nan_result_is_refused_by_the_plugin_naming_the_method(
    wire_start: Any, method: str
) -> None:
    process = wire_start()
    with pytest.raises(RemoteError, match=f"{method}: result is not valid JSON"):
        process.call(method, {})
    assert process.call("echo", {"value": 1}) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("NaN", "NaN is not valid JSON"),
        ("Infinity", "Infinity is not valid JSON"),
        ("[-Infinity]", "-Infinity is not valid JSON"),
        ('{"k":"\\udc00"}', "lone surrogate"),
        ("1e400", "not valid JSON"),
    ],
)
def test_non_json_values_from_the_plugin_are_a_protocol_error(
    wire_start: Any, token: str, reason: str
) -> None:
    process = wire_start()
    with pytest.raises(ProtocolError, match=reason):
        process.call("raw", {"data": '{"jsonrpc":"2.0","id":{id},"result":' + token + "}\n"})
    assert process.call("echo", {"value": 1}) == 1


@pytest.mark.slow
@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, {"x": float("-inf")}]])
def test_nan_in_params_is_a_usage_error(wire_start: Any, value: Any) -> None:
    process = wire_start()
    with pytest.raises(UsageError, match="params of 'echo' are not valid JSON"):
        process.call("echo", {"value": value})
    assert process._client.pending == {}
    assert process.call("echo", {"value": 2}) == 2


@pytest.mark.slow
def test_nan_in_a_driver_config_is_a_usage_error_at_start(wire_start: Any) -> None:
    with pytest.raises(UsageError, match="params of 'configure' are not valid JSON"):
        wire_start(config={"limit": float("inf")})


@pytest.mark.slow
def test_call_prints_only_strict_json(wire_project: Path, write_config: WriteConfig) -> None:
    config = write_config(
        f'[grpc.services.userprovider]\ndriver = "{wire_project}"\n', name="wire.toml"
    )
    nan_reply = '{"jsonrpc":"2.0","id":{id},"result":[NaN]}\n'
    for user_id in [
        {"opaque_id": "nan"},
        {"opaque_id": "inf"},
        {"opaque_id": "raw", "data": nan_reply},
        {"opaque_id": "raw", "data": nan_reply.replace("NaN", '"\\ud800"')},
        {"opaque_id": "raw", "data": nan_reply.replace("NaN", "1e999")},
        {"opaque_id": float("nan")},
        {"opaque_id": [1.5, "x"]},
    ]:
        params = json.dumps({"user_id": user_id})
        result = cli("call", str(config), "userprovider", "get_user", params)
        if result.stdout:
            assert result.returncode == 0
            _wire_strict(result.stdout)
        else:
            assert result.returncode in (1, 2), result.stderr
            assert "Traceback" not in result.stderr
            _wire_strict(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0
    assert _wire_strict(result.stdout) == {"opaque_id": [1.5, "x"]}


# -- output before the bootstrap runs ----------------------------------------------------------


@pytest.mark.slow
def test_pth_files_that_write_to_stdout_cannot_touch_the_wire(
    wire_spec: LaunchSpec, wire_start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reva_plugins.plugin")
    purelib = subprocess.run(
        [str(wire_spec.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pths = [Path(purelib) / "aaa_wire_garbage.pth", Path(purelib) / "aab_wire_big.pth"]
    pths[0].write_text('import os; os.write(1, b"garbage\\n")\n', encoding="utf-8")
    pths[1].write_text('import sys; print("M" * 1024 * 1024)\n', encoding="utf-8")
    try:
        process = wire_start()
        assert process.call("echo", {"value": "answers"}) == "answers"
    finally:
        for pth in pths:
            pth.unlink()
    assert wait_until(
        lambda: "garbage" in {getattr(r, "plugin_message", None) for r in caplog.records}
    )


# -- a crash under load ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "exit"])
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_a_crash_under_load_fails_calls_only_with_plugin_crashed(
    wire_start: Any, how: str, attempt: int
) -> None:
    process = wire_start()
    errors: list[BaseException] = []
    wrong: list[Any] = []
    answered = threading.Semaphore(0)

    def caller(n: int) -> None:
        for i in range(100_000):
            value = [n, i, "x" * (i % 64)]
            try:
                got = process.call("echo", {"value": value}, timeout=30)
            except RevaPluginError as exc:
                errors.append(exc)
                return
            if got != value:
                wrong.append((value, got))
            answered.release()

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        assert answered.acquire(timeout=30)
    if how == "kill":
        os.kill(process.pid, signal.SIGKILL)
    else:
        with contextlib.suppress(PluginCrashed):
            process.call("crash", {"code": 9})
    for thread in threads:
        thread.join(60)
    assert not wrong
    assert len(errors) == 16
    assert [e for e in errors if not isinstance(e, PluginCrashed)] == []
    assert {e.returncode for e in errors} == {-9 if how == "kill" else 9}  # type: ignore[attr-defined]


# -- properties of the line reader and decoding ------------------------------------------------

_wire_MAX_LINE = 64


def _wire_feed(chunks: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    reading, writing = socket.socketpair()

    def write() -> None:
        with writing:
            for chunk in chunks:
                writing.sendall(chunk)

    thread = threading.Thread(target=write)
    thread.start()
    return reading, thread


_wire_bytes = st.binary(max_size=300) | st.sampled_from(
    [b"\n", b"\x00", b"\xff\xfe", b"x" * 1000, b"[" * 5000, b'{"id": 1}\n']
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_wire_bytes, max_size=20))
def test_the_line_reader_returns_whole_lines_in_order(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    lines = [line + b"\n" for line in data.split(b"\n")[:-1]]
    sock, writer = _wire_feed(chunks)
    events: list[bytes | None] = []
    with sock:
        reader = LineReader(sock, _wire_MAX_LINE)
        while True:
            try:
                got = reader.readline(10.0)
            except _Oversized as exc:
                events.append(None if len(exc.head) <= 4096 else b"head too long")
                continue
            assert isinstance(got, bytes), "timed out"
            if not got:
                break
            events.append(got)
    writer.join()
    if len(events) == len(lines) + 1:  # an oversized unterminated tail is reported, not returned
        assert events.pop() is None
        assert len(data.rsplit(b"\n", 1)[-1]) > _wire_MAX_LINE
    assert len(events) == len(lines)
    for event, line in zip(events, lines):
        if event is None:
            assert len(line) - 1 > _wire_MAX_LINE
        else:
            assert event == line


_wire_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
_wire_finite_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | st.integers(1, 300_000).map(lambda n: b"[" * n)
    | st.integers(1, 300_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
    | st.sampled_from([b"NaN", b"[Infinity]", b"-Infinity", b'"\xed\xa0\x80"', b"1e999999"])
    | st.from_regex(
        rb'\A\[(-?[0-9]{1,400}(\.[0-9]{1,5})?([eE][-+]?[0-9]{1,4})?|"(\\u[dD][0-9a-fA-F]{3}|x)+")\]\Z'
    )
)
def test_loads_raises_only_value_error(data: bytes) -> None:
    try:
        value = loads(data)
    except ValueError:
        return
    if len(data) < 1000:  # what the wire decodes, it can encode again: strict JSON, UTF-8
        assert loads(dumps(value).encode("utf-8")) == value


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _wire_json) | st.dictionaries(
    st.sampled_from(["code", "message", "data"]),
    _wire_json | st.dictionaries(st.sampled_from(["type", "traceback"]), _wire_json),
))  # fmt: skip
def test_error_to_exception_takes_any_error_object(error: dict[str, Any]) -> None:
    exc = error_to_exception(error, plugin="p")
    assert isinstance(exc, RemoteError)
    assert isinstance(exc.code, int)
    assert str(exc)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.integers(1, 200_000).map(lambda n: b"[" * n))
def test_guess_id_takes_any_bytes(line: bytes) -> None:
    found = guess_id(line)
    assert found is None or 0 <= found < 10**18


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(_wire_json, max_size=3))
def test_params_encode_or_raise_a_usage_error(values: list[Any]) -> None:
    try:
        line = encode_request(1, "m", {"values": values})
    except UsageError:
        return
    assert loads(line)["params"] == {"values": values}


def _wire_garbage_lines() -> st.SearchStrategy[list[bytes]]:
    line = (
        st.binary(max_size=200)
        | st.integers(1, 100_000).map(lambda n: b'{"id":1,"result":' + b"[" * n)
        | st.sampled_from([b'{"id":1,"result":NaN}', b'{"id":1}', b"[1]", b'{"id":true}'])
        | _wire_json.map(lambda v: json.dumps(v).encode())
    )
    return st.lists(line.map(lambda b: b.replace(b"\n", b" ") + b"\n"), max_size=5)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_wire_garbage_lines(), _wire_finite_json)
def test_the_client_delivers_replies_through_any_garbage(garbage: list[bytes], value: Any) -> None:
    core, plugin = socket.socketpair()
    client = Client(core, label="p", max_line=1_000_000)
    requests = plugin.makefile("rb")

    def serve() -> None:
        for _ in range(2):
            request = json.loads(requests.readline())
            for line in garbage if request["id"] == 1 else []:
                plugin.sendall(line)
            reply = {"jsonrpc": "2.0", "id": request["id"], "result": request["params"]["v"]}
            plugin.sendall(json.dumps(reply, allow_nan=False).encode() + b"\n")

    server = threading.Thread(target=serve)
    server.start()
    try:
        clean = json.loads(json.dumps(value))
        try:
            first = client.call("m", {"v": clean}, timeout=30)
        except ProtocolError:
            first = ProtocolError
        except RemoteError:
            first = RemoteError
        if first is ProtocolError or first is RemoteError:
            assert any(guess_id(line) == 1 or b'"id"' in line for line in garbage)
        elif first != clean:
            assert any(b'"result"' in line or b'"id"' in line for line in garbage)
        assert client.call("m", {"v": "second"}, timeout=30) == "second"
    finally:
        server.join()
        requests.close()
        plugin.close()
        core.close()


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500) | st.integers(1, 200_000).map(lambda n: b'{"a":' * n + b"\n"))
def test_dispatching_any_bytes_raises_nothing(line: bytes) -> None:
    core, plugin = socket.socketpair()
    with core, plugin:
        client = Client(core, label="p", max_line=1_000_000)
        client._dispatch(line)


# ================================================================================================
# Plugin processes: orphans, process groups, resource limits, log lines
# ================================================================================================


_process_MODULE = '''
"""A plugin that misbehaves as an OS process (generated by tests/test_hostile_process.py)."""

import os
import socket
import sys
import time


def _detach(pidfile):
    """Double fork; the grandchild calls setsid() and becomes `sleep 300`; its pid goes to
    ``pidfile``."""
    first = os.fork()
    if first == 0:
        os.setsid()
        second = os.fork()
        if second == 0:
            os.execvp("sleep", ["sleep", "300"])
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(second))
        os.rename(pidfile + ".tmp", pidfile)
        os._exit(0)
    os.waitpid(first, 0)
    with open(pidfile) as f:
        return int(f.read())


if os.environ.get("HP_IMPORT_SLEEP"):
    grandchild = _detach(os.environ["HP_IMPORT_SLEEP"] + ".grandchild")
    with open(os.environ["HP_IMPORT_SLEEP"] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.environ["HP_IMPORT_SLEEP"] + ".tmp", os.environ["HP_IMPORT_SLEEP"])
    time.sleep(300)


class Hostile:
    def detach(self, pidfile):
        return _detach(pidfile)

    def busy(self):
        while True:
            pass

    def allocate(self, mb):
        return len(bytearray(mb * 1024 * 1024))

    def open_many(self, n):
        self.files = [open(os.devnull) for _ in range(n)]
        return len(self.files)

    def connect(self, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            return "connected"

    def stderr(self, text):
        sys.stderr.write(text + "\\n")
        sys.stderr.flush()
        return True

    def log(self, message, **fields):
        import logging

        logging.getLogger("hostile").warning(message, extra=fields)
        return True

    def raise_error(self, message):
        raise ValueError(message)

    def flood(self, n):
        for i in range(n):
            sys.stderr.write(f"flood {i}\\n")
        sys.stderr.flush()
        return n

    def crash(self, text):
        sys.stderr.write(text + "\\n")
        sys.stderr.flush()
        os._exit(3)
'''

_process_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "reva-hostile-process-plugin"
version = "0.1"

[project.entry-points."reva.userprovider"]
hostile = "reva_hostile_process:Hostile"

[tool.hatch.build.targets.wheel]
packages = ["reva_hostile_process"]
"""


@pytest.fixture(scope="module")
def process_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-process") / "plugin"
    (root / "reva_hostile_process").mkdir(parents=True)
    (root / "pyproject.toml").write_text(_process_PYPROJECT)
    (root / "reva_hostile_process" / "__init__.py").write_text(_process_MODULE)
    return root


def _process_config(plugin: Path, **settings: Any) -> dict[str, Any]:
    settings.setdefault("start_timeout", 60)
    return {"grpc": {"services": {"userprovider": {"driver": str(plugin), "plugin": settings}}}}


@pytest.fixture
def process_host(process_plugin: Path, tmp_path: Path) -> Iterator[Any]:
    hosts: list[Host] = []

    def make(**settings: Any) -> Any:
        host = Host(_process_config(process_plugin, **settings), base_dir=tmp_path)
        hosts.append(host)
        return _supervisor_of(host)

    yield make
    for host in hosts:
        host.close()


def _supervisor_of(host: Host) -> Supervisor:
    """The supervisor behind the user provider: these tests call the process plugin's own
    methods (detach, allocate …), which are not part of the service."""
    driver = host.service("userprovider").driver
    assert isinstance(driver, IsolatedDriver)
    return driver.supervisor


def _process_core(
    plugin: Path, tmp_path: Path, body: str, prelude: str = "", **settings: Any
) -> subprocess.Popen[str]:
    """A separate core process running a Host; ``body`` runs with ``sup`` (the supervisor)."""
    script = prelude + textwrap.dedent(
        """
        import json, sys, time
        from reva_plugins import Host
        host = Host({config!r}, base_dir={base!r})
        sup = host.service("userprovider").driver.supervisor
        """
    ).format(config=_process_config(plugin, **settings), base=str(tmp_path))
    return subprocess.Popen(
        [sys.executable, "-c", script + textwrap.dedent(body)], stdout=subprocess.PIPE, text=True
    )


# -- orphans -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_setsid_grandchild_dies_with_host_close(process_plugin: Path, tmp_path: Path) -> None:
    host = Host(_process_config(process_plugin), base_dir=tmp_path)
    supervisor = _supervisor_of(host)
    grandchild = supervisor.call("detach", {"pidfile": str(tmp_path / "gc")})
    plugin = host.service("userprovider").info().pid
    assert plugin is not None
    assert pid_alive(grandchild)
    assert os.getsid(grandchild) != os.getsid(plugin)  # it really left the plugin's session
    host.close()
    assert wait_until(lambda: not pid_alive(grandchild) and not pid_alive(plugin), timeout=10)


@pytest.mark.slow
def test_a_setsid_grandchild_dies_when_the_core_is_killed(
    process_plugin: Path, tmp_path: Path
) -> None:
    core = _process_core(
        process_plugin,
        tmp_path,
        f"""
        grandchild = sup.call("detach", {{"pidfile": {str(tmp_path / "gc")!r}}})
        print(json.dumps([sup.process.pid, grandchild]), flush=True)
        time.sleep(300)
        """,
    )
    assert core.stdout is not None
    plugin, grandchild = json.loads(core.stdout.readline())
    assert pid_alive(plugin)
    assert pid_alive(grandchild)
    core.kill()
    core.wait()
    assert wait_until(lambda: not pid_alive(plugin) and not pid_alive(grandchild), timeout=10)


@pytest.mark.slow
def test_a_plugin_still_importing_dies_with_a_killed_core(
    process_plugin: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "importing"
    core = _process_core(
        process_plugin,
        tmp_path,
        'sup.call("detach", {"pidfile": "unused"})\n',
        env={"HP_IMPORT_SLEEP": str(pidfile)},
    )
    assert wait_until(pidfile.exists, timeout=60)
    plugin = int(pidfile.read_text())
    grandchild = int(Path(f"{pidfile}.grandchild").read_text())
    assert pid_alive(plugin)
    assert pid_alive(grandchild)
    core.kill()
    core.wait()
    assert wait_until(lambda: not pid_alive(plugin) and not pid_alive(grandchild), timeout=10)


@pytest.mark.slow
def test_a_plugin_killed_while_importing_takes_its_descendants(
    process_host: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "importing"
    with pytest.raises(HandshakeError, match="no handshake within"):
        process_host(env={"HP_IMPORT_SLEEP": str(pidfile)}, start_timeout=3).call("busy", {})
    grandchild = int(Path(f"{pidfile}.grandchild").read_text())
    assert wait_until(lambda: not pid_alive(grandchild), timeout=10)


@pytest.mark.slow
def test_the_plugin_has_its_own_process_group_but_not_its_own_session(
    process_host: Any,
) -> None:
    supervisor = process_host()
    supervisor.call("stderr", {"text": "up"})
    pid = supervisor.process.pid
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == os.getsid(0)


# -- resource limits ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_seconds_kills_a_busy_loop_and_says_so(process_host: Any) -> None:
    supervisor = process_host(cpu_seconds=1, call_timeout=120)
    with pytest.raises(PluginCrashed, match=r"plugin exceeded cpu_seconds=1 \(") as info:
        supervisor.call("busy", {})
    assert info.value.returncode in (-signal.SIGXCPU, -signal.SIGKILL)


@pytest.mark.slow
def test_memory_mb_stops_a_big_allocation_and_names_the_limit(process_host: Any) -> None:
    limited = process_host(memory_mb=128)
    with pytest.raises(RemoteError, match=r"plugin exceeded memory_mb=128") as info:
        limited.call("allocate", {"mb": 500})
    assert info.value.type == "MemoryError"
    assert limited.call("allocate", {"mb": 8}) == 8 * 1024 * 1024  # it survived
    assert process_host().call("allocate", {"mb": 500}) == 500 * 1024 * 1024


@pytest.mark.slow
def test_a_crash_under_memory_mb_names_the_limit(process_host: Any) -> None:
    supervisor = process_host(memory_mb=256)
    with pytest.raises(PluginCrashed, match=r"plugin exceeded memory_mb=256"):
        supervisor.call("crash", {"text": "MemoryError"})


@pytest.mark.slow
def test_open_files_limits_descriptors_and_names_the_limit(process_host: Any) -> None:
    with pytest.raises(RemoteError, match=r"plugin exceeded open_files=32: .*Too many open"):
        process_host(open_files=32).call("open_many", {"n": 100})
    assert process_host().call("open_many", {"n": 100}) == 100


@pytest.fixture
def process_server() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.mark.slow
def test_network_false_cuts_the_plugin_off(process_host: Any, process_server: int) -> None:
    assert process_host().call("connect", {"port": process_server}) == "connected"
    isolated = process_host(network=False)
    with pytest.raises(RemoteError) as info:
        isolated.call("connect", {"port": process_server})
    assert info.value.type in ("ConnectionRefusedError", "OSError")
    assert isolated.call("stderr", {"text": "the wire still works"}) is True


_process_NO_USERNS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.geteuid(), os.getegid()
assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())  # CLONE_NEWUSER
for name, text in (("uid_map", f"1000 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"1000 {gid} 1")):
    with open(f"/proc/self/{name}", "w") as f:
        f.write(text)
with open("/proc/sys/user/max_user_namespaces", "w") as f:  # this namespace's own limit
    f.write("0")
"""


@pytest.mark.slow
def test_network_false_where_the_kernel_refuses_fails_the_start_clearly(
    process_plugin: Path, tmp_path: Path
) -> None:
    # The core runs as a non-root user inside a user namespace that may hold no more user
    # namespaces: the bootstrap cannot get its private network there.
    probe = subprocess.run(
        [sys.executable, "-c", _process_NO_USERNS], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace here: {probe.stderr.strip()[-200:]}")
    core = _process_core(
        process_plugin,
        tmp_path,
        """
        try:
            sup.call("stderr", {"text": "started"})
            print(json.dumps(["started", ""]), flush=True)
        except Exception as exc:
            print(json.dumps([type(exc).__name__, str(exc)]), flush=True)
        host.close()
        """,
        prelude=_process_NO_USERNS,
        network=False,
    )
    assert core.stdout is not None
    kind, message = json.loads(core.stdout.readline())
    core.wait()
    assert kind == "HandshakeError"
    assert "network = false is not supported here" in message
    assert "unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: [Errno 28]" in message


# -- log lines ---------------------------------------------------------------------------------


def _process_plugin_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "reva_plugins.plugin.userprovider"]


@pytest.mark.slow
def test_plugin_text_cannot_forge_core_lines_or_drive_the_terminal(
    process_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reva_plugins.plugin")
    supervisor = process_host()
    forged = "ok\rreva-plugins: error: forged\n\x1b[2Jreva-plugins: all good\x1b]0;title\x07"
    supervisor.call("stderr", {"text": forged})
    supervisor.call("log", {"message": forged, "field": "\x1b[31mred\r\n"})
    with pytest.raises(RemoteError):
        supervisor.call("raise_error", {"message": forged})
    pid = supervisor.process.pid
    # The stderr reader runs on its own thread: wait for the structured record too.
    assert wait_until(
        lambda: any(r.levelno == logging.WARNING for r in _process_plugin_records(caplog))
    )
    for record in _process_plugin_records(caplog):
        shown = record.getMessage()
        assert shown.startswith(f"[userprovider pid {pid}] ")
        assert not any(c in shown for c in "\r\n\x1b\x07")
    logged = [r for r in _process_plugin_records(caplog) if r.levelno == logging.WARNING]
    assert logged[-1].field == "\\x1b[31mred\\r\\n"  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_stderr_tail_in_a_crash_is_escaped_and_bounded(process_host: Any) -> None:
    supervisor = process_host()
    with pytest.raises(PluginCrashed) as info:
        supervisor.call("crash", {"text": "\x1b[2J" + "x" * 100_000})
    tail = info.value.stderr_tail
    assert "\x1b" not in tail
    assert "\\x1b[2J" in tail
    assert len(tail) < 10_000


@pytest.mark.slow
def test_a_log_flood_is_dropped_counted_and_never_blocks_the_plugin(
    process_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reva_plugins.plugin")
    supervisor = process_host()
    process = supervisor.start()
    total = 200_000
    assert supervisor.call("flood", {"n": total}) == total
    assert supervisor.call("stderr", {"text": "still answering"}) is True
    process.close()
    records = _process_plugin_records(caplog)
    shown = [r for r in records if str(getattr(r, "plugin_message", "")).startswith("flood ")]
    dropped = sum(getattr(r, "plugin_dropped", 0) for r in records)
    assert LOG_BURST <= len(shown) < total
    assert dropped > 0
    assert any(
        "dropped" in r.getMessage() and "lines from plugin" in r.getMessage() for r in records
    )
    # every line is either shown or counted (and "still answering" is one of either)
    assert len(shown) + dropped in (total, total + 1)


@pytest.mark.slow
def test_escape_keeps_text_readable() -> None:
    assert escape("plain text\twith tab") == "plain text\twith tab"
    assert escape("a\nb\r\x1b\x9b\u202e") == "a\\nb\\r\\x1b\\x9b\\u202e"
    assert escape("a\nb", keep_newlines=True) == "a\nb"


# ================================================================================================
# SECURITY.md stays true
# ================================================================================================


def test_security_md_names_only_tests_that_exist() -> None:
    """Every test SECURITY.md names for a class of hostile input exists (here or in the module the
    table names), so the threat model cannot drift from what is tested."""
    import ast
    import re

    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", text))
    defined = {
        node.name
        for path in (ROOT / "tests").glob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef)
    }
    assert len(named) > 50
    assert sorted(named - defined) == []
