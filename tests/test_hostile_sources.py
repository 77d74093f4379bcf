"""Hostile specs and sources: crafted URLs and paths, misbehaving download servers,
``allowed_sources``, special files in a package folder. What an attacker who writes a config or
publishes a plugin can throw at the core, and what it does instead of deleting, leaking or
hanging. Each test failed before its fix; SECURITY.md lists every class with its test.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reva_plugins import (
    RevaPluginError,
    SourceError,
)
from reva_plugins._errors import FetchError
from reva_plugins._git import parse as _sources_git_parse
from reva_plugins._plan import classify_driver
from reva_plugins._sources import (
    ArchiveURL,
    ResolveContext,
    SourcePolicy,
    archive_filename,
    download,
    tree_digest,
)
from reva_plugins._urls import check_url as _sources_check_url
from reva_plugins._urls import origin as _sources_url_origin
from reva_plugins.testing import run_conformance

from .conftest import ROOT, cli
from .factory import build_dists, make_plugin

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


@pytest.mark.parametrize(
    ("driver", "why"),
    [
        ("https://[::1/x.whl", "invalid URL 'https://[::1/x.whl': Invalid IPv6 URL"),
        ("git+https://[::1/repo", "invalid URL 'https://[::1/repo': Invalid IPv6 URL"),
        # packaging's own words after the name (they differ between its versions)
        ("./x-1.0-bad.whl", "x-1.0-bad.whl: Invalid wheel filename"),
    ],
)
def test_an_unparsable_url_or_wheel_name_is_a_usage_error_naming_it(
    driver: str, why: str, tmp_path: Path
) -> None:
    (tmp_path / "x-1.0-bad.whl").write_bytes(b"")
    config = tmp_path / "revad.toml"
    config.write_text(f'[grpc.services.userprovider]\ndriver = "{driver}"\n', encoding="utf-8")
    result = cli("check", str(config), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("reva-plugins: error: userprovider: ")
    assert why in line, line
