"""The wire's two ends without processes: the core's ``Client`` against a peer written here on
a socketpair (replies out of order, stalls, half lines, floods, timeouts, EOF), and the
bootstrap's ``Plugin`` pool driven over a socketpair from a thread (batches, inline quick calls,
the concurrency cap, cancel and ping while busy)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reva_plugins import _channel, _client, _pending, _plugin_stderr, _pool
from reva_plugins._client import Cancellation, Client
from reva_plugins._errors import (
    CallCancelled,
    CallTimeout,
    PluginCrashed,
    ProtocolError,
    RemoteError,
)

from .conftest import wait_until

# -- the client --------------------------------------------------------------------------------


class Peer:
    """The plugin's end of a client's socket, played by the test."""

    def __init__(self, *, max_line: int = 1_000_000) -> None:
        core, self.sock = socket.socketpair()
        self.sock.settimeout(30)
        self.file = self.sock.makefile("rb")
        self.readers = 0

        def crashed() -> None:  # what the process watcher does once the process has exited
            error = PluginCrashed("plugin exited with exit code 3", plugin="p", returncode=3)
            threading.Thread(target=self.client.close, args=(error,)).start()

        self.client = Client(core, label="p", max_line=max_line, on_eof=crashed)
        reader_thread = self.client._reader_thread

        def counted() -> None:
            self.readers += 1
            reader_thread()

        self.client._reader_thread = counted  # type: ignore[method-assign]

    def request(self) -> dict[str, Any]:
        message = json.loads(self.file.readline())
        assert isinstance(message, dict)
        return message

    def requests(self, count: int) -> list[dict[str, Any]]:
        return [self.request() for _ in range(count)]

    def reply(self, *messages: dict[str, Any]) -> None:
        self.sock.sendall(b"".join(_line(m) for m in messages))

    def echo(self, stop_after: int, *, junk_every: int = 0) -> threading.Thread:
        """Answer ``stop_after`` requests with their params' ``v``; with ``junk_every``, a
        reply for an unknown call and a notification before every that many replies."""

        def serve() -> None:
            for n in range(stop_after):
                line = self.file.readline()
                if not line:
                    return
                request = json.loads(line)
                if junk_every and n % junk_every == 0:
                    self.reply(_result(10**12 + n, "junk"), {"jsonrpc": "2.0", "method": "log"})
                self.reply(_result(request["id"], request["params"]["v"]))

        thread = threading.Thread(target=serve)
        thread.start()
        return thread

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _result(call_id: object, value: object) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "result": value}


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()
    p.client.sock.close()


def _in_threads(count: int, func: Callable[[int], object]) -> dict[int, object]:
    """Run ``func(i)`` in ``count`` threads at once; what each returned or raised."""
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            results[i] = func(i)
        except BaseException as exc:  # the test looks at what was raised
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_a_lone_caller_reads_its_own_replies_without_a_reader_thread(peer: Peer) -> None:
    server = peer.echo(50)
    for i in range(50):
        assert peer.client.call("m", {"v": i}, timeout=30) == i
    server.join()
    assert peer.readers == 0
    assert peer.client.pending == {}


def test_after_a_burst_a_lone_caller_reads_its_own_replies_again(peer: Peer) -> None:
    server = peer.echo(1_000_000)
    results = _in_threads(8, lambda n: [peer.client.call("m", {"v": i}, 30) for i in range(20)])
    assert results == {n: list(range(20)) for n in range(8)}
    deadline = time.monotonic() + 10
    while peer.client.reading and time.monotonic() < deadline:  # calls keep coming, one by one
        assert peer.client.call("m", {"v": "one"}, timeout=30) == "one"
    assert not peer.client.reading
    readers = peer.readers
    for _ in range(20):
        assert peer.client.call("m", {"v": "one"}, timeout=30) == "one"
    assert peer.readers == readers
    peer.client.sock.shutdown(socket.SHUT_WR)
    server.join()


def test_replies_out_of_order_reach_their_own_callers(peer: Peer) -> None:
    def serve() -> None:
        requests = peer.requests(8)
        peer.reply(*(_result(r["id"], r["params"]["v"]) for r in reversed(requests)))

    server = threading.Thread(target=serve)
    server.start()
    results = _in_threads(8, lambda i: peer.client.call("m", {"v": i}, timeout=30))
    server.join()
    assert results == {i: i for i in range(8)}
    assert peer.client.pending == {}


def test_many_threads_through_a_flood_of_junk_get_their_own_replies(peer: Peer) -> None:
    threads, calls = 32, 60
    server = peer.echo(threads * calls, junk_every=7)

    def caller(n: int) -> list[object]:
        return [peer.client.call("m", {"v": [n, i]}, timeout=30) for i in range(calls)]

    results = _in_threads(threads, caller)
    server.join()
    assert results == {n: [[n, i] for i in range(calls)] for n in range(threads)}
    assert peer.client.pending == {}
    # the reader thread, if one was needed, leaves once nothing is in flight
    assert wait_until(lambda: not peer.client.reading)
    assert not [t for t in threading.enumerate() if t.name == "reva-p-reader"]
    _no_stale_wake_ups()


def _no_stale_wake_ups() -> None:
    """Every idle waker is quiet: the next caller to sleep on one is not woken for nothing."""
    assert not any(waker.wait(0) for waker in list(_pending.idle_wakers))


def test_a_reply_split_across_writes_with_a_stall_arrives_whole(peer: Peer) -> None:
    def serve() -> None:
        request = peer.request()
        line = _line(_result(request["id"], "x" * 10_000))
        peer.sock.sendall(line[:7])
        time.sleep(0.2)  # longer than the client's read tick
        peer.sock.sendall(line[7:5000])
        time.sleep(0.1)
        peer.sock.sendall(line[5000:])

    server = threading.Thread(target=serve)
    server.start()
    assert peer.client.call("m", {"v": 0}, timeout=30) == "x" * 10_000
    server.join()


def test_a_stalled_call_times_out_and_is_cancelled_and_its_late_reply_dropped(
    peer: Peer,
) -> None:
    with pytest.raises(CallTimeout, match=r"slow timed out after 0\.3 s"):
        peer.client.call("slow", {"v": 0}, timeout=0.3)
    request, cancel = peer.requests(2)
    assert cancel["method"] == "$/cancel"
    assert cancel["params"] == {"id": request["id"]}
    assert "id" not in cancel
    assert peer.client.pending == {}
    peer.reply(_result(request["id"], "too late"))
    server = peer.echo(1)
    assert peer.client.call("m", {"v": "next"}, timeout=30) == "next"
    server.join()


def test_a_waiting_caller_times_out_while_another_reads(peer: Peer) -> None:
    """One caller leads (reads), another waits for it: the waiter's deadline holds too."""

    def serve() -> None:
        first, second = peer.requests(2)
        assert peer.request() == {
            "jsonrpc": "2.0",
            "method": "$/cancel",
            "params": {"id": second["id"]},
        }
        peer.reply(_result(first["id"], "first"))

    server = threading.Thread(target=serve)
    server.start()
    lead = threading.Thread(target=lambda: peer.client.call("a", {"v": 0}, timeout=30))
    lead.start()
    assert wait_until(lambda: len(peer.client.pending) == 1)
    with pytest.raises(CallTimeout):
        peer.client.call("b", {"v": 1}, timeout=0.3)
    lead.join(30)
    server.join()
    assert peer.client.pending == {}
    _no_stale_wake_ups()


def test_a_cancellation_ends_a_lone_reader_and_a_waiting_caller_and_cancels_in_the_plugin(
    peer: Peer,
) -> None:
    """``Cancellation.cancel()`` from another thread ends the call it was given at once (the
    caller reading the wire itself, and one waiting for another reader), sends ``$/cancel`` for
    it, and leaves the other calls alone; a cancelled cancellation fails a new call at once."""
    seen: dict[str, int] = {}
    cancelled: set[int] = set()

    def serve() -> None:
        while len(cancelled) < 2:
            message = peer.request()
            if message["method"] == "$/cancel":
                cancelled.add(message["params"]["id"])
            else:
                seen[message["method"]] = message["id"]
        peer.reply(_result(seen["b"], "second"))

    server = threading.Thread(target=serve)
    server.start()
    cancels = {name: Cancellation() for name in "abc"}
    results: dict[str, object] = {}

    def call(name: str) -> None:
        try:
            results[name] = peer.client.call(name, {}, timeout=30, cancellation=cancels[name])
        except BaseException as exc:  # the test looks at what was raised
            results[name] = exc

    threads = {}
    for count, name in enumerate("abc", 1):  # a reads the wire itself; b and c wait
        threads[name] = threading.Thread(target=call, args=(name,))
        threads[name].start()
        assert wait_until(lambda count=count: len(peer.client.pending) == count)
    cancels["a"].cancel()
    cancels["c"].cancel()
    cancels["c"].cancel()  # idempotent
    for thread in threads.values():
        thread.join(10)
    server.join(10)
    assert isinstance(results["a"], CallCancelled)
    assert isinstance(results["c"], CallCancelled)
    assert results["b"] == "second"
    assert cancelled == {seen["a"], seen["c"]}
    with pytest.raises(CallCancelled):
        peer.client.call("d", {}, timeout=30, cancellation=cancels["a"])
    assert peer.client.pending == {}
    _no_stale_wake_ups()


def test_replies_in_before_the_plugin_died_reach_every_caller() -> None:
    """16 callers wait; the plugin answers them all and exits. The reader hands out the first
    reply, queues the others for the woken caller to pass on, and reads the EOF: the close
    that follows at once must wake the callers still queued too (it used to drop them, and
    they waited out their timeout)."""
    core, plugin = socket.socketpair()
    client = Client(core, label="p", max_line=1_000_000)
    results: dict[int, object] = {}

    def caller(n: int) -> None:
        try:
            results[n] = client.call("m", {"n": n}, 120)
        except BaseException as exc:  # the test looks at what was raised
            results[n] = exc

    client.read_lock.acquire()  # every caller waits: a reader thread will read for them
    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    with plugin.makefile("rb") as lines:
        requests = [json.loads(lines.readline()) for _ in range(16)]
    assert wait_until(lambda: all(slot.waiting for slot in client.pending.values()))
    plugin.sendall(b"".join(_line(_result(r["id"], r["params"]["n"])) for r in requests))
    plugin.shutdown(socket.SHUT_WR)

    def watcher() -> None:  # the process watcher: closes the client once the wire is at EOF
        assert wait_until(lambda: client.eof, timeout=30, interval=0)
        client.close(PluginCrashed("plugin exited with exit code 0", plugin="p"))

    watch = threading.Thread(target=watcher)
    watch.start()
    client.read_lock.release()
    for thread in threads:  # woken now, not at their deadline
        thread.join(20)
        assert not thread.is_alive()
    watch.join(30)
    assert sorted(results.values()) == list(range(16))  # type: ignore[type-var]
    plugin.close()
    core.close()


def test_an_oversized_reply_fails_only_its_call() -> None:
    peer = Peer(max_line=1000)
    try:

        def serve() -> None:
            first, second = peer.requests(2)
            big = first if first["params"]["v"] == "big" else second
            small = second if big is first else first
            # more than one read's worth: the limit is checked as the line accumulates
            peer.reply(_result(big["id"], "x" * 200_000), _result(small["id"], "small"))

        server = threading.Thread(target=serve)
        server.start()
        results = _in_threads(2, lambda i: peer.client.call("m", {"v": ["big", "small"][i]}, 30))
        server.join()
        assert isinstance(results[0], ProtocolError)
        assert "longer than 1000 bytes" in str(results[0])
        assert results[1] == "small"
    finally:
        peer.close()


def test_an_error_reply_raises_for_its_caller(peer: Peer) -> None:
    def serve() -> None:
        request = peer.request()
        peer.reply(
            {
                "jsonrpc": "2.0",
                "id": request["id"],
                "error": {"code": -32000, "message": "no such user", "data": {"type": "NotFound"}},
            }
        )

    server = threading.Thread(target=serve)
    server.start()
    with pytest.raises(RemoteError, match="no such user"):
        peer.client.call("m", {"v": 0}, timeout=30)
    server.join()


@pytest.mark.parametrize("callers", [1, 6])
def test_eof_mid_line_fails_every_call_in_flight_with_plugin_crashed(
    peer: Peer, callers: int
) -> None:
    def serve() -> None:
        requests = peer.requests(callers)
        peer.sock.sendall(_line(_result(requests[0]["id"], "cut"))[:9])
        peer.sock.shutdown(socket.SHUT_RDWR)

    server = threading.Thread(target=serve)
    server.start()
    results = _in_threads(callers, lambda i: peer.client.call("m", {"v": i}, timeout=30))
    server.join()
    assert all(isinstance(r, PluginCrashed) for r in results.values()), results
    assert {getattr(r, "returncode", None) for r in results.values()} == {3}
    assert peer.client.pending == {}
    with pytest.raises(PluginCrashed):
        peer.client.call("m", {"v": "after"}, timeout=30)


def test_a_write_to_a_dead_plugin_raises_what_the_watcher_recorded(peer: Peer) -> None:
    peer.close()
    error = PluginCrashed("plugin exited with signal SIGKILL", plugin="p", returncode=-9)
    watcher = threading.Timer(0.2, peer.client.close, (error,))
    watcher.start()

    def until_it_fails() -> None:
        for _ in range(1000):  # the first writes may still fit in the socket's buffer
            peer.client.call("m", {"v": "x" * 100_000}, timeout=30)

    with pytest.raises(PluginCrashed, match="SIGKILL"):
        until_it_fails()
    watcher.join()


def test_a_notification_on_a_broken_wire_never_waits_for_the_exit(peer: Peer) -> None:
    """``$/cancel`` goes out from whoever cancels (an event loop, a gRPC callback): on a broken
    wire it gives up at once instead of waiting, as a call does, for the exit to be recorded."""
    peer.close()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        peer.client.sock.sendall(b"x" * 1_000_000)  # the wire is broken now
    done = threading.Event()

    def notify_many() -> None:
        for i in range(3):
            peer.client.notify("$/cancel", {"id": i})
        done.set()

    threading.Thread(target=notify_many, daemon=True).start()
    assert done.wait(2)  # a call's write would wait _EXIT_GRACE (5 s) for each
    assert not peer.client.flushing


def test_callers_lead_in_turn_when_no_reader_thread_can_start(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a thread limit the reader thread cannot start: the callers are served anyway,
    each leading in turn, instead of waiting for a reader that never came."""

    class NoThreads(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    class Threading:  # the client's view of the threading module: everything but threads
        def __getattr__(self, name: str) -> object:
            return NoThreads if name == "Thread" else getattr(threading, name)

    monkeypatch.setattr(_client, "threading", Threading())
    server = peer.echo(40)
    results = _in_threads(
        8, lambda i: [peer.client.call("m", {"v": i * 5 + k}, timeout=30) for k in range(5)]
    )
    server.join()
    assert results == {i: [i * 5 + k for k in range(5)] for i in range(8)}
    assert not peer.client.reading


def test_requests_queued_while_another_caller_writes_all_arrive(peer: Peer) -> None:
    """Many callers at once: each request is written exactly once, whole, in some order."""
    threads = 16
    seen: list[int] = []

    def serve() -> None:
        for request in peer.requests(threads):
            seen.append(request["params"]["v"])
            peer.reply(_result(request["id"], request["params"]["v"]))

    server = threading.Thread(target=serve)
    server.start()
    payload = "y" * 200_000  # larger than the socket buffer: writers overlap
    results = _in_threads(threads, lambda i: peer.client.call("m", {"v": i, "p": payload}, 30))
    server.join()
    assert results == {i: i for i in range(threads)}
    assert sorted(seen) == list(range(threads))


# -- asyncio callers ---------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_asyncio_calls_are_read_by_their_loop_and_get_their_own_replies(peer: Peer) -> None:
    """Many tasks on one loop, replies in reverse order with junk between them: each task gets
    its own, no thread reads for them, and the loop lets go of the socket's dup at close."""
    count = 20
    fds = _open_fds()

    def serve() -> None:
        requests = peer.requests(count)
        for request in reversed(requests):
            peer.reply(_result(10**12, "junk"), _result(request["id"], request["params"]["v"]))

    server = threading.Thread(target=serve)
    server.start()

    async def main() -> list[Any]:
        return await asyncio.gather(*(peer.client.acall("m", {"v": i}, 30) for i in range(count)))

    assert asyncio.run(main()) == list(range(count))
    server.join()
    assert peer.readers == 0
    assert peer.client.pending == {}
    peer.client.close(PluginCrashed("gone", plugin="p"))
    assert _open_fds() == fds


def test_a_new_event_loop_takes_over_from_one_that_closed(peer: Peer) -> None:
    """``asyncio.run`` twice (two loops, the first closed): the second reads for itself."""
    server = peer.echo(2)
    fds = _open_fds()
    assert asyncio.run(peer.client.acall("m", {"v": 1}, 30)) == 1
    assert asyncio.run(peer.client.acall("m", {"v": 2}, 30)) == 2
    server.join()
    assert _open_fds() <= fds + 1  # the second loop's dup, at most


def test_an_asyncio_call_times_out_and_a_cancelled_task_cancels_in_the_plugin(
    peer: Peer,
) -> None:
    async def main() -> None:
        with pytest.raises(CallTimeout, match=r"slow timed out after 0\.2 s"):
            await peer.client.acall("slow", {"v": 0}, 0.2)
        task = asyncio.ensure_future(peer.client.acall("hang", {"v": 1}, 30))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    slow, cancel_slow, hang, cancel_hang = peer.requests(4)
    assert cancel_slow == {"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": slow["id"]}}
    assert cancel_hang == {"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": hang["id"]}}
    assert peer.client.pending == {}


def test_a_cancellation_ends_an_asyncio_call_from_another_thread(peer: Peer) -> None:
    cancel = Cancellation()

    async def main() -> None:
        threading.Timer(0.1, cancel.cancel).start()
        with pytest.raises(CallCancelled):
            await peer.client.acall("hang", {}, 30, cancellation=cancel)

    asyncio.run(main())
    hang, cancelled = peer.requests(2)
    assert cancelled["params"] == {"id": hang["id"]}


def test_a_crash_fails_every_asyncio_call_in_flight(peer: Peer) -> None:
    def serve() -> None:
        requests = peer.requests(5)
        peer.sock.sendall(_line(_result(requests[0]["id"], "cut"))[:9])
        peer.sock.shutdown(socket.SHUT_RDWR)

    server = threading.Thread(target=serve)
    server.start()

    async def main() -> list[Any]:
        calls = (peer.client.acall("m", {"v": i}, 30) for i in range(5))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    server.join()
    assert all(isinstance(r, PluginCrashed) for r in results), results
    assert peer.client.watchers == {}

    async def after() -> Any:
        return await peer.client.acall("m", {"v": "after"}, 30)

    with pytest.raises(PluginCrashed):
        asyncio.run(after())


def test_an_oversized_reply_fails_only_its_asyncio_call() -> None:
    peer = Peer(max_line=1000)
    try:

        def serve() -> None:
            first, second = peer.requests(2)
            peer.reply(_result(first["id"], "x" * 200_000), _result(second["id"], "small"))

        server = threading.Thread(target=serve)
        server.start()

        async def main() -> list[Any]:
            calls = (peer.client.acall("m", {"v": i}, 30) for i in range(2))
            return await asyncio.gather(*calls, return_exceptions=True)

        big, small = asyncio.run(main())
        server.join()
        assert isinstance(big, ProtocolError)
        assert small == "small"
    finally:
        peer.close()


def test_a_plugin_that_stops_reading_never_blocks_the_event_loop(peer: Peer) -> None:
    """Requests larger than the socket takes: the loop keeps ticking while a thread writes
    the rest, and every request arrives whole once the plugin reads again."""
    payload = "z" * 300_000
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> list[Any]:
        tick = asyncio.ensure_future(ticker())
        calls = [asyncio.ensure_future(peer.client.acall("m", {"v": i, "p": payload}, 60))
                 for i in range(8)]  # fmt: skip
        await asyncio.sleep(0)  # every call has run up to its first await: 2.4 MB are queued
        written = len(ticks)
        await asyncio.sleep(0.5)  # the plugin reads nothing meanwhile
        stalled = list(ticks)
        server = threading.Thread(target=lambda: peer.echo(8).join())
        server.start()
        results = await asyncio.gather(*calls)
        tick.cancel()
        server.join()
        # the loop went on ticking after the requests were handed over (a write that blocked
        # the loop would have stopped it for good: nobody reads until the server starts)
        assert len(stalled) > written + 1
        return results

    assert asyncio.run(main()) == list(range(8))


def test_a_thread_and_an_event_loop_share_one_client(peer: Peer) -> None:
    """A blocking caller in a thread while tasks await: everyone gets their own reply,
    whoever read it (the loop, or the thread leading)."""
    server = peer.echo(60)

    async def main() -> list[Any]:
        sync = asyncio.to_thread(
            lambda: [peer.client.call("m", {"v": f"t{k}"}, timeout=30) for k in range(20)]
        )
        tasks = [peer.client.acall("m", {"v": k}, 30) for k in range(40)]
        return list(await asyncio.gather(sync, *tasks))

    threaded, *awaited = asyncio.run(main())
    server.join()
    assert threaded == [f"t{k}" for k in range(20)]
    assert awaited == list(range(40))


def test_an_asyncio_write_to_a_dead_plugin_raises_what_the_watcher_recorded(peer: Peer) -> None:
    peer.close()
    error = PluginCrashed("plugin exited with signal SIGKILL", plugin="p", returncode=-9)
    threading.Timer(0.2, peer.client.close, (error,)).start()

    async def until_it_fails() -> None:
        for _ in range(1000):
            await peer.client.acall("m", {"v": "x" * 100_000}, 30)

    # whichever the watcher recorded first: the failed write's, or the EOF's (the loop reads)
    with pytest.raises(PluginCrashed, match=r"SIGKILL|exit code 3"):
        asyncio.run(until_it_fails())


# -- the bootstrap's pool ----------------------------------------------------------------------


class _Ended(SystemExit):
    pass


class _TestPlugin(_pool.Plugin):
    """The pool as the bootstrap runs it, except that the end of the wire ends the thread that
    reads it instead of the process (``SystemExit`` in a thread is silent)."""

    ended: threading.Event

    def end(self, *, asked: bool) -> Any:
        self.ended.set()
        raise _Ended(0)

    def follow(self) -> None:
        with contextlib.suppress(_Ended):
            super().follow()


class _RecordingWire(_channel.LineChannel):
    def __init__(self, fd: int, max_line: int) -> None:
        super().__init__(fd, max_line)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class Tiny:
    """A plugin object: quick calls, a gated slow one, a cancellable one."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.threads: list[int] = []

    def quick(self, v: object) -> object:
        self.threads.append(threading.get_ident())
        return v

    def gated(self, v: object) -> object:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.gate.wait(30)
            return v
        finally:
            with self.lock:
                self.running -= 1

    def usually_quick(self, v: object, stall: bool = False) -> object:
        if stall:
            assert self.gate.wait(30)
        return v

    def until_cancelled(self, context: _pool.CallContext) -> str:
        return "cancelled" if context.cancelled.wait(30) else "not cancelled"


class Pool:
    """A ``Plugin`` pool serving ``Tiny`` on a socketpair, read by the test."""

    def __init__(
        self,
        max_concurrency: int = 8,
        max_line: int = 1_000_000,
        *,
        obj: object = None,
        plugin: type[_TestPlugin] = _TestPlugin,
    ) -> None:
        self.sock, theirs = socket.socketpair()
        self.theirs = theirs
        self.sock.settimeout(30)
        self.file = self.sock.makefile("rb")
        self.obj: Any = Tiny() if obj is None else obj
        self.wire = _RecordingWire(theirs.fileno(), max_line)
        self.plugin = plugin(self.obj, self.wire, max_concurrency)
        self.plugin.ended = threading.Event()
        self.thread = threading.Thread(target=self.plugin.follow, daemon=True)
        self.thread.start()
        self.ids = iter(range(1, 1_000_000))

    def send(self, *requests: tuple[str, dict[str, Any]]) -> list[int]:
        ids = [next(self.ids) for _ in requests]
        self.sock.sendall(
            b"".join(
                _line({"jsonrpc": "2.0", "id": i, "method": m, "params": p})
                for i, (m, p) in zip(ids, requests)
            )
        )
        return ids

    def replies(self, count: int) -> dict[object, dict[str, Any]]:
        out = {}
        for _ in range(count):
            message = json.loads(self.file.readline())
            out[message["id"]] = message
        return out

    def call(self, method: str, params: dict[str, Any]) -> object:
        (call_id,) = self.send((method, params))
        return self.replies(1)[call_id]["result"]

    def close(self) -> None:
        gate = getattr(self.obj, "gate", None)
        if gate is not None:
            gate.set()
        self.file.close()
        self.sock.close()  # EOF: the reading thread ends (pool threads idle on as daemons)
        assert self.plugin.ended.wait(10)
        self.theirs.close()


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool()
    yield p
    p.close()


def test_quick_calls_run_inline_on_the_reading_thread(pool: Pool) -> None:
    assert pool.call("quick", {"v": 0}) == 0  # the first call is timed on a thread of its own
    threads_before = pool.plugin.threads
    pool.obj.threads.clear()
    for i in range(20):
        assert pool.call("quick", {"v": i}) == i
    assert len(set(pool.obj.threads)) == 1
    assert pool.plugin.threads == threads_before


def test_a_batch_of_requests_is_answered_with_few_writes(pool: Pool) -> None:
    assert pool.call("quick", {"v": 0}) == 0
    pool.wire.writes.clear()
    ids = pool.send(*(("quick", {"v": i}) for i in range(50)))
    replies = pool.replies(50)
    assert [replies[i]["result"] for i in ids] == list(range(50))
    # all 50 arrive in one read, so the replies leave in one write (two if the read split)
    assert len(pool.wire.writes) <= 2
    assert sum(w.count(b"\n") for w in pool.wire.writes) == 50


def test_ping_and_errors_join_the_batch(pool: Pool) -> None:
    pool.sock.sendall(
        b'{"jsonrpc":"2.0","id":1,"method":"$/ping"}\n'
        b"not json\n"
        b'{"jsonrpc":"2.0","id":2,"method":"$/nope"}\n'
        b'{"jsonrpc":"2.0","id":3,"method":"missing","params":{}}\n'
    )
    replies = [json.loads(pool.file.readline()) for _ in range(4)]
    by_id = {(r["id"], r.get("error", {}).get("code")) for r in replies}
    assert by_id == {(1, None), (None, -32700), (2, -32601), (3, -32601)}


def test_at_most_max_concurrency_calls_run_and_ping_is_answered_while_all_are_busy() -> None:
    pool = Pool(max_concurrency=2)
    try:
        ids = pool.send(*(("gated", {"v": i}) for i in range(5)))
        assert wait_until(lambda: pool.obj.running == 2)
        assert pool.call("$/ping", {})["pid"] > 0  # type: ignore[index]
        time.sleep(0.1)
        assert pool.obj.running == 2
        pool.obj.gate.set()
        replies = pool.replies(5)
        assert [replies[i]["result"] for i in ids] == list(range(5))
        assert pool.obj.most == 2
    finally:
        pool.close()


def test_a_reader_with_no_thread_to_hand_on_to_backlogs_while_one_comes_back() -> None:
    """``max_concurrency = 1``: call 2 waits in the backlog while call 1 runs; call 1's thread
    is slow to come back for more, and none waits, so the reader has no thread to hand the
    reading to. It does not run call 3 itself (a call waiting for its ``$/cancel`` would then
    wait for good: nobody would read it): call 3 joins the backlog, and call 1's thread, once
    back, runs the backlog. Calls start in the order they were read."""
    holds = {key: threading.Event() for key in ("first", "later")}
    started: list[object] = []
    back = threading.Event()  # call 1's thread may come back for more

    class Held:
        # it sees its context, so it can be cancelled and never runs inline on the reader (a
        # call 1 that ended within a millisecond would otherwise make call 2 look quick)
        def hold(self, v: object, key: str, context: object = None) -> object:
            started.append(v)
            assert holds[key].wait(30)
            return v

    class SlowToComeBack(_TestPlugin):
        def run(self, request: dict[str, object], epoch: int = -1) -> bytes:
            reply = super().run(request, epoch)
            if request.get("id") == 1:
                assert back.wait(30)
            return reply

    pool = Pool(max_concurrency=1, obj=Held(), plugin=SlowToComeBack)
    plugin = pool.plugin
    try:
        first = pool.send(("hold", {"v": 1, "key": "first"}))
        assert wait_until(lambda: started == [1])
        pool.send(("hold", {"v": 2, "key": "later"}))  # backlogged: the slot is taken
        assert wait_until(lambda: plugin.backlog)
        holds["first"].set()  # call 1 ends; its thread is slow to come back
        assert wait_until(lambda: plugin.executing == 0)
        pool.send(("hold", {"v": 3, "key": "later"}))  # backlogged too: the reader reads on
        assert wait_until(lambda: len(plugin.backlog) == 2)
        assert started == [1]
        back.set()  # call 1's thread comes back and runs the backlog
        assert wait_until(lambda: len(started) == 2)
        holds["later"].set()
        replies = pool.replies(3)
        assert set(replies) == {first[0], first[0] + 1, first[0] + 2}
        assert started == [1, 2, 3]
    finally:
        for event in (*holds.values(), back):
            event.set()
        pool.close()


def test_cancel_reaches_a_busy_call_even_at_the_concurrency_cap() -> None:
    pool = Pool(max_concurrency=1)
    try:
        (call_id,) = pool.send(("until_cancelled", {}))
        assert wait_until(lambda: call_id in pool.plugin.contexts)
        pool.sock.sendall(
            _line({"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": call_id}})
        )
        assert pool.replies(1)[call_id]["result"] == "cancelled"
        assert "until_cancelled" in pool.plugin.cancellable  # never run inline
    finally:
        pool.close()


def test_a_quick_call_that_stalls_on_the_reader_holds_no_other_call_up(pool: Pool) -> None:
    for i in range(5):  # learnt as quick: it runs on the reading thread
        assert pool.call("usually_quick", {"v": i}) == i
    (stalled,) = pool.send(("usually_quick", {"v": "late", "stall": True}))
    ids = pool.send(*(("usually_quick", {"v": i}) for i in range(8)))
    replies = pool.replies(8)  # answered while the stalled call still waits for the gate
    assert [replies[i]["result"] for i in ids] == list(range(8))
    assert pool.call("$/ping", {})["pid"] > 0  # type: ignore[index]
    pool.obj.gate.set()
    assert pool.replies(1)[stalled]["result"] == "late"
    for i in range(3):  # and the pool reads on as before
        assert pool.call("usually_quick", {"v": i}) == i


def test_an_oversized_request_is_refused_and_the_next_served() -> None:
    pool = Pool(max_line=200)
    try:
        pool.sock.sendall(b'{"id":1,"method":"quick","params":{"v":"' + b"x" * 5000 + b'"}}\n')
        reply = json.loads(pool.file.readline())
        assert reply["error"]["code"] == -32600
        assert "longer than 200 bytes" in reply["error"]["message"]
        assert pool.call("quick", {"v": "after"}) == "after"
    finally:
        pool.close()


def test_shutdown_sends_the_batch_before_it_and_its_own_reply() -> None:
    pool = Pool()
    try:
        assert pool.call("quick", {"v": 0}) == 0
        pool.sock.sendall(
            _line({"jsonrpc": "2.0", "id": 5, "method": "quick", "params": {"v": 5}})
            + _line({"jsonrpc": "2.0", "id": 0, "method": "$/shutdown"})
        )
        replies = pool.replies(2)
        assert replies[5]["result"] == 5
        assert replies[0]["result"] is None
        assert pool.plugin.ended.wait(10)
    finally:
        pool.close()


# -- the watcher's stderr lines ----------------------------------------------------------------


def _reference_lines(data: bytes, limit: int) -> list[str]:
    """What the stderr reader thread made of the same bytes (``readline(limit)``)."""
    stream = io.BytesIO(data)
    out = []
    while line := stream.readline(limit):
        if not line.endswith(b"\n"):
            line += b" [truncated]"
            while (more := stream.readline(limit)) and not more.endswith(b"\n"):
                pass
        out.append(line.decode("utf-8", "replace").rstrip("\r\n"))
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=40) | st.sampled_from([b"\n", b"x" * 17, b"\r\n", b"\xff\n"]),
        max_size=12,
    ),
    st.integers(1, 4),
)
def test_stderr_lines_from_chunks_match_the_line_reader(chunks: list[bytes], cut: int) -> None:
    limit = 16
    got: list[str] = []
    lines = _plugin_stderr._StderrLines(got.append)
    data = b"".join(chunks)
    with patch.object(_plugin_stderr, "STDERR_LINE_LIMIT", limit):
        for start in range(0, len(data), cut * 7):
            lines.feed(data[start : start + cut * 7])
        lines.finish()
    assert got == _reference_lines(data, limit)
