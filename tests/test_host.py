"""The Python API: Host, service proxies, typed errors, lifecycle hooks and clean shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import (
    ConfigError,
    Host,
    InvalidCredentials,
    NotFound,
    RevaPluginError,
    SourceError,
    hookimpl,
)
from reva_plugins._installers import find_uv

from .conftest import EXAMPLES, ROOT, SAMPLES, pid_alive, wait_until

EINSTEIN_ID = {"idp": "http://localhost:20080", "opaque_id": "4c510ada-c86b-4815-8820-42cdf82c3d51"}


def json_config(driver: str, users: Path = EXAMPLES / "users.demo.json") -> dict[str, Any]:
    table = {"driver": driver, "drivers": {"json": {"users": str(users)}}}
    return {"grpc": {"services": {"userprovider": table, "authprovider": dict(table)}}}


@pytest.mark.slow
def test_host_from_file_answers_through_proxies() -> None:
    with Host.from_file(EXAMPLES / "revad.toml") as host:
        users = host.service("userprovider")
        assert users.get_user(EINSTEIN_ID)["username"] == "einstein"
        assert users.get_user(EINSTEIN_ID, skip_fetching_groups=True)["groups"] == []
        assert users.get_user_by_claim("uid", "456")["username"] == "marie"
        auth = host.service("authprovider")
        assert auth.authenticate("marie", "radioactivity")["user"]["mail"] == "marie@example.org"
        with pytest.raises(InvalidCredentials) as bad:
            auth.authenticate("marie", "wrong")
        assert bad.value.type == "InvalidCredentials"
        with pytest.raises(NotFound):
            users.get_user({"idp": "x", "opaque_id": "nobody"})
        with pytest.raises(RevaPluginError, match="no method"):
            users.call("delete_user", {})
        assert host.services == ("userprovider", "authprovider", "groupprovider")


@pytest.mark.slow
def test_close_leaves_no_process_behind() -> None:
    host = Host(json_config("../sample_plugins/json_users"), base_dir=EXAMPLES)
    host.service("authprovider").authenticate("einstein", "relativity")
    pid = host.service("authprovider").info().pid
    assert pid is not None
    assert pid_alive(pid)
    host.close()
    assert wait_until(lambda: not pid_alive(pid), timeout=5)
    with pytest.raises(RevaPluginError, match="closed"):
        host.service("authprovider")


@pytest.mark.slow
def test_lifecycle_hooks_are_called() -> None:
    events: list[tuple[str, Any]] = []

    class Recorder:
        @hookimpl
        def plugin_started(self, service: str, handshake: dict[str, Any]) -> None:
            events.append(
                ("started", (service, handshake["entry_point"], handshake["distribution"]))
            )

        @hookimpl
        def plugin_exited(
            self, service: str, pid: int, returncode: int | None, expected: bool
        ) -> None:
            events.append(("exited", (service, expected)))

    with Host(json_config("../sample_plugins/json_users"), base_dir=EXAMPLES) as host:
        host.register(Recorder())
        host.service("userprovider").find_users("a")
    assert events[0] == ("started", ("userprovider", "json", "reva-plugin-json"))
    assert events[-1] == ("exited", ("userprovider", True))


def test_unknown_service_is_a_config_error() -> None:
    with (
        Host(json_config("../sample_plugins/json_users"), base_dir=EXAMPLES) as host,
        pytest.raises(ConfigError),
    ):
        host.service("storageprovider")


def test_bare_name_that_is_not_installed_is_a_clear_error() -> None:
    with Host(json_config("no-such-driver"), base_dir=EXAMPLES) as host:
        with pytest.raises(SourceError, match="no driver named 'no-such-driver'") as info:
            host.service("userprovider")
        assert info.value.exit_code == 2


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory, session_dirs: dict[str, Path]) -> Path:
    """A separate core environment with reva-plugins and the JSON sample installed in it."""
    uv = find_uv()
    if uv is None:
        pytest.skip("uv is needed to build the core venv quickly")
    venv = tmp_path_factory.mktemp("core") / "venv"
    env = {**os.environ, "UV_CACHE_DIR": str(session_dirs["uv"])}
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            str(ROOT),
            str(SAMPLES / "json_users"),
        ],
        check=True,
        env=env,
    )
    return venv


@pytest.mark.slow
def test_installed_sample_answers_in_process_by_bare_name(core_venv: Path, tmp_path: Path) -> None:
    users = EXAMPLES / "users.demo.json"
    config = tmp_path / "revad.toml"
    config.write_text(
        f'[grpc.services.authprovider]\ndriver = "json"\n[grpc.services.authprovider.drivers.json]\nusers = "{users}"\n'
        f'[grpc.services.userprovider]\ndriver = "json"\n[grpc.services.userprovider.drivers.json]\nusers = "{users}"\n'
    )
    exe = str(core_venv / "bin" / "reva-plugins")
    ok = subprocess.run(
        [
            exe,
            "call",
            str(config),
            "authprovider",
            "authenticate",
            '{"client_id":"einstein","client_secret":"relativity"}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["user"]["username"] == "einstein"
    bad = subprocess.run(
        [
            exe,
            "call",
            str(config),
            "authprovider",
            "authenticate",
            '{"client_id":"einstein","client_secret":"x"}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert json.loads(bad.stderr)["error"]["type"] == "InvalidCredentials"
    missing = subprocess.run(
        [
            exe,
            "call",
            str(config),
            "userprovider",
            "get_user",
            '{"user_id": {"idp": "", "opaque_id": "nobody"}}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    assert json.loads(missing.stderr)["error"]["type"] == "NotFound"
    check = subprocess.run(
        [exe, "check", str(config), "--json"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    assert {row["kind"] for row in json.loads(check.stdout)} == {"in-process"}


@pytest.mark.slow
def test_clashing_pins_samples_coexist_in_one_host() -> None:
    with Host.from_file(EXAMPLES / "clashing.toml") as host:
        old = host.service("userprovider").get_user({"idp": "local", "opaque_id": "packaging"})
        new = host.service("authprovider").authenticate("packaging", "version")["user"]
    assert old["display_name"] == "packaging 21.3"
    assert new["display_name"].startswith("packaging 2")
    assert new["display_name"] != old["display_name"]
