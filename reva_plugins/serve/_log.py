"""serve's own log and its access log, as revad's ``[log]`` table says: the level, console or
JSON lines, stderr or a file; every line with a timestamp.

A log line never blocks the serving loop: records go to a bounded queue, and one thread writes
them out. When the output is slower than the records (a full stderr pipe, a slow disk), the
queue fills and further records are dropped, counted, and the count logged once the writer
catches up.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import queue
import stat
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from .. import _config
from .._errors import ConfigError
from .._redact import redact

#: Records waiting for the writer thread; more are dropped (and counted).
QUEUE_SIZE = 10_000
#: Seconds a stop waits for the writer to get the queued records out.
STOP_TIMEOUT = 5.0
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: Loggers the command line quiets at its default verbosity; a ``[log] level`` decides instead.
_QUIETED = ("reva_plugins.plugin", "reva_plugins.process")


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created).astimezone()
    return moment.isoformat(timespec="milliseconds")


class ConsoleFormatter(logging.Formatter):
    """``TIME reva-plugins: MESSAGE`` (``TIME LOGGER: MESSAGE`` with ``names``), redacted."""

    def __init__(self, *, names: bool = False) -> None:
        super().__init__("%(name)s: %(message)s" if names else "reva-plugins: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """One line: the timestamp, then the message (and its traceback), redacted."""
        return f"{_timestamp(record)} {redact(super().format(record))}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message`` and, for the
    access log, its fields (``service``, ``method``, ``status`` …), redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["error"] = redact(record.exc_text)
        fields = getattr(record, "rpc", None)
        if isinstance(fields, dict):
            entry.update({key: value for key, value in fields.items() if key not in entry})
        return json.dumps(entry, default=str)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread without ever waiting: a full queue drops the record
    and counts it."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self._lock = threading.Lock()
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue ``record``, or count it dropped when the queue is full."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def take_dropped(self) -> int:
        """The records dropped since the last call."""
        with self._lock:
            count, self.dropped = self.dropped, 0
        return count


class _Writer(logging.handlers.QueueListener):
    """The writer thread: each record to the output, and a line for records dropped."""

    def __init__(self, records: queue.Queue[Any], source: DroppingQueueHandler, *out: Any) -> None:
        super().__init__(records, *out, respect_handler_level=True)
        self.records = records
        self.source = source

    def handle(self, record: logging.LogRecord) -> None:
        """Write ``record``, after the count of those dropped before it (if any)."""
        self.report_dropped()
        super().handle(record)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Write what is queued and end the thread; an output stuck for ``timeout`` seconds (a
        pipe nobody reads) is left behind (a daemon thread) rather than hang the exit."""
        thread = self._thread
        if thread is None:
            return
        try:
            self.records.put(self._sentinel, timeout=timeout)  # type: ignore[attr-defined]
        except queue.Full:
            return
        thread.join(timeout)
        self._thread = None

    def report_dropped(self) -> None:
        """One warning with the records dropped since the last report, if any were."""
        dropped = self.source.take_dropped()
        if dropped:
            note = logging.LogRecord(
                "reva_plugins.serve",
                logging.WARNING,
                __file__,
                0,
                "log: %d lines dropped (the log output could not keep up)",
                (dropped,),
                None,
            )
            super().handle(note)


def _open_output(settings: _config.LogSettings, config: str) -> IO[str] | None:
    """The file ``output`` names, opened for appending (created 0o640); never a FIFO, a
    device or a folder. None for stderr/stdout."""
    path = settings.output
    if path is None:
        return None
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {exc.strerror}", file=config, key="log.output"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path} is not a regular file", file=config, key="log.output")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace", buffering=1)
    except BaseException:
        os.close(fd)
        raise


def configure(settings: _config.LogSettings, verbosity: int, config: str) -> Callable[[], None]:
    """Apply ``settings`` to the ``reva_plugins`` loggers (``verbosity``, the command line's
    ``-v``/``-q``, wins over ``level``); returns what undoes it once every record is out."""
    root = logging.getLogger("reva_plugins")
    previous = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in _QUIETED})
    stream = _open_output(settings, config)
    if stream is not None:
        targets: list[logging.Handler] = [logging.StreamHandler(stream)]
    elif settings.stream == "stdout":
        targets = [logging.StreamHandler(sys.stdout)]
    else:  # the command line's own stderr handler (it clears the build progress line)
        targets = list(root.handlers) or [logging.StreamHandler(sys.stderr)]
    formatter: logging.Formatter = (
        JsonFormatter() if settings.mode == "json" else ConsoleFormatter(names=verbosity > 0)
    )
    originals = [target.formatter for target in targets]
    for target in targets:
        target.setFormatter(formatter)
    if verbosity == 0 and settings.level is not None:
        root.setLevel(_LEVELS[settings.level])
        for name in _QUIETED:
            logging.getLogger(name).setLevel(logging.NOTSET)
    records: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
    handler = DroppingQueueHandler(records)
    writer = _Writer(records, handler, *targets)
    root.handlers[:] = [handler]
    writer.start()

    def undo() -> None:
        root.handlers[:] = previous[0]
        writer.stop()  # writes what is queued first
        writer.report_dropped()
        root.setLevel(previous[1])
        for name, level in previous[2].items():
            logging.getLogger(name).setLevel(level)
        for target, original in zip(targets, originals, strict=True):
            target.setFormatter(original)
        if stream is not None:
            stream.close()

    return undo
