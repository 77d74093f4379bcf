"""The supervisor with real processes: handshake, stdout discipline, logs, multiplexing,
deadlines, crashes and restarts, shutdown and orphans, scrubbed environment, robust reader."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import (
    CallCancelled,
    CallTimeout,
    Cancellation,
    HandshakeError,
    Host,
    NotFound,
    PluginCrashed,
    ProtocolError,
    RemoteError,
    _wire,
    hookimpl,
)
from reva_plugins._drivers import IsolatedDriver
from reva_plugins._plan import IsolatedPlan
from reva_plugins._process import LaunchSpec, PluginProcess, marked_processes
from reva_plugins._protocol import ResourceLimits
from reva_plugins._supervisor import Supervisor

from .conftest import pid_alive, wait_until

pytestmark = pytest.mark.slow  # every test runs a real plugin process

FAULT = Path(__file__).parent / "plugins" / "fault"


def fault_config(**plugin: Any) -> dict[str, Any]:
    plugin.setdefault("max_concurrency", 16)
    return {"grpc": {"services": {"userprovider": {"driver": str(FAULT), "plugin": plugin}}}}


def _supervisor(host: Host) -> Supervisor:
    """The supervisor behind the user provider: these tests call the fault plugin's own methods
    (crash, sleep, log …), which are not part of the service."""
    driver = host.service("userprovider").driver
    assert isinstance(driver, IsolatedDriver)
    return driver.supervisor


@pytest.fixture(scope="module")
def fault_spec(
    tmp_path_factory: pytest.TempPathFactory, session_dirs: dict[str, Path]
) -> LaunchSpec:
    """The launch spec of the fault plugin (its env is built once for the module)."""
    host = Host(fault_config(), base_dir=tmp_path_factory.mktemp("fault"))
    plan = host.planner.plan(host.config.service("userprovider"))
    assert isinstance(plan, IsolatedPlan)
    return plan.launch


@pytest.fixture
def start(fault_spec: LaunchSpec, tmp_path: Path) -> Iterator[Any]:
    started: list[PluginProcess] = []

    def start_process(**changes: Any) -> PluginProcess:
        spec = dataclasses.replace(fault_spec, **changes)
        if spec.sandbox is not None:  # the plugin writes the tests' marker files there
            write = (*spec.sandbox.write, str(tmp_path))
            spec = dataclasses.replace(spec, sandbox=dataclasses.replace(spec.sandbox, write=write))
        process = PluginProcess(spec)
        started.append(process)
        process.start()
        return process

    yield start_process
    for process in started:
        process.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    # The plugin writes the tests' marker files into tmp_path: it may, as an operator allows it.
    with Host(fault_config(write_paths=[str(tmp_path)]), base_dir=tmp_path) as h:
        yield h


# -- handshake ---------------------------------------------------------------------------------


def test_printing_to_stdout_everywhere_breaks_nothing(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reva_plugins.plugin")
    users = host.service("userprovider")
    assert users.get_user({"idp": "t", "opaque_id": "fault"})["username"] == "fault"
    with pytest.raises(NotFound):
        users.get_user({"idp": "t", "opaque_id": "other"})
    wanted = {
        "print at import",
        "os.write(1) at import",
        "print in configure",
        "os.write(1) in configure",
        "print in a call",
        "os.write(1) in a call",
    }
    assert wait_until(lambda: wanted <= {getattr(r, "plugin_message", "") for r in caplog.records})


def test_never_handshaking_fails_at_start_timeout_with_the_output(start: Any) -> None:
    with pytest.raises(HandshakeError) as info:
        start(env={"FAULT_MODE": "hang_before_handshake"}, start_timeout=1.5)
    message = str(info.value)
    assert "no handshake within 1.5 s" in message
    assert "about to hang before the handshake" in message
    assert "print at import" in message


def test_closing_the_host_cuts_a_slow_start_short(tmp_path: Path) -> None:
    """``close()`` does not wait out a plugin still importing (up to ``start_timeout``): the
    start in progress is aborted and fails with "the host is closed"."""
    config = fault_config(env={"FAULT_MODE": "hang_before_handshake"}, start_timeout=600)
    host = Host(config, base_dir=tmp_path)
    supervisor = _supervisor(host)
    failures: list[BaseException] = []
    exits: list[bool] = []

    class Watch:
        @hookimpl
        def plugin_exited(self, expected: bool) -> None:
            exits.append(expected)

    host.register(Watch())

    def start() -> None:
        try:
            supervisor.start()
        except BaseException as exc:
            failures.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    assert wait_until(lambda: supervisor.state == "starting" and supervisor._starting_process)
    starting = supervisor._starting_process
    assert starting is not None
    assert wait_until(lambda: starting.pid is not None)
    closer = threading.Thread(target=host.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() waited for the start"
    starter.join(30)
    assert len(failures) == 1
    assert isinstance(failures[0], PluginCrashed)
    assert "the host is closed" in str(failures[0])
    assert starting.pid is not None
    assert wait_until(lambda: not pid_alive(starting.pid))
    assert all(exits)  # the abort is the host's doing: no crash counted, none reported


def test_a_limit_hit_before_the_handshake_is_named(start: Any) -> None:
    with pytest.raises(
        HandshakeError, match=r"plugin exceeded open_files=1 .* before the handshake"
    ):
        start(limits=ResourceLimits(open_files=1))


def test_a_small_memory_limit_leaves_room_for_the_pool_threads(start: Any) -> None:
    """Under ``memory_mb`` a thread's stack counts in full against the address space: with
    the default 8 MiB stacks a 24 MiB plugin could not start its pool threads."""
    process = start(limits=ResourceLimits(memory_mb=24))
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda i: process.call("echo", {"value": i, "delay": 0.2}), range(4))
        )
    assert answers == [0, 1, 2, 3]


def test_dying_before_the_handshake_reports_exit_code_and_stderr(start: Any) -> None:
    with pytest.raises(HandshakeError) as info:
        start(env={"FAULT_MODE": "die_before_handshake"})
    assert info.value.returncode == 3
    assert "dying before the handshake" in str(info.value)


def test_protocol_version_mismatch_names_both_sides(start: Any) -> None:
    with pytest.raises(HandshakeError) as info:
        start(protocol_versions=(98, 99))
    message = str(info.value)
    assert "[98, 99]" in message
    assert "speaks 1" in message


def test_bootstrap_refuses_without_the_cookie(fault_spec: LaunchSpec) -> None:
    from reva_plugins._protocol import BOOTSTRAP_FILE, HUMAN_MESSAGE

    result = subprocess.run(
        [str(fault_spec.python), "-I", str(BOOTSTRAP_FILE), "{}"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        check=False,
    )
    assert (result.returncode, result.stderr.strip()) == (1, HUMAN_MESSAGE)


# -- logs --------------------------------------------------------------------------------------


def test_plugin_log_records_arrive_on_the_service_logger(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="reva_plugins.plugin")
    supervisor = _supervisor(host)
    supervisor.call(
        "log",
        {"level": "warning", "message": "disk almost full", "user": "einstein", "percent": 93},
    )
    supervisor.call("log", {"level": "debug", "message": "details"})
    supervisor.call("log", {"level": "error", "message": "it broke"})

    def record(message: str) -> logging.LogRecord | None:
        return next(
            (r for r in caplog.records if getattr(r, "plugin_message", "") == message), None
        )

    assert wait_until(lambda: record("it broke") is not None)
    warning = record("disk almost full")
    assert warning is not None
    assert warning.name == "reva_plugins.plugin.userprovider"
    assert warning.levelno == logging.WARNING
    assert warning.plugin_logger == "fault"  # type: ignore[attr-defined]
    assert (warning.user, warning.percent) == ("einstein", 93)  # type: ignore[attr-defined]
    assert record("details").levelno == logging.DEBUG  # type: ignore[union-attr]
    assert record("it broke").levelno == logging.ERROR  # type: ignore[union-attr]


def test_a_huge_stderr_line_is_truncated_not_fatal(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reva_plugins.plugin")
    process = start()
    assert process.call("big_stderr", {"size": 3 * 1024 * 1024}) is True
    assert wait_until(
        lambda: any(
            getattr(r, "plugin_message", "") == "after the big line" for r in caplog.records
        )
    )
    big = [m for r in caplog.records if (m := getattr(r, "plugin_message", "")).startswith("BBBB")]
    assert big
    assert big[0].endswith("[truncated]")
    assert process.call("echo", {"value": 1}) == 1


# -- multiplexing ------------------------------------------------------------------------------


def test_a_thousand_concurrent_calls_from_16_threads_get_their_own_answers(start: Any) -> None:
    process = start(max_concurrency=8)

    def one(i: int) -> tuple[int, Any]:
        return i, process.call(
            "echo", {"value": {"n": i, "s": "x" * (i % 50)}, "delay": 0.001 * (i % 5)}
        )

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(1000)))
    assert all(value == {"n": i, "s": "x" * (i % 50)} for i, value in results)
    assert 1 < process.call("peak", {}) <= 8


def test_a_single_threaded_plugin_runs_one_call_at_a_time(start: Any) -> None:
    process = start(max_concurrency=1)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: process.call("echo", {"value": i, "delay": 0.01}), range(16)))
    assert process.call("peak", {}) == 1


def test_replies_come_back_out_of_order(start: Any) -> None:
    process = start()
    done: list[str] = []
    slow = threading.Thread(
        target=lambda: done.append(process.call("echo", {"value": "slow", "delay": 1.0}))
    )
    slow.start()
    assert wait_until(lambda: len(process._client.pending) == 1)
    assert process.call("echo", {"value": "fast"}) == "fast"
    done.append("fast")
    slow.join()
    assert done == ["fast", "slow"]


def test_async_calls(host: Host) -> None:
    import asyncio

    users = host.service("userprovider")

    async def main() -> list[Any]:
        uid = {"idp": "t", "opaque_id": "fault"}
        return list(
            await asyncio.gather(*(users.acall("get_user", {"user_id": uid}) for _ in range(20)))
        )

    assert {u["username"] for u in asyncio.run(main())} == {"fault"}


# -- deadlines and cancellation ----------------------------------------------------------------


def test_a_hung_call_times_out_and_the_plugin_sees_the_cancellation(
    start: Any, tmp_path: Path
) -> None:
    process = start()
    marker = tmp_path / "cancelled.txt"
    with pytest.raises(CallTimeout, match=r"timed out after 0\.5 s"):
        process.call("hang", {"marker": str(marker)}, timeout=0.5)
    assert wait_until(marker.exists, timeout=10)
    assert marker.read_text() == "cancelled"
    assert process.call("echo", {"value": "still alive"}) == "still alive"


def test_meta_reaches_plugins_that_take_a_context(start: Any) -> None:
    process = start()
    before = time.time()
    answer = process.call("meta", {}, timeout=5, meta={"user": "einstein", "trace_id": "abc"})
    assert answer["meta"]["user"] == "einstein"
    assert answer["meta"]["trace_id"] == "abc"
    assert before + 4 < answer["deadline"] < time.time() + 6


def test_call_timeout_from_config(tmp_path: Path) -> None:
    with Host(fault_config(call_timeout=0.3), base_dir=tmp_path) as host:
        supervisor = _supervisor(host)
        with pytest.raises(CallTimeout):
            supervisor.call("sleep", {"seconds": 5})


def test_a_timeout_already_past_fails_at_once_and_never_means_no_deadline(host: Host) -> None:
    supervisor = _supervisor(host)
    for timeout in (0, -1.0):
        with pytest.raises(CallTimeout, match="no time left"):
            supervisor.call("sleep", {"seconds": 30}, timeout=timeout)


def test_strays_are_found_by_the_instance_variable_never_by_a_value_holding_its_text() -> None:
    instance = "4242-1-cafe"
    marker = f"{_wire.INSTANCE_ENV}={instance}"
    base = {"PATH": os.environ["PATH"]}
    ours = subprocess.Popen(["sleep", "30"], env={**base, _wire.INSTANCE_ENV: instance})
    lookalike = subprocess.Popen(["sleep", "30"], env={**base, "NOTE": marker})
    longer = subprocess.Popen(["sleep", "30"], env={**base, _wire.INSTANCE_ENV: instance + "0"})

    def execed(proc: subprocess.Popen[bytes]) -> bool:
        # until its exec, a child shows the test's own environment in /proc
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            return f.read().startswith(b"sleep\0")

    try:
        assert wait_until(lambda: all(execed(p) for p in (ours, lookalike, longer)))
        assert marked_processes(instance) == [ours.pid]
    finally:
        for proc in (ours, lookalike, longer):
            proc.kill()
            proc.wait()


def test_a_callers_timeout_shortens_call_timeout_but_never_extends_it(tmp_path: Path) -> None:
    """``call_timeout`` is the operator's bound: a caller (a gRPC client's deadline, a script's
    ``--timeout``) may ask for less, never for more."""
    with Host(fault_config(call_timeout=0.5), base_dir=tmp_path) as host:
        supervisor = _supervisor(host)
        with pytest.raises(CallTimeout, match=r"after 0\.5 s"):
            supervisor.call("sleep", {"seconds": 5}, timeout=30)
        with pytest.raises(CallTimeout, match=r"after 0\.2 s"):
            supervisor.call("sleep", {"seconds": 5}, timeout=0.2)


def test_a_cancellation_ends_the_call_and_cancels_it_in_the_plugin(
    host: Host, tmp_path: Path
) -> None:
    users = host.service("userprovider")
    users.start()  # a cancellation during the start ends the call before it is ever sent
    marker = tmp_path / "marker"
    cancel = Cancellation()

    def cancel_once_sent() -> None:
        wait_until(lambda: users.info().calls_in_flight == 1)
        cancel.cancel()

    threading.Thread(target=cancel_once_sent, daemon=True).start()
    with pytest.raises(CallCancelled):
        users.call("find_users", {"query": f"hang:{marker}"}, cancellation=cancel)
    assert wait_until(lambda: marker.exists() and marker.read_text() == "cancelled")
    assert users.get_user({"idp": "t", "opaque_id": "fault"})["username"] == "fault"


def test_an_asyncio_task_cancelled_while_it_awaits_cancels_the_plugin_call(
    host: Host, tmp_path: Path
) -> None:
    users = host.service("userprovider")
    users.start()  # a task cancelled during the start never sends its call
    marker = tmp_path / "marker"

    async def main() -> None:
        task = asyncio.ensure_future(users.acall("find_users", {"query": f"hang:{marker}"}))
        while users.info().calls_in_flight == 0:  # until the call is sent
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until(lambda: marker.exists() and marker.read_text() == "cancelled")


def test_a_cancel_that_arrives_before_its_call_runs_is_not_lost(tmp_path: Path) -> None:
    """``$/cancel`` for a call the plugin has read but not started (here backlogged behind
    the only slot) reaches the call when it starts; it was dropped, and the call ran until
    its own end (60 s in this plugin) with nobody waiting for it."""
    config = fault_config(max_concurrency=1, write_paths=[str(tmp_path)])
    with Host(config, base_dir=tmp_path) as host:
        users = host.service("userprovider")
        users.start()
        first, second = Cancellation(), Cancellation()
        calls = [
            threading.Thread(
                target=_suppressed,
                args=(users.call, "find_users", {"query": f"hang:{tmp_path / name}"}),
                kwargs={"cancellation": cancel},
                daemon=True,
            )
            for name, cancel in (("first", first), ("second", second))
        ]
        calls[0].start()
        assert wait_until(lambda: users.info().calls_in_flight == 1)
        calls[1].start()
        assert wait_until(lambda: users.info().calls_in_flight == 2)
        second.cancel()  # the plugin has the second call backlogged: the first holds the slot
        assert wait_until(lambda: users.info().calls_in_flight == 1)
        first.cancel()
        for thread in calls:
            thread.join(timeout=30)
        for name in ("first", "second"):
            marker = tmp_path / name
            assert wait_until(lambda: marker.exists() and marker.read_text() == "cancelled"), name


def _suppressed(call: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(CallCancelled):
        call(*args, **kwargs)


# -- crashes and restarts ----------------------------------------------------------------------


def test_a_crash_fails_all_in_flight_calls_then_the_next_call_restarts(host: Host) -> None:
    exits: list[tuple[int | None, bool]] = []
    from reva_plugins import hookimpl

    class Watch:
        @hookimpl
        def plugin_exited(
            self, service: str, pid: int, returncode: int | None, expected: bool
        ) -> None:
            exits.append((returncode, expected))

    host.register(Watch())
    users = host.service("userprovider")
    supervisor = _supervisor(host)
    first_pid = users.start().pid
    errors: list[BaseException] = []

    def sleeper() -> None:
        try:
            supervisor.call("sleep", {"seconds": 20})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sleeper) for _ in range(8)]
    for t in threads:
        t.start()
    assert wait_until(lambda: users.info().calls_in_flight == 8)
    with pytest.raises(PluginCrashed) as crash:
        supervisor.call("crash", {"code": 7, "delay": 0.1})
    for t in threads:
        t.join(timeout=10)
    assert len(errors) == 8
    assert all(isinstance(e, PluginCrashed) for e in errors)
    assert crash.value.returncode == 7
    assert "crashing on purpose" in crash.value.stderr_tail
    assert wait_until(lambda: exits == [(7, False)])
    user = users.get_user({"idp": "t", "opaque_id": "fault"})
    assert user["pid"] != first_pid


@pytest.mark.parametrize("how", ["group", "setsid", "fork"])
def test_what_a_crashed_plugin_leaves_behind_is_killed(host: Host, how: str) -> None:
    """A plugin that dies abruptly (``os._exit``, as a segfault or the OOM killer would) takes
    nothing with it by itself: its child in its group, a ``setsid()`` grandchild (handed to
    init by the death of its subreaper) and a forked copy are killed by the core."""
    supervisor = _supervisor(host)
    left = supervisor.call("leave_then_crash", {"how": how})
    assert pid_alive(left)
    assert wait_until(lambda: not supervisor.process or not supervisor.process.alive, timeout=10)
    assert wait_until(lambda: not pid_alive(left), timeout=10)


def test_a_crash_under_load_is_plugin_crashed_even_when_a_fork_holds_the_wire(
    tmp_path: Path,
) -> None:
    """A forked copy of the plugin used to keep the core's end of the wire open after the
    plugin died: the reader then waited for an EOF and every call in flight ended as a
    ``CallTimeout`` instead of a ``PluginCrashed``."""
    with Host(fault_config(call_timeout=20, restart="never"), base_dir=tmp_path) as host:
        supervisor = _supervisor(host)
        supervisor.start()
        outcomes: list[BaseException | object] = []

        def sleeper() -> None:
            try:
                outcomes.append(supervisor.call("sleep", {"seconds": 15}))
            except BaseException as exc:
                outcomes.append(exc)

        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(sleeper)
            assert wait_until(
                lambda: supervisor.process is not None and supervisor.process.calls_in_flight == 8
            )
            copy = supervisor.call("leave_then_crash", {"how": "fork", "delay": 0.2})
        assert len(outcomes) == 8
        assert all(isinstance(o, PluginCrashed) for o in outcomes), outcomes
        assert wait_until(lambda: not pid_alive(copy), timeout=10)


def test_too_many_crashes_mark_the_service_failed(tmp_path: Path) -> None:
    with Host(fault_config(), base_dir=tmp_path) as host:
        supervisor = _supervisor(host)
        for _ in range(Supervisor.MAX_CRASHES):
            with pytest.raises(PluginCrashed):
                supervisor.call("crash", {"code": 1})
        with pytest.raises(PluginCrashed, match="marked failed"):
            supervisor.call("echo", {"value": 1})


def test_restart_never_keeps_it_down(tmp_path: Path) -> None:
    with Host(fault_config(restart="never"), base_dir=tmp_path) as host:
        supervisor = _supervisor(host)
        with pytest.raises(PluginCrashed):
            supervisor.call("crash", {"code": 1})
        with pytest.raises(PluginCrashed, match="restart = 'never'"):
            supervisor.call("echo", {"value": 1})


# -- shutdown, orphans, environment -------------------------------------------------------------


def test_close_takes_grandchildren_too(tmp_path: Path) -> None:
    host = Host(fault_config(), base_dir=tmp_path)
    supervisor = _supervisor(host)
    grandchild = supervisor.call("spawn_grandchild", {})
    plugin = host.service("userprovider").info().pid
    assert plugin is not None
    assert pid_alive(grandchild)
    host.close()
    assert wait_until(lambda: not pid_alive(grandchild) and not pid_alive(plugin), timeout=5)


def test_sigkill_of_the_core_leaves_no_plugin_behind(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from reva_plugins import Host
        from reva_plugins._call import Call
        host = Host({fault_config()!r}, base_dir={str(tmp_path)!r})
        users = host.service("userprovider")
        pid = users.start().pid
        grandchild = users.driver.invoke(Call("userprovider", "spawn_grandchild", {{}}))
        print(json.dumps([pid, grandchild]), flush=True)
        time.sleep(300)
        """
    )
    core = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert core.stdout is not None
    plugin, grandchild = json.loads(core.stdout.readline())
    assert pid_alive(plugin)
    assert pid_alive(grandchild)
    core.send_signal(signal.SIGKILL)
    core.wait()
    assert wait_until(lambda: not pid_alive(plugin) and not pid_alive(grandchild), timeout=2.5)


def test_the_host_environment_does_not_leak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    with Host(fault_config(env={"PASSED_IN": "yes"}), base_dir=tmp_path) as host:
        supervisor = _supervisor(host)
        assert supervisor.call("getenv", {"name": "SECRET_TOKEN"}) is None
        assert supervisor.call("getenv", {"name": "PASSED_IN"}) == "yes"
        assert supervisor.call("getenv", {"name": "BASIC_PLUGIN"}) == "reva"
        assert supervisor.call("getenv", {"name": "HOME"}) == os.environ["HOME"]


# -- robust reader -------------------------------------------------------------------------------


def test_garbage_on_the_wire_is_logged_and_survived(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="reva_plugins.process")
    process = start()
    assert process.call("garbage", {}) == "after garbage"
    messages = [r.getMessage() for r in caplog.records]
    assert any("invalid JSON" in m for m in messages)
    assert any("unknown call id 999999" in m for m in messages)
    assert any("not a JSON object" in m for m in messages)
    assert process.call("echo", {"value": 2}) == 2


def test_a_reply_with_neither_result_nor_error_fails_that_call(start: Any) -> None:
    process = start()
    with pytest.raises(ProtocolError, match="neither result nor error"):
        process.call("empty_reply", {})
    assert process.call("echo", {"value": 3}) == 3


def test_an_oversized_reply_fails_that_call_only(start: Any) -> None:
    process = start(max_line=4096)
    with pytest.raises(ProtocolError, match="longer than 4096"):
        process.call("big_result", {"size": 100_000})
    assert process.call("echo", {"value": 4}) == 4


def test_unknown_methods_and_bad_params_are_jsonrpc_errors(start: Any) -> None:
    process = start()
    with pytest.raises(RemoteError) as missing:
        process.call("no_such_method", {})
    assert (missing.value.code, missing.value.type) == (-32601, "MethodNotFound")
    with pytest.raises(RemoteError) as bad:
        process.call("echo", {"wrong": 1})
    assert bad.value.code == -32602


def test_ping_reports_a_round_trip(start: Any) -> None:
    process = start()
    assert process.ping() > 0
    assert process.start_ms > 0
