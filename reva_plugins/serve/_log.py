"""serve's own log and its access log, as revad's ``[log]`` table says: the level, console or
JSON lines, stderr or a file; every line with a timestamp.

A log line never blocks the serving loop: records go to a bounded queue, and one thread writes
them out. When the output is slower than the records (a full stderr pipe, a slow disk), the
queue fills and further records are dropped, counted, and the count logged once the writer
catches up.

The access log is a line per RPC, so what it costs is per-RPC cost: :func:`log_fields` hands the
writer the line's fields (no ``LogRecord`` made, nothing formatted on the loop) when the
record would only reach this queue anyway, and the writer takes what has queued up as one
batch, written with one write per output, then pauses briefly, so that under load a record
costs neither a wake-up of the writer nor a system call of its own.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import logging.handlers
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, NamedTuple

from .. import _config
from .._errors import ConfigError
from .._redact import redact

#: Records waiting for the writer thread; more are dropped (and counted).
QUEUE_SIZE = 10_000
#: Seconds a stop waits for the writer to get the queued records out.
STOP_TIMEOUT = 5.0
#: Seconds the writer pauses after a batch: what queues meanwhile is the next batch (a log line
#: is out within this of its record; under load a record costs no wake-up of the writer).
BATCH_PAUSE = 0.01
#: The most records one batch takes from the queue.
BATCH_RECORDS = 2048
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: Loggers the command line quiets at its default verbosity; a ``[log] level`` decides instead.
_QUIETED = ("reva_plugins.plugin", "reva_plugins.process")


#: The last second formatted: (the second, its date and time, its UTC offset); one writer
#: thread formats, and a line per RPC need not work out the local time zone each time.
_second: tuple[int, str, str] = (-1, "", "")


def _timestamp(record: logging.LogRecord) -> str:
    """``record``'s time in ISO 8601 with milliseconds and the local UTC offset."""
    global _second  # a cache
    created = record.created
    whole = int(created)
    cached = _second
    if cached[0] != whole:
        text = datetime.datetime.fromtimestamp(whole).astimezone().isoformat(timespec="seconds")
        cached = _second = (whole, text[:19], text[19:])
    return f"{cached[1]}.{int((created - whole) * 1000):03d}{cached[2]}"


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


class Records:
    """The bounded queue from the loggers to the writer: a put never waits, and wakes the
    writer only when it waits for records (under load it pauses between batches instead, and
    a record costs an append: no lock handed over, no system call)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: collections.deque[Any] = collections.deque()
        self._waiting = False
        self._wake = threading.Event()

    def put_nowait(self, item: Any) -> None:
        """Queue ``item``; :class:`queue.Full` when ``size`` are waiting."""
        if len(self.items) >= self.size:
            raise queue.Full
        self.items.append(item)
        if self._waiting:
            self._waiting = False
            self._wake.set()

    def put(self, item: Any, timeout: float) -> None:
        """Queue ``item``, waiting up to ``timeout`` seconds for room (then :class:`queue.Full`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.put_nowait(item)
                return
            except queue.Full:
                if time.monotonic() > deadline:
                    raise
                time.sleep(BATCH_PAUSE)

    def get(self) -> Any:
        """The next record, waiting for one."""
        return self.take(1)[0]

    def take(self, most: int) -> list[Any]:
        """The next records (up to ``most``), waiting for one if there is none."""
        items = self.items
        while not items:
            self._wake.clear()
            self._waiting = True
            if items:  # queued before the flag was up: nobody will wake us for it
                self._waiting = False
                break
            self._wake.wait()
        pop = items.popleft
        return [pop() for _ in range(min(most, len(items)))]


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread without ever waiting: a full queue drops the record
    and counts it."""

    queue: Records

    def __init__(self, records: Records) -> None:
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

    def enqueue_fields(self, fields: Fields) -> None:
        """Queue an access-log line's fields (the writer makes its record), or count it dropped."""
        try:
            self.queue.put_nowait(fields)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def take_dropped(self) -> int:
        """The records dropped since the last call."""
        with self._lock:
            count, self.dropped = self.dropped, 0
        return count


class Fields(NamedTuple):
    """An access-log line as queued: its logger, level, time and fields (``rpc`` on its record)."""

    logger: str
    level: int
    created: float
    fields: dict[str, Any]


def access_line(fields: dict[str, Any]) -> str:
    """The access log's message: ``key=value`` pairs."""
    return " ".join(f"{key}={value}" for key, value in fields.items())


#: A record's attributes as this Python's ``LogRecord`` sets them (made once: a line per RPC
#: need not look up the process, the thread and the caller's frame each time).
_TEMPLATE = vars(logging.LogRecord("", logging.INFO, __file__, 0, "", None, None))


def _record(item: Fields) -> logging.LogRecord:
    """The record :func:`log_fields` would have made through ``logging``, made by the writer."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    created = item.created
    record.__dict__.update(
        _TEMPLATE,
        name=item.logger,
        msg=access_line(item.fields),
        levelno=item.level,
        levelname=logging.getLevelName(item.level),
        created=created,
        msecs=int((created - int(created)) * 1000) + 0.0,
        relativeCreated=(created - _TEMPLATE["created"]) * 1000 + _TEMPLATE["relativeCreated"],
        rpc=item.fields,
    )
    return record


class _BatchedStream:
    """A handler's stream, written by the writer thread only: a batch's lines are collected
    and go out as one write (and one flush) when the batch is done."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        """Keep ``text`` for the batch's write."""
        self.parts.append(text)

    def flush(self) -> None:
        """Nothing: :meth:`commit` writes and flushes once per batch."""

    def commit(self) -> None:
        """Write what the batch collected, and flush."""
        if not self.parts:
            return
        text, self.parts = "".join(self.parts), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # an output gone: nothing left to tell it to
            pass


class _Writer:
    """The writer thread: the records queued, batch by batch, to the outputs, and a line for
    records dropped."""

    def __init__(
        self, records: Records, source: DroppingQueueHandler, *out: logging.Handler
    ) -> None:
        self.records = records
        self.source = source
        self.handlers = out
        self.streams: list[tuple[logging.StreamHandler[Any], _BatchedStream]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Batch the stream handlers' writes, and start the thread."""
        for handler in self.handlers:
            if isinstance(handler, logging.StreamHandler):
                batched = _BatchedStream(handler.stream)
                handler.stream = batched
                self.streams.append((handler, batched))
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        records = self.records
        while True:
            batch = records.take(BATCH_RECORDS)
            done = False
            for item in batch:
                if item is None:
                    done = True
                    continue
                self.handle(_record(item) if type(item) is Fields else item)
            self.commit()
            if done:
                return
            time.sleep(BATCH_PAUSE)

    def handle(self, record: logging.LogRecord) -> None:
        """Write ``record``, after the count of those dropped before it (if any)."""
        self.report_dropped()
        self._emit(record)

    def _emit(self, record: logging.LogRecord) -> None:
        for handler in self.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

    def commit(self) -> None:
        """Write out what the batch's records left in the batched streams."""
        for _, batched in self.streams:
            batched.commit()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Write what is queued and end the thread; an output stuck for ``timeout`` seconds (a
        pipe nobody reads) is left behind (a daemon thread) rather than hang the exit (False).
        The handlers get their own streams back."""
        thread = self._thread
        if thread is None:
            return True
        try:
            self.records.put(None, timeout=timeout)
        except queue.Full:
            return False
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        for handler, batched in self.streams:
            handler.stream = batched.stream
        self.streams = []
        return True

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
            self._emit(note)
            self.commit()


#: The queue handler of the configuration in force, if any (see :func:`log_fields`).
_direct: DroppingQueueHandler | None = None


def log_fields(logger: logging.Logger, level: int, fields: dict[str, Any]) -> None:
    """Log an access-log line: ``fields`` as ``key=value`` pairs, and as the record's ``rpc``
    (the JSON lines' fields). When the record would reach only the writer's queue (``serve``
    as configured: no handler or filter of anyone's on the way), the writer gets the fields
    and makes the record; otherwise it goes through ``logging`` as any record does."""
    handler = _direct
    if handler is not None and _only_to(logger, handler):
        handler.enqueue_fields(Fields(logger.name, level, time.time(), fields))
    else:
        logger.log(level, access_line(fields), extra={"rpc": fields})


def _only_to(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether ``logger``'s records reach ``handler`` and nothing else, unfiltered."""
    current: Any = logger
    while current is not None:
        if current.filters or current.disabled:
            return False
        if current.handlers:  # the end of the way: exactly ours, and no further
            return current.handlers == [handler] and not handler.filters and not current.propagate
        if not current.propagate:
            return False
        current = current.parent
    return False


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
    records = Records(QUEUE_SIZE)
    handler = DroppingQueueHandler(records)
    writer = _Writer(records, handler, *targets)
    root.handlers[:] = [handler]
    writer.start()
    global _direct  # the configuration in force
    _direct = handler

    def undo() -> None:
        global _direct
        if _direct is handler:
            _direct = None
        root.handlers[:] = previous[0]
        if writer.stop():  # writes what is queued first
            writer.report_dropped()
        root.setLevel(previous[1])
        for name, level in previous[2].items():
            logging.getLogger(name).setLevel(level)
        for target, original in zip(targets, originals, strict=True):
            target.setFormatter(original)
        if stream is not None:
            stream.close()

    return undo
