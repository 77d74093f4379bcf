"""The core's reader of one plugin wire: whole lines off the socket, bounded per line, with a
timeout per read or without blocking (an event loop's read), and the poll before a read blocks
(``_poll.Spinner``); a line's message decoded, whatever the plugin sent."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final

from . import _poll
from ._protocol import loads

#: what :meth:`LineReader.readline` returns when no line came in time
TIMEOUT: Final = object()
#: a line longer than this is a long one: decoded only when a call in flight may be its (its id
#: near either end), as it is the decoding that takes long, and then where no event loop waits
#: on it (by a worker thread, when the loop read it) and letting other threads run meanwhile
LONG_LINE = 1 << 16
#: bytes an event loop reads per wake-up at most (a long line must not hold the loop either)
LOOP_READ_BYTES = 1 << 20


def decode(line: bytes, loads: Callable[[bytes], Any] = loads) -> tuple[Any, str]:
    """A line's message, or ``None`` and why it is not one. Nothing escapes: a plugin controls
    these bytes, and whatever the decoder raises on them must become a protocol error."""
    try:
        return loads(line), ""
    except Exception as exc:  # noqa: BLE001 - every decode failure is the plugin's protocol error
        return None, undecodable(exc)


def undecodable(exc: Exception) -> str:
    """Why a line the decoder refused is no message."""
    return f"invalid JSON from plugin: {exc or type(exc).__name__}"


class Oversized(Exception):
    """A line past the size limit: its head, for the log; the reader skips to its end."""

    def __init__(self, head: bytes) -> None:
        super().__init__("oversized line")
        self.head = head


def shown(value: object) -> object:
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
        """A whole line; ``b""`` at EOF; ``TIMEOUT``; raises ``_Oversized`` past the limit.
        ``spin``: poll briefly before blocking (``_poll.Spinner``); ``nowait``: never block, a read
        that would is ``TIMEOUT`` (an event loop's read)."""
        buf = self.buf
        flags = socket.MSG_DONTWAIT if nowait else 0
        # one deadline for the whole line (set at its first read): a peer that keeps sending (an
        # endless line, a byte at a time) must not push it back with every read
        deadline = None
        # an event loop reads a long line in pieces, other callbacks running in between
        budget = LOOP_READ_BYTES
        while True:
            end = buf.find(b"\n", self.scanned)
            if end >= 0:
                if end < LONG_LINE:
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
                raise Oversized(head)
            self.scanned = len(buf)
            if nowait:
                if budget <= 0:
                    return TIMEOUT
            elif timeout is not None:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                elif now >= deadline:
                    return TIMEOUT
            if spin:
                self.spinner.spin()
            while True:
                try:
                    size = self.sock.recv_into(self.chunk, 0, flags)
                    break
                except BlockingIOError:
                    if nowait or (deadline is not None and time.monotonic() >= deadline):
                        return TIMEOUT
                except OSError:
                    size = 0
                    break
            if not size:
                return b""
            if not buf and not self.skipping and self.chunk.find(b"\n", 0, size) == size - 1:
                return bytes(self.view[:size])  # one whole line, the usual reply: no buffering
            buf += self.view[:size]
            budget -= size
