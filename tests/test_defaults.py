"""The defaults live in ``_defaults`` only: config, supervisor, CLI and docs agree with it."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

from reva_plugins import _config, _defaults
from reva_plugins._cli import _parser
from reva_plugins._process import LaunchSpec
from reva_plugins._supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "config.md"
CONFIG_SOURCE = ROOT / "reva_plugins" / "_config.py"


def _table_default(key: str) -> str:
    match = re.search(
        rf"^\| `{re.escape(key)}` \| `([^`]*)` \|", DOCS.read_text(encoding="utf-8"), re.M
    )
    assert match, f"docs/config.md has no row for {key}"
    return match.group(1)


def _as_toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("installer", _defaults.INSTALLER),
        ("start_timeout", _defaults.START_TIMEOUT),
        ("call_timeout", _defaults.CALL_TIMEOUT),
        ("allowed_sources", _defaults.ALLOWED_SOURCES),
        ("offline", _defaults.OFFLINE),
        ("max_download_mb", _defaults.MAX_DOWNLOAD_MB),
        ("allow_http", _defaults.ALLOW_HTTP),
        ("max_concurrency", _defaults.MAX_CONCURRENCY),
        ("restart", _defaults.RESTART),
        ("[grpc] address", _defaults.SERVE_ADDRESS),
        ("[grpc] shutdown_grace", _defaults.SERVE_SHUTDOWN_GRACE),
        ("[grpc] workers", _defaults.SERVE_WORKERS),
        ("[grpc] processes", _defaults.SERVE_PROCESSES),
        ("[grpc] access_log", _defaults.ACCESS_LOG),
    ],
)
def test_the_docs_show_the_defaults(key: str, value: object) -> None:
    assert _table_default(key) == _as_toml(value)


def test_the_docs_show_the_bounds() -> None:
    text = DOCS.read_text(encoding="utf-8")
    low, high = _defaults.TIMEOUT_BOUNDS
    assert f"from {low:g} to {high:g}" in text
    assert "`max_concurrency` is {} to {}".format(*_defaults.MAX_CONCURRENCY_BOUNDS) in text
    assert f"at most {_defaults.MAX_CONFIG_BYTES >> 20} MiB" in text
    assert f"at most {_defaults.MAX_NESTING} levels" in text
    assert f"{_defaults.MAX_CRASHES} crashes in {_defaults.CRASH_WINDOW:g} s" in text
    serve = (ROOT / "docs" / "serve.md").read_text(encoding="utf-8")
    for key, default, (low, high) in (
        ("shutdown_grace", _defaults.SERVE_SHUTDOWN_GRACE, _defaults.SERVE_SHUTDOWN_GRACE_BOUNDS),
        ("workers", _defaults.SERVE_WORKERS, _defaults.SERVE_WORKERS_BOUNDS),
    ):
        line = next(line for line in serve.splitlines() if line.startswith(f"{key} = "))
        assert line.startswith(f"{key} = {default:g} ")
        assert line.endswith(f"({low:g} to {high:g})")


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
    assert dataclasses.replace(config.plugins, policy_dir=None) == _config.LoaderSettings()
    assert config.serve == _config.ServeSettings()
    assert svc.plugin == _config.PluginOptions()
    args = _parser().parse_args(["env", "prune"])
    assert args.unused_days == _defaults.UNUSED_DAYS
    assert _parser().parse_args(["status", "x:1"]).timeout == _defaults.STATUS_TIMEOUT


# -- _config holds no default or bound of its own -----------------------------------------------

#: Names ``_config`` may still define as a bare alias of a ``_defaults`` name: each has a user
#: outside the files that can be changed with it (remove the entry with its last user).
TRANSITIONAL_ALIASES: set[str] = set()


def _is_number(node: ast.AST) -> bool:
    """A numeric literal, or arithmetic of literals only (``1 << 20``)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _is_number(node.operand)
    if isinstance(node, ast.BinOp):
        return _is_number(node.left) and _is_number(node.right)
    return False


def _is_version_check(node: ast.AST) -> bool:
    return isinstance(node, ast.Compare) and ast.unparse(node.left) == "sys.version_info"


def literal_defaults(source: str) -> list[str]:
    """Where ``source`` writes a default or a bound as a literal instead of naming ``_defaults``:

    - a dataclass field whose default is a literal (anything but None);
    - a bare alias of a ``_defaults`` name (the name has one home) outside
      :data:`TRANSITIONAL_ALIASES`;
    - a module-level constant that is or holds a number;
    - a tuple of literals holding a number (an inline bound such as ``(1, 1 << 20)``);
    - ``… or <number>`` (an inline fallback), or a comparison with a number other than 0.
    """
    tree = ast.parse(source)
    found: list[str] = []
    version_checks = {
        id(child) for node in ast.walk(tree) if _is_version_check(node) for child in ast.walk(node)
    }

    def where(node: ast.AST) -> str:
        return f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)}"

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    literals = [
                        n
                        for n in ast.walk(stmt.value)
                        if isinstance(n, ast.Constant) and n.value is not None
                    ]
                    if literals:
                        found.append(f"field default {where(stmt)}")
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        if ast.unparse(value).startswith("_defaults.") and not names <= TRANSITIONAL_ALIASES:
            found.append(f"alias of a _defaults name {where(stmt)}")
        elif any(_is_number(n) for n in ast.walk(value)):
            found.append(f"module constant {where(stmt)}")
    for node in ast.walk(tree):
        if id(node) in version_checks:
            continue
        if isinstance(node, ast.Tuple) and node.elts:
            literal = all(_is_number(e) or isinstance(e, ast.Constant) for e in node.elts)
            if literal and any(_is_number(e) for e in node.elts):
                found.append(f"inline bound {where(node)}")
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            if any(_is_number(v) for v in node.values):
                found.append(f"inline fallback {where(node)}")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_number(o) and ast.literal_eval(o) != 0 for o in operands):
                found.append(f"inline bound {where(node)}")
    return found


def test_config_writes_no_default_or_bound_of_its_own() -> None:
    assert literal_defaults(CONFIG_SOURCE.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "@dataclass\nclass S:\n    workers: int = 16\n",
        "@dataclass\nclass S:\n    address: str = '0.0.0.0:19000'\n",
        "@dataclass\nclass S:\n    offline: bool = False\n",
        "WORKERS: tuple[int, int] = (1, 1024)\n",
        "UNUSED_DAYS = _defaults.UNUSED_DAYS_BOUNDS\n",
        "def f(r):\n    return r.bounded_int(t, k, 'max_download_mb', (1, 1 << 20))\n",
        "def f(r):\n    return r.get('workers') or 16\n",
        "def f(port):\n    return int(port) > 65535\n",
    ],
)
def test_the_literal_default_check_can_fail(snippet: str) -> None:
    assert literal_defaults(snippet) != []


def test_the_literal_default_check_passes_what_config_may_write() -> None:
    allowed = (
        "import sys\nif sys.version_info >= (3, 11):\n    pass\n"
        "@dataclass\nclass S:\n    workers: int = _defaults.SERVE_WORKERS\n    tls: str | None = None\n"
        "def f(raw, n):\n    return raw.read(n + 1), len(raw) > 0\n"
    )
    assert literal_defaults(allowed) == []


def _constant_names(path: Path) -> list[str]:
    names: list[str] = []
    for stmt in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(stmt, ast.Assign):
            names += [t.id for t in stmt.targets if isinstance(t, ast.Name)]
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names.append(stmt.target.id)
        elif isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            names.append(stmt.name)
    return [n for n in names if n.isupper() and not n.startswith("_")]


@pytest.mark.parametrize("module", ["_config", "_defaults"])
def test_every_setting_name_is_read_somewhere_else(module: str) -> None:
    """A constant nobody reads outside its module (``GRPC_KEYS`` was one) is dead, or a second
    home of something kept elsewhere."""
    path = ROOT / "reva_plugins" / f"{module}.py"
    others = "\n".join(
        p.read_text(encoding="utf-8")
        for folder in ("reva_plugins", "tests", "benchmarks")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if p != path
    )
    unread = [n for n in _constant_names(path) if not re.search(rf"\b{n}\b", others)]
    assert unread == []
