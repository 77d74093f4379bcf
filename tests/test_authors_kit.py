"""The plugin authors' kit: scaffold, conformance suite, and publishing through a local index."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import Host
from reva_plugins.testing import assert_conforms, prepare_source, run_conformance

from .conftest import EXAMPLES, SAMPLES, cli
from .factory import build_dists, git, make_plugin
from .plugin_sources import BROKEN_USERS

pytestmark = pytest.mark.slow


def scaffold(tmp_path: Path, service: str, name: str) -> Path:
    target = tmp_path / name
    result = cli("new", str(target), "--service", service)
    assert result.returncode == 0, result.stderr
    return target


def test_scaffolded_user_provider_passes_its_own_tests_and_conformance(tmp_path: Path) -> None:
    plugin = scaffold(tmp_path, "userprovider", "ldap")
    assert (plugin / "pyproject.toml").read_text().count('"reva.userprovider"') == 1
    assert "def get_user_groups" in (plugin / "reva_plugin_ldap" / "__init__.py").read_text()
    own_tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=plugin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert own_tests.returncode == 0, own_tests.stdout + own_tests.stderr
    from_folder = cli("conformance", str(plugin), "--service", "userprovider")
    assert from_folder.returncode == 0, from_folder.stdout + from_folder.stderr
    assert "PASSED" in from_folder.stdout
    git(plugin, "init", "-q")
    git(plugin, "add", "-A")
    git(plugin, "commit", "-q", "-m", "scaffold")
    from_git = cli(
        "conformance",
        f"git+file://{plugin}@{git(plugin, 'rev-parse', 'HEAD')}",
        "--service",
        "userprovider",
        "--json",
    )
    assert from_git.returncode == 0, from_git.stdout + from_git.stderr
    checks = json.loads(from_git.stdout)["checks"]
    assert {c["status"] for c in checks} == {"pass"}
    assert len(checks) >= 8


def test_scaffolded_auth_provider_conforms(tmp_path: Path) -> None:
    plugin = scaffold(tmp_path, "authprovider", "radius")
    report = assert_conforms(
        plugin, "authprovider", credentials=("demo", "demo-secret"), cache_dir=tmp_path / "cache"
    )
    assert all(c.status == "pass" for c in report.checks)
    assert '"-m", "reva_plugins.testing"' in (plugin / "noxfile.py").read_text()


def test_new_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    result = cli("new", str(tmp_path / "taken"), "--service", "userprovider")
    assert result.returncode == 2
    assert "not empty" in result.stderr


def test_a_broken_plugin_fails_with_precise_reasons(tmp_path: Path) -> None:
    project = make_plugin(
        tmp_path / "broken", "reva-broken", entry_points={"reva.userprovider": "broken"}
    )
    (project / "reva_broken" / "__init__.py").write_text(
        BROKEN_USERS.replace("class Broken", "class Provider")
    )
    report = run_conformance(str(project), "userprovider", cache_dir=tmp_path / "cache")
    assert not report.ok
    reasons = {c.name: c.reason for c in report.failures()}
    assert "get_user_groups" in reasons["handshake lists every method"]
    assert "[0]: returns a secret (secret)" in reasons["find_users returns Users"]
    assert "uid_number must be int, got str" in reasons["find_users returns Users"]
    assert "returned instead of raising NotFound" in reasons["unknown ids raise NotFound"]
    result = cli("conformance", str(project), "--service", "userprovider")
    assert result.returncode == 1
    assert "FAIL" in result.stdout


@pytest.mark.parametrize(
    ("sample", "service", "credentials"),
    [
        ("json_users", "userprovider", None),
        ("json_users", "authprovider", ("einstein", "relativity")),
        ("json_users", "groupprovider", None),
        ("sqlite_users", "userprovider", None),
        ("logging_users", "userprovider", None),
        ("hashed_auth", "authprovider", ("einstein", "relativity")),
    ],
)
def test_every_sample_conforms(
    sample: str, service: str, credentials: tuple[str, str] | None, tmp_path: Path
) -> None:
    from reva_plugins._config import load_driver_table

    folder = SAMPLES / sample
    config = load_driver_table(folder / "conformance.toml")
    report = run_conformance(
        str(folder), service, config=config, base_dir=folder, credentials=credentials
    )
    assert report.ok, [(c.name, c.reason) for c in report.failures()]
    assert all(c.status == "pass" for c in report.checks)


def test_prepare_source_kinds(tmp_path: Path) -> None:
    project = make_plugin(tmp_path / "p")
    assert prepare_source(project, "folder", tmp_path) == str(project)
    assert prepare_source(project, "wheel", tmp_path / "w").endswith(".whl")
    assert prepare_source(project, "sdist", tmp_path / "s").endswith(".tar.gz")
    assert prepare_source(project, "git", tmp_path / "g").startswith("git+file://")


# -- publishing: sdists and wheels on a PEP 503 index served from 127.0.0.1 ----------------------


@pytest.fixture
def package_index(tmp_path: Path) -> Iterator[str]:
    """Build the samples' sdists and wheels and serve them as a PEP 503 simple index."""
    root = tmp_path / "index"
    files = root / "files"
    for sample in ("json_users", "sqlite_users"):
        build_dists(SAMPLES / sample, files)
    projects: dict[str, list[Path]] = {}
    for dist in files.iterdir():
        name = dist.name.split("-")[0].replace("_", "-").lower()
        projects.setdefault(name, []).append(dist)
    (root / "simple").mkdir()
    links = "".join(f'<a href="{name}/">{name}</a>\n' for name in projects)
    (root / "simple" / "index.html").write_text(
        f"<!DOCTYPE html><html><body>\n{links}</body></html>\n"
    )
    for name, dists in projects.items():
        (root / "simple" / name).mkdir()
        anchors = "".join(
            f'<a href="../../files/{d.name}#sha256={hashlib.sha256(d.read_bytes()).hexdigest()}" '
            f'data-requires-python="&gt;=3.10">{d.name}</a>\n'
            for d in dists
        )
        (root / "simple" / name / "index.html").write_text(
            f"<!DOCTYPE html><html><body>\n{anchors}</body></html>\n"
        )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_published_plugins_load_from_a_local_index(
    package_index: str, tmp_path: Path, installer: str
) -> None:
    users = str(EXAMPLES / "users.demo.json")
    config = {
        "plugins": {
            "index_url": package_index,
            "installer": installer,
            "cache_dir": str(tmp_path / "cache"),
        },
        "grpc": {
            "services": {
                "authprovider": {
                    "driver": "reva-plugin-json==1.0.0",
                    "drivers": {"json": {"users": users}},
                },
                "userprovider": {
                    "driver": "reva-plugin-sqlite>=1,<2",
                    "drivers": {"sqlite": {"database": ":memory:", "seed": users}},
                },
            }
        },
    }
    with Host(config, base_dir=tmp_path) as host:
        assert (
            host.service("authprovider").authenticate("einstein", "relativity")["user"]["username"]
            == "einstein"
        )
        marie = host.service("userprovider").get_user_by_claim("mail", "marie@example.org")
        assert marie["display_name"] == "Marie Curie"
        assert sorted(marie["groups"]) == ["physics-lovers", "polonium-lovers", "radium-lovers"]
        assert host.check()[0].kind == "requirement"
