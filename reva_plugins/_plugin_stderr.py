"""A plugin's stderr in the core's log: its lines read (from the watcher's poll, or a thread of
their own without pidfds), its JSON log records re-emitted as records, everything escaped,
flood-limited, and the last lines kept for crash reports."""

from __future__ import annotations

import collections
import json
import logging
import os
import select
import subprocess
import time
from collections.abc import Callable
from typing import IO, Any

from . import _defaults, _protocol
from ._flood import LogFlood

STDERR_TAIL = 40
STDERR_TAIL_LINE = 2000  # characters of one line kept in the tail
STDERR_LINE_LIMIT = 1024 * 1024
LOG_RATE = _defaults.LOG_RATE
LOG_BURST = _defaults.LOG_BURST
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class StderrLog:
    """What one plugin process writes to stderr, logged on ``logger`` under ``prefix()`` (the
    plugin's marker, e.g. ``[userprovider pid 123]``)."""

    def __init__(self, logger: logging.Logger, prefix: Callable[[], str]) -> None:
        self._log = logger
        self._prefix = prefix
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._flood = LogFlood("lines from plugin", LOG_RATE, LOG_BURST)

    def tail(self) -> str:
        """The last lines the plugin wrote to stderr (logs of warning level and above included)."""
        return "\n".join(self._tail)

    def pump(self, proc: subprocess.Popen[bytes], exited: Callable[[], None]) -> bool:
        """Log ``proc``'s stderr lines until its exit (and up to a second after, while a
        grandchild may still hold the pipe), polling a pidfd and the pipe in this thread;
        ``exited()`` runs when the process is gone. False, reading nothing, without pidfds
        (then :meth:`read` must run in a thread of its own)."""
        stream = proc.stderr
        assert stream is not None
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            return False
        fd = stream.fileno()
        lines = _StderrLines(self.emit)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        exited_at: float | None = None
        try:
            while True:
                wait = None if exited_at is None else (exited_at + 1.0 - time.monotonic()) * 1000
                events = poller.poll(None if wait is None else max(0.0, wait))
                if not events:
                    break  # gone a second ago; whoever holds the pipe now is not the plugin
                for ready, _ in events:
                    if ready == pidfd:
                        poller.unregister(pidfd)
                        exited_at = time.monotonic()
                        exited()  # what it left behind may hold the pipe open
                        continue
                    data = os.read(fd, 65536)
                    if not data:
                        return True
                    lines.feed(data)
        except (OSError, ValueError):
            pass
        finally:
            lines.finish()
            os.close(pidfd)
            self._report_dropped(force=True)
        return True

    def read(self, stream: IO[bytes]) -> None:
        """Log the lines of ``stream`` until its end (blocking: a thread's job)."""
        lines = _StderrLines(self.emit)
        try:
            while data := os.read(stream.fileno(), 65536):
                lines.feed(data)
        except (OSError, ValueError):
            pass
        finally:
            lines.finish()
            self._report_dropped(force=True)

    def emit(self, text: str) -> None:
        """One stderr line: a JSON log record or plain text. Never blocks (the pipe must keep
        draining): past the rate limit lines are only counted, and the tail still kept."""
        if text.startswith(_protocol.LOG_LINE_START):
            if not self._flood.allow():
                return
            try:
                entry = json.loads(text)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                self._emit_record(entry)
                return
        elif not self._flood.allow():
            self._keep_tail(text)
            return
        self._report_dropped()
        self._keep_tail(text)
        text = escape(text)
        self._log.info(
            "%s %s", self._prefix(), text, extra={"plugin_stream": "stderr", "plugin_message": text}
        )

    def _emit_record(self, entry: dict[str, Any]) -> None:
        self._report_dropped()
        level = _LEVELS.get(str(entry.pop(_protocol.LOG_LEVEL, "info")).lower(), logging.INFO)
        message = escape(str(entry.pop(_protocol.LOG_MESSAGE, "")))
        exc_text = entry.pop(_protocol.LOG_EXCEPTION, None)
        extra = {
            k: escape(v) if isinstance(v, str) else v
            for k, v in entry.items()
            if k not in _RESERVED and not k.startswith(_protocol.LOG_MEMBER_PREFIX)
        }
        extra["plugin_logger"] = escape(str(entry.get(_protocol.LOG_MODULE, "")))
        extra["plugin_fields"] = dict(extra)
        if exc_text:
            # a traceback keeps its lines, each escaped and indented under the plugin's marker
            lines = str(exc_text).splitlines()
            message = "\n    | ".join([message, *(escape(line) for line in lines)])
        if level >= logging.WARNING:
            self._keep_tail(message)
        extra["plugin_message"] = message
        self._log.log(level, "%s %s", self._prefix(), message, extra=extra)

    def _keep_tail(self, text: str) -> None:
        if len(text) > STDERR_TAIL_LINE:
            text = text[:STDERR_TAIL_LINE] + " [truncated]"
        self._tail.append(escape(text, keep_newlines=True))

    def _report_dropped(self, *, force: bool = False) -> None:
        self._flood.report(self._log, self._prefix(), force=force)


_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09},
    **{c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
}
_ESCAPES_KEEP_NEWLINES = {**_ESCAPES, ord("\n"): "\n"}


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` from a plugin, safe to show: control characters (ESC, CR, NUL, C1...) but tab,
    and line and bidi separators escaped, so it can neither forge a line nor drive the
    terminal; newlines too unless ``keep_newlines``."""
    return text.translate(_ESCAPES_KEEP_NEWLINES if keep_newlines else _ESCAPES)


class _StderrLines:
    """Bytes from a plugin's stderr as lines, each cut at ``STDERR_LINE_LIMIT`` bytes (marked
    ``[truncated]``, the rest of it dropped), as ``readline(STDERR_LINE_LIMIT)`` would."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.buf = bytearray()
        self.skipping = False

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            end = buf.find(b"\n")
            if self.skipping:
                if end < 0:
                    buf.clear()
                    return
                del buf[: end + 1]
                self.skipping = False
                continue
            if 0 <= end < STDERR_LINE_LIMIT:
                self._line(bytes(buf[: end + 1]))
                del buf[: end + 1]
            elif end >= STDERR_LINE_LIMIT or len(buf) >= STDERR_LINE_LIMIT:
                self._line(bytes(buf[:STDERR_LINE_LIMIT]) + b" [truncated]")
                del buf[:STDERR_LINE_LIMIT]
                self.skipping = True
            else:
                return

    def finish(self) -> None:
        """The end of the stream: an unterminated last line is shown as cut."""
        if self.buf and not self.skipping:
            self._line(bytes(self.buf) + b" [truncated]")
        self.buf.clear()

    def _line(self, line: bytes) -> None:
        self.emit(line.decode("utf-8", "replace").rstrip("\r\n"))
