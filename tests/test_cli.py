"""The walking skeleton end to end: TOML config -> venv -> plugin process -> answer, via the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import EXAMPLES, SAMPLES, WriteConfig, cli

EINSTEIN = '{"client_id":"einstein","client_secret":"relativity"}'
CONFIG = str(EXAMPLES / "revad.toml")


@pytest.mark.slow
def test_authenticate_einstein_in_an_isolated_plugin() -> None:
    result = cli("call", CONFIG, "authprovider", "authenticate", EINSTEIN)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["user"]["username"] == "einstein"
    assert answer["user"]["display_name"] == "Albert Einstein"
    assert "secret" not in answer["user"]
    assert "user" in answer["scopes"]


@pytest.mark.slow
def test_wrong_secret_is_invalid_credentials_exit_1() -> None:
    result = cli(
        "call",
        CONFIG,
        "authprovider",
        "authenticate",
        '{"client_id":"einstein","client_secret":"nope"}',
    )
    assert result.returncode == 1
    assert result.stdout == ""
    error = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert error["type"] == "InvalidCredentials"
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_unknown_user_is_not_found_exit_1() -> None:
    params = '{"user_id": {"idp": "http://localhost:20080", "opaque_id": "nobody"}}'
    result = cli("call", CONFIG, "userprovider", "get_user", params)
    assert result.returncode == 1
    error = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert error["type"] == "NotFound"
    assert "nobody" in error["message"]


@pytest.mark.slow
def test_user_provider_methods() -> None:
    uid = '{"user_id": {"idp": "http://localhost:20080", "opaque_id": "4c510ada-c86b-4815-8820-42cdf82c3d51"}}'
    user = json.loads(cli("call", CONFIG, "userprovider", "get_user", uid).stdout)
    assert user["username"] == "einstein"
    groups = json.loads(cli("call", CONFIG, "userprovider", "get_user_groups", uid).stdout)
    assert groups == user["groups"]
    by_mail = cli(
        "call",
        CONFIG,
        "userprovider",
        "get_user_by_claim",
        '{"claim": "mail", "value": "marie@example.org"}',
    )
    assert json.loads(by_mail.stdout)["username"] == "marie"
    found = json.loads(
        cli("call", CONFIG, "userprovider", "find_users", '{"query": "FEYN"}').stdout
    )
    assert [u["username"] for u in found] == ["richard"]


@pytest.mark.slow
def test_check_prints_one_row_per_service_then_reuses_the_env(fresh_cache: Path) -> None:
    first = cli("check", CONFIG, "--json")
    assert first.returncode == 0, first.stderr
    rows = json.loads(first.stdout)
    assert [r["service"] for r in rows] == ["userprovider", "authprovider", "groupprovider"]
    assert all(r["ok"] and r["kind"] == "folder" for r in rows)
    assert rows[0]["built"] is True
    second = cli("check", CONFIG, "--json")
    again = json.loads(second.stdout)
    assert [r["built"] for r in again] == [False, False, False]
    assert again[0]["env"] == rows[0]["env"]
    assert "building env" not in second.stderr
    assert (fresh_cache / "CACHEDIR.TAG").is_file()

    table = cli("check", CONFIG)
    assert table.returncode == 0
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["SERVICE", "DRIVER", "KIND", "ENV", "STATUS"]
    assert len(lines) == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[grpc.services.userprovider]\ndriver = \n", "invalid TOML"),
        ("[grpc.services.userprovider]\nx = 1\n", "missing key 'driver'"),
        ('[grpc.services.nosuch]\ndriver = "json"\n', "unknown service 'nosuch'"),
        ('[grpc.services.userprovider]\ndriver = "./not/there"\n', "does not exist"),
        ('[plugins]\ninstaller = "conda"\n', "plugins.installer"),
        ('[plugins]\nstart_timeout = "soon"\n', "plugins.start_timeout"),
        ('[plugins]\ncache_dri = "x"\n', "plugins.cache_dri: unknown key"),
    ],
)
def test_config_mistakes_exit_2_with_one_clear_line(
    write_config: WriteConfig, toml: str, needle: str
) -> None:
    path = write_config(toml)
    result = cli("check", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_invalid_toml_names_the_line(write_config: WriteConfig) -> None:
    path = write_config("[plugins]\noffline = false\n\n[grpc.services.userprovider]\ndriver = \n")
    result = cli("check", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "line 5" in result.stderr


@pytest.mark.slow
def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = cli("call", str(tmp_path / "nope.toml"), "authprovider", "authenticate", EINSTEIN)
    assert result.returncode == 2
    assert "config file not found" in result.stderr
    assert "nope.toml" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("params", ["[1, 2]", '"einstein"', "{not json"])
def test_params_that_are_not_a_json_object_exit_2(params: str) -> None:
    result = cli("call", CONFIG, "authprovider", "authenticate", params)
    assert result.returncode == 2
    assert "PARAMS_JSON" in result.stderr


@pytest.mark.slow
def test_unknown_service_and_method_exit_2() -> None:
    assert cli("call", CONFIG, "storageprovider", "stat", "{}").returncode == 2
    result = cli("call", CONFIG, "authprovider", "authorize", "{}")
    assert result.returncode == 2
    assert "no method 'authorize'" in result.stderr
    wrong_args = cli("call", CONFIG, "authprovider", "authenticate", '{"client": "x"}')
    assert wrong_args.returncode == 2


@pytest.mark.slow
def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = cli("-v", "check", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "Traceback" in result.stderr


@pytest.mark.slow
def test_python_dash_m_and_help() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("check", "call"):
        assert command in result.stdout


def test_sample_is_standalone() -> None:
    text = (SAMPLES / "json_users" / "reva_plugin_json" / "__init__.py").read_text()
    assert "reva_plugins" not in text


# -- allowed_sources for specs typed on the command line: --plugins-from CONFIG ----------------


@pytest.fixture
def policy_layout(tmp_path: Path) -> Path:
    """``conf/revad.toml`` allowing only ``./plugins/*`` (relative to ``conf/``), a prebuilt venv
    at ``conf/plugins/venv`` (allowed), and others at ``plugins/venv`` and ``drv/plugins/venv``
    (not: the pattern is the config's, not the working directory's nor the driver table's)."""
    for venv in (
        tmp_path / "conf" / "plugins" / "venv",
        tmp_path / "plugins" / "venv",
        tmp_path / "drv" / "plugins" / "venv",
    ):
        (venv / "bin").mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "conf" / "revad.toml").write_text('[plugins]\nallowed_sources = ["./plugins/*"]\n')
    (tmp_path / "drv" / "driver.toml").write_text('users = "users.json"\n')
    return tmp_path


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.slow
def test_env_build_of_specs_honours_the_plugins_table_it_is_given(policy_layout: Path) -> None:
    policy = ["--plugins-from", "conf/revad.toml"]
    refused = cli("env", "build", "./plugins/venv", *policy, cwd=policy_layout)
    line = _one_error_line(refused)
    assert "not allowed by [plugins] allowed_sources" in line
    assert str(policy_layout / "plugins" / "venv") in line
    allowed = cli("env", "build", "conf/plugins/venv", *policy, cwd=policy_layout)
    assert allowed.returncode == 0, allowed.stderr
    assert "(nothing to build: venv)" in allowed.stdout
    # Without a config, the default policy: every spec is allowed.
    plain = cli("env", "build", "./plugins/venv", cwd=policy_layout)
    assert plain.returncode == 0, plain.stderr
    assert "(nothing to build: venv)" in plain.stdout


@pytest.mark.slow
def test_conformance_honours_the_plugins_table_it_is_given(policy_layout: Path) -> None:
    """Refused before anything is built or started; the driver table's folder (where the
    plugin would run) does not move the policy's patterns."""
    for spec in ("./plugins/venv", "./drv/plugins/venv"):
        result = cli(
            "conformance", spec, "--service", "userprovider",
            "--config", "drv/driver.toml", "--plugins-from", "conf/revad.toml",
            cwd=policy_layout,
        )  # fmt: skip
        assert "not allowed by [plugins] allowed_sources" in _one_error_line(result)


@pytest.mark.slow
def test_a_plugins_table_that_is_no_config_is_one_line_exit_2(policy_layout: Path) -> None:
    (policy_layout / "bad.toml").write_text("[plugins]\ninstaller = 'conda'\n")
    for command in (["env", "build", "json"], ["conformance", "json", "--service", "userprovider"]):
        line = _one_error_line(cli(*command, "--plugins-from", "bad.toml", cwd=policy_layout))
        assert "plugins.installer" in line
