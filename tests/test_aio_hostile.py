"""Hostile and careless uses of the asyncio call path (``Client.acall``, ``CallWrappers.arun``):
real socketpairs, real threads, real event loops, real processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from reva_plugins._drivers import uninterruptible
from reva_plugins._errors import CallTimeout, PluginCrashed, UsageError

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
            time.sleep(2.5)  # longer than the call's deadline

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


async def _ticks_during_a_call(peer: Peer, seconds: float) -> int:
    """How often the loop turned during ``seconds`` while a call awaited its reply: a reader
    callback that held the loop would stop the count."""
    ticker = _Ticker()
    ticker.start()
    call = asyncio.ensure_future(peer.client.acall("m", {"v": 1}, 60))
    await asyncio.sleep(0.05)
    before = ticker.ticks
    await asyncio.sleep(seconds)
    after = ticker.ticks
    ticker.stop()
    call.cancel()
    return after - before


def test_an_endless_line_never_holds_the_event_loop() -> None:
    peer = Peer(max_line=1000)
    peer.sock.setblocking(True)  # noqa: FBT003 - cat must block on a full socket, not give up
    # a process writing an endless line (no newline) as fast as it can: the plugin's side
    streamer = subprocess.Popen(
        ["cat", "/dev/zero"], stdout=peer.sock.fileno(), stdin=subprocess.DEVNULL
    )
    try:
        result: list[int] = []
        runner = threading.Thread(
            target=lambda: result.append(asyncio.run(_ticks_during_a_call(peer, 1.0))),
            daemon=True,
        )
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

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        import logging

        logging.getLogger("reva_plugins.process").setLevel(logging.CRITICAL)
        assert asyncio.run(_ticks_during_a_call(peer, 0.5)) >= 3
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


def test_calls_on_one_loop_time_out_each_at_its_own_deadline(peer: Peer) -> None:
    """A loop's calls share one timer: a later call with an earlier deadline still times out
    at it, one after it at its own, and calls answered or not yet due are not timed out."""

    async def main() -> None:
        long = asyncio.ensure_future(peer.client.acall("m", {"v": "long"}, 60))
        answered = asyncio.ensure_future(peer.client.acall("m", {"v": "answered"}, 20))
        short = asyncio.ensure_future(peer.client.acall("slow", {"v": "short"}, 0.3))
        later = asyncio.ensure_future(peer.client.acall("slow", {"v": "later"}, 1.2))
        requests = await asyncio.to_thread(peer.requests, 4)
        ids = {r["params"]["v"]: r["id"] for r in requests}
        peer.reply(_result(ids["answered"], "ok"))
        assert await answered == "ok"
        with pytest.raises(CallTimeout, match=r"slow timed out after 0\.3 s"):
            await short
        assert not long.done()
        with pytest.raises(CallTimeout, match=r"slow timed out after 1\.2 s"):
            await later
        assert not long.done()
        cancels = await asyncio.to_thread(peer.requests, 2)
        assert [c["params"]["id"] for c in cancels] == [ids["short"], ids["later"]]
        peer.reply(_result(ids["long"], "long"))
        assert await long == "long"

    asyncio.run(main())
    assert peer.client.pending == {}


def test_params_that_are_not_json_fail_the_call_and_leave_nothing_pending(peer: Peer) -> None:
    """An asyncio call (and a thread's) whose params cannot be sent fails with UsageError and
    is not left in flight (a call left pending would keep every later caller from reading its
    own reply); the next call on the wire is answered."""

    async def main() -> None:
        with pytest.raises(UsageError, match="not valid JSON"):
            await peer.client.acall("m", {"v": float("nan")}, 30)
        assert peer.client.pending == {}
        server = peer.echo(1)
        assert await peer.client.acall("m", {"v": "next"}, 30) == "next"
        await asyncio.to_thread(server.join, 10)

    asyncio.run(main())
    with pytest.raises(UsageError, match="not valid JSON"):
        peer.client.call("m", {"v": object()}, 30)
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
