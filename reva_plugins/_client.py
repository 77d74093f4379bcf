"""The core's side of one plugin wire: multiplexed JSON-RPC calls from many threads (and from
coroutines: :class:`LoopCalls`).

Leader/follower: there is no reader thread while one caller is alone. A caller that is waiting
for its reply reads the socket itself (it is the leader) and hands other callers their replies;
when its own reply arrives it passes the reading on to another waiting caller. A lone caller so
pays no thread hand-off at all; with many callers, replies are matched by id and may arrive in
any order.
"""

from __future__ import annotations

import threading
import time
from typing import Any, NoReturn

from ._call import Call, Cancellation
from ._connection import EXIT_GRACE
from ._errors import RevaPluginError
from ._linereader import LONG_LINE, TIMEOUT, LineReader, Oversized, undecodable
from ._loopcalls import LoopCalls
from ._pending import Slot, idle_wakers, take_waker
from ._protocol import CANCEL, encode_request, loads

__all__ = ["Cancellation", "Client"]


class Client(LoopCalls):
    """Thread-safe, multiplexed calls over one socket.

    A lone caller reads its own reply (no thread hand-off). While another caller already reads,
    a reader thread takes the socket over and stays until no call has been in flight for a
    ``LineReader.TICK``. Every reply wakes its owner with one targeted wake-up (its eventfd
    waker), and woken owners pass the wake on one at a time (a baton) so a burst of replies
    makes one thread runnable, not sixteen. The client's lock is never held across a syscall
    (the reading's is, by whoever reads): a caller queues its request, and whoever finds no
    write in progress writes everything queued at once. A caller alone takes the reading before
    it writes, and fills its own reply where it reads it.
    """

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

    def invoke(self, call: Call, limit: float | None = None) -> Any:
        """Send a request and wait for its reply, reading the wire ourselves if nobody is;
        ``limit`` bounds the call's timeout (see :meth:`Call.bound`)."""
        method, cancellation = call.method, call.cancellation
        if cancellation is not None and cancellation.cancelled:
            raise call.cancelled(self.label)
        timeout, meta = call.bound(limit, self.label)
        slot = Slot()
        lock = self.lock
        read_lock = self.read_lock
        with lock:  # registered as _register does, inline: this is every call's path
            if self.closed is not None:
                raise self.closed
            pending = self.pending
            alone = not pending and not self.reading and not self.eof
            call_id = next(self.ids)
            if pending:
                self.overlapped = time.monotonic()
            pending[call_id] = slot
        deadline = time.monotonic() + timeout if timeout and timeout > 0 else None
        try:
            data = encode_request(call_id, method, call.params, meta)
        except RevaPluginError:
            with lock:
                self.pending.pop(call_id, None)
            raise
        # A caller alone takes the reading before it writes, so that nothing stands between its
        # write and its read: on a shared CPU the plugin, woken by the write, would run its
        # reply while this thread still did its bookkeeping. (Only alone: with no reply due to
        # anyone, the plugin cannot be stuck writing to a socket nobody reads while it does.)
        led = alone and read_lock.acquire(blocking=False)
        try:
            self.send(data, wait_for_exit=not led)
        except BaseException as exc:  # noqa: BLE001 - re-raised there, the reading let go
            self._unsent(call_id, exc, led)
        try:
            forget = None
            if cancellation is not None:
                forget = cancellation.on_cancel(lambda: self._cancel(call_id, method))
            if led:
                # a cancellation is seen between reads: read a tick at a time
                self._lead(call_id, slot, deadline, LineReader.TICK if forget else None)
        finally:
            if led:
                read_lock.release()
        if not slot.done:
            tick = LineReader.TICK if forget else None
            self._follow(call, timeout, call_id, slot, deadline, tick)
        if forget is not None:
            forget()
        if slot.waker is not None:
            idle_wakers.append(slot.waker)
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _unsent(self, call_id: int, exc: BaseException, led: bool) -> NoReturn:
        """The request could not be written: the call is dropped, and the caller learns how
        the process died. A write that fails waits for the exit to be recorded, but not while
        it holds the reading (``led``): the watcher reads what the process still sent first."""
        with self.lock:
            self.pending.pop(call_id, None)
        if not led:
            raise exc
        self.read_lock.release()
        if isinstance(exc, RevaPluginError):
            self.gone.wait(EXIT_GRACE)
            raise self.closed or exc from None
        raise exc

    def _follow(
        self,
        call: Call,
        timeout: float | None,
        call_id: int,
        slot: Slot,
        deadline: float | None,
        tick: float | None,
    ) -> None:
        """Until the slot is filled: lead when nobody reads (``tick``: a cancellation is seen
        between reads), else wait to be woken; at the deadline the call times out."""
        lock = self.lock
        read_lock = self.read_lock
        while not slot.done:
            with lock:
                lead = not self.reading and not self.eof and not slot.done
            if lead and read_lock.acquire(blocking=False):
                try:
                    self._lead(call_id, slot, deadline, tick)
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
                        slot.error = call.timed_out(self.label, timeout)
                if cancel:
                    self.notify(CANCEL, {"id": call_id})

    def _lead(
        self, call_id: int, slot: Slot, deadline: float | None, tick: float | None = None
    ) -> None:
        """Read (and hand out) replies until ours is in, EOF, the deadline, or (with ``tick``)
        a read that waited that long. A lone caller polls briefly before its read blocks."""
        reader = self.reader
        readline = reader.readline
        lock = self.lock
        while not slot.done:
            remaining = tick
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if tick is not None and tick < remaining:
                    remaining = tick
            try:
                got = readline(remaining, spin=True)
            except Oversized as exc:
                self._protocol_error(exc.head, f"message longer than {reader.max_line} bytes")
                continue
            if got is TIMEOUT:
                return
            if not got:
                self._at_eof()
                return
            line: bytes = got  # type: ignore[assignment]  # neither TIMEOUT nor EOF: a line
            if len(line) > LONG_LINE:
                self._dispatch(line)
                continue
            try:
                message = loads(line)
            except Exception as exc:  # noqa: BLE001 - the plugin's bytes: any failure is its fault
                self._protocol_error(line, undecodable(exc))
                continue
            # our own reply, the usual line: filled here as _fill fills the slot of a caller
            # that is not waiting (the leader), without handing it out (type(): a reply with
            # id true must not fill call 1)
            if type(message) is dict and "result" in message:
                reply_id = message.get("id")
                if type(reply_id) is int and reply_id == call_id:
                    with lock:
                        ours = self.pending.pop(call_id, None)
                        if ours is not None:
                            slot.result, slot.done = message["result"], True
                    if ours is not None:
                        return
            self._handle(line, message)

    def _read_one(self, timeout: float | None) -> bool | None:
        """Read and dispatch one line (a reader thread: it does not poll, which would only keep
        the GIL from the callers it reads for): True; None on timeout; False at EOF."""
        reader = self.reader
        try:
            got = reader.readline(timeout)
        except Oversized as exc:
            self._protocol_error(exc.head, f"message longer than {reader.max_line} bytes")
            return True
        if got is TIMEOUT:
            return None
        if not got:
            self._at_eof()
            return False
        assert isinstance(got, bytes)
        self._dispatch(got)
        return True

    def _at_eof(self) -> None:
        with self.lock:
            self.eof = True
        if self.on_eof is not None:
            self.on_eof()

    def _wait(self, slot: Slot, deadline: float | None) -> None:
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
                waker = slot.waker = take_waker()
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
