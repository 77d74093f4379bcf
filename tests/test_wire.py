"""Core and bootstrap agree on the protocol: checked against the real bootstrap, not a module
compared with itself.

The bootstrap runs as the core runs it (``<venv python> -I _bootstrap.py '<json>'``) in a bare
stdlib venv that holds nothing of the core, so it must find ``_wire.py`` by path. The test then
holds the bootstrap to the definitions in ``reva_plugins._wire``: the handshake's keys are the
``HandshakeParams`` keys, and every method name and error code from the module is answered.

How it fails when one side changes (each tried by hand):

* the bootstrap sends ``"process_id"`` instead of ``"pid"`` in its handshake::

      AssertionError: assert ['app_protocols', …, 'process_id', 'python', …] == [… 'pid', …]

* ``_wire.PING`` becomes ``"$/health"`` while the bootstrap still compares with a ``"$/ping"``
  literal: the ping is answered ``{"error": {"code": -32601, …}}`` and
  ``test_the_bootstrap_answers_every_method_of_the_protocol`` fails on ``"result" in reply``;
* an error code changes on one side only: ``test_…_error_codes`` fails on the code it got;
* a literal the core also holds reappears in ``_bootstrap.py``:
  ``test_the_bootstrap_holds_no_literal_of_the_protocol`` names it and its line.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import _channel, _linereader, _poll, _wire
from reva_plugins._protocol import BOOTSTRAP_FILE

from .plugin_sources import AGREE_PLUGIN as PLUGIN

#: The files a plugin runs of the core: the bootstrap, and what it loads by path but ``_wire``.
PLUGIN_FILES = tuple(
    BOOTSTRAP_FILE.with_name(f"{name}.py")
    for name in ("_bootstrap", "_codec", "_channel", "_pool", "_contain", "_poll", "_sandbox")
)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the standard library and a one-file plugin: nothing of the core."""
    root = tmp_path_factory.mktemp("bare") / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    site = next(root.glob("lib/python*/site-packages"))
    (site / "agree_plugin.py").write_text(PLUGIN, encoding="utf-8")
    return root / "bin" / "python"


def bootstrap_input(wire_fd: int, **changes: Any) -> _wire.BootstrapInput:
    arg: _wire.BootstrapInput = {
        "group": "reva.userprovider",
        "name": "agree",
        "value": "agree_plugin:Plugin",
        "distribution": "",
        "version": "",
        "service": "userprovider",
        "wire_fd": wire_fd,
        "max_concurrency": 2,
        "max_line": 4096,
        "log_level": "warning",
    }
    arg.update(changes)  # type: ignore[typeddict-item]
    return arg


class Bootstrap:
    """The real bootstrap on a socketpair."""

    def __init__(self, python: Path, env: dict[str, str] | None = None) -> None:
        parent, child = socket.socketpair()
        base = {"PATH": os.defpath, _wire.COOKIE_KEY: _wire.COOKIE_VALUE}
        base[_wire.VERSIONS_ENV] = ",".join(map(str, _wire.PROTOCOL_VERSIONS))
        arg = bootstrap_input(child.fileno())
        assert set(arg) | {"limits", "parent", "sandbox"} == set(
            _wire.BootstrapInput.__annotations__
        )
        self.proc = subprocess.Popen(
            [str(python), "-I", str(BOOTSTRAP_FILE), json.dumps(arg)],
            env={**base, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(child.fileno(),),
            start_new_session=True,  # at EOF it kills its process group: not the test's
        )
        child.close()
        parent.settimeout(30)
        self.sock = parent
        self.file = parent.makefile("rb")

    def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.sock.sendall(data)

    def read(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line, "the bootstrap closed the wire"
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def call(self, call_id: int, method: str, params: Any = None) -> dict[str, Any]:
        self.send({"jsonrpc": "2.0", "id": call_id, "method": method, "params": params or {}})
        return self.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def bootstrap(bare_python: Path) -> Iterator[Bootstrap]:
    started = Bootstrap(bare_python)
    yield started
    started.close()


def test_the_handshake_has_exactly_the_declared_keys(bootstrap: Bootstrap) -> None:
    message = bootstrap.read()
    assert message["method"] == _wire.HANDSHAKE
    params = message["params"]
    assert sorted(params) == sorted(_wire.HandshakeParams.__annotations__)
    assert params["core_protocol"] in _wire.PROTOCOL_VERSIONS
    assert params["service"] == "userprovider"
    assert params["pid"] == bootstrap.proc.pid
    assert "echo" in params["methods"]


def test_the_bootstrap_answers_every_method_of_the_protocol(bootstrap: Bootstrap) -> None:
    bootstrap.read()
    reply = bootstrap.call(1, _wire.CONFIGURE, {"config": {"users": "u.json"}})
    assert reply == {"jsonrpc": "2.0", "id": 1, "result": None}
    assert bootstrap.call(2, "seen_config")["result"] == {"users": "u.json"}
    reply = bootstrap.call(3, _wire.PING)
    assert "result" in reply
    assert reply["result"]["pid"] == bootstrap.proc.pid
    bootstrap.send({"jsonrpc": "2.0", "method": _wire.CANCEL, "params": {"id": 99}})
    assert bootstrap.call(4, "echo", {"value": "after cancel"})["result"] == "after cancel"
    assert bootstrap.call(5, _wire.SHUTDOWN) == {"jsonrpc": "2.0", "id": 5, "result": None}
    assert bootstrap.proc.wait(10) == 0


def test_the_bootstrap_answers_with_the_declared_error_codes(bootstrap: Bootstrap) -> None:
    bootstrap.read()

    def code(reply: dict[str, Any]) -> int:
        return int(reply["error"]["code"])

    assert code(bootstrap.call(1, "no_such_method")) == _wire.METHOD_NOT_FOUND
    assert code(bootstrap.call(2, f"{_wire.CONTROL_PREFIX}unknown")) == _wire.METHOD_NOT_FOUND
    assert code(bootstrap.call(3, "echo", {"nope": 1})) == _wire.INVALID_PARAMS
    assert code(bootstrap.call(4, "fail")) == _wire.APPLICATION_ERROR
    bootstrap.send(b"{not json\n")
    assert code(bootstrap.read()) == _wire.PARSE_ERROR
    bootstrap.send(b"[1, 2]\n")
    assert code(bootstrap.read()) == _wire.INVALID_REQUEST
    bootstrap.send(b'"' + b"x" * 5000 + b'"\n')  # over the max_line of 4096 it was given
    assert code(bootstrap.read()) == _wire.INVALID_REQUEST
    assert bootstrap.call(5, "echo", {"value": 5})["result"] == 5


def test_an_exception_the_bootstrap_cannot_print_is_an_error_not_a_crash(
    bootstrap: Bootstrap,
) -> None:
    """``__str__`` returning None made the bootstrap exit 1, failing every call in flight."""
    bootstrap.read()
    error = bootstrap.call(1, "fail_oddly")["error"]
    assert error["code"] == _wire.APPLICATION_ERROR
    assert (error["message"], error["data"]["type"]) == ("Unprintable", "Unprintable")
    assert bootstrap.call(2, "echo", {"value": 2})["result"] == 2
    assert bootstrap.proc.poll() is None


def test_the_bootstrap_refuses_versions_it_does_not_speak(bare_python: Path) -> None:
    started = Bootstrap(bare_python, env={_wire.VERSIONS_ENV: "999"})
    try:
        assert started.proc.wait(10) == 1
        assert started.proc.stderr is not None
        assert b"protocol version mismatch" in started.proc.stderr.read()
    finally:
        started.close()


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.name)
def test_the_bootstrap_holds_no_literal_of_the_protocol(path: Path) -> None:
    """Every value ``_wire`` defines (names, codes, limits) is read from it, never repeated."""
    shared = {
        value
        for name, value in vars(_wire).items()
        if name.isupper() and isinstance(value, (str, int)) and not isinstance(value, bool)
    }
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # attribute names (``CallContext.meta``, the plugins' API) are not the protocol's values
    slots = {
        id(const)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
        for const in ast.walk(node.value)
    }
    repeated = [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and id(node) not in slots
        and not isinstance(node.value, bool)
        and node.value in shared
        and node.value not in (0, 1, -1)
    ]
    assert repeated == []


def test_bootstrap_run_by_hand_refuses() -> None:
    env = {k: v for k, v in os.environ.items() if k != _wire.COOKIE_KEY}
    result = subprocess.run(
        [sys.executable, "-I", str(BOOTSTRAP_FILE)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == _wire.HUMAN_MESSAGE
    assert result.stdout == ""


#: JSON-RPC 2.0's own member names: the standard's, not this protocol's definitions.
JSONRPC_MEMBERS = frozenset(
    {"jsonrpc", "id", "method", "params", "result", "error", "code", "message", "data"}
)
#: Literals both sides hold that are not the protocol's: file modes, codecs, /proc paths, a
#: logging attribute name.
NOT_PROTOCOL = frozenset({"utf-8", "rb", "replace", "/proc", "/proc/", "/stat", "asctime"})
#: The core's modules that speak the wire.
CORE_WIRE_MODULES = (
    "_protocol",
    "_client",
    "_connection",
    "_loopcalls",
    "_linereader",
    "_pending",
    "_process",
    "_host",
    "_errors",
)


def _string_literals(path: Path) -> dict[str, int]:
    """Every string constant of a module that could name something (docstrings, f-string text
    and prose left out), with the line of its first use."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    in_fstrings = {
        id(part)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for part in node.values
    }
    # attribute names (``CallContext.meta``, the plugins' API) are not the protocol's values
    slots = {
        id(const)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
        for const in ast.walk(node.value)
    }
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and id(node) not in in_fstrings
            and id(node) not in slots
            and len(node.value) > 1
            and " " not in node.value
        ):
            found.setdefault(node.value, node.lineno)
    return found


def _typed_dict_keys() -> set[str]:
    """The keys of every ``TypedDict`` ``_wire`` declares (both sides are type-checked on them)."""
    tree = ast.parse(Path(_wire.__file__).read_text(encoding="utf-8"))
    return {
        stmt.target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for stmt in node.body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
    }


def test_bootstrap_and_core_share_no_literal_outside_wire() -> None:
    """A name both sides must agree on (a member, a key, a version) is defined in ``_wire`` and
    read from there by both: a literal that the bootstrap and a core module both spell is a
    second home (a literal of a value ``_wire`` already defines is the test above's). Fails,
    e.g., when both sides start using a ``meta`` key ``"trace_id"``: ``[('trace_id', <line>)]``."""
    package = Path(_wire.__file__).parent
    core: set[str] = set()
    for name in CORE_WIRE_MODULES:
        core |= set(_string_literals(package / f"{name}.py"))
    allowed = JSONRPC_MEMBERS | NOT_PROTOCOL | _typed_dict_keys()
    for path in PLUGIN_FILES:
        bootstrap = _string_literals(path)
        shared = sorted((text, line) for text, line in bootstrap.items() if text in core - allowed)
        assert shared == [], path.name


# -- the poll before a read: one implementation, both ends -------------------------------------


def test_both_ends_poll_with_the_one_spinner() -> None:
    """The core's reader and the plugin's channel read through ``_poll.Spinner``; the plugin
    loads it at its first read, not at start."""
    core, plugin = socket.socketpair()
    with core, plugin:
        reader = _linereader.LineReader(core, 1000, peer=os.getpid())
        assert type(reader.spinner) is _poll.Spinner
        assert reader.spinner.peer == os.getpid()
        channel = _channel.LineChannel(plugin.fileno(), 1000)
        assert channel.spinner is None
        core.sendall(b"request\n")
        assert channel.read() == b"request\n"
        assert isinstance(channel.spinner, _poll.Spinner)
        plugin.sendall(b"reply\n")
        assert reader.readline(1.0, spin=True) == b"reply\n"


def test_a_poll_that_finds_nothing_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader polls briefly before its read blocks; each poll that finds nothing makes more of
    the following reads block at once (a slow peer is not polled for), and a poll that finds
    its message starts over."""
    monkeypatch.setattr(_poll.Spinner, "one_cpu", lambda self: False)
    core, plugin = socket.socketpair()
    with core, plugin:
        spinner = _poll.Spinner(core.fileno())
        spinner.spin()  # nothing arrives
        assert (spinner.skip, spinner.backoff) == (1, 1)
        spinner.spin()  # skipped
        assert spinner.skip == 0
        spinner.spin()
        assert (spinner.skip, spinner.backoff) == (2, 2)
        for _ in range(2):
            spinner.spin()
        for _ in range(8):  # misses double the backoff up to its cap
            spinner.spin()
            while spinner.skip:
                spinner.spin()
        assert spinner.backoff == _poll.SPIN_BACKOFF_MAX
        plugin.sendall(b"reply\n")
        spinner.spin()
        while spinner.skip:
            spinner.spin()
        spinner.spin()  # finds the reply waiting
        assert spinner.backoff == 0


def test_nothing_is_polled_for_on_one_cpu() -> None:
    """Pinned to one CPU (itself and its peer), a reader never polls: the poll would take the
    CPU from the process it waits for. The CPUs are looked at again every ``CPUS_RECHECK``."""
    core, plugin = socket.socketpair()
    every = os.sched_getaffinity(0)
    with core, plugin:
        spinner = _poll.Spinner(core.fileno(), peer=os.getpid())
        try:
            os.sched_setaffinity(0, {min(every)})
            spinner.cpus_at = -_poll.CPUS_RECHECK
            assert spinner.one_cpu()
            spinner.spin()
            assert (spinner.poll, spinner.skip, spinner.backoff) == (None, 0, 0)
        finally:
            os.sched_setaffinity(0, every)
        assert spinner.one_cpu()  # looked at again only after CPUS_RECHECK
        spinner.cpus_at = -_poll.CPUS_RECHECK
        assert spinner.one_cpu() == (len(every) == 1)
