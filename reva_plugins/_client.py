"""The core's side of one plugin wire: multiplexed JSON-RPC calls from many threads.

Leader/follower: there is no reader thread. A caller that is waiting for its reply reads the
socket itself (it is the leader) and hands other callers their replies; when its own reply
arrives it passes the reading on to another waiting caller. A lone caller so pays no thread
hand-off at all; with many callers, replies are matched by id and may arrive in any order.

asyncio callers (:meth:`Client.acall`) never block their event loop: the loop itself reads the
socket whenever it is readable and nobody else is reading, writes without blocking (a write
that would block is finished by a thread) and learns of replies another thread read through
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from . import _poll
from ._call import Call
from ._errors import CallCancelled, ProtocolError, RevaPluginError
from ._flood import LogFlood
from ._protocol import (
    CANCEL,
    HANDSHAKE,
    encode_request,
    error_to_exception,
    guess_id,
    ids_near_ends,
    loads,
    loads_yielding,
)

log = logging.getLogger("reva_plugins.process")

_TIMEOUT: Final = object()
_loads = loads
#: a line longer than this is a long one: decoded only when a call in flight may be its (its id
#: near either end), as it is the decoding that takes long, and then where no event loop waits
#: on it (by a worker thread, when the loop read it) and letting other threads run meanwhile
_LONG_LINE = 1 << 16
#: how long a failed write waits for the process's exit to be recorded (see ``Client.send``)
_EXIT_GRACE = 5.0
#: lines an event loop reads per wake-up at most (a flood must not hold the loop)
_LOOP_READS = 256
#: bytes an event loop reads per wake-up at most (a long line must not hold the loop either)
_LOOP_READ_BYTES = 1 << 20


def _decode(line: bytes, loads: Callable[[bytes], Any] = _loads) -> tuple[Any, str]:
    """A line's message, or ``None`` and why it is not one. Nothing escapes: a plugin controls
    these bytes, and whatever the decoder raises on them must become a protocol error."""
    try:
        return loads(line), ""
    except Exception as exc:  # noqa: BLE001 - every decode failure is the plugin's protocol error
        return None, f"invalid JSON from plugin: {exc or type(exc).__name__}"


class _Oversized(Exception):
    def __init__(self, head: bytes) -> None:
        super().__init__("oversized line")
        self.head = head


def _shown(value: object) -> object:
    """A plugin-sent value safe to log (``repr`` of a deeply nested one would recurse)."""
    return value if isinstance(value, (str, int, float, type(None))) else type(value).__name__


class LineReader:
    """Lines from a socket with an optional timeout per read and a size limit per line."""

    #: reads wake up this often to check the caller's deadline: one syscall per message in the
    #: common case, instead of a poll before every read.
    TICK = 0.05

    def __init__(self, sock: socket.socket, max_line: int, peer: int | None = None) -> None:
        self.sock = sock
        self.max_line = max_line
        self.buf = bytearray()
        self.chunk = bytearray(65536)
        self.view = memoryview(self.chunk)
        self.scanned = 0
        self.skipping = False
        #: a lone caller polls for its reply before its read blocks (``spin``)
        self.spinner = _poll.Spinner(sock.fileno(), peer)
        usec = int(self.TICK * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, usec))

    def has_line(self) -> bool:
        """Whether a whole line is buffered (the next :meth:`readline` needs no read)."""
        return self.buf.find(b"\n", self.scanned) >= 0

    def readline(
        self, timeout: float | None, spin: bool = False, *, nowait: bool = False
    ) -> bytes | object:
        """A whole line; ``b""`` at EOF; ``_TIMEOUT``; raises ``_Oversized`` past the limit.
        ``spin``: poll briefly before blocking (``_poll.Spinner``); ``nowait``: never block, a read
        that would is ``_TIMEOUT`` (an event loop's read)."""
        buf = self.buf
        flags = socket.MSG_DONTWAIT if nowait else 0
        # one deadline for the whole line (set at its first read): a peer that keeps sending (an
        # endless line, a byte at a time) must not push it back with every read
        deadline = None
        # an event loop reads a long line in pieces, other callbacks running in between
        budget = _LOOP_READ_BYTES
        while True:
            end = buf.find(b"\n", self.scanned)
            if end >= 0:
                if end < _LONG_LINE:
                    line = bytes(buf[: end + 1])
                else:  # one copy, not two (a slice, then bytes): the loop may be waiting
                    with memoryview(buf) as whole:
                        line = whole[: end + 1].tobytes()
                del buf[: end + 1]
                self.scanned = 0
                if not self.skipping:
                    return line
                self.skipping = False
                continue
            if self.skipping:
                buf.clear()
            elif len(buf) > self.max_line:
                head = bytes(buf[:4096])
                buf.clear()
                self.skipping = True
                self.scanned = 0
                raise _Oversized(head)
            self.scanned = len(buf)
            if nowait:
                if budget <= 0:
                    return _TIMEOUT
            elif timeout is not None:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                elif now >= deadline:
                    return _TIMEOUT
            if spin:
                self.spinner.spin()
            while True:
                try:
                    size = self.sock.recv_into(self.chunk, 0, flags)
                    break
                except BlockingIOError:
                    if nowait or (deadline is not None and time.monotonic() >= deadline):
                        return _TIMEOUT
                except OSError:
                    size = 0
                    break
            if not size:
                return b""
            buf += self.view[:size]
            budget -= size


class _Waker:
    """What a waiting caller sleeps on: an eventfd. Waking it is a ``write``, which drops the GIL
    while the kernel wakes the thread (a lock release wakes with the GIL held). Measured side by
    side on two vCPUs, 16 unpinned threads made 36-44k calls/s this way against 20-29k with a
    per-call lock; a pipe did no better than an eventfd and costs two fds."""

    __slots__ = ("fd", "poller")

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def wait(self, timeout: float | None) -> bool:
        """Sleep until woken (True) or ``timeout`` seconds pass (False)."""
        if not self.poller.poll(None if timeout is None else timeout * 1000):
            return False
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return False
        return True

    def wake(self) -> None:
        os.eventfd_write(self.fd, 1)

    def __del__(self) -> None:
        # only a waker left behind by an interrupted wait is ever dropped; whoever was to
        # wake it holds a reference while it writes
        with contextlib.suppress(OSError):
            os.close(self.fd)


#: wakers not in use: one per thread that waits at a time, kept for the next (list.pop and
#: list.append are atomic)
_idle_wakers: list[_Waker] = []
# a forked child must not share its parent's eventfds: a wake-up could reach the wrong process
os.register_at_fork(after_in_child=_idle_wakers.clear)


def _take_waker() -> _Waker:
    try:
        return _idle_wakers.pop()
    except IndexError:
        return _Waker()


class Cancellation:
    """Cancels a call from another thread: pass it as ``ServiceProxy.call(...,
    cancellation=c)``; ``c.cancel()`` ends the call at once with :class:`CallCancelled` and
    sends the plugin ``$/cancel`` (its ``context.cancelled`` is set). One cancellation may serve
    several calls; cancelling is idempotent and a call started after it fails at once."""

    __slots__ = ("_callbacks", "_cancelled", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel every call using this (from any thread; a second call does nothing)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` on :meth:`cancel` (now, if it was cancelled already); returns
        what forgets it again."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


class _Slot:
    """One call in flight. Its owner, when it has to wait, sleeps on ``waker`` (taken only
    then: a lone caller reading its own reply never waits) until the slot is filled;
    ``signalled`` says a wake-up was sent (exactly one per wait). An asyncio call's slot has a
    ``future`` instead, settled in its ``loop`` (whose thread is ``thread``)."""

    __slots__ = (
        "done",
        "error",
        "future",
        "loop",
        "result",
        "signalled",
        "thread",
        "waiting",
        "waker",
    )

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = 0
        self.waker: _Waker | None = None
        self.done = False
        self.waiting = False
        self.signalled = False
        self.result: Any = None
        self.error: BaseException | None = None


class Client:
    """Thread-safe, multiplexed calls over one socket.

    A lone caller reads its own reply (no thread hand-off). While another caller already reads,
    a reader thread takes the socket over and stays until no call has been in flight for a
    ``LineReader.TICK``. Every reply wakes its owner with one targeted wake-up (its eventfd
    waker), and woken owners pass the wake on one at a time (a baton) so a burst of replies
    makes one thread runnable, not sixteen. No lock is held across a syscall: a caller queues
    its request, and whoever finds no write in progress writes everything queued at once.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        label: str,
        max_line: int,
        on_eof: Callable[[], None] | None = None,
        peer_pid: int | None = None,
    ) -> None:
        self.sock = sock
        self.peer_pid = peer_pid
        self.label = label
        self.reader = LineReader(sock, max_line, peer_pid)
        self.on_eof = on_eof
        self.pending: dict[int, _Slot] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.eof = False
        self.closed: RevaPluginError | None = None
        self.gone = threading.Event()  # set once ``closed`` is
        self.outbox: list[bytes] = []
        self.flushing = False
        self.ready: collections.deque[_Slot] = collections.deque()
        self.baton = False  # a woken owner is yet to pass the wake-up on
        self.reading = False  # a reader thread runs (or is about to)
        self.overlapped = 0.0  # when a call last started while another was in flight
        #: the event loops reading the socket (each on a dup of its own; ``read_lock`` decides
        #: who reads): one per loop with calls on this client, so a busy loop starves no other
        self.watchers: dict[asyncio.AbstractEventLoop, _LoopWatch] = {}
        #: what the plugin gets wrong on the wire is logged within this limit
        self.flood = LogFlood("log lines about its wire messages")

    # -- sending ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue one message and write the queue unless a write is in progress (its writer
        writes this too); a broken wire raises the error the process was closed with."""
        with self.lock:
            self.outbox.append(data)
            if self.flushing:
                return
            self.flushing = True
        self._flush()

    def _flush(self, wait_for_exit: bool = True) -> None:
        """Write the queue until it is empty (``flushing`` set by the caller). A write that
        fails waits (``wait_for_exit``) up to ``_EXIT_GRACE`` for the process's exit to be
        recorded, so the caller learns how it died."""
        lock = self.lock
        sendall = self.sock.sendall
        while True:
            data = self._take_queue()
            if data is None:
                return
            try:
                sendall(data)
            except OSError as exc:
                with lock:
                    self.flushing = False
                    self.outbox = []
                # The wire breaks because the process is dying: its watcher records the exit a
                # moment later, and the caller must learn that (PluginCrashed, exit code,
                # stderr), not errno.
                if wait_for_exit:
                    self.gone.wait(_EXIT_GRACE)
                raise self.closed or ProtocolError(
                    f"cannot write to plugin: {exc}", plugin=self.label
                ) from None

    def _take_queue(self) -> bytes | None:
        """What is queued, as one write; None (and the flush ends) when nothing is."""
        with self.lock:
            queued = self.outbox
            if not queued:
                self.flushing = False
                return None
            self.outbox = []
        return queued[0] if len(queued) == 1 else b"".join(queued)

    def _flush_for_others(self) -> None:
        """Write what woken callers queued; they learn of a broken wire from the watcher."""
        with contextlib.suppress(RevaPluginError):
            self._flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """A notification (no reply): queued, and written unless a write is in progress. It
        never blocks (a cancelling thread, an event loop, must not stall): what the socket
        does not take at once a thread writes; errors are ignored."""
        with self.lock:
            self.outbox.append(encode_request(None, method, params))
            if self.flushing:
                return
            self.flushing = True
        self._flush_nowait()

    def _flush_nowait(self) -> OSError | None:
        """Write the queue (``flushing`` set by the caller) as far as the socket takes it
        without blocking; a thread writes the rest. Returns the error of a broken wire (the
        queue is dropped then, as :meth:`_flush` drops it)."""
        lock = self.lock
        send = self.sock.send
        while True:
            data = self._take_queue()
            if data is None:
                return None
            try:
                sent = send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                with lock:
                    self.flushing = False
                    self.outbox = []
                return exc
            if sent < len(data):
                with lock:  # still flushing: the thread owns the queue until it is empty
                    self.outbox.insert(0, data[sent:])
                threading.Thread(
                    target=self._flush_for_others, name=f"reva-{self.label}-writer", daemon=True
                ).start()
                return None

    # -- calls -----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None = None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """:meth:`invoke` a call of ``method`` made of these parts."""
        return self.invoke(Call(self.label, method, params, timeout, meta or {}, cancellation))

    def invoke(self, call: Call) -> Any:
        """Send a request and wait for its reply, reading the wire ourselves if nobody is."""
        method, timeout, cancellation = call.method, call.timeout, call.cancellation
        if cancellation is not None and cancellation.cancelled:
            raise call.cancelled(self.label)
        slot = _Slot()
        lock = self.lock
        with lock:
            call_id = self._register(slot)
        deadline = time.monotonic() + timeout if timeout and timeout > 0 else None
        try:
            self.send(encode_request(call_id, method, call.params, call.meta))
        except RevaPluginError:
            with lock:
                self.pending.pop(call_id, None)
            raise
        forget = None
        if cancellation is not None:
            forget = cancellation.on_cancel(lambda: self._cancel(call_id, method))
        read_lock = self.read_lock
        while not slot.done:
            with lock:
                lead = not self.reading and not self.eof and not slot.done
            if lead and read_lock.acquire(blocking=False):
                try:
                    # a cancellation is seen between reads: read a tick at a time
                    self._lead(slot, deadline, LineReader.TICK if forget else None)
                finally:
                    read_lock.release()
            elif not slot.done:
                self._wait(slot, deadline)
            if not slot.done and deadline is not None and time.monotonic() >= deadline:
                with lock:
                    cancel = not slot.done
                    if cancel:
                        del self.pending[call_id]
                        slot.done = True
                        slot.error = call.timed_out(self.label)
                if cancel:
                    self.notify(CANCEL, {"id": call_id})
        if forget is not None:
            forget()
        if slot.waker is not None:
            _idle_wakers.append(slot.waker)
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _register(self, slot: _Slot) -> int:
        """A new call's id, its slot pending (call with ``self.lock`` held); raises the error
        the process was closed with."""
        if self.closed is not None:
            raise self.closed
        call_id = next(self.ids)
        if self.pending:
            self.overlapped = time.monotonic()
        self.pending[call_id] = slot
        return call_id

    async def acall(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        meta: dict[str, Any] | None = None,
        cancellation: Cancellation | None = None,
    ) -> Any:
        """:meth:`ainvoke` a call of ``method`` made of these parts."""
        call = Call(self.label, method, params, timeout, meta or {}, cancellation)
        return await self.ainvoke(call)

    async def ainvoke(self, call: Call) -> Any:
        """:meth:`invoke` for a coroutine: the running loop reads the replies (unless a thread is
        reading already) and nothing blocks it. A task cancelled while it awaits its reply
        cancels the call in the plugin (``$/cancel``)."""
        method, timeout, cancellation = call.method, call.timeout, call.cancellation
        if cancellation is not None and cancellation.cancelled:
            raise call.cancelled(self.label)
        loop = asyncio.get_running_loop()
        slot = _Slot()
        future = slot.future = loop.create_future()
        slot.loop = loop
        slot.thread = threading.get_ident()
        lock = self.lock
        with lock:
            call_id = self._register(slot)
            self.outbox.append(encode_request(call_id, method, call.params, call.meta))
            write = not self.flushing
            if write:
                self.flushing = True
        self._watch(loop)
        broken = self._flush_nowait() if write else None
        if broken is not None:
            with lock:
                self.pending.pop(call_id, None)
            # as in _flush: the caller must learn how the process died, not errno
            await loop.run_in_executor(None, self.gone.wait, _EXIT_GRACE)
            raise self.closed or ProtocolError(
                f"cannot write to plugin: {broken}", plugin=self.label
            ) from None
        timer = None
        if timeout is not None and timeout > 0:
            timer = loop.call_later(timeout, self._expire, call_id, call)
        forget = None
        if cancellation is not None:
            forget = cancellation.on_cancel(lambda: self._cancel(call_id, method))
        try:
            return await future
        except asyncio.CancelledError:
            self._cancel(call_id, method)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if forget is not None:
                forget()

    def _expire(self, call_id: int, call: Call) -> None:
        if self._fill(call_id, error=call.timed_out(self.label)):
            self.notify(CANCEL, {"id": call_id})

    # -- an event loop reading ---------------------------------------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` read the socket whenever it is readable, from now until EOF or close
        (loops that closed meanwhile let go of theirs here)."""
        if loop in self.watchers:
            return
        with self.lock:
            if self.eof or loop in self.watchers:
                return
            gone = [w for w in self.watchers.values() if w.loop.is_closed()]
            for watch in gone:
                del self.watchers[watch.loop]
            # a dup of the socket is what the loop watches: whoever closes the socket, the
            # number the loop's selector knows is never another file's until the loop lets go
            ours = self.watchers[loop] = _LoopWatch(loop, os.dup(self.sock.fileno()))
        for watch in gone:
            watch.release()
        ours.resume(self._loop_readable)

    def _loop_readable(self) -> None:
        """The socket is readable (on a loop): read and hand out what is buffered, unless
        someone else reads already; then let them, and look again shortly."""
        watcher = self.watchers.get(asyncio.get_running_loop())
        if watcher is None:
            return
        if not self.read_lock.acquire(blocking=False):
            watcher.pause(self._loop_readable)
            return
        reader = self.reader
        handed = False  # a worker decodes a long line, and lets go of the reading after it
        try:
            for _ in range(_LOOP_READS):  # then the loop's other work has its turn
                try:
                    got = reader.readline(0, nowait=True)
                except _Oversized as exc:
                    self._protocol_error(exc.head, f"message longer than {reader.max_line} bytes")
                    continue
                if got is _TIMEOUT:
                    return
                if not got:
                    with self.lock:
                        self.eof = True
                    self._unwatch()
                    if self.on_eof is not None:
                        self.on_eof()
                    return
                assert isinstance(got, bytes)
                if self._dispatch(got, aside=True):
                    handed = True
                    return
                if not reader.has_line():
                    return
        finally:
            if not handed:
                self.read_lock.release()

    def _watched(self) -> bool:
        """Whether a running event loop reads for everyone."""
        return any(w.loop.is_running() for w in list(self.watchers.values()))

    def _unwatch(self) -> None:
        """Let every loop go of the socket (from any thread)."""
        with self.lock:
            watchers, self.watchers = list(self.watchers.values()), {}
        for watcher in watchers:
            watcher.release_threadsafe()

    def _lead(self, slot: _Slot, deadline: float | None, tick: float | None = None) -> None:
        """Read (and hand out) replies until ours is in, EOF, the deadline, or (with ``tick``)
        a read that waited that long."""
        while not slot.done:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            if tick is not None:
                remaining = tick if remaining is None else min(remaining, tick)
            if self._read_one(remaining, spin=True) is not True:
                return

    def _cancel(self, call_id: int, method: str) -> None:
        """The caller's :class:`Cancellation` fired: fail the call now, cancel it in the plugin."""
        error = CallCancelled(f"{method} was cancelled", plugin=self.label)
        if self._fill(call_id, error=error):
            self.notify(CANCEL, {"id": call_id})

    def _read_one(self, timeout: float | None, *, spin: bool = False) -> bool | None:
        """Read and dispatch one line: True; None on timeout; False at EOF. ``spin``: poll
        briefly before blocking (a lone caller: a reader thread must not, it would only keep
        the GIL from the callers it reads for)."""
        reader = self.reader
        try:
            got = reader.readline(timeout, spin)
        except _Oversized as exc:
            self._protocol_error(exc.head, f"message longer than {reader.max_line} bytes")
            return True
        if got is _TIMEOUT:
            return None
        if not got:
            with self.lock:
                self.eof = True
            if self.on_eof is not None:
                self.on_eof()
            return False
        assert isinstance(got, bytes)
        self._dispatch(got)
        return True

    def _wait(self, slot: _Slot, deadline: float | None) -> None:
        """Sleep until the slot is filled or the deadline; make sure somebody reads for us."""
        with self.lock:
            if slot.done:
                return
            no_reader = False
            if self.watchers and not self.eof and self._watched():
                # an event loop reads for everyone: wait for it a tick at a time (and lead
                # if it stalls) rather than start a thread that would take the socket from it
                no_reader = True
            elif not self.reading and not self.eof:
                self.reading = True
                try:
                    threading.Thread(
                        target=self._reader_thread, name=f"reva-{self.label}-reader", daemon=True
                    ).start()
                except RuntimeError:  # no thread to be had (a thread or memory limit)
                    no_reader = True
                    self.reading = False
            waker = slot.waker
            if waker is None:
                waker = slot.waker = _take_waker()
            slot.waiting = True
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if no_reader:  # callers lead in turn meanwhile: look again soon whether one must
            remaining = LineReader.TICK if remaining is None else min(remaining, LineReader.TICK)
        woken = waker.wait(remaining)
        with self.lock:
            slot.waiting = False
            signalled, slot.signalled = slot.signalled, False
            following = self._pass_baton() if signalled else None
        if signalled and not woken:
            waker.wait(None)  # the wake-up is on its way: take it, the waker is used again
        if following is not None:
            following.wake()

    def _reader_thread(self) -> None:
        """Read for the waiting callers; leave once nothing is in flight and no two calls have
        been for a tick (a lone caller then reads its own replies again)."""
        lock = self.lock
        with self.read_lock:  # a lone caller may still be reading its own reply
            while True:
                got = self._read_one(LineReader.TICK)
                with lock:
                    idle = not self.pending and (
                        got is None or time.monotonic() - self.overlapped > LineReader.TICK
                    )
                    if got is False or idle or self.closed is not None:
                        self.reading = False
                        return

    def _pass_baton(self) -> _Waker | None:
        """Pick the next owner whose reply is in (call with ``self.lock`` held): the caller
        wakes it once the lock is released."""
        ready = self.ready
        while ready:
            slot = ready.popleft()
            if slot.waiting and not slot.signalled and slot.waker is not None:
                slot.signalled = True
                self.baton = True
                return slot.waker
        self.baton = False
        return None

    def _fill(self, call_id: Any, result: Any = None, error: BaseException | None = None) -> bool:
        with self.lock:
            # type(): true == 1 as a key, and a reply with id true must not fill call 1
            slot = self.pending.pop(call_id, None) if type(call_id) is int else None
            if slot is None:
                return False
            slot.result, slot.error, slot.done = result, error, True
            following = None
            if slot.waiting:
                self.ready.append(slot)
                if not self.baton:
                    following = self._pass_baton()
        if slot.future is not None:
            _settle_from_anywhere(slot)
        if following is not None:
            following.wake()
        return True

    # -- incoming messages -----------------------------------------------------------------

    def _dispatch(self, line: bytes, *, aside: bool = False) -> bool:
        """Hand out what one line says. ``aside``: an event loop read it (holding
        ``read_lock``); a long line is then decoded and handed out by a worker thread, which
        releases ``read_lock`` when done (True): the loop reads on meanwhile and nobody reads
        past it, so what follows it is handed out after it and its memory is all a plugin can
        make a worker hold."""
        if len(line) <= _LONG_LINE:
            self._handle(line, *_decode(line))
            return False
        if not self._awaited(line):
            return False
        if aside:
            try:
                threading.Thread(
                    target=self._decode_aside,
                    args=(line, asyncio.get_running_loop()),
                    name=f"reva-{self.label}-decoder",
                    daemon=True,
                ).start()
                return True
            except RuntimeError:  # no thread to be had: the loop decodes it
                pass
        self._handle(line, *_decode(line, loads_yielding))
        return False

    def _decode_aside(self, line: bytes, loop: asyncio.AbstractEventLoop) -> None:
        more = False
        try:
            self._handle(line, *_decode(line, loads_yielding))
        finally:
            more = self.reader.has_line()
            self.read_lock.release()
        if more:  # lines read with it wake no watch of the socket: have the loop hand them out
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._loop_readable)

    def _awaited(self, line: bytes) -> bool:
        """Whether a long line may answer a call in flight; one that cannot is dropped
        undecoded (as a reply for no call in flight is once decoded)."""
        near = ids_near_ends(line)
        pending = self.pending
        if any(call_id in pending for call_id in near):
            return True
        if b'"method"' in line[:4096]:
            log.debug("%s: notification of %d bytes ignored", self.label, len(line))
        elif 0 not in near:  # id 0 answers $/shutdown, which nobody waits for
            self._fault(
                logging.WARNING, "%s: reply for unknown call id %.200r dropped", guess_id(line)
            )
        return False

    def _handle(self, line: bytes, message: Any, problem: str) -> None:
        if problem:
            self._protocol_error(line, problem)
            return
        if type(message) is not dict:
            self._protocol_error(line, "message is not a JSON object")
            return
        call_id = message.get("id")
        if "result" in message:
            found = self._fill(call_id, message["result"])
        elif "error" in message and isinstance(message["error"], dict):
            found = self._fill(
                call_id, error=error_to_exception(message["error"], plugin=self.label)
            )
        elif "method" in message:
            log.debug("%s: notification %.200r ignored", self.label, _shown(message["method"]))
            return
        else:
            error = ProtocolError("reply has neither result nor error", plugin=self.label)
            found = self._fill(call_id, error=error)
            self._fault(
                logging.ERROR,
                "%s: protocol error: reply %.200r has neither result nor error",
                _shown(call_id),
            )
        if not found and call_id != 0:  # id 0 answers $/shutdown, which nobody waits for
            self._fault(
                logging.WARNING, "%s: reply for unknown call id %.200r dropped", _shown(call_id)
            )

    def _fault(self, level: int, message: str, *args: object) -> None:
        """Log what the plugin got wrong on the wire, within the flood limit (a plugin that
        sends nothing but junk must not fill the log, nor stall the loop writing it)."""
        if self.flood.allow():
            log.log(level, message, self.label, *args)
        self.flood.report(log, self.label)

    def _protocol_error(self, line: bytes, reason: str) -> None:
        self._fault(logging.ERROR, "%s: protocol error: %s", reason)
        call_id = guess_id(line)
        if call_id is not None:
            self._fill(call_id, error=ProtocolError(reason, plugin=self.label))

    def first_message(self, timeout: float) -> tuple[dict[str, Any] | None, str, str]:
        """The first message (the handshake); else None, what came instead and why it is not a
        handshake (both empty at EOF or timeout)."""
        with self.read_lock:
            try:
                line = self.reader.readline(timeout)
            except _Oversized as exc:
                head = exc.head.decode("utf-8", "replace")[:2000]
                return None, head, f"message longer than {self.reader.max_line} bytes"
            if line is _TIMEOUT:
                return None, "", ""
            assert isinstance(line, bytes)
            if not line:
                self.eof = True
                return None, "", ""
            instead = line.decode("utf-8", "replace").rstrip()[:2000]
            message, problem = _decode(line)
            if problem:
                return None, instead, problem
            if not isinstance(message, dict) or message.get("method") != HANDSHAKE:
                return None, instead, "not a $/handshake notification"
            params = message.get("params")
            if not isinstance(params, dict):
                return None, instead, "its params are not an object"
            return params, "", ""

    # -- the end ---------------------------------------------------------------------------

    def close(self, error: RevaPluginError) -> None:
        """The process is gone: read what it still sent, then fail the calls left with ``error``."""
        with self.read_lock:
            while not self.eof:
                try:
                    line = self.reader.readline(0.2)
                except _Oversized:
                    continue
                if line is _TIMEOUT or not line:
                    break
                assert isinstance(line, bytes)
                self._dispatch(line)
            with self.lock:
                self.eof = True
                self.closed = error
                self.gone.set()
                pending, self.pending = self.pending, {}
                # replies in that no woken caller has passed the wake-up to yet: nobody would
                # pass it on now, so they are woken here with the rest
                ready, self.ready = list(self.ready), collections.deque()
                self.baton = False
                woken = []
                for slot in pending.values():
                    slot.error, slot.done = error, True
                for slot in [*ready, *pending.values()]:
                    if slot.waiting and not slot.signalled and slot.waker is not None:
                        slot.signalled = True
                        woken.append(slot.waker)
            for waker in woken:
                waker.wake()
            for slot in pending.values():
                if slot.future is not None:
                    _settle_from_anywhere(slot)
        self.flood.report(log, self.label, force=True)
        self._unwatch()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if not future.done():  # a cancelled task's future is done already
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _settle_from_anywhere(slot: _Slot) -> None:
    """Settle an asyncio call's future: at once on its loop's thread, else through the loop
    (a loop that closed meanwhile has nobody left to tell)."""
    assert slot.future is not None
    assert slot.loop is not None
    if threading.get_ident() == slot.thread:
        _settle(slot.future, slot.result, slot.error)
    else:
        with contextlib.suppress(RuntimeError):
            slot.loop.call_soon_threadsafe(_settle, slot.future, slot.result, slot.error)


class _LoopWatch:
    """An event loop's reader on a dup of the plugin's socket. The loop's thread adds, pauses
    and removes it; :meth:`release_threadsafe` asks the loop to (or closes the dup itself when
    the loop has closed and watches nothing any more)."""

    #: seconds a paused watch waits before the loop looks at the socket again
    PAUSE = 0.0005

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.released = False
        self.lock = threading.Lock()  # the dup is closed once (its number may be reused)

    def resume(self, callback: Callable[[], None]) -> None:
        if not self.released:
            self.loop.add_reader(self.fd, callback)

    def pause(self, callback: Callable[[], None]) -> None:
        """A thread reads: stop watching for a moment (the socket stays readable meanwhile,
        and a level-triggered watch would spin)."""
        self.loop.remove_reader(self.fd)
        self.loop.call_later(self.PAUSE, self.resume, callback)

    def release(self) -> None:
        """On the loop's thread (or with the loop stopped or closed)."""
        with self.lock:
            if self.released:
                return
            self.released = True
        if not self.loop.is_closed():
            with contextlib.suppress(Exception):  # a loop stopped mid-teardown
                self.loop.remove_reader(self.fd)
        os.close(self.fd)

    def release_threadsafe(self) -> None:
        if not self.loop.is_running():  # stopped (nobody would run a callback) or closed
            self.release()
            return
        try:
            self.loop.call_soon_threadsafe(self.release)
        except RuntimeError:  # closed meanwhile: its selector is gone with it
            self.release()
