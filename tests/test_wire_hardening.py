"""The core's end of the wire against a plugin that misbehaves on it (#19, third round): long
lines hold no event loop up (a long reply is decoded by a worker, a long line for no call in
flight is dropped undecoded), a caller's timeout holds while the plugin keeps sending bytes,
whatever a plugin raises is answered as an error, and a number past a double is refused."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import _connection, _loopcalls
from reva_plugins._errors import CallTimeout, ProtocolError
from reva_plugins._protocol import APPLICATION_ERROR, DEFAULT_MAX_LINE, loads, loads_yielding

from .conftest import cli, pid_alive, wait_until
from .test_client import Peer, Pool, _line, _result
from .test_hostile_wire import _wire_make_plugin

# -- a caller's timeout while bytes keep coming -----------------------------------------------


def _trickle(peer: Peer, chunk: bytes, every: float, stop: threading.Event) -> threading.Thread:
    """Read the request, then send ``chunk`` every ``every`` seconds (never a newline) until
    ``stop``, for at most 8 s (so a reader that never times out ends the test, failing it)."""

    def run() -> None:
        peer.request()
        until = time.monotonic() + 8
        while not stop.is_set() and time.monotonic() < until:
            peer.sock.sendall(chunk)
            stop.wait(every)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("chunk", "every"), [(b"x" * 4096, 0.005), (b"x", 0.3)], ids=["endless-line", "byte-by-byte"]
)
def test_a_callers_timeout_holds_while_the_plugin_keeps_sending(chunk: bytes, every: float) -> None:
    peer = Peer(max_line=1 << 30)
    stop = threading.Event()
    sender = _trickle(peer, chunk, every, stop)
    try:
        began = time.monotonic()
        with pytest.raises(CallTimeout, match=r"m timed out after 1 s"):
            peer.client.call("m", {"v": 0}, timeout=1)
        took = time.monotonic() - began
    finally:
        stop.set()
        sender.join()
        peer.close()
        peer.client.sock.close()
    assert took < 15, f"the call returned after {took:.1f} s"  # before: still blocked at 40 s


def test_the_handshakes_timeout_holds_while_the_plugin_keeps_sending() -> None:
    peer = Peer(max_line=1 << 30)
    stop = threading.Event()

    def run() -> None:
        until = time.monotonic() + 8  # a reader that never times out fails, not hangs
        while not stop.is_set() and time.monotonic() < until:
            peer.sock.sendall(b"y" * 1024)
            stop.wait(0.01)

    sender = threading.Thread(target=run)
    sender.start()
    try:
        began = time.monotonic()
        first = peer.client.first_message(1)
        took = time.monotonic() - began
    finally:
        stop.set()
        sender.join()
        peer.close()
        peer.client.sock.close()
    assert first == (None, "", "")
    assert took < 15, f"the handshake's read returned after {took:.1f} s"


# -- long lines and an event loop -------------------------------------------------------------


async def _quiet_calls(quiet: Peer, count: int) -> list[float]:
    """``count`` calls on ``quiet`` one after the other; each one's latency."""
    took = []
    for n in range(count):
        began = time.perf_counter()
        assert await quiet.client.acall("m", {"v": n}, 30) == n
        took.append(time.perf_counter() - began)
        await asyncio.sleep(0.005)
    return took


def _while_noisy(noisy: Peer, quiet: Peer, noisy_call: Callable[[], Any]) -> tuple[float, float]:
    """Run ``noisy_call`` on an event loop while ``quiet``'s plugin answers calls on the same
    loop; the longest gap between the loop's ticks and the median quiet call's latency."""
    ticks: list[float] = []
    server = quiet.echo(40)

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.002)

    async def main() -> list[float]:
        tick = asyncio.ensure_future(ticker())
        # the quiet client's loop reader first (as a serving process has it)
        assert await quiet.client.acall("m", {"v": -1}, 30) == -1
        noisy_task = asyncio.ensure_future(noisy_call())
        took = await _quiet_calls(quiet, 39)
        await noisy_task
        tick.cancel()
        return took

    took = asyncio.run(main())
    server.join()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    return max(gaps), statistics.median(took)


def _users() -> object:
    return [
        {"id": {"idp": "https://idp.example.org", "opaque_id": f"user-{i}"}, "username": f"u{i}",
         "mail": f"u{i}@example.org", "display_name": f"User {i}", "uid_number": 1000 + i}
        for i in range(100_000)
    ]  # fmt: skip


def _one_field() -> object:
    return {"photo": "p" * 60_000_000}


def _recording_long_decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Each long line's decode, as (its size, whether an event loop runs in its thread)."""
    seen: list[tuple[int, bool]] = []
    real = loads_yielding

    def recording(line: bytes) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((len(line), on_loop))
        return real(line)

    # the threads' path decodes long lines in _connection, the event loop's in _loopcalls
    monkeypatch.setattr(_connection, "loads_yielding", recording)
    monkeypatch.setattr(_loopcalls, "loads_yielding", recording)
    return seen


@pytest.mark.parametrize("result", [_users, _one_field], ids=["100k-users", "60MB-field"])
def test_a_long_reply_is_decoded_off_the_event_loop(
    result: Callable[[], object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long reply (100k users, 17 MB; one 60 MB field) to one client is decoded by a worker
    thread, not on the event loop, while another client's calls on the same loop are served
    (before: the loop decoded it, and everything on it waited)."""
    expected = result()
    noisy, quiet = Peer(max_line=1 << 26), Peer()
    reply = _line(_result(1, expected))
    decodes = _recording_long_decodes(monkeypatch)

    def serve() -> None:
        request = noisy.request()
        assert request["id"] == 1
        time.sleep(0.05)
        noisy.sock.sendall(reply)

    server = threading.Thread(target=serve)
    server.start()

    async def long_call() -> None:
        assert await noisy.client.acall("FindUsers", {}, 60) == expected

    try:
        _while_noisy(noisy, quiet, long_call)
    finally:
        server.join()
        for peer in (noisy, quiet):
            peer.close()
            peer.client.sock.close()
    assert [on_loop for _, on_loop in decodes] == [False], decodes  # once, in a worker thread
    assert decodes[0][0] >= len(reply) - 1


def test_long_lines_for_no_call_in_flight_are_dropped_without_holding_the_loop(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One plugin floods its wire with 40 MB replies for unknown ids: they are dropped without
    being decoded (each was, on the loop), and another client's calls on the same loop go on."""
    noisy, quiet = Peer(max_line=1 << 26), Peer()
    unsolicited = _line(_result(10**9, {"blob": "x" * 40_000_000}))
    decodes = _recording_long_decodes(monkeypatch)

    def serve() -> None:
        request = noisy.request()
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            noisy.sock.sendall(unsolicited)
        noisy.reply(_result(request["id"], "done"))

    server = threading.Thread(target=serve)
    server.start()

    async def noisy_call() -> None:
        assert await noisy.client.acall("m", {"v": 0}, 60) == "done"

    try:
        _while_noisy(noisy, quiet, noisy_call)
    finally:
        server.join()
        for peer in (noisy, quiet):
            peer.close()
            peer.client.sock.close()
    assert decodes == []
    assert "reply for unknown call id 1000000000 dropped" in caplog.text


def test_a_long_line_for_no_call_in_flight_is_dropped_on_the_thread_path_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = Peer(max_line=1 << 26)
    try:

        def serve() -> None:
            request = peer.request()
            peer.reply(_result(10**9, "x" * 200_000), _result(request["id"], "y" * 200_000))

        server = threading.Thread(target=serve)
        server.start()
        assert peer.client.call("m", {"v": 0}, 30) == "y" * 200_000
        server.join()
    finally:
        peer.close()
        peer.client.sock.close()
    assert "reply for unknown call id 1000000000 dropped" in caplog.text


def test_a_long_reply_that_is_not_json_fails_only_its_asyncio_call() -> None:
    peer = Peer(max_line=1 << 26)
    try:

        def serve() -> None:
            first, second = peer.requests(2)
            broken = b'{"jsonrpc":"2.0","id":%d,"result":"' % first["id"] + b"z" * 300_000 + b"\n"
            peer.sock.sendall(broken + _line(_result(second["id"], "fine")))

        server = threading.Thread(target=serve)
        server.start()

        async def main() -> list[Any]:
            calls = (peer.client.acall("m", {"v": i}, 30) for i in range(2))
            return await asyncio.gather(*calls, return_exceptions=True)

        broken, fine = asyncio.run(main())
        server.join()
    finally:
        peer.close()
        peer.client.sock.close()
    assert isinstance(broken, ProtocolError)
    assert "invalid JSON from plugin" in str(broken)
    assert fine == "fine"


# -- numbers past a double --------------------------------------------------------------------


def test_a_number_past_a_double_fails_its_call_and_the_next_is_served() -> None:
    peer = Peer()
    try:

        def serve() -> None:
            request = peer.request()
            peer.reply(_result(request["id"], {"n": 10**400}))
            request = peer.request()
            peer.reply(_result(request["id"], {"n": -(10**308)}))

        server = threading.Thread(target=serve)
        server.start()
        with pytest.raises(ProtocolError, match=r"number 1000.* is out of range"):
            peer.client.call("m", {"v": 0}, 30)
        assert peer.client.call("m", {"v": 1}, 30) == {"n": -(10**308)}
        server.join()
    finally:
        peer.close()
        peer.client.sock.close()


@pytest.mark.parametrize(
    "wrong_id",
    [True, 1.0, "1", [1], None],
    ids=["true", "float", "string", "list", "null"],
)
def test_a_lone_callers_own_reply_is_matched_by_an_integer_id_only(wrong_id: object) -> None:
    """A lone caller reads and fills its own reply on the spot; a reply whose id only equals its
    id (true, 1.0) or names no call is handed out as any other line (dropped, logged), and the
    call still gets its own reply after it."""
    peer = Peer()
    try:

        def serve() -> None:
            request = peer.request()
            assert request["id"] == 1
            peer.reply(_result(wrong_id, "not yours"), _result(1, "yours"))

        server = threading.Thread(target=serve)
        server.start()
        assert peer.client.call("m", {"v": 0}, 30) == "yours"
        server.join()
        assert peer.client.pending == {}
    finally:
        peer.close()
        peer.client.sock.close()


@pytest.mark.parametrize(
    "text",
    [
        '{"n":' + "9" * 309 + "}",  # one integer past a double, the shortest
        '{"n":-' + "9" * 400 + "}",
        '{"a":[' + ",".join(["1"] * 200) + '],"n":' + "2" + "0" * 308 + "}",  # among many
    ],
)
def test_an_integer_past_a_double_is_refused_whatever_the_digits_around_it(text: str) -> None:
    """The codec picks its scanner by how many digits a line holds (fewer than a double's
    integer needs: no check per integer); a line with one long integer is refused as bytes
    (the wire's) and as text alike."""
    for data in (text, text.encode()):
        with pytest.raises(ValueError, match="out of range"):
            loads(data)


def test_many_small_integers_are_not_mistaken_for_a_long_one() -> None:
    """More digits in all than one long integer would need, none past a double: decoded."""
    numbers = list(range(10**5, 10**5 + 400))  # 2,400 digits in all
    text = json.dumps({"n": numbers, "big": 10**300, "neg": -(10**307)})
    for data in (text, text.encode()):
        assert loads(data) == {"n": numbers, "big": 10**300, "neg": -(10**307)}


# -- whatever a plugin raises is answered -----------------------------------------------------


class _StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _StrIsNone(Exception):
    def __str__(self) -> str:
        return None  # type: ignore[return-value]  # noqa: PLE0307 - what is tested


class _NoModule(type):
    @property
    def __module__(cls) -> str:  # type: ignore[override]
        raise AttributeError("__module__")


class _Anonymous(Exception, metaclass=_NoModule):
    pass


class _ReprRaises(dict[str, Any]):
    def items(self) -> Any:
        raise ZeroDivisionError("no items")


class Raiser:
    """A plugin object raising what ``traceback`` and ``str`` fail on."""

    def fail(self, kind: str) -> object:
        if kind == "result":
            return _ReprRaises(a=1)
        raise {"str": _StrRaises, "none": _StrIsNone, "module": _Anonymous}[kind]()

    def quick(self, v: object) -> object:
        return v


@pytest.mark.parametrize(
    ("kind", "type_name"),
    [("str", "_StrRaises"), ("none", "_StrIsNone"), ("module", "_Anonymous")],
)
def test_an_exception_that_cannot_be_formatted_is_answered_as_an_error(
    kind: str, type_name: str
) -> None:
    pool = Pool(obj=Raiser())
    try:
        (call_id,) = pool.send(("fail", {"kind": kind}))
        reply = pool.replies(1)[call_id]
        assert reply["error"]["code"] == APPLICATION_ERROR
        assert reply["error"]["message"] == type_name
        assert reply["error"]["data"]["type"] == type_name
        assert "in fail" in reply["error"]["data"]["traceback"]
        assert pool.call("quick", {"v": 7}) == 7  # the plugin lives on
        assert not pool.plugin.ended.is_set()
    finally:
        pool.close()


def test_a_result_whose_encoding_raises_is_answered_as_an_error() -> None:
    pool = Pool(obj=Raiser())
    try:
        (call_id,) = pool.send(("fail", {"kind": "result"}))
        reply = pool.replies(1)[call_id]
        assert reply["error"]["message"] == "fail: result is not valid JSON: no items"
        assert pool.call("quick", {"v": 7}) == 7
    finally:
        pool.close()


# -- end to end: `call --timeout` against a plugin that keeps sending ---------------------------

_TRICKLER = '''
import os
import time

import __main__


class Trickler:
    def configure(self, config):
        pass

    def get_user(self, user_id, skip_fetching_groups=False):
        """Send a line's bytes, one every 0.2 s, and never its end (for up to 30 s)."""
        wire = int(__main__.WIRE_FD)
        until = time.monotonic() + 30
        os.write(wire, b'{"jsonrpc":"2.0","id":1,"result":"')
        while time.monotonic() < until:
            os.write(wire, b"x")
            time.sleep(0.2)
        return user_id
'''


@pytest.mark.slow
def test_call_timeout_holds_while_the_plugin_keeps_sending(tmp_path: Path) -> None:
    """``reva-plugins call … --timeout 2`` hung for as long as the plugin kept sending."""
    project = tmp_path / "trickler"
    (project / "reva_trickler").mkdir(parents=True)
    (project / "reva_trickler" / "__init__.py").write_text(_TRICKLER, encoding="utf-8")
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "reva-trickler"
            version = "0.1"

            [project.entry-points."reva.userprovider"]
            trickler = "reva_trickler:Trickler"
            """
        ),
        encoding="utf-8",
    )
    config = tmp_path / "reva.toml"
    config.write_text(f'[grpc.services.userprovider]\ndriver = "{project}"\n', encoding="utf-8")
    params = json.dumps({"user_id": {"opaque_id": "einstein"}})
    assert cli("env", "build", str(config)).returncode == 0  # not timed: the env's build
    began = time.monotonic()
    result = cli("call", str(config), "userprovider", "get_user", params, "--timeout", "2")
    took = time.monotonic() - began
    assert result.returncode != 0
    assert "timed out after 2 s" in result.stderr
    assert took < 15, f"call --timeout 2 returned after {took:.1f} s"


# -- a first line that is no handshake, through the CLI ----------------------------------------


def _tagged_processes(tag: str) -> list[int]:
    """The live processes whose environment holds ``REVA_TEST_TAG=tag`` (a plugin's)."""
    found = []
    needle = f"REVA_TEST_TAG={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def hostile_first_line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wire-hostile plugin project, its env built once for the module's tests."""
    root = tmp_path_factory.mktemp("first-line")
    project = _wire_make_plugin(root / "hostile")
    config = root / "built.toml"
    config.write_text(f'[grpc.services.userprovider]\ndriver = "{project}"\n', encoding="utf-8")
    built = cli("env", "build", str(config))
    assert built.returncode == 0, built.stderr
    return project


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("long_handshake", f"message longer than {DEFAULT_MAX_LINE} bytes"),
        ("other_method", "not a $/handshake notification"),
        ("list_params", "its params are not an object"),
    ],
)
def test_check_refuses_a_first_line_that_is_no_handshake_naming_the_plugin(
    hostile_first_line: Path, tmp_path: Path, mode: str, problem: str
) -> None:
    """``check`` on a plugin whose first line is past the limit, another message, or a
    handshake whose params are no object: the plugin's row fails saying why (exit 1, no
    traceback), and its process is gone."""
    tag = str(tmp_path)
    config = tmp_path / "revad.toml"
    config.write_text(
        f'[grpc.services.userprovider]\ndriver = "{hostile_first_line}"\n'
        "[grpc.services.userprovider.plugin]\nstart_timeout = 60\n"
        f'env = {{ HOSTILE_MODE = "{mode}", REVA_TEST_TAG = "{tag}" }}\n',
        encoding="utf-8",
    )
    result = cli("check", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert f"the plugin's first message is not a handshake: {problem}" in output
    assert "userprovider" in output
    assert len(output) < 8000, "what the plugin wrote instead is shown, within a limit"
    assert "exited with signal SIGKILL" not in output, "the core's own kill is no crash"
    assert not _tagged_processes(tag)


def test_a_line_past_the_limit_read_by_the_reader_thread_fails_only_its_call() -> None:
    """Three calls in flight, a reader thread reading for two of them: a reply longer than the
    wire's limit fails its own call (a protocol error naming the limit), the other still gets
    its reply, and the wire keeps working."""
    peer = Peer(max_line=4096)
    results: dict[str, Any] = {}

    def call(name: str, value: int) -> None:
        try:
            results[name] = peer.client.call("m", {"v": value}, timeout=30)
        except ProtocolError as exc:
            results[name] = exc

    try:
        first = threading.Thread(target=call, args=("first", 1))
        first.start()
        ids = {1: peer.request()["id"]}
        others = [threading.Thread(target=call, args=(n, v)) for n, v in (("long", 2), ("ok", 3))]
        for thread in others:
            thread.start()
        for request in peer.requests(2):
            ids[request["params"]["v"]] = request["id"]
        assert wait_until(lambda: peer.readers >= 1), "the waiting calls start a reader"
        peer.reply(_result(ids[1], 1))
        first.join(30)
        # past the limit by more than one read (64 KiB): a line that ends within the read that
        # crosses the limit is taken whole (the limit bounds memory, to within a read)
        long_reply = _line(_result(ids[2], "x" * 200_000))
        peer.sock.sendall(long_reply + _line(_result(ids[3], 3)))
        for thread in others:
            thread.join(30)
        assert results["first"] == 1
        assert results["ok"] == 3
        assert isinstance(results["long"], ProtocolError)
        assert "message longer than 4096 bytes" in str(results["long"])
        echo = peer.echo(1)
        assert peer.client.call("m", {"v": 4}, timeout=30) == 4
        echo.join(30)
    finally:
        peer.close()
        peer.client.sock.close()


@pytest.mark.slow
def test_what_a_forged_handshake_says_is_shown_escaped(
    hostile_first_line: Path, tmp_path: Path
) -> None:
    """Plugin code runs before the bootstrap's handshake and may write a handshake of its own:
    what it claims (its sandbox state) reaches ``check``'s table escaped, never as terminal
    control sequences."""
    config = tmp_path / "revad.toml"
    config.write_text(
        f'[grpc.services.userprovider]\ndriver = "{hostile_first_line}"\n'
        '[grpc.services.userprovider.plugin]\nenv = { HOSTILE_MODE = "forged_handshake" }\n',
        encoding="utf-8",
    )
    result = cli("check", str(config))
    assert result.returncode == 0, result.stderr
    assert "landlock ABI 7\\x1b[2J\\x1b]0;owned\\x07" in result.stdout
    assert all(line.isprintable() for line in result.stdout.splitlines())
