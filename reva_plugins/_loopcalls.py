"""asyncio calls over one plugin wire (:meth:`LoopCalls.acall`): they never block their event
loop. The loop itself reads the socket whenever it is readable and nobody else is reading
(each loop on a dup of the socket of its own), writes without blocking (a write that would block
is finished by a thread), hands a long line to a worker thread to decode, and learns of replies
another thread read through ``call_soon_threadsafe``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from ._call import Call, Cancellation
from ._connection import EXIT_GRACE, Connection
from ._errors import ProtocolError, RevaPluginError
from ._linereader import LONG_LINE, TIMEOUT, Oversized, decode
from ._pending import Slot
from ._protocol import CANCEL, encode_request, loads_yielding

#: lines an event loop reads per wake-up at most (a flood must not hold the loop)
LOOP_READS = 256
#: a timer runs this much before its time at most (asyncio's ``_clock_resolution``)
_RESOLUTION = time.get_clock_info("monotonic").resolution


class LoopCalls(Connection):
    """A :class:`Connection` with calls from coroutines; the event loops that read its socket."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        label: str,
        max_line: int,
        on_eof: Callable[[], None] | None = None,
        peer_pid: int | None = None,
    ) -> None:
        super().__init__(sock, label=label, max_line=max_line, on_eof=on_eof, peer_pid=peer_pid)
        #: the event loops reading the socket (each on a dup of its own; ``read_lock`` decides
        #: who reads): one per loop with calls on this client, so a busy loop starves no other
        self.watchers: dict[asyncio.AbstractEventLoop, _LoopWatch] = {}

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

    async def ainvoke(self, call: Call, limit: float | None = None) -> Any:
        """:meth:`invoke` for a coroutine: the running loop reads the replies (unless a thread is
        reading already) and nothing blocks it. A task cancelled while it awaits its reply
        cancels the call in the plugin (``$/cancel``)."""
        method, cancellation = call.method, call.cancellation
        if cancellation is not None and cancellation.cancelled:
            raise call.cancelled(self.label)
        timeout, meta = call.bound(limit, self.label)
        loop = asyncio.get_running_loop()
        slot = Slot()
        future = slot.future = loop.create_future()
        slot.loop = loop
        slot.thread = threading.get_ident()
        lock = self.lock
        with lock:
            call_id = self._register(slot)
            try:
                data = encode_request(call_id, method, call.params, meta)
            except RevaPluginError:  # not JSON: the call is not made
                del self.pending[call_id]
                raise
            write = not self.flushing
            if write:  # nothing is queued (a writer empties the queue): this goes first
                self.flushing = True
            else:
                self.outbox.append(data)
        self._watch(loop)
        broken = self._flush_nowait(data) if write else None
        if broken is not None:
            await self._unwritten(call_id, broken, loop)
        timer = watch = None
        if timeout is not None and timeout > 0:
            # the loop's one timer for every call it has on this wire, where there is one (a
            # timer per call costs its handle, a heap push and a cancel: every call's path)
            watch = self.watchers.get(loop)
            if watch is None:
                timer = loop.call_later(timeout, self._expire, call_id, call, timeout)
            else:
                watch.expire_at(call_id, loop.time() + timeout, call, timeout)
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
            elif watch is not None:
                watch.deadlines.pop(call_id, None)
            if forget is not None:
                forget()

    async def _unwritten(
        self, call_id: int, broken: OSError, loop: asyncio.AbstractEventLoop
    ) -> NoReturn:
        """The request could not be written: the call is dropped, and (as in ``_flush``) the
        caller learns how the process died, not errno."""
        with self.lock:
            self.pending.pop(call_id, None)
        await loop.run_in_executor(None, self.gone.wait, EXIT_GRACE)
        raise self.closed or ProtocolError(
            f"cannot write to plugin: {broken}", plugin=self.label
        ) from None

    def _expire(self, call_id: int, call: Call, timeout: float) -> None:
        if self._fill(call_id, error=call.timed_out(self.label, timeout)):
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
            ours = self.watchers[loop] = _LoopWatch(loop, os.dup(self.sock.fileno()), self._expire)
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
            for _ in range(LOOP_READS):  # then the loop's other work has its turn
                try:
                    got = reader.readline(0, nowait=True)
                except Oversized as exc:
                    self._protocol_error(exc.head, f"message longer than {reader.max_line} bytes")
                    continue
                if got is TIMEOUT:
                    return
                if not got:
                    with self.lock:
                        self.eof = True
                    self._unwatch()
                    if self.on_eof is not None:
                        self.on_eof()
                    return
                assert isinstance(got, bytes)
                if self._dispatch_aside(got):
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

    def _dispatch_aside(self, line: bytes) -> bool:
        """Hand out what one line the loop read says (holding ``read_lock``). A long line is
        decoded and handed out by a worker thread, which releases ``read_lock`` when done (True):
        the loop reads on meanwhile and nobody reads past it, so what follows it is handed out
        after it and its memory is all a plugin can make a worker hold."""
        if len(line) <= LONG_LINE:
            self._handle(line, *decode(line))
            return False
        if not self._awaited(line):
            return False
        try:
            threading.Thread(
                target=self._decode_aside,
                args=(line, asyncio.get_running_loop()),
                name=f"reva-{self.label}-decoder",
                daemon=True,
            ).start()
        except RuntimeError:  # no thread to be had: the loop decodes it
            self._handle(line, *decode(line, loads_yielding))
            return False
        return True

    def _decode_aside(self, line: bytes, loop: asyncio.AbstractEventLoop) -> None:
        more = False
        try:
            self._handle(line, *decode(line, loads_yielding))
        finally:
            more = self.reader.has_line()
            self.read_lock.release()
        if more:  # lines read with it wake no watch of the socket: have the loop hand them out
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._loop_readable)

    def close(self, error: RevaPluginError) -> None:
        """See :meth:`Connection.close`; the loops let go of the socket too."""
        super().close(error)
        self._unwatch()


class _LoopWatch:
    """An event loop's reader on a dup of the plugin's socket, and the deadlines of the loop's
    calls on it. The loop's thread adds, pauses and removes it; :meth:`release_threadsafe` asks
    the loop to (or closes the dup itself when the loop has closed and watches nothing any
    more)."""

    #: seconds a paused watch waits before the loop looks at the socket again
    PAUSE = 0.0005

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        expire: Callable[[int, Call, float], None],
    ) -> None:
        self.loop = loop
        self.fd = fd
        self.released = False
        self.lock = threading.Lock()  # the dup is closed once (its number may be reused)
        #: the loop's calls with a deadline (on the loop's thread only): id -> (when, call,
        #: timeout); one timer, at or before the earliest, expires them (``expire``)
        self.deadlines: dict[int, tuple[float, Call, float]] = {}
        self.expire = expire
        self.timer: asyncio.TimerHandle | None = None
        self.at = math.inf  # when the timer fires (no deadline is earlier)

    def expire_at(self, call_id: int, when: float, call: Call, timeout: float) -> None:
        """Expire the call at ``when`` (loop time) unless it ends first (whoever ends it
        drops it from ``deadlines``). Calls come with the same timeout, mostly: a later
        deadline than the timer's needs no new timer."""
        self.deadlines[call_id] = (when, call, timeout)
        if when < self.at:
            if self.timer is not None:
                self.timer.cancel()
            self.at = when
            self.timer = self.loop.call_at(when, self._due)

    def _due(self) -> None:
        """The timer: expire the calls due (as the loop runs a timer: within its clock's
        resolution), then wait for the earliest deadline left."""
        self.timer = None
        self.at = math.inf
        deadlines = self.deadlines
        now = self.loop.time() + _RESOLUTION
        for call_id in [i for i, (when, _, _) in deadlines.items() if when <= now]:
            _, call, timeout = deadlines.pop(call_id)
            self.expire(call_id, call, timeout)
        if deadlines:
            self.at = min(when for when, _, _ in deadlines.values())
            self.timer = self.loop.call_at(self.at, self._due)

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
