"""The defaults live in ``_defaults`` only: config, supervisor, CLI and docs agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reva_plugins import _config, _defaults
from reva_plugins._cli import _parser
from reva_plugins._process import LaunchSpec, Supervisor

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def _table_default(key: str) -> str:
    match = re.search(rf"^\| `{key}` \| `([^`]*)` \|", DOCS.read_text(encoding="utf-8"), re.M)
    assert match, f"docs/config.md has no row for {key}"
    return match.group(1)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("start_timeout", _defaults.START_TIMEOUT),
        ("call_timeout", _defaults.CALL_TIMEOUT),
        ("max_concurrency", _defaults.MAX_CONCURRENCY),
        ("restart", _defaults.RESTART),
        ("max_download_mb", _defaults.MAX_DOWNLOAD_MB),
    ],
)
def test_the_docs_show_the_defaults(key: str, value: object) -> None:
    assert _table_default(key) == (f"{value:g}" if isinstance(value, float) else str(value))


def test_the_docs_show_the_bounds() -> None:
    text = DOCS.read_text(encoding="utf-8")
    low, high = _defaults.TIMEOUT_BOUNDS
    assert f"from {low:g} to {high:g}" in text
    assert "`max_concurrency` is {} to {}".format(*_defaults.MAX_CONCURRENCY_BOUNDS) in text
    assert f"at most {_defaults.MAX_CONFIG_BYTES >> 20} MiB" in text
    assert f"at most {_defaults.MAX_NESTING} levels" in text
    assert f"{_defaults.MAX_CRASHES} crashes in {_defaults.CRASH_WINDOW:g} s" in text


def test_config_supervisor_and_cli_read_the_same_defaults() -> None:
    config = _config.parse(
        {"grpc": {"services": {"userprovider": {"driver": "json"}}}}, base_dir=Path.cwd()
    )
    svc = config.service("userprovider")
    assert config.plugins.start_timeout == LaunchSpec.start_timeout == _defaults.START_TIMEOUT
    assert config.plugins.call_timeout == LaunchSpec.call_timeout == _defaults.CALL_TIMEOUT
    assert svc.plugin.max_concurrency == LaunchSpec.max_concurrency == _defaults.MAX_CONCURRENCY
    assert svc.plugin.restart == LaunchSpec.restart == _defaults.RESTART
    assert LaunchSpec.max_line == _defaults.MAX_LINE
    assert Supervisor.MAX_CRASHES == _defaults.MAX_CRASHES
    args = _parser().parse_args(["env", "prune"])
    assert args.unused_days == _defaults.UNUSED_DAYS
