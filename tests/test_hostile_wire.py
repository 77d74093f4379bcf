"""A hostile wire: deep nesting, non-finite numbers, garbage and prints before the bootstrap,
crashes under load. Each test failed before its fix; SECURITY.md lists every class with its test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reva_plugins import (
    HandshakeError,
    Host,
    PluginCrashed,
    ProtocolError,
    RemoteError,
    RevaPluginError,
)
from reva_plugins._client import Client
from reva_plugins._errors import UsageError
from reva_plugins._linereader import LineReader, Oversized
from reva_plugins._plan import IsolatedPlan
from reva_plugins._process import (
    LaunchSpec,
    PluginProcess,
    plugin_environment,
)
from reva_plugins._protocol import (
    BOOTSTRAP_FILE,
    PARSE_ERROR,
    dumps,
    encode_request,
    error_to_exception,
    guess_id,
    loads,
)

from .conftest import WriteConfig, cli, wait_until
from .plugin_sources import WIRE_HOSTILE

_wire_DEEP = 100_000


def _wire_make_plugin(root: Path) -> Path:
    (root / "reva_wire_hostile").mkdir(parents=True)
    (root / "reva_wire_hostile" / "__init__.py").write_text(WIRE_HOSTILE, encoding="utf-8")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "reva-wire-hostile"
            version = "0.1"

            [project.entry-points."reva.userprovider"]
            hostile = "reva_wire_hostile:Hostile"
            """
        ),
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def wire_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wire_make_plugin(tmp_path_factory.mktemp("wire") / "hostile")


def _wire_config(project: Path) -> dict[str, Any]:
    driver = {"driver": str(project), "plugin": {"max_concurrency": 16}}
    return {"grpc": {"services": {"userprovider": driver}}}


@pytest.fixture(scope="module")
def wire_spec(
    wire_project: Path, tmp_path_factory: pytest.TempPathFactory, session_dirs: dict[str, Path]
) -> LaunchSpec:
    host = Host(_wire_config(wire_project), base_dir=tmp_path_factory.mktemp("wirehost"))
    plan = host.planner.plan(host.config.service("userprovider"))
    assert isinstance(plan, IsolatedPlan)
    return plan.launch


@pytest.fixture
def wire_start(wire_spec: LaunchSpec) -> Iterator[Any]:
    started: list[PluginProcess] = []

    def start(**changes: Any) -> PluginProcess:
        process = PluginProcess(dataclasses.replace(wire_spec, **changes))
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.close()


def _wire_strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in output")

    return json.loads(text, parse_constant=refuse)


# -- deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_deeply_nested_reply_fails_only_its_own_call(wire_start: Any) -> None:
    process = wire_start()
    deep = '{"jsonrpc":"2.0","id":{id},"result":' + "[" * _wire_DEEP + "\n"
    results: dict[int, Any] = {}

    def echo(i: int) -> None:
        results[i] = process.call("echo", {"value": i, "delay": 0.01 * (i % 4)})

    threads = [threading.Thread(target=echo, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    with pytest.raises(ProtocolError, match="nested too deeply"):
        process.call("raw", {"data": deep})
    for thread in threads:
        thread.join()
    assert results == {i: i for i in range(12)}
    assert process.call("echo", {"value": "still fine"}) == "still fine"


@pytest.mark.slow
def test_a_deeply_nested_reply_with_its_id_last_fails_its_call(wire_start: Any) -> None:
    process = wire_start()
    deep = '{"jsonrpc":"2.0","result":' + "[" * _wire_DEEP + ',"id":{id}}\n'
    with pytest.raises(ProtocolError, match="nested too deeply"):
        process.call("raw", {"data": deep}, timeout=60)
    assert process.call("echo", {"value": 1}) == 1


@pytest.mark.slow
def test_a_deeply_nested_handshake_is_a_handshake_error(wire_start: Any) -> None:
    with pytest.raises(HandshakeError, match=r"not a handshake: invalid JSON.*nested too deeply"):
        wire_start(env={"HOSTILE_MODE": "deep_handshake"}, start_timeout=10)


@pytest.mark.slow
def test_nan_in_the_handshake_is_a_handshake_error(wire_start: Any) -> None:
    with pytest.raises(HandshakeError, match="NaN is not valid JSON"):
        wire_start(env={"HOSTILE_MODE": "nan_handshake"}, start_timeout=10)


@pytest.mark.slow
def test_a_deeply_nested_result_is_an_error_reply(wire_start: Any) -> None:
    process = wire_start()
    with pytest.raises(RemoteError, match="deep: result is not valid JSON"):
        process.call("deep", {})
    assert process.call("echo", {"value": 1}) == 1


class _WireBootstrap:
    """The bootstrap run directly, its wire a socketpair held by the test."""

    def __init__(self, spec: LaunchSpec) -> None:
        parent, child = socket.socketpair()
        entry = dict(
            spec.entry,
            wire_fd=child.fileno(),
            service="userprovider",
            max_concurrency=spec.max_concurrency,
            max_line=spec.max_line,
            log_level="info",
        )
        self.proc = subprocess.Popen(
            [str(spec.python), "-I", str(BOOTSTRAP_FILE), json.dumps(entry)],
            env=plugin_environment(spec),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(child.fileno(),),
            start_new_session=True,
        )
        child.close()
        parent.settimeout(30)
        self.sock = parent
        self.file = parent.makefile("rb")
        assert json.loads(self.file.readline())["method"] == "$/handshake"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any]:
        message = json.loads(self.file.readline())
        assert isinstance(message, dict)
        return message

    def close(self) -> None:
        self.sock.close()
        self.file.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def wire_bootstrap(wire_spec: LaunchSpec) -> Iterator[_WireBootstrap]:
    bootstrap = _WireBootstrap(wire_spec)
    yield bootstrap
    bootstrap.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "line",
    [
        b"[" * _wire_DEEP + b"\n",
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":' + b"[" * _wire_DEEP + b"\n",
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":NaN}}\n',
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":-Infinity}}\n',
        b"\xff\xfe garbage\n",
        b'"\xed\xa0\x80"\n',
        b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"value":"\\ud800"}}\n',
    ],
)
def test_the_bootstrap_answers_bad_json_with_a_parse_error(
    wire_bootstrap: _WireBootstrap, line: bytes
) -> None:
    wire_bootstrap.send(line)
    reply = wire_bootstrap.reply()
    assert reply["id"] is None
    assert reply["error"]["code"] == PARSE_ERROR
    wire_bootstrap.send(b'{"jsonrpc":"2.0","id":2,"method":"echo","params":{"value":"ok"}}\n')
    assert wire_bootstrap.reply() == {"jsonrpc": "2.0", "id": 2, "result": "ok"}


@pytest.mark.slow
def test_the_bootstrap_survives_an_empty_method_name(wire_bootstrap: _WireBootstrap) -> None:
    wire_bootstrap.send(b'{"jsonrpc":"2.0","id":3,"method":""}\n')
    assert wire_bootstrap.reply()["error"]["code"] == -32601
    wire_bootstrap.send(b'{"jsonrpc":"2.0","id":4,"method":"echo","params":{"value":4}}\n')
    assert wire_bootstrap.reply()["result"] == 4


# -- NaN and infinity --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nan", "inf"])
def test_a_nan_result_is_refused_by_the_plugin_naming_the_method(
    wire_start: Any, method: str
) -> None:
    process = wire_start()
    with pytest.raises(RemoteError, match=f"{method}: result is not valid JSON"):
        process.call(method, {})
    assert process.call("echo", {"value": 1}) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("NaN", "NaN is not valid JSON"),
        ("Infinity", "Infinity is not valid JSON"),
        ("[-Infinity]", "-Infinity is not valid JSON"),
        ('{"k":"\\udc00"}', "lone surrogate"),
        ("1e400", "not valid JSON"),
    ],
)
def test_non_json_values_from_the_plugin_are_a_protocol_error(
    wire_start: Any, token: str, reason: str
) -> None:
    process = wire_start()
    with pytest.raises(ProtocolError, match=reason):
        process.call("raw", {"data": '{"jsonrpc":"2.0","id":{id},"result":' + token + "}\n"})
    assert process.call("echo", {"value": 1}) == 1


@pytest.mark.slow
@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, {"x": float("-inf")}]])
def test_nan_in_params_is_a_usage_error(wire_start: Any, value: Any) -> None:
    process = wire_start()
    with pytest.raises(UsageError, match="params of 'echo' are not valid JSON"):
        process.call("echo", {"value": value})
    assert process._client.pending == {}
    assert process.call("echo", {"value": 2}) == 2


@pytest.mark.slow
def test_nan_in_a_driver_config_is_a_usage_error_at_start(wire_start: Any) -> None:
    with pytest.raises(UsageError, match="params of 'configure' are not valid JSON"):
        wire_start(config={"limit": float("inf")})


@pytest.mark.slow
def test_call_prints_only_strict_json(wire_project: Path, write_config: WriteConfig) -> None:
    config = write_config(
        f'[grpc.services.userprovider]\ndriver = "{wire_project}"\n', name="wire.toml"
    )
    nan_reply = '{"jsonrpc":"2.0","id":{id},"result":[NaN]}\n'
    for user_id in [
        {"opaque_id": "nan"},
        {"opaque_id": "inf"},
        {"opaque_id": "raw", "data": nan_reply},
        {"opaque_id": "raw", "data": nan_reply.replace("NaN", '"\\ud800"')},
        {"opaque_id": "raw", "data": nan_reply.replace("NaN", "1e999")},
        {"opaque_id": float("nan")},
        {"opaque_id": [1.5, "x"]},
    ]:
        params = json.dumps({"user_id": user_id})
        result = cli("call", str(config), "userprovider", "get_user", params)
        if result.stdout:
            assert result.returncode == 0
            _wire_strict(result.stdout)
        else:
            assert result.returncode in (1, 2), result.stderr
            assert "Traceback" not in result.stderr
            _wire_strict(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0
    assert _wire_strict(result.stdout) == {"opaque_id": [1.5, "x"]}


# -- output before the bootstrap runs ----------------------------------------------------------


@pytest.mark.slow
def test_pth_files_that_write_to_stdout_cannot_touch_the_wire(
    wire_spec: LaunchSpec, wire_start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reva_plugins.plugin")
    purelib = subprocess.run(
        [str(wire_spec.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pths = [Path(purelib) / "aaa_wire_garbage.pth", Path(purelib) / "aab_wire_big.pth"]
    pths[0].write_text('import os; os.write(1, b"garbage\\n")\n', encoding="utf-8")
    pths[1].write_text('import sys; print("M" * 1024 * 1024)\n', encoding="utf-8")
    try:
        process = wire_start()
        assert process.call("echo", {"value": "answers"}) == "answers"
    finally:
        for pth in pths:
            pth.unlink()
    assert wait_until(
        lambda: "garbage" in {getattr(r, "plugin_message", None) for r in caplog.records}
    )


# -- a crash under load ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "exit"])
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_a_crash_under_load_fails_calls_only_with_plugin_crashed(
    wire_start: Any, how: str, attempt: int
) -> None:
    process = wire_start()
    errors: list[BaseException] = []
    wrong: list[Any] = []
    answered = threading.Semaphore(0)

    def caller(n: int) -> None:
        for i in range(100_000):
            value = [n, i, "x" * (i % 64)]
            try:
                got = process.call("echo", {"value": value}, timeout=30)
            except RevaPluginError as exc:
                errors.append(exc)
                return
            if got != value:
                wrong.append((value, got))
            answered.release()

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        assert answered.acquire(timeout=30)
    if how == "kill":
        os.kill(process.pid, signal.SIGKILL)
    else:
        with contextlib.suppress(PluginCrashed):
            process.call("crash", {"code": 9})
    for thread in threads:
        thread.join(60)
    assert not wrong
    assert len(errors) == 16
    assert [e for e in errors if not isinstance(e, PluginCrashed)] == []
    assert {e.returncode for e in errors} == {-9 if how == "kill" else 9}  # type: ignore[attr-defined]


# -- properties of the line reader and decoding ------------------------------------------------

_wire_MAX_LINE = 64


def _wire_feed(chunks: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    reading, writing = socket.socketpair()

    def write() -> None:
        with writing:
            for chunk in chunks:
                writing.sendall(chunk)

    thread = threading.Thread(target=write)
    thread.start()
    return reading, thread


_wire_bytes = st.binary(max_size=300) | st.sampled_from(
    [b"\n", b"\x00", b"\xff\xfe", b"x" * 1000, b"[" * 5000, b'{"id": 1}\n']
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_wire_bytes, max_size=20))
def test_the_line_reader_returns_whole_lines_in_order(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    lines = [line + b"\n" for line in data.split(b"\n")[:-1]]
    sock, writer = _wire_feed(chunks)
    events: list[bytes | None] = []
    with sock:
        reader = LineReader(sock, _wire_MAX_LINE)
        while True:
            try:
                got = reader.readline(10.0)
            except Oversized as exc:
                events.append(None if len(exc.head) <= 4096 else b"head too long")
                continue
            assert isinstance(got, bytes), "timed out"
            if not got:
                break
            events.append(got)
    writer.join()
    if len(events) == len(lines) + 1:  # an oversized unterminated tail is reported, not returned
        assert events.pop() is None
        assert len(data.rsplit(b"\n", 1)[-1]) > _wire_MAX_LINE
    assert len(events) == len(lines)
    for event, line in zip(events, lines):
        if event is None:
            assert len(line) - 1 > _wire_MAX_LINE
        else:
            assert event == line


_wire_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
_wire_finite_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | st.integers(1, 300_000).map(lambda n: b"[" * n)
    | st.integers(1, 300_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
    | st.sampled_from([b"NaN", b"[Infinity]", b"-Infinity", b'"\xed\xa0\x80"', b"1e999999"])
    | st.from_regex(
        rb'\A\[(-?[0-9]{1,400}(\.[0-9]{1,5})?([eE][-+]?[0-9]{1,4})?|"(\\u[dD][0-9a-fA-F]{3}|x)+")\]\Z'
    )
)
def test_loads_raises_only_value_error(data: bytes) -> None:
    try:
        value = loads(data)
    except ValueError:
        return
    if len(data) < 1000:  # what the wire decodes, it can encode again: strict JSON, UTF-8
        assert loads(dumps(value).encode("utf-8")) == value


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _wire_json) | st.dictionaries(
    st.sampled_from(["code", "message", "data"]),
    _wire_json | st.dictionaries(st.sampled_from(["type", "traceback"]), _wire_json),
))  # fmt: skip
def test_error_to_exception_takes_any_error_object(error: dict[str, Any]) -> None:
    exc = error_to_exception(error, plugin="p")
    assert isinstance(exc, RemoteError)
    assert isinstance(exc.code, int)
    assert str(exc)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.integers(1, 200_000).map(lambda n: b"[" * n))
def test_guess_id_takes_any_bytes(line: bytes) -> None:
    found = guess_id(line)
    assert found is None or 0 <= found < 10**18


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(_wire_json, max_size=3))
def test_params_encode_or_raise_a_usage_error(values: list[Any]) -> None:
    try:
        line = encode_request(1, "m", {"values": values})
    except UsageError:
        return
    assert loads(line)["params"] == {"values": values}


def _wire_garbage_lines() -> st.SearchStrategy[list[bytes]]:
    line = (
        st.binary(max_size=200)
        | st.integers(1, 100_000).map(lambda n: b'{"id":1,"result":' + b"[" * n)
        | st.sampled_from([b'{"id":1,"result":NaN}', b'{"id":1}', b"[1]", b'{"id":true}'])
        | _wire_json.map(lambda v: json.dumps(v).encode())
    )
    return st.lists(line.map(lambda b: b.replace(b"\n", b" ") + b"\n"), max_size=5)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_wire_garbage_lines(), _wire_finite_json)
def test_the_client_delivers_replies_through_any_garbage(garbage: list[bytes], value: Any) -> None:
    core, plugin = socket.socketpair()
    client = Client(core, label="p", max_line=1_000_000)
    requests = plugin.makefile("rb")

    def serve() -> None:
        for _ in range(2):
            request = json.loads(requests.readline())
            for line in garbage if request["id"] == 1 else []:
                plugin.sendall(line)
            reply = {"jsonrpc": "2.0", "id": request["id"], "result": request["params"]["v"]}
            plugin.sendall(json.dumps(reply, allow_nan=False).encode() + b"\n")

    server = threading.Thread(target=serve)
    server.start()
    try:
        clean = json.loads(json.dumps(value))
        try:
            first = client.call("m", {"v": clean}, timeout=30)
        except ProtocolError:
            first = ProtocolError
        except RemoteError:
            first = RemoteError
        if first is ProtocolError or first is RemoteError:
            assert any(guess_id(line) == 1 or b'"id"' in line for line in garbage)
        elif first != clean:
            assert any(b'"result"' in line or b'"id"' in line for line in garbage)
        assert client.call("m", {"v": "second"}, timeout=30) == "second"
    finally:
        server.join()
        requests.close()
        plugin.close()
        core.close()


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500) | st.integers(1, 200_000).map(lambda n: b'{"a":' * n + b"\n"))
def test_dispatching_any_bytes_raises_nothing(line: bytes) -> None:
    core, plugin = socket.socketpair()
    with core, plugin:
        client = Client(core, label="p", max_line=1_000_000)
        client._dispatch(line)
