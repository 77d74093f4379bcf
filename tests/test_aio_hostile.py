"""Hostile and careless uses of the asyncio call path (``Client.acall``, ``_hooks.around``):
real socketpairs, real threads, real event loops, real processes."""

from __future__ import annotations

import asyncio
import functools
import operator
import os
import socket
import subprocess
import threading
import time
from collections.abc import Generator
from typing import Any

import pluggy
import pytest

from reva_plugins import _hooks, hookimpl
from reva_plugins._errors import CallCancelled, CallTimeout, PluginCrashed
from reva_plugins._hooks import HostSpec
from reva_plugins._host import uninterruptible

from .test_client import Peer, _line, _result

# -- helpers -----------------------------------------------------------------------------------


def _inode(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _fd_open_on(fd: int, target: str) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == target
    except OSError:
        return False


class _Ticker:
    """Counts the loop's turns: a loop blocked by a callback stops counting."""

    def __init__(self) -> None:
        self.ticks = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.005)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()


@pytest.fixture
def peer() -> Any:
    p = Peer()
    yield p
    p.close()
    p.client.sock.close()


# -- service_call implementations: around() versus pluggy's own call ----------------------------


class _Innermost:
    """Where the host's ``_Invoke`` stands: trylast, registered first (at Host init)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    @hookimpl(trylast=True)
    def service_call(self, method: str) -> Any:
        return self.answer


class _Fallback:
    """An operator's default answer: a plain trylast implementation, registered later."""

    @hookimpl(trylast=True)
    def service_call(self, method: str) -> Any:
        return "fallback"


def _sync_and_awaited(plugins: list[object], answer: Any) -> tuple[Any, Any]:
    outcomes = []
    for awaited in (False, True):
        pm = pluggy.PluginManager("reva")
        pm.add_hookspecs(HostSpec)
        innermost = _Innermost(answer)
        pm.register(innermost)
        for plugin in plugins:
            pm.register(plugin)
        kwargs: dict[str, Any] = {
            "service": "userprovider", "method": "m", "params": {}, "meta": {},
            "timeout": None, "proxy": None, "cancellation": None,
        }  # fmt: skip

        async def inner(i: _Innermost = innermost) -> Any:
            return i.service_call("m")

        try:
            if awaited:
                result = asyncio.run(
                    _hooks.around(
                        pm.hook.service_call,
                        kwargs,
                        inner,
                        innermost=functools.partial(operator.is_, innermost),
                        cancelled=lambda: CallCancelled("cancelled", plugin="p"),
                    )
                )
            else:
                result = pm.hook.service_call(**kwargs)
        except BaseException as exc:
            result = (type(exc).__name__, str(exc))
        outcomes.append(result)
    return outcomes[0], outcomes[1]


def test_a_trylast_plain_impl_does_not_override_the_drivers_answer() -> None:
    plain, awaited = _sync_and_awaited([_Fallback()], answer="from the plugin")
    assert plain == "from the plugin"
    assert awaited == plain


def test_a_plain_impl_ordered_after_the_driver_is_not_run_when_the_driver_answers() -> None:
    seen: list[bool] = []

    class Late:  # pluggy runs it after the innermost, and only if that answered None
        @hookimpl(trylast=True)
        def service_call(self) -> Any:
            seen.append(True)
            return None

    late = Late()
    pm = pluggy.PluginManager("reva")
    pm.add_hookspecs(HostSpec)
    innermost = _Innermost("answer")
    pm.register(innermost)
    pm.register(late)
    kwargs: dict[str, Any] = {
        "service": "userprovider", "method": "m", "params": {}, "meta": {},
        "timeout": None, "proxy": None, "cancellation": None,
    }  # fmt: skip
    assert pm.hook.service_call(**kwargs) == "answer"
    assert seen == []

    async def inner() -> Any:
        return "answer"

    awaited = asyncio.run(
        _hooks.around(
            pm.hook.service_call, kwargs, inner,
            innermost=lambda plugin: plugin is innermost,
            cancelled=lambda: CallCancelled("cancelled", plugin="p"),
        )
    )  # fmt: skip
    assert awaited == "answer"
    assert seen == [], "a plain impl pluggy never reaches ran before the driver"


def test_wrappers_see_the_same_outcome_both_ways_for_force_exception() -> None:
    class Forcing:
        @hookimpl(hookwrapper=True)
        def service_call(self) -> Generator[None, Any, None]:
            outcome = yield
            outcome.force_exception(ValueError("forced"))

    class NewStyle:
        @hookimpl(wrapper=True, tryfirst=True)
        def service_call(self) -> Generator[None, Any, Any]:
            try:
                return (yield)
            except ValueError as exc:
                return f"new saw {exc}"

    plain, awaited = _sync_and_awaited([Forcing(), NewStyle()], answer="x")
    assert plain == "new saw forced"
    assert awaited == plain


def test_keyword_only_impl_arguments_work_both_ways() -> None:
    class KwOnly:
        @hookimpl(wrapper=True)
        def service_call(self, *, method: str) -> Generator[None, Any, Any]:
            result = yield
            return f"{result}/{method}"

    try:
        plain, awaited = _sync_and_awaited([KwOnly()], answer="x")
    except Exception as exc:
        pytest.skip(f"pluggy refuses keyword-only impl arguments: {exc}")
    assert awaited == plain


# -- the loop's dup of the socket ------------------------------------------------------------


def test_a_stopped_loop_that_then_closes_lets_go_of_the_sockets_dup(peer: Peer) -> None:
    server = peer.echo(1)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(peer.client.acall("m", {"v": 1}, 30)) == 1
        server.join()
        (watcher,) = peer.client.watchers.values()
        fd, target = watcher.fd, _inode(watcher.fd)
        # the process dies while the loop is not running (between two run_until_complete)
        closer = threading.Thread(
            target=peer.client.close, args=(PluginCrashed("gone", plugin="p"),)
        )
        closer.start()
        closer.join(10)
    finally:
        loop.close()
    peer.client.sock.close()
    assert not _fd_open_on(fd, target), "the loop's dup of the plugin socket is still open"


def test_a_closed_loop_lets_go_of_the_dup_at_close(peer: Peer) -> None:
    server = peer.echo(1)
    assert asyncio.run(peer.client.acall("m", {"v": 1}, 30)) == 1
    server.join()
    (watcher,) = peer.client.watchers.values()
    fd, target = watcher.fd, _inode(watcher.fd)
    peer.client.close(PluginCrashed("gone", plugin="p"))
    peer.client.sock.close()
    assert not _fd_open_on(fd, target)


# -- loops and threads sharing one client ------------------------------------------------------


def _loop_in_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


def test_a_busy_loop_does_not_starve_another_loops_calls(peer: Peer) -> None:
    server = peer.echo(2)
    other, thread = _loop_in_thread()
    try:
        first = asyncio.run_coroutine_threadsafe(peer.client.acall("m", {"v": 1}, 30), other)
        assert first.result(10) == 1
        # the other loop is now busy: a blocking callback (any slow sync code on it)
        busy = threading.Event()

        def block() -> None:
            busy.set()
            time.sleep(4)

        other.call_soon_threadsafe(block)
        assert busy.wait(5)

        async def mine() -> Any:
            return await peer.client.acall("m", {"v": 2}, 1.5)

        # the plugin answers at once; this loop must not wait for the busy one
        assert asyncio.run(mine()) == 2
    finally:
        server.join(10)
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        other.close()


def test_a_sync_caller_beside_a_running_loop_gets_its_reply(peer: Peer) -> None:
    server = peer.echo(2)
    other, thread = _loop_in_thread()
    try:
        first = asyncio.run_coroutine_threadsafe(peer.client.acall("m", {"v": 1}, 30), other)
        assert first.result(10) == 1
        assert peer.client.call("m", {"v": 2}, timeout=10) == 2
    finally:
        server.join(10)
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        other.close()


# -- a hostile plugin: floods, endless lines, stalls ----------------------------------------------


def test_an_endless_line_never_holds_the_event_loop() -> None:
    peer = Peer(max_line=1000)
    peer.sock.setblocking(True)  # noqa: FBT003 - cat must block on a full socket, not give up
    # a process writing an endless line (no newline) as fast as it can: the plugin's side
    streamer = subprocess.Popen(
        ["cat", "/dev/zero"], stdout=peer.sock.fileno(), stdin=subprocess.DEVNULL
    )
    try:

        async def main() -> int:
            ticker = _Ticker()
            ticker.start()
            call = asyncio.ensure_future(peer.client.acall("m", {"v": 1}, 60))
            await asyncio.sleep(0.05)
            before = ticker.ticks
            # a sleep on the loop: if a reader callback holds it, no tick happens
            await asyncio.sleep(1.0)
            after = ticker.ticks
            ticker.stop()
            call.cancel()
            return after - before

        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(asyncio.run(main())), daemon=True)
        runner.start()
        runner.join(6)
        streamer.kill()
        streamer.wait()
        runner.join(10)
        assert result, "the loop never reported"
        assert result[0] >= 5, f"loop ticks during 1 s of flood: {result}"
    finally:
        streamer.kill()
        peer.close()
        peer.client.sock.close()


def test_a_flood_of_junk_lines_leaves_the_loop_turning(peer: Peer) -> None:
    junk = b"".join(_line(_result(10**12 + n, "junk")) for n in range(2000))
    stop = threading.Event()

    def flood() -> None:
        try:
            while not stop.is_set():
                peer.sock.sendall(junk)
        except OSError:
            pass

    async def main() -> int:
        ticker = _Ticker()
        ticker.start()
        call = asyncio.ensure_future(peer.client.acall("m", {"v": 1}, 60))
        await asyncio.sleep(0.05)
        before = ticker.ticks
        await asyncio.sleep(0.5)
        after = ticker.ticks
        ticker.stop()
        call.cancel()
        return after - before

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        import logging

        logging.getLogger("reva_plugins.process").setLevel(logging.CRITICAL)
        assert asyncio.run(main()) >= 3
    finally:
        logging.getLogger("reva_plugins.process").setLevel(logging.NOTSET)
        stop.set()
        peer.client.close(PluginCrashed("gone", plugin="p"))
        thread.join(10)


def test_a_stalled_plugin_times_the_call_out_and_cancels_it(peer: Peer) -> None:
    async def main() -> None:
        ticker = _Ticker()
        ticker.start()
        with pytest.raises(CallTimeout):
            await peer.client.acall("m", {"v": "x" * 2_000_000}, 0.5)
        ticker.stop()
        assert ticker.ticks >= 3

    asyncio.run(main())
    assert peer.client.pending == {}


def test_a_reply_read_by_a_thread_after_the_loop_closed_is_no_crash(peer: Peer) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(peer.client.acall("m", {"v": 1}, 30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    request, cancel = peer.requests(2)
    assert cancel["params"] == {"id": request["id"]}
    # a late reply to the cancelled call, then a thread's own call
    peer.reply(_result(request["id"], "late"))
    server = peer.echo(1)
    assert peer.client.call("m", {"v": 2}, timeout=10) == 2
    server.join(10)


def test_a_plugin_that_half_closes_fails_the_asyncio_call(peer: Peer) -> None:
    async def main() -> Any:
        call = asyncio.ensure_future(peer.client.acall("m", {"v": 1}, 10))
        await asyncio.sleep(0.05)
        peer.sock.shutdown(socket.SHUT_WR)
        return await call

    with pytest.raises(PluginCrashed):
        asyncio.run(main())


# -- blocking code awaited: in-process drivers ---------------------------------------------------


def test_a_task_cancelled_while_in_process_code_runs_ends_when_the_code_returns() -> None:
    """In-process code cannot be interrupted: the cancelled task ends after it, so whoever
    counts the call in flight (serve's drain) sees it end when it really ends."""
    running = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        running.set()
        time.sleep(0.5)
        finished.set()
        return "done"

    async def main() -> bool:
        task = asyncio.ensure_future(uninterruptible(slow))
        await asyncio.to_thread(running.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return finished.is_set()

    assert asyncio.run(main())
    assert asyncio.run(uninterruptible(lambda: 42)) == 42
