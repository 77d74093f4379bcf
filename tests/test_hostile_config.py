"""Hostile configuration and command lines: bounds, nesting, control characters, special files,
unknown keys, and conformance runs that must flag leaked secrets. Each test failed before its
fix; SECURITY.md lists every class with its test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reva_plugins import (
    ConfigError,
    Host,
)
from reva_plugins import _cli as cli_module
from reva_plugins._config import (
    SERVICE_KEYS,
    ServiceConfig,
    load_driver_table,
    load_file,
    parse,
)
from reva_plugins._defaults import MAX_NESTING
from reva_plugins.testing import run_conformance

from .conftest import EXAMPLES, ROOT, SAMPLES, WriteConfig, cli
from .factory import make_plugin
from .plugin_sources import LEAKY_PLUGIN

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


_PLUGIN_TABLE = (
    '[grpc.services.userprovider]\ndriver = "json"\n[grpc.services.userprovider.plugin]\n'
)


@pytest.mark.parametrize(
    ("toml", "key", "needle"),
    [
        (_PLUGIN_TABLE + "env = { A = 1 }\n", "plugin.env.A", "must be a string"),
        (_PLUGIN_TABLE + 'sha256 = "abc"\n', "plugin.sha256", "must be 64 hexadecimal digits"),
        ('[plugins]\nallowed_sources = ["*", 1]\n', "plugins.allowed_sources", "list of strings"),
        (
            '[grpc]\naddress = "[::1:19000"\n' + _PLUGIN_TABLE,
            "grpc.address",
            "an IPv6 host in brackets",
        ),
    ],
)
def test_a_value_of_the_wrong_shape_names_its_key(
    write_config: WriteConfig, toml: str, key: str, needle: str
) -> None:
    message = _config_load(write_config, toml)
    assert isinstance(message, str), message
    assert key in message
    assert needle in message


def test_lock_python_must_be_a_version_exit_2(write_config: WriteConfig) -> None:
    path = write_config('[grpc.services.userprovider]\ndriver = "json"\n')
    _config_one_line(cli("lock", "--python", "python3", str(path)), "--python 'python3'", "3.12")
    assert not Path(f"{path}.lock").exists()


def test_check_of_a_config_without_services_is_one_line_exit_2(write_config: WriteConfig) -> None:
    path = write_config("[plugins]\n")
    _config_one_line(cli("check", str(path)), str(path), "no service uses a driver")


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


@pytest.fixture(scope="module")
def config_leaky_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leaky")
    project = make_plugin(
        root / "leaky",
        "reva-leaky",
        entry_points={"reva.userprovider": "leaky", "reva.authprovider": "leaky"},
    )
    (project / "reva_leaky" / "__init__.py").write_text(LEAKY_PLUGIN)
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
