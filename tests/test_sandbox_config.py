"""The sandbox's settings (#20): ``sandbox``, ``user`` in ``[plugins]`` and per driver,
``read_paths``, ``write_paths`` and ``connect`` per driver; every mistake one line naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from reva_plugins import ConfigError
from reva_plugins._config import load_file

from .conftest import cli


def _config(tmp_path: Path, plugins: str = "", plugin: str = "") -> Path:
    text = f"[plugins]\n{plugins}\n[grpc.services.userprovider]\ndriver = 'x'\n"
    text += f"[grpc.services.userprovider.plugin]\n{plugin}\n"
    path = tmp_path / "revad.toml"
    path.write_text(text)
    return path


def test_the_defaults_are_auto_and_nothing_extra(tmp_path: Path) -> None:
    config = load_file(_config(tmp_path))
    assert config.plugins.sandbox == "auto"
    assert config.plugins.user is None
    options = config.services[0].plugin
    assert (options.sandbox, options.read_paths, options.write_paths) == (None, (), ())
    assert (options.connect, options.connect_ports, options.user) == (None, None, None)


@pytest.mark.parametrize("value", ["true", "false", '"auto"'])
def test_sandbox_takes_auto_true_or_false(tmp_path: Path, value: str) -> None:
    config = load_file(_config(tmp_path, f"sandbox = {value}", f"sandbox = {value}"))
    expected = {"true": True, "false": False, '"auto"': "auto"}[value]
    assert config.plugins.sandbox == expected
    assert config.services[0].plugin.sandbox == expected


def test_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "ca.pem").write_text("x")
    plugin = 'read_paths = ["ca.pem"]\nwrite_paths = ["data"]\nconnect = ["ldap:636", "db:5432"]'
    options = load_file(_config(tmp_path, plugin=plugin)).services[0].plugin
    assert options.read_paths == (tmp_path / "ca.pem",)
    assert options.write_paths == (tmp_path / "data",)
    assert options.connect_ports == (636, 5432)


@pytest.mark.parametrize(
    ("plugins", "plugin", "key", "message"),
    [
        ('sandbox = "yes"', "", "plugins.sandbox", 'must be "auto", true or false'),
        ("", "sandbox = 1", "plugin.sandbox", 'must be "auto", true or false'),
        ("", 'read_paths = ["missing"]', "plugin.read_paths[0]", "'missing' does not exist"),
        ("", 'write_paths = ["/"]', "plugin.write_paths[0]", "the whole file system"),
        ("", 'read_paths = "ca.pem"', "plugin.read_paths", "must be list, not str"),
        ("", 'connect = ["ldap"]', "plugin.connect[0]", "must be HOST:PORT"),
        ("", 'connect = ["ldap:70000"]', "plugin.connect[0]", "must be HOST:PORT"),
        ("", 'connect = ["ldap:0"]', "plugin.connect[0]", "port 0 is no port to reach"),
        ("", 'network = false\nconnect = ["ldap:636"]', "plugin.connect", "needs network = true"),
        ('user = "no-such-user-here"', "", "plugins.user", "no such user"),
        ("", 'user = "no-such-user-here"', "plugin.user", "no such user"),
    ],
)
def test_mistakes_name_their_key(
    tmp_path: Path, plugins: str, plugin: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(_config(tmp_path, plugins, plugin))
    text = str(info.value)
    assert key in text
    assert message in text
    assert "\n" not in text


def test_a_mistake_is_one_line_and_exit_2_from_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "revad.toml"
    config.write_text("[plugins]\nsandbox = 'on'\n")
    result = cli("check", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"reva-plugins: error: {config}: plugins.sandbox: must be \"auto\", true or false, not 'on'"
    ]
