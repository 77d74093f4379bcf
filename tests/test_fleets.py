"""Fleets: lock a config, export a bundle, import it on hosts with no network (real CLI runs)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES, SAMPLES, cli
from .factory import build_dists, commit_marker, git, make_plugin, make_repo
from .plugin_sources import FLAKY_BACKEND as _FLAKY_BACKEND

pytestmark = pytest.mark.slow  # real servers, venvs and processes

USERS = EXAMPLES / "users.demo.json"
CALL_DEMO = ("userprovider", "get_user", '{"user_id": {"opaque_id": "demo"}}')
CALL_EINSTEIN = (
    "authprovider",
    "authenticate",
    '{"client_id": "einstein", "client_secret": "relativity"}',
)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def index(tmp_path: Path) -> Iterator[str]:
    """The JSON sample's wheel and sdist on a PEP 503 index served from 127.0.0.1."""
    root = tmp_path / "index"
    files = root / "files"
    build_dists(SAMPLES / "json_users", files)
    project = root / "simple" / "reva-plugin-json"
    project.mkdir(parents=True)
    (root / "simple" / "index.html").write_text('<a href="reva-plugin-json/">x</a>\n')
    anchors = "".join(
        f'<a href="../../files/{d.name}#sha256={hashlib.sha256(d.read_bytes()).hexdigest()}">'
        f"{d.name}</a>\n"
        for d in sorted(files.iterdir())
    )
    (project / "index.html").write_text(f"<html><body>\n{anchors}</body></html>\n")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


def plugin_project(tmp_path: Path, **kwargs: Any) -> Path:
    return make_plugin(tmp_path / "plugin", marker="locked", **kwargs)


def driver_for(kind: str, tmp_path: Path) -> tuple[str, Callable[[], None]]:
    """A driver spec of ``kind``, and how to take its server away (git repo, HTTP server)."""
    if kind == "folder":
        return str(plugin_project(tmp_path, dependencies=("packaging==21.3",))), lambda: None
    if kind in ("wheel", "sdist"):
        dists = build_dists(plugin_project(tmp_path), tmp_path / "dist")
        return str(dists[kind]), lambda: None
    if kind == "sdist-url":
        dists = build_dists(plugin_project(tmp_path), tmp_path / "dist")
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path / "dist"))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return f"http://127.0.0.1:{server.server_address[1]}/{dists['sdist'].name}", stop
    repo = make_repo(tmp_path / "repo", marker="locked")
    return f"git+file://{repo}@main#subdirectory=plugins/demo", lambda: shutil.rmtree(repo)


def host_config(path: Path, services: str, **plugins: Any) -> Path:
    table = "".join(f"{k} = {json.dumps(v)}\n" for k, v in plugins.items())
    path.write_text(f"[plugins]\n{table}\n{services}", encoding="utf-8")
    return path


def ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return str(result.stdout)


def installed_files(cache: Path) -> dict[str, str]:
    """The sha256 of every file in the site-packages of every env in ``cache``.

    uv leaves one host-specific file in each dist-info, ``uv_cache.json`` (the ctime of the
    wheel it installed, for its own cache): it is left out, and so is its line in ``RECORD``.
    """
    out = {}
    for site in sorted(cache.glob("envs/*/lib/python*/site-packages")):
        for path in sorted(p for p in site.rglob("*") if p.is_file()):
            rel = f"{site.parts[-4]}/{path.relative_to(site)}"
            if path.name == "uv_cache.json":
                continue
            data = path.read_bytes()
            if path.name == "RECORD":
                data = b"".join(
                    line
                    for line in data.splitlines(keepends=True)
                    if b"/uv_cache.json," not in line
                )
            out[rel] = hashlib.sha256(data).hexdigest()
    return out


@pytest.mark.parametrize(
    ("kind", "installer"),
    [
        ("folder", "auto"),
        ("sdist", "auto"),
        ("wheel", "auto"),
        ("git", "auto"),
        ("sdist-url", "auto"),
        # pip resolves and pins in its own way (its --report): locked, exported and imported too
        ("folder", "pip"),
        ("git", "pip"),
    ],
)
def test_lock_export_import_offline(kind: str, installer: str, tmp_path: Path) -> None:
    spec, take_server_away = driver_for(kind, tmp_path)
    services = f'[grpc.services.userprovider]\ndriver = "{spec}"\n'
    config = host_config(tmp_path / "revad.toml", services, allow_http=True, installer=installer)
    cache_a = tmp_path / "cache-a"
    ok(cli("lock", str(config), "--cache-dir", str(cache_a)))
    lock = (tmp_path / "revad.toml.lock").read_text()
    assert "version = 1" in lock
    assert f'kind = "{kind}"' in lock
    if kind == "folder":
        assert 'name = "packaging", version = "21.3", hashes = ["sha256:' in lock
    if kind == "git":
        assert 'commit = "' in lock
    ok(cli("lock", "--check", str(config), "--cache-dir", str(cache_a)))
    bundle = tmp_path / "bundle.tar"
    ok(cli("env", "export", str(config), "-o", str(bundle), "--cache-dir", str(cache_a)))

    # Another online host (no wheel cache): the plugin from its pinned source, the rest hashed.
    ok(cli("check", str(config), "--cache-dir", str(tmp_path / "cache-a2")))

    take_server_away()
    host = tmp_path / "host-b"
    host.mkdir()
    shutil.copy(tmp_path / "revad.toml.lock", host / "revad.toml.lock")
    dead = f"http://127.0.0.1:{closed_port()}/simple/"
    config_b = host_config(
        host / "revad.toml",
        services,
        index_url=dead,
        offline=True,
        allow_http=True,
        installer=installer,
    )
    cache_b = tmp_path / "cache-b"
    if kind == "sdist-url":  # offline, not imported yet: an error, never an unlocked env
        result = cli("check", str(config_b), "--cache-dir", str(cache_b))
        assert result.returncode == 2
        assert "downloading the archive needs the network" in result.stderr
    out = ok(cli("env", "import", str(bundle), "--cache-dir", str(cache_b)))
    assert "userprovider" in out
    assert "built" in out
    ok(cli("check", str(config_b), "--cache-dir", str(cache_b), "--offline"))
    reply = json.loads(ok(cli("call", str(config_b), *CALL_DEMO, "--cache-dir", str(cache_b))))
    assert reply["display_name"] == "locked"


def test_requirement_from_a_local_index_imports_offline_and_drift_is_named(
    index: str, tmp_path: Path
) -> None:
    services = (
        '[grpc.services.authprovider]\ndriver = "reva-plugin-json>=1,<2"\n'
        f"[grpc.services.authprovider.drivers.json]\nusers = {json.dumps(str(USERS))}\n"
    )
    config = host_config(tmp_path / "revad.toml", services, index_url=index)
    cache_a = tmp_path / "cache-a"
    ok(cli("lock", str(config), "--cache-dir", str(cache_a)))
    lock = (tmp_path / "revad.toml.lock").read_text()
    assert 'version = "1.0.0"' in lock
    assert 'name = "reva-plugin-json"' in lock
    out_dir = tmp_path / "bundle"
    ok(cli("env", "export", str(config), "-o", str(out_dir), "--format", "dir", "--cache-dir",
           str(cache_a)))  # fmt: skip
    assert (out_dir / "manifest.json").is_file()

    # Host B: the index is gone; the config names the bundle, no `env import` needed.
    host = tmp_path / "host-b"
    host.mkdir()
    shutil.copy(tmp_path / "revad.toml.lock", host / "revad.toml.lock")
    dead = f"http://127.0.0.1:{closed_port()}/simple/"
    config_b = host_config(host / "revad.toml", services, index_url=dead, bundle=str(out_dir))
    cache_b = tmp_path / "cache-b"
    reply = ok(cli("call", str(config_b), *CALL_EINSTEIN, "--cache-dir", str(cache_b)))
    assert json.loads(reply)["user"]["username"] == "einstein"
    ok(cli("check", str(config_b), "--cache-dir", str(cache_b), "--offline"))

    # Host A, a fresh cache, the index up: the lock's hashes, checked by the installer.
    reply = ok(cli("call", str(config), *CALL_EINSTEIN, "--cache-dir", str(tmp_path / "a2")))
    assert json.loads(reply)["user"]["username"] == "einstein"

    # Drift: the config now asks for a version the lock does not pin.
    config_b.write_text(config_b.read_text().replace(">=1,<2", ">=2"))
    result = cli("check", str(config_b), "--cache-dir", str(cache_b))
    assert result.returncode == 2
    assert (
        "grpc.services.authprovider: the lock pins reva-plugin-json 1.0.0, the config now asks "
        "for reva-plugin-json>=2" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert cli("lock", "--check", str(config_b), "--cache-dir", str(cache_b)).returncode == 1


def test_folder_drift_check_and_relock(tmp_path: Path) -> None:
    project = plugin_project(tmp_path)
    config = host_config(
        tmp_path / "revad.toml", f'[grpc.services.userprovider]\ndriver = "{project}"\n'
    )
    cache = tmp_path / "cache"
    ok(cli("lock", str(config), "--cache-dir", str(cache)))
    ok(cli("check", str(config), "--cache-dir", str(cache)))
    module = project / "reva_test_plugin" / "__init__.py"
    module.write_text(module.read_text().replace("'locked'", "'edited'"))
    result = cli("check", str(config), "--cache-dir", str(cache))
    assert result.returncode == 2, result.stderr
    assert "grpc.services.userprovider: the lock pins tree:" in result.stderr
    assert "the folder now is tree:" in result.stderr
    stale = cli("lock", "--check", str(config), "--cache-dir", str(cache))
    assert stale.returncode == 1
    assert "grpc.services.userprovider" in stale.stderr
    ok(cli("lock", str(config), "--cache-dir", str(cache)))
    ok(cli("lock", "--check", str(config), "--cache-dir", str(cache)))
    reply = ok(cli("call", str(config), *CALL_DEMO, "--cache-dir", str(cache)))
    assert json.loads(reply)["display_name"] == "edited"
    # the lock and the config name different services: each side's is named
    other = host_config(
        tmp_path / "other.toml",
        f'[grpc.services.authprovider]\ndriver = "{SAMPLES / "hashed_auth"}"\n',
    )
    shutil.copy(tmp_path / "revad.toml.lock", tmp_path / "other.toml.lock")
    stale = cli("lock", "--check", str(other), "--cache-dir", str(cache))
    assert stale.returncode == 1, stale.stderr
    assert "grpc.services.authprovider: the lock has no entry for this service" in stale.stderr
    assert "services.userprovider is locked but no longer configured" in stale.stderr


def test_a_locked_branch_stays_put_until_upgraded(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", marker="first")
    spec = f"git+file://{repo}@main#subdirectory=plugins/demo"
    config = host_config(
        tmp_path / "revad.toml", f'[grpc.services.userprovider]\ndriver = "{spec}"\n'
    )
    cache = tmp_path / "cache"
    ok(cli("lock", str(config), "--cache-dir", str(cache)))
    first = (tmp_path / "revad.toml.lock").read_text()
    commit_marker(repo, "plugins/demo", "second")
    out = ok(cli("lock", str(config), "--cache-dir", str(cache)))
    assert "unchanged" in out
    assert (tmp_path / "revad.toml.lock").read_text() == first
    reply = ok(cli("call", str(config), *CALL_DEMO, "--cache-dir", str(cache)))
    assert json.loads(reply)["display_name"] == "first"
    out = ok(cli("lock", str(config), "--upgrade", "userprovider", "--cache-dir", str(cache)))
    assert "locked" in out
    reply = ok(cli("call", str(config), *CALL_DEMO, "--cache-dir", str(cache)))
    assert json.loads(reply)["display_name"] == "second"
    result = cli("lock", str(config), "--upgrade", "nosuch", "--cache-dir", str(cache))
    assert result.returncode == 2
    assert "--upgrade nosuch" in result.stderr


def test_lock_check_without_a_lock_is_stale(tmp_path: Path) -> None:
    config = host_config(
        tmp_path / "revad.toml",
        f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "json_users"}"\n',
    )
    result = cli("lock", "--check", str(config), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 1
    assert "there is no lock file" in result.stderr


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path]:
    """A locked config of the pinned_old sample (it has dependencies) and its bundle folder."""
    services = f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "pinned_old"}"\n'
    config = host_config(tmp_path / "revad.toml", services)
    cache = tmp_path / "cache-a"
    ok(cli("lock", str(config), "--cache-dir", str(cache)))
    bundle = tmp_path / "bundle"
    ok(cli("env", "export", str(config), "-o", str(bundle), "--format", "dir", "--cache-dir",
           str(cache)))  # fmt: skip
    return config, bundle


def test_two_hosts_install_byte_identical_files(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _config, _bundle = exported
    tar = tmp_path / "bundle.tar"
    ok(cli("env", "export", str(_config), "-o", str(tar), "--cache-dir", str(tmp_path / "cache-a")))
    for host in ("one", "two"):
        ok(cli("env", "import", str(tar), "--cache-dir", str(tmp_path / host)))
    one, two = installed_files(tmp_path / "one"), installed_files(tmp_path / "two")
    assert one == two
    records = {rel.split("/")[1] for rel in one if rel.endswith(".dist-info/RECORD")}
    assert records >= {"packaging-21.3.dist-info", "reva_plugin_pinned_old-1.0.0.dist-info"}


def test_a_tampered_wheel_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _config, bundle = exported
    wheel = next((bundle / "wheels").glob("packaging-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    result = cli("env", "import", str(bundle), "--cache-dir", str(tmp_path / "b"))
    assert result.returncode == 2
    assert f"wheels/{wheel.name} does not match the sha256 in its manifest" in result.stderr
    assert not list((tmp_path / "b").glob("envs/*"))


def test_a_rewritten_manifest_is_caught_by_the_configs_lock(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    config, bundle = exported
    wheel = next((bundle / "wheels").glob("packaging-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][f"wheels/{wheel.name}"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    host = tmp_path / "host-b"
    host.mkdir()
    shutil.copy(f"{config}.lock", host / "revad.toml.lock")
    config_b = host_config(
        host / "revad.toml", config.read_text().split("\n", 2)[2], bundle=str(bundle)
    )
    result = cli("check", str(config_b), "--cache-dir", str(tmp_path / "b"))
    assert result.returncode == 2, result.stderr
    assert f"wheels/{wheel.name} matches no hash the lock pins for packaging 21.3" in result.stderr


def _hostile_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    """Written block by block: ``tarfile`` itself refuses to write some of these members."""

    def block(info: tarfile.TarInfo, payload: bytes) -> bytes:
        padding = b"\0" * (-len(payload) % tarfile.BLOCKSIZE)
        return info.tobuf(tarfile.GNU_FORMAT) + payload + padding

    first = tarfile.TarInfo("manifest.json")
    first.size = 2
    path.write_bytes(block(first, b"{}") + block(member, data) + b"\0" * (2 * tarfile.BLOCKSIZE))


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../escaped", size=4), "a name with '..'"),
        (_member("wheels/../../escaped", size=4), "a name with '..'"),
        (_member("/tmp/escaped-abs", size=4), "an absolute"),
        (_member("wheels/link", tarfile.SYMTYPE, link="/etc/passwd"), "a link"),
        (_member("wheels/hard", tarfile.LNKTYPE, link="manifest.json"), "a link"),
        (_member("wheels/dev", tarfile.CHRTYPE), "not a regular file or folder"),
        (_member("wheels/fifo", tarfile.FIFOTYPE), "not a regular file or folder"),
        (_member("wheels/huge.whl", size=3 << 30), "larger than"),
    ],
)
def test_hostile_bundles_are_refused_and_write_nothing(
    member: tarfile.TarInfo, why: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bundle = work / "evil.tar"
    _hostile_tar(bundle, member, b"evil" if member.size == 4 else b"")
    cache = tmp_path / "cache"
    result = cli("env", "import", str(bundle), "--cache-dir", str(cache))
    assert result.returncode == 2, result.stderr
    assert why in result.stderr
    assert "refusing it" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/escaped-abs").exists()
    assert sorted(p.name for p in work.iterdir()) == ["evil.tar"]
    assert not list(cache.glob("bundles/*"))
    assert not list(cache.glob("tmp/*"))


def test_a_bundle_with_files_outside_its_manifest_is_refused(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _config, bundle = exported
    (bundle / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"x")
    result = cli("env", "import", str(bundle), "--cache-dir", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "wheels/extra-1.0-py3-none-any.whl is not in the manifest" in result.stderr


_ENTRY = (
    'version = 1\n[services.userprovider]\nspec = "x"\nkind = "folder"\nidentity = "tree:x"\n'
    'plugin = "{plugin}"\n{pins}\n[services.userprovider.python."3.11"]\n{packages}\n'
)
_NO_PACKAGES = "packages = []"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 2\n", "lock format 2 is not 1"),
        ("version = 1\n[services.userprovider]\nspec = 1\n", "services.userprovider.spec"),
        (
            _ENTRY.format(
                plugin="p",
                pins="",
                packages='packages = [{ name = "p", version = "1", hashes = ["md5:x"] }]',
            ),
            "hashes must be sha256",
        ),
        (
            _ENTRY.format(plugin="p", pins="", packages=_NO_PACKAGES).replace('"3.11"', '"3.x"'),
            "must be a Python version",
        ),
        (
            _ENTRY.format(plugin="p", pins="", packages=_NO_PACKAGES + '\nextra = "--pre"'),
            "must hold packages = [...] only",
        ),
        ("\x00", "not valid TOML"),
        (
            _ENTRY.format(plugin="p --index-url http://evil", pins="", packages=_NO_PACKAGES),
            "is not a distribution name",
        ),
        (
            _ENTRY.format(plugin="p", pins='pins = { version = "1 --pre" }', packages=_NO_PACKAGES),
            "not a valid version",
        ),
        (
            _ENTRY.format(plugin="p", pins='pins = { commit = "main" }', packages=_NO_PACKAGES),
            "not a valid commit",
        ),
        (
            _ENTRY.format(plugin="p", pins='pins = { evil = "x" }', packages=_NO_PACKAGES),
            "unknown pin 'evil'",
        ),
        (
            _ENTRY.format(
                plugin="p",
                pins='wheel = "../x.whl"\nwheel_sha256 = "' + "0" * 64 + '"',
                packages=_NO_PACKAGES,
            ),
            "wheel must be a wheel file name",
        ),
        (
            _ENTRY.format(plugin="p", pins="", packages=_NO_PACKAGES).replace(
                'kind = "folder"', 'kind = "git"'
            ),
            "a git entry needs pins.commit",
        ),
        (
            _ENTRY.format(plugin="p", pins="", packages=_NO_PACKAGES),
            "a folder entry needs a plugin wheel",
        ),
    ],
)
def test_a_broken_lock_file_is_a_config_error(text: str, message: str, tmp_path: Path) -> None:
    config = host_config(
        tmp_path / "revad.toml",
        f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "json_users"}"\n',
    )
    (tmp_path / "revad.toml.lock").write_text(text)
    result = cli("check", str(config), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2
    assert "revad.toml.lock" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [("5", "plugins.bundle: must be str"), ('"nowhere.tar"', "nowhere.tar")],
)
def test_the_bundle_key_is_checked(value: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "revad.toml"
    config.write_text(
        f"[plugins]\nbundle = {value}\n[grpc.services.userprovider]\n"
        f'driver = "{SAMPLES / "json_users"}"\n'
    )
    result = cli("check", str(config), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_export_without_a_lock_and_to_an_existing_path_are_usage_errors(tmp_path: Path) -> None:
    config = host_config(
        tmp_path / "revad.toml",
        f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "json_users"}"\n',
    )
    result = cli("env", "export", str(config), "-o", str(tmp_path / "b.tar"))
    assert result.returncode == 2
    assert "run 'reva-plugins lock' first" in result.stderr
    ok(cli("lock", str(config), "--cache-dir", str(tmp_path / "c")))
    (tmp_path / "b.tar").write_text("mine")
    result = cli("env", "export", str(config), "-o", str(tmp_path / "b.tar"), "--cache-dir",
                 str(tmp_path / "c"))  # fmt: skip
    assert result.returncode == 2
    assert "exists" in result.stderr
    assert (tmp_path / "b.tar").read_text() == "mine"


def test_import_and_check_with_pip(exported: tuple[Path, Path], tmp_path: Path) -> None:
    config, bundle = exported
    cache = tmp_path / "pip-cache"
    ok(cli("env", "import", str(bundle), "--installer", "pip", "--cache-dir", str(cache)))
    host = tmp_path / "host-b"
    host.mkdir()
    shutil.copy(f"{config}.lock", host / "revad.toml.lock")
    dead = f"http://127.0.0.1:{closed_port()}/simple/"
    config_b = host_config(
        host / "revad.toml", config.read_text().split("\n", 2)[2], index_url=dead, offline=True
    )
    out = ok(cli("check", str(config_b), "--installer", "pip", "--cache-dir", str(cache)))
    assert "ok reva-plugin-pinned-old" in out
    assert len(list(cache.glob("envs/*"))) == 1  # check found the imported env


def test_a_tampered_tar_leaves_nothing_in_the_cache(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _config, bundle = exported
    wheel = next((bundle / "wheels").glob("pyparsing-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-1])
    tar = tmp_path / "tampered.tar"
    with tarfile.open(tar, "w") as out:
        for path in sorted(bundle.rglob("*")):
            out.add(path, arcname=str(path.relative_to(bundle)), recursive=False)
    cache = tmp_path / "c"
    result = cli("env", "import", str(tar), "--cache-dir", str(cache))
    assert result.returncode == 2
    assert f"wheels/{wheel.name} does not match the sha256" in result.stderr
    assert not list(cache.glob("bundles/*"))
    assert not list(cache.glob("envs/*"))


def _doc_blocks(lang: str) -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


def _logical_lines(block: str) -> list[str]:
    """A shell or Dockerfile block's lines, continuations joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip() and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append((pending + line).strip())
        pending = ""
    return lines


def _recipe_commands() -> list[str]:
    """The ``reva-plugins`` commands of docs/deploy.md's CI block and Dockerfile, in order."""
    commands = []
    for block in [*_doc_blocks("sh"), *_doc_blocks("dockerfile")]:
        for line in _logical_lines(block):
            for part in line.removeprefix("RUN ").split("&&"):
                if part.strip().startswith("reva-plugins "):
                    commands.append(part.strip())
    return commands


def _setuptools_plugin(root: Path, marker: str) -> Path:
    """A plugin built by setuptools: unlike hatchling, its wheels carry the files' mtimes
    unless SOURCE_DATE_EPOCH is set, so it shows whether a rebuild is byte-identical."""
    make_plugin(root, marker=marker)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        .replace('requires = ["hatchling"]', 'requires = ["setuptools>=61"]')
        .replace('build-backend = "hatchling.build"', 'build-backend = "setuptools.build_meta"')
    )
    return root


def _touch_tree(root: Path, when: float) -> None:
    """Every file of ``root`` gets mtime ``when`` (what a fresh clone or COPY does)."""
    for path in root.rglob("*"):
        os.utime(path, (when, when))


class _Dockerfile:
    """Runs a Dockerfile's build the way ``docker build`` would, each stage in a folder of its
    own standing for its root file system: ``FROM`` starts an empty one, ``WORKDIR``, ``ENV``
    and ``COPY`` (also ``--from``) act on it, and each ``reva-plugins`` command of a ``RUN`` runs
    as written, absolute paths and path variables mapped into the stage's folder. Other ``RUN``
    commands are recorded, not run (installing reva-plugins itself, ``chown``)."""

    def __init__(self, context: Path, work: Path, env: dict[str, dict[str, str]]) -> None:
        self.context, self.work, self.extra_env = context, work, env
        self.stages: dict[str, Path] = {}
        self.skipped: list[str] = []

    def build(self, text: str) -> Path:
        root = workdir = self.work
        env: dict[str, str] = {}
        name = ""
        for line in _logical_lines(text):
            op, _, rest = line.partition(" ")
            if op == "FROM":
                name = rest.split(" AS ")[1].strip() if " AS " in rest else str(len(self.stages))
                root = self.work / f"stage-{name}"
                root.mkdir()
                self.stages[name] = root
                workdir, env = root, {}
            elif op == "WORKDIR":
                workdir = self._in(root, rest, workdir)
                workdir.mkdir(parents=True, exist_ok=True)
            elif op == "ENV":
                key, _, value = rest.partition("=")
                env[key] = str(self._in(root, value, workdir)) if value.startswith("/") else value
            elif op == "COPY":
                args = rest.split()
                source_root = self.context
                if args[0].startswith("--from="):
                    source_root = self.stages[args.pop(0).removeprefix("--from=")]
                src = self._in(source_root, args[0], source_root)
                dst = self._in(root, args[1], workdir)
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                else:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            elif op == "RUN":
                for command in rest.split("&&"):
                    self._run(command.strip(), root, workdir, env, name)
        return root

    @staticmethod
    def _in(root: Path, path: str, workdir: Path) -> Path:
        return root / path.lstrip("/") if path.startswith("/") else workdir / path

    def _run(self, command: str, root: Path, cwd: Path, env: dict[str, str], stage: str) -> None:
        argv = shlex.split(command)
        if argv[0] != "reva-plugins":
            self.skipped.append(command)
            return
        args = [str(self._in(root, a, cwd)) if a.startswith("/") else a for a in argv[1:]]
        # No REVA_PLUGINS_CACHE_DIR: the default cache of the stage's root user, fresh.
        run_env = {"REVA_PLUGINS_CACHE_DIR": str(root / "root/.cache/reva-plugins"), **env}
        ok(cli(*args, cwd=cwd, env={**run_env, **self.extra_env.get(stage, {})}))


def test_the_deploy_recipe_runs_offline(tmp_path: Path) -> None:
    """docs/deploy.md's build steps run as written, each on a fresh cache: the CI block by a
    shell, the Dockerfile stage by stage; only the lock is made beforehand, on another
    machine (the developer's), and the plugin's files then get new mtimes (a fresh clone)."""
    assert _recipe_commands() == [
        "reva-plugins lock --check deploy/revad.toml",
        "reva-plugins env export deploy/revad.toml -o build/plugins.tar",
        "reva-plugins lock --check deploy/revad.toml",
        "reva-plugins env export deploy/revad.toml -o /plugins.tar",
        "reva-plugins env import /opt/reva/plugins.tar --offline",
        "reva-plugins check /etc/reva/revad.toml --offline",
    ]
    context = tmp_path / "repo"
    _setuptools_plugin(context / "plugins" / "demo", marker="deployed")
    (context / "deploy").mkdir()
    services = '[grpc.services.userprovider]\ndriver = "../plugins/demo"\n'
    host_config(context / "deploy" / "revad.toml", services)
    dev = {"REVA_PLUGINS_CACHE_DIR": str(tmp_path / "dev-cache")}
    ok(cli("lock", "deploy/revad.toml", cwd=context, env=dev))
    _touch_tree(context / "plugins", time.time() + 3600)

    # CI: the shell block as written, in the checkout, on a fresh cache.
    # The CI block is the one that locks and exports (the one before it installs the core).
    (ci_block,) = [b for b in _doc_blocks("sh") if "reva-plugins env export" in b]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    ci_env = {"PATH": path, "REVA_PLUGINS_CACHE_DIR": str(tmp_path / "ci-cache")}
    shell = subprocess.run(
        ["bash", "-euc", ci_block], cwd=context, env={**os.environ, **ci_env},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    _touch_tree(context / "plugins", time.time() + 7200)

    # The image: stage 1 with the index, stage 2 with none (uv and pip offline, index closed).
    dead = f"http://127.0.0.1:{closed_port()}/simple/"
    offline = {"UV_OFFLINE": "1", "UV_INDEX_URL": dead, "PIP_INDEX_URL": dead, "PIP_NO_INDEX": "1"}
    docker = _Dockerfile(context, tmp_path, {"1": offline})
    (dockerfile,) = _doc_blocks("dockerfile")
    image = docker.build(dockerfile)
    assert docker.skipped == [
        "pip install --no-cache-dir 'reva-plugins[uv]'",
        "pip install --no-cache-dir 'reva-plugins[uv,serve]'",
        "chown -R 65532:65532 /opt/reva/cache",
    ]
    # Two fresh caches rebuilt the plugin's wheel: both bundles are the same bytes.
    bundle = docker.stages["bundle"] / "plugins.tar"
    assert (context / "build" / "plugins.tar").read_bytes() == bundle.read_bytes()
    cache = image / "opt/reva/cache"
    reply = ok(cli("call", str(image / "etc/reva/revad.toml"), *CALL_DEMO, "--offline",
                   cwd=image, env={"REVA_PLUGINS_CACHE_DIR": str(cache), **offline}))  # fmt: skip
    assert json.loads(reply)["display_name"] == "deployed"


def test_one_lock_for_two_pythons(tmp_path: Path) -> None:
    from reva_plugins._errors import ConfigError
    from reva_plugins._python import current, find

    try:
        other = find("3.12" if not current().version.startswith("3.12") else "3.11")
    except ConfigError:
        pytest.skip("no second Python here")
    own = current().short_version
    project = plugin_project(tmp_path, dependencies=("packaging==21.3",))
    services = f'[grpc.services.userprovider]\ndriver = "{project}"\n'
    config = host_config(tmp_path / "revad.toml", services)
    cache_a = tmp_path / "cache-a"
    args = ("--python", own, "--python", other.short_version, "--cache-dir", str(cache_a))
    ok(cli("lock", str(config), *args))
    lock = (tmp_path / "revad.toml.lock").read_text()
    assert f'[services."userprovider".python."{own}"]' in lock
    assert f'[services."userprovider".python."{other.short_version}"]' in lock
    bundle = tmp_path / "bundle.tar"
    ok(cli("env", "export", str(config), "-o", str(bundle), "--cache-dir", str(cache_a)))

    host = tmp_path / "host-b"
    host.mkdir()
    shutil.copy(tmp_path / "revad.toml.lock", host / "revad.toml.lock")
    dead = f"http://127.0.0.1:{closed_port()}/simple/"
    config_b = host_config(
        host / "revad.toml", services, index_url=dead, offline=True, python=other.short_version
    )
    cache_b = tmp_path / "cache-b"
    ok(cli("env", "import", str(bundle), "--python", other.short_version, "--cache-dir",
           str(cache_b)))  # fmt: skip
    ok(cli("check", str(config_b), "--cache-dir", str(cache_b)))
    assert len(list(cache_b.glob("envs/*"))) == 1
    reply = ok(cli("call", str(config_b), *CALL_DEMO, "--cache-dir", str(cache_b)))
    assert json.loads(reply)["display_name"] == "locked"

    # Locked for one Python only (a lock's targets only grow: made anew), run on the other.
    (tmp_path / "revad.toml.lock").unlink()
    ok(cli("lock", str(config), "--python", own, "--cache-dir", str(cache_a)))
    shutil.copy(tmp_path / "revad.toml.lock", host / "revad.toml.lock")
    result = cli("check", str(config_b), "--cache-dir", str(cache_b))
    assert result.returncode == 2
    assert (
        f"grpc.services.userprovider: the lock was made for Python {own}, the driver now runs "
        f"on {other.short_version}" in result.stderr
    )
    result = cli("env", "import", str(bundle), "--python", "2.7", "--cache-dir", str(cache_b))
    assert result.returncode == 2


def test_a_lock_file_is_followed_through_a_symlink_but_must_be_a_file(tmp_path: Path) -> None:
    services = f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "json_users"}"\n'
    config = host_config(tmp_path / "revad.toml", services)
    cache = str(tmp_path / "c")
    ok(cli("lock", str(config), "--cache-dir", cache))
    lock = tmp_path / "revad.toml.lock"
    mounted = tmp_path / "configmap"
    mounted.mkdir()
    lock.rename(mounted / "revad.toml.lock")
    lock.symlink_to(mounted / "revad.toml.lock")  # how Kubernetes mounts a ConfigMap
    ok(cli("lock", "--check", str(config), "--cache-dir", cache))
    lock.unlink()
    os.mkfifo(lock)
    result = cli("check", str(config), "--cache-dir", cache)
    assert result.returncode == 2
    assert "the lock file is not a regular file" in result.stderr


def test_export_into_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    services = f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "json_users"}"\n'
    config = host_config(tmp_path / "revad.toml", services)
    cache = str(tmp_path / "c")
    ok(cli("lock", str(config), "--cache-dir", cache))
    out = tmp_path / "missing" / "b.tar"
    result = cli("env", "export", str(config), "-o", str(out), "--cache-dir", cache)
    assert result.returncode == 2
    assert f"cannot write {out}" in result.stderr


def test_env_prune_collects_old_lock_wheels_and_extracted_bundles(tmp_path: Path) -> None:
    """Wheels built for locks and bundles extracted from tars are caches: prune ages them out
    like downloads (they are made again from their source), and keeps what was used lately."""
    cache = tmp_path / "cache"
    old = time.time() - 40 * 86400

    def entry(folder: str, name: str, when: float) -> Path:
        path = cache / folder / name
        path.mkdir(parents=True)
        (path / "x-1.0-py3-none-any.whl").write_bytes(b"wheel")
        for item in (path / "x-1.0-py3-none-any.whl", path):
            os.utime(item, (when, when))
        return path

    old_wheel = entry("wheels", "a" * 64, old)
    new_wheel = entry("wheels", "b" * 64, time.time())
    old_bundle = entry("bundles", "c" * 24, old)
    stranger = entry("wheels", "not-a-digest", old)
    pruned = cli("--cache-dir", str(cache), "env", "prune", "--unused-days", "30")
    assert pruned.returncode == 0, pruned.stderr
    assert f"removed wheels/{'a' * 64}" in pruned.stdout
    assert f"removed bundles/{'c' * 24}" in pruned.stdout
    assert not old_wheel.exists()
    assert not old_bundle.exists()
    assert new_wheel.exists()
    assert stranger.exists()  # not a name the core made: never removed
    # and docs/lock.md says so
    doc = (Path(__file__).resolve().parent.parent / "docs" / "lock.md").read_text()
    said = [s for s in re.split(r"(?<=\.)\s", doc) if "env prune" in s]
    assert said
    assert all("wheels/" in s and "bundles/" in s and " not " not in s for s in said), said


# -- the audit's findings: each test failed before its fix -----------------------------------------


def test_export_on_a_fresh_cache_rebuilds_the_plugin_wheels_byte_for_byte(tmp_path: Path) -> None:
    """The lock is made on one machine; CI exports on a fresh cache from a fresh checkout (other
    mtimes): the plugin's wheel is rebuilt to the very bytes the lock pins, for a folder built by
    setuptools and for a git source built from its pinned commit."""
    folder = _setuptools_plugin(tmp_path / "plugin", marker="rebuilt")
    repo = tmp_path / "repo"
    make_plugin(repo / "plugins" / "demo", name="reva-git-plugin", marker="from-git")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    services = (
        f'[grpc.services.userprovider]\ndriver = "{folder}"\n'
        f'[grpc.services.authprovider]\ndriver = "git+file://{repo}@main#subdirectory=plugins/demo"\n'
    )
    config = host_config(tmp_path / "revad.toml", services)
    ok(cli("lock", str(config), "--cache-dir", str(tmp_path / "dev")))
    lock = (tmp_path / "revad.toml.lock").read_text()
    pinned = dict(re.findall(r'wheel = "(.*?)"\nwheel_sha256 = "(.*?)"', lock))
    assert len(pinned) == 2
    _touch_tree(folder, time.time() + 3600)
    bundle = tmp_path / "bundle"
    ok(cli("env", "export", str(config), "-o", str(bundle), "--format", "dir", "--cache-dir",
           str(tmp_path / "ci")))  # fmt: skip
    for wheel, sha256 in pinned.items():
        assert hashlib.sha256((bundle / "wheels" / wheel).read_bytes()).hexdigest() == sha256
    ok(cli("env", "import", str(bundle), "--cache-dir", str(tmp_path / "host")))


def test_export_refuses_a_rebuilt_wheel_that_is_not_the_locked_one(tmp_path: Path) -> None:
    project = tmp_path / "flaky"
    project.mkdir()
    (project / "backend.py").write_text(_FLAKY_BACKEND)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "reva-flaky-plugin"\nversion = "1.0"\n'
    )
    config = host_config(
        tmp_path / "revad.toml", f'[grpc.services.userprovider]\ndriver = "{project}"\n'
    )
    ok(cli("lock", str(config), "--cache-dir", str(tmp_path / "dev")))
    bundle = tmp_path / "bundle.tar"
    result = cli("env", "export", str(config), "-o", str(bundle), "--cache-dir",
                 str(tmp_path / "ci"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "grpc.services.userprovider: building the plugin's wheel now gives sha256:" in (
        result.stderr
    )
    assert "the lock pins sha256:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not bundle.exists()
    stale = cli("lock", "--check", str(config), "--cache-dir", str(tmp_path / "dev"))
    assert stale.returncode == 1, stale.stderr


def _other_python() -> str | None:
    from reva_plugins._errors import ConfigError
    from reva_plugins._python import current, find

    try:
        return find("3.12" if not current().version.startswith("3.12") else "3.11").short_version
    except ConfigError:
        return None


def test_lock_for_a_python_not_installed_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    services = f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "json_users"}"\n'
    config = host_config(tmp_path / "revad.toml", services)
    cache = str(tmp_path / "c")
    ok(cli("lock", str(config), "--cache-dir", cache))
    before = (tmp_path / "revad.toml.lock").read_text()
    result = cli("lock", str(config), "--python", "3.99", "--cache-dir", cache)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "--python: no Python 3.99 found" in result.stderr
    assert (tmp_path / "revad.toml.lock").read_text() == before
    ok(cli("env", "build", str(config), "--cache-dir", cache))  # the lock still serves


def test_lock_python_adds_a_target_and_keeps_the_others(tmp_path: Path) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("no second Python here")
    project = plugin_project(tmp_path, dependencies=("packaging==21.3",))
    config = host_config(
        tmp_path / "revad.toml", f'[grpc.services.userprovider]\ndriver = "{project}"\n'
    )
    cache = str(tmp_path / "c")
    ok(cli("lock", str(config), "--cache-dir", cache))
    own_table = (tmp_path / "revad.toml.lock").read_text().split("\n[services", 2)[2]
    out = ok(cli("lock", str(config), "--python", other, "--cache-dir", cache))
    assert "\tlocked" in out
    lock = (tmp_path / "revad.toml.lock").read_text()
    assert own_table.strip() in lock  # the driver's own Python: its packages untouched
    assert f'[services."userprovider".python."{other}"]' in lock
    ok(cli("lock", "--check", str(config), "--cache-dir", cache))
    ok(cli("check", str(config), "--cache-dir", cache))
    out = ok(cli("lock", str(config), "--cache-dir", cache))  # no --python: both kept
    assert "\tunchanged" in out
    assert (tmp_path / "revad.toml.lock").read_text() == lock
    (tmp_path / "revad.toml.lock").unlink()  # anew, for the other only: the own Python too
    ok(cli("lock", str(config), "--python", other, "--cache-dir", cache))
    assert (tmp_path / "revad.toml.lock").read_text() == lock


def test_lock_check_verifies_every_package_and_pin(tmp_path: Path) -> None:
    """A hand-edited lock passes no --check: its content must be what resolving gives now."""
    project = plugin_project(tmp_path, dependencies=("packaging==21.3",))
    config = host_config(
        tmp_path / "revad.toml", f'[grpc.services.userprovider]\ndriver = "{project}"\n'
    )
    cache = str(tmp_path / "c")
    ok(cli("lock", str(config), "--cache-dir", cache))
    path = tmp_path / "revad.toml.lock"
    good = path.read_text()
    ok(cli("lock", "--check", str(config), "--cache-dir", cache))
    packaging = re.search(r'  \{ name = "packaging".*\n', good)
    assert packaging is not None
    first_hash = re.search(r'"sha256:([0-9a-f]{64})"', packaging.group(0))
    assert first_hash is not None
    wheel_sha = re.search(r'wheel_sha256 = "([0-9a-f]{64})"', good)
    assert wheel_sha is not None
    edits = {
        "packaging 20.9": good.replace(
            '"packaging", version = "21.3"', '"packaging", version = "20.9"'
        ),
        "hashes of packaging 21.3": good.replace(first_hash.group(1), "0" * 64),
        "no packaging": good.replace(packaging.group(0), ""),
        "building the plugin's wheel now gives": good.replace(wheel_sha.group(1), "1" * 64),
    }
    for needle, text in edits.items():
        assert text != good
        path.write_text(text)
        result = cli("lock", "--check", str(config), "--cache-dir", cache)
        assert result.returncode == 1, (needle, result.stderr)
        assert "grpc.services.userprovider" in result.stderr
        assert needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    path.write_text(good)
    ok(cli("lock", "--check", str(config), "--cache-dir", cache))


def _tree_state(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root``: its mode and, for a file, its sha256 and mtime (a folder's
    mtime moves when a temporary entry comes and goes)."""
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        state = ""
        if path.is_file():
            state = f"{hashlib.sha256(path.read_bytes()).hexdigest()}:{info.st_mtime_ns}"
        out[str(path.relative_to(root))] = (info.st_mode, state)
    return out


def test_a_tamper_in_the_last_entry_is_refused_before_anything_is_built(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two services; the later one's dependency wheel is rewritten with its manifest: the import
    refuses the bundle before building the first env, so the cache is as it was."""
    _config, first_bundle = exported
    cache = tmp_path / "host"
    ok(cli("env", "import", str(first_bundle), "--cache-dir", str(cache)))
    two = tmp_path / "two" / "revad.toml"
    two.parent.mkdir()
    services = (
        f'[grpc.services.authprovider]\ndriver = "{SAMPLES / "json_users"}"\n'
        f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "pinned_old"}"\n'
    )
    host_config(two, services)
    ok(cli("lock", str(two), "--cache-dir", str(tmp_path / "cache-a")))
    bundle = tmp_path / "two" / "bundle"
    ok(cli("env", "export", str(two), "-o", str(bundle), "--format", "dir", "--cache-dir",
           str(tmp_path / "cache-a")))  # fmt: skip
    wheel = next((bundle / "wheels").glob("packaging-*.whl"))  # userprovider's, imported last
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][f"wheels/{wheel.name}"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    tar = tmp_path / "two" / "bundle.tar"
    with tarfile.open(tar, "w") as out:
        for path in sorted(bundle.rglob("*")):
            out.add(path, arcname=str(path.relative_to(bundle)), recursive=False)
    before = _tree_state(cache)
    for tampered in (bundle, tar):
        result = cli("env", "import", str(tampered), "--cache-dir", str(cache))
        assert result.returncode == 2, result.stderr
        assert f"wheels/{wheel.name} matches no hash the lock pins for packaging 21.3" in (
            result.stderr
        )
        assert _tree_state(cache) == before


def test_the_deploy_readiness_probe_takes_a_failed_plugin_out_of_rotation(
    tmp_path: Path,
) -> None:
    """docs/deploy.md's readiness probe names a CS3 service: once the plugin behind it has failed
    (it crashes, and restart = "never"), the probe says NOT_SERVING while the server's own
    health (what the liveness probe asks) stays SERVING."""
    grpc = pytest.importorskip("grpc", reason="the serve extra is not installed")
    from cs3.identity.user.v1beta1 import resources_pb2, user_api_pb2, user_api_pb2_grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    (manifest,) = _doc_blocks("yaml")
    probes = dict(
        re.findall(r"(readinessProbe|livenessProbe):[^\n]*\n\s+grpc: (\{.*?\})", manifest)
    )
    readiness = re.fullmatch(r"\{port: 19000, service: ([\w.]+)\}", probes["readinessProbe"])
    assert readiness is not None, probes
    assert probes["livenessProbe"] == "{port: 19000}"
    crashing = make_plugin(tmp_path / "plugin", marker_body="        import os; os._exit(3)")
    config = host_config(
        tmp_path / "revad.toml",
        f'[grpc.services.userprovider]\ndriver = "{crashing}"\n'
        '[grpc.services.userprovider.plugin]\nrestart = "never"\n',
    )
    with config.open("a") as f:
        f.write('[grpc]\naddress = "127.0.0.1:0"\n')
    server = subprocess.Popen(
        [sys.executable, "-m", "reva_plugins", "serve", str(config), "--cache-dir",
         str(tmp_path / "c")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        port = None
        for line in server.stderr:
            found = re.search(r"serving .* on 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "serve did not start"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                request = health_pb2.HealthCheckRequest(service=service)
                return int(health.Check(request, timeout=10).status)

            serving = health_pb2.HealthCheckResponse.SERVING
            assert status(readiness.group(1)) == serving
            users = user_api_pb2_grpc.UserAPIStub(channel)
            uid = resources_pb2.UserId(idp="test", opaque_id="demo")
            users.GetUser(user_api_pb2.GetUserRequest(user_id=uid), timeout=30)
            deadline = time.monotonic() + 30
            while status(readiness.group(1)) == serving and time.monotonic() < deadline:
                time.sleep(0.05)
            assert status(readiness.group(1)) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert status("") == serving  # why a probe of "" would keep the replica in rotation
    finally:
        server.terminate()
        server.wait(timeout=60)


_INSTALLER_FLAGS = (
    "--no-deps", "--require-hashes", "--generate-hashes", "--only-binary", "--no-index",
    "--offline", "--find-links", "--index-url", "--python-version", "--hash=", "--report",
    "--dry-run", "--wheel-dir", "--out-dir", "--dest",
)  # fmt: skip


def test_lock_and_bundle_leave_installers_to_the_installers() -> None:
    """Issue 11: uv and pip are known in _installers only. The lock and the bundle import none
    of its private helpers, run no subprocess and name no installer or installer flag."""
    import ast

    package = Path(__file__).resolve().parent.parent / "reva_plugins"
    for module in ("_lockfile.py", "_locker.py", "_resolvers.py", "_bundle.py"):
        tree = ast.parse((package / module).read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "_installers":
                private = [
                    a.name for a in node.names if a.name.startswith("_") or a.name == "find_uv"
                ]
                assert not private, (module, private)
            if isinstance(node, ast.ImportFrom):
                assert node.module != "_subprocess" or {a.name for a in node.names} <= {
                    "CommandFailed"
                }, module
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in ("uv", "pip"), (module, node.lineno)
                flags = [f for f in _INSTALLER_FLAGS if f in node.value]
                assert not flags, (module, node.lineno, node.value)
