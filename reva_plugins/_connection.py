"""One plugin wire as the core's client holds it, whoever calls: the socket and its reader,
the write queue (a caller queues its request; whoever finds no write in progress writes all that
is queued at once, and no lock is held across a syscall), the calls in flight (their ids and
slots, replies handed to their owners, the baton), what comes in handed out (replies matched by
id, long lines only when a call may await them, the plugin's faults logged within a limit), the
handshake's read, and the end. The calls themselves are :mod:`._client`'s (threads) and
:mod:`._loopcalls`' (asyncio)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from ._errors import CallCancelled, ProtocolError, RevaPluginError
from ._flood import LogFlood
from ._linereader import LONG_LINE, TIMEOUT, LineReader, Oversized, decode, shown, undecodable
from ._pending import Slot, Waker, settle_from_anywhere
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

#: how long a failed write waits for the process's exit to be recorded (see ``Connection.send``)
EXIT_GRACE = 5.0


class Connection:
    """What every call over one plugin wire shares (see the module's docstring)."""

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
        self.pending: dict[int, Slot] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.eof = False
        self.closed: RevaPluginError | None = None
        self.gone = threading.Event()  # set once ``closed`` is
        self.outbox: list[bytes] = []
        self.flushing = False
        self.ready: collections.deque[Slot] = collections.deque()
        self.baton = False  # a woken owner is yet to pass the wake-up on
        self.reading = False  # a reader thread runs (or is about to)
        self.overlapped = 0.0  # when a call last started while another was in flight
        #: what the plugin gets wrong on the wire is logged within this limit
        self.flood = LogFlood("log lines about its wire messages")

    # -- sending ---------------------------------------------------------------------------

    def send(self, data: bytes, *, wait_for_exit: bool = True) -> None:
        """Queue one message and write the queue unless a write is in progress (its writer
        writes this too); a broken wire raises the error the process was closed with (see
        :meth:`_flush` for ``wait_for_exit``)."""
        lock = self.lock
        with lock:
            if self.flushing:
                self.outbox.append(data)
                return
            self.flushing = True  # nothing is queued (a writer empties the queue)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._broken(exc, wait_for_exit)
        with lock:
            if not self.outbox:
                self.flushing = False
                return
        self._flush(wait_for_exit)  # what others queued meanwhile

    def _flush(self, wait_for_exit: bool = True) -> None:
        """Write the queue until it is empty (``flushing`` set by the caller). A write that
        fails waits (``wait_for_exit``) up to ``EXIT_GRACE`` for the process's exit to be
        recorded, so the caller learns how it died."""
        sendall = self.sock.sendall
        while True:
            data = self._take_queue()
            if data is None:
                return
            try:
                sendall(data)
            except OSError as exc:
                self._broken(exc, wait_for_exit)

    def _broken(self, exc: OSError, wait_for_exit: bool) -> NoReturn:
        """A write failed: the queue is dropped; raise how the process died (see
        :meth:`_flush`)."""
        with self.lock:
            self.flushing = False
            self.outbox = []
        # The wire breaks because the process is dying: its watcher records the exit a moment
        # later, and the caller must learn that (PluginCrashed, exit code, stderr), not errno.
        if wait_for_exit:
            self.gone.wait(EXIT_GRACE)
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

    def _flush_nowait(self, data: bytes | None = None) -> OSError | None:
        """Write ``data`` (not queued), then the queue (``flushing`` set by the caller) as far
        as the socket takes it without blocking; a thread writes the rest. Returns the error of
        a broken wire (the queue is dropped then, as :meth:`_flush` drops it)."""
        lock = self.lock
        send = self.sock.send
        while True:
            if data is None:
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
            data = None

    def _register(self, slot: Slot) -> int:
        """A new call's id, its slot pending (call with ``self.lock`` held); raises the error
        the process was closed with."""
        if self.closed is not None:
            raise self.closed
        call_id = next(self.ids)
        if self.pending:
            self.overlapped = time.monotonic()
        self.pending[call_id] = slot
        return call_id

    def _cancel(self, call_id: int, method: str) -> None:
        """The caller's :class:`Cancellation` fired: fail the call now, cancel it in the plugin."""
        error = CallCancelled(f"{method} was cancelled", plugin=self.label)
        if self._fill(call_id, error=error):
            self.notify(CANCEL, {"id": call_id})

    def _pass_baton(self) -> Waker | None:
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
            settle_from_anywhere(slot)
        if following is not None:
            following.wake()
        return True

    # -- incoming messages -----------------------------------------------------------------

    def _dispatch(self, line: bytes) -> None:
        """Hand out what one line says (a long line only when a call in flight may await it,
        decoded letting other threads run meanwhile)."""
        if len(line) <= LONG_LINE:
            try:  # decode()'s work, inline: this is every call's path
                message = loads(line)
            except Exception as exc:  # noqa: BLE001 - the plugin's bytes: any failure is its fault
                self._protocol_error(line, undecodable(exc))
                return
            self._handle(line, message)
        elif self._awaited(line):
            self._handle(line, *decode(line, loads_yielding))

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

    def _handle(self, line: bytes, message: Any, problem: str = "") -> None:
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
            log.debug("%s: notification %.200r ignored", self.label, shown(message["method"]))
            return
        else:
            error = ProtocolError("reply has neither result nor error", plugin=self.label)
            found = self._fill(call_id, error=error)
            self._fault(
                logging.ERROR,
                "%s: protocol error: reply %.200r has neither result nor error",
                shown(call_id),
            )
        if not found and call_id != 0:  # id 0 answers $/shutdown, which nobody waits for
            self._fault(
                logging.WARNING, "%s: reply for unknown call id %.200r dropped", shown(call_id)
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
            except Oversized as exc:
                head = exc.head.decode("utf-8", "replace")[:2000]
                return None, head, f"message longer than {self.reader.max_line} bytes"
            if line is TIMEOUT:
                return None, "", ""
            assert isinstance(line, bytes)
            if not line:
                self.eof = True
                return None, "", ""
            instead = line.decode("utf-8", "replace").rstrip()[:2000]
            message, problem = decode(line)
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
                except Oversized:
                    continue
                if line is TIMEOUT or not line:
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
                    settle_from_anywhere(slot)
        self.flood.report(log, self.label, force=True)
