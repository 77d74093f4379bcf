"""reva plugin bootstrap: runs inside a plugin's venv as ``<python> -I _bootstrap.py '<json>'``.

Every name, code, limit and key the core also knows comes from ``_wire.py``, loaded by path from
this file's folder (``-I`` puts no folder on ``sys.path``, and the plugin's venv holds nothing of
the core); this file repeats none of them. The poll before a read is ``_poll.py``'s (the core's
own), loaded the same way at the first read. Standard library only, and only what a call needs
at start. The core's wire is a socket passed as an extra fd (its number is ``wire_fd`` in the
JSON argument); stdin is /dev/null and stdout is the stderr pipe from the first byte the
interpreter runs, so nothing (a ``.pth`` file, a plugin, a C extension) that prints can corrupt
the protocol. Before the plugin is imported fd 0/1 and ``sys.stdin``/``sys.stdout`` are pointed
at /dev/null and stderr once more, whatever started us.
"""

from __future__ import annotations

import os
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any, NoReturn


def _load(name: str) -> ModuleType:
    """A module of the core this file needs (``_wire``, ``_poll``): the core's own when the core
    imports this file, else the file beside it, loaded by path (through the bytecode cache when
    it is writable)."""
    if __package__:
        from . import _poll, _sandbox, _wire

        return {"_poll": _poll, "_sandbox": _sandbox}.get(name, _wire)
    # This script's own loader is a SourceFileLoader already: reusing its type spares importing
    # importlib.machinery (up to 0.2 ms of every start).
    loader_type: Any = type(globals().get("__loader__"))
    if loader_type.__name__ != "SourceFileLoader":  # pragma: no cover - run some other way
        from importlib.machinery import SourceFileLoader as loader_type

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    module = type(sys)(f"_reva_plugins{name}")
    module.__file__ = path
    loader_type(module.__name__, path).exec_module(module)
    return module


if TYPE_CHECKING:
    from . import _poll
    from . import _wire as wire
else:
    wire = _load("_wire")
PARSE_ERROR: int = wire.PARSE_ERROR
INVALID_REQUEST: int = wire.INVALID_REQUEST
METHOD_NOT_FOUND: int = wire.METHOD_NOT_FOUND
INVALID_PARAMS: int = wire.INVALID_PARAMS
INTERNAL_ERROR: int = wire.INTERNAL_ERROR
APPLICATION_ERROR: int = wire.APPLICATION_ERROR
CONTROL_PREFIX: str = wire.CONTROL_PREFIX
CONFIGURE: str = wire.CONFIGURE
JSONRPC: str = wire.JSONRPC_VERSION

INLINE_BELOW = 0.001  # seconds: calls quicker than this (on average) run on the reader
#: seconds: a quick call running longer than this on the reader is left to it as a worker's,
#: and another thread takes the reading over (so one call that turns slow stalls no other)
RELIEVE_AFTER = 0.005
#: ticks of RELIEVE_AFTER with no quick call running before the watch sleeps until the next one
WATCH_IDLE_TICKS = 200
_clock = time.perf_counter
WIRE_FD = -1  # the private protocol fd, once taken (fault-injection tests write to it)


class _ScanContext:
    """What ``_json.make_scanner`` reads off a decoder (as ``json.JSONDecoder()`` sets it)."""

    strict = True
    object_pairs_hook = None
    memo: dict[str, str]
    parse_int: Callable[[str], int]
    object_hook: Callable[[dict[str, Any]], object] | None

    def __init__(self, *, short: bool = False, yielding: bool = False) -> None:
        """``short``: for a text too short to hold an integer past a double (the C parser's
        own ``int``); ``yielding``: a Python call per object, where another thread may take
        the GIL (a long text decoded by a worker must not hold the event loop up throughout)."""
        self.memo = {}
        self.parse_int = int if short else _finite_int
        self.object_hook = _same if yielding else None

    @staticmethod
    def parse_constant(name: str) -> float:
        return _refuse_constant(name)

    @staticmethod
    def parse_float(text: str) -> float:
        return _finite_float(text)


def _same(obj: dict[str, Any]) -> object:
    return obj


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400 would become Infinity
        raise ValueError(f"number {text[:40]} is out of range (not valid JSON)")
    return value


#: the largest integer a double holds (an integer past it would overflow the other side's double)
_DOUBLE_MAX = int(sys.float_info.max)


#: a text shorter than this holds no integer past a double
_SHORT = 309


def _finite_int(text: str) -> int:
    if len(text) < _SHORT:  # below 10**308: within a double
        return int(text)
    if len(text) > 310 or not -_DOUBLE_MAX <= (value := int(text)) <= _DOUBLE_MAX:
        raise ValueError(f"number {text[:40]}... is out of range (not valid JSON)")
    return value


def _refuse_surrogates(text: str, obj: object) -> object:
    """``obj`` if no string in it holds a lone surrogate (only a ``\\udXXX`` escape in ``text``
    makes one): such a string cannot be encoded as UTF-8, so nothing could print or send it on."""
    if "\\u" not in text or ("\\ud" not in text and "\\uD" not in text):  # one scan, mostly
        return obj
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("lone surrogate escape in a string (not UTF-8)") from None
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
    return obj


def _codec() -> tuple[
    Callable[[object], str], Callable[[bytes | str], Any], Callable[[bytes | str], Any]
]:
    """Compact, strict JSON straight through the ``_json`` C accelerator: twice as fast per
    message as ``json.dumps``/``json.loads``, and without importing ``json`` (and ``re``) at
    start-up.

    Both ways refuse ``NaN``/``Infinity`` (not JSON: the other side, or ``call``'s output,
    could not parse them; numbers such as ``1e400`` included) and strings that are not UTF-8
    (lone surrogates). Decoding raises ``ValueError`` and nothing else for any bad input
    (invalid UTF-8, nesting too deep for the parser included), so a reader needs one handler.
    """
    try:
        import _json
    except ImportError:  # pragma: no cover - interpreters without the accelerator
        import json

        encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

        def fallback(data: bytes | str) -> Any:
            try:
                text = data.decode("utf-8") if isinstance(data, bytes) else data
                obj = json.loads(
                    text,
                    parse_constant=_refuse_constant,
                    parse_float=_finite_float,
                    parse_int=_finite_int,
                )
                return _refuse_surrogates(text, obj)
            except RecursionError:
                raise ValueError("JSON nested too deeply") from None

        return encoder.encode, fallback, fallback

    def default(obj: object) -> object:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    iterencode = _json.make_encoder(
        None, default, _json.encode_basestring, None, ":", ",", False, False, False
    )
    short = _json.make_scanner(_ScanContext(short=True))  # type: ignore[arg-type]
    checked = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    yielding = _json.make_scanner(_ScanContext(yielding=True))  # type: ignore[arg-type]

    def encode(obj: object) -> str:
        return "".join(iterencode(obj, 0))

    def decode(data: bytes | str, scan: Callable[[str, int], Any] | None = None) -> Any:
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            if scan is None:
                scan = short if len(text) < _SHORT else checked
            try:
                obj, end = scan(text, 0)
            except (StopIteration, SystemError):
                # SystemError: until json.decoder is imported, the C scanner fails to raise
                # its JSONDecodeError (e.g. for '{x'); json.loads below names the error
                obj, end = None, -1
            if end < 0 or (end != len(text) and text[end:].strip()):
                import json

                # raises the precise error (or copes with leading space)
                obj = json.loads(
                    text,
                    parse_constant=_refuse_constant,
                    parse_float=_finite_float,
                    parse_int=_finite_int,
                )
            return _refuse_surrogates(text, obj)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None

    def decode_yielding(data: bytes | str) -> Any:
        return decode(data, yielding)

    return encode, decode, decode_yielding


#: ``loads_yielding``: ``loads`` for a long line decoded off an event loop's thread
dumps, loads, loads_yielding = _codec()
_dumps, _loads = dumps, loads


class CallContext:
    """What a plugin method that accepts ``context`` receives: caller meta and cancellation."""

    __slots__ = ("cancelled", "id", "meta")

    def __init__(self, call_id: object, meta: dict[str, object]) -> None:
        self.id = call_id
        self.meta = meta
        self.cancelled = threading.Event()

    @property
    def deadline(self) -> float | None:
        """Seconds since the epoch by which the caller wants an answer, if it said."""
        value = self.meta.get(wire.META_DEADLINE)
        return float(value) if isinstance(value, (int, float)) else None


class LineChannel:
    """The plugin's end of the wire: line-delimited JSON over the private fd.

    The reader takes lines out of whatever one ``read`` returned (several requests arrive
    together under load), and a batch of replies goes out with one ``write``; writes are whole
    and serialised by a lock (pool threads write their own replies).
    """

    CHUNK = 16384  # a read takes up to ~160 requests; each KiB stays in an idle plugin

    def __init__(self, fd: int, max_line: int) -> None:
        self.fd = fd
        self.max_line = max_line
        self.lock = threading.Lock()
        self.buf = bytearray()
        self.pos = 0  # where the next line starts
        self.scanned = 0  # no newline before this
        self.skipping = False  # inside an oversized line: drop up to its newline
        self.oversized = False  # one oversized line to report
        self.chunk: bytearray | None = None
        self.view = memoryview(b"")
        self.spinner: _poll.Spinner | None = None  # made at the first read

    def encode(self, message: dict[str, object], method: object = None) -> bytes:
        """One message as a line; one that cannot be encoded becomes an error reply instead
        (``method`` names the call in it)."""
        try:
            return _dumps(message).encode("utf-8") + b"\n"
        except Exception as exc:  # a result's own types (a dict subclass) may raise anything
            what = "result" if "result" in message else "error"
            text = _text_of(exc) or type(exc).__name__
            reason = f"{method}: {what} is not valid JSON: {text}" if method else text
            # the reason may quote the offending text (a lone surrogate): keep it encodable
            reason = reason.encode("utf-8", "replace").decode("utf-8")[:2000]
            return _error_line(message.get("id"), INTERNAL_ERROR, reason)

    def send(self, message: dict[str, object], method: object = None) -> None:
        """Write one message (see ``encode``)."""
        self.write(self.encode(message, method))

    def write(self, data: bytes) -> None:
        """Write whole lines, all of them."""
        view = memoryview(data)
        with self.lock:
            while view:
                view = view[os.write(self.fd, view) :]

    def take(self) -> bytes | None:
        """The next buffered line without blocking: ``b""`` when none is buffered; None for a
        line over the size limit (reported once)."""
        if self.oversized:
            self.oversized = False
            return None
        buf, pos = self.buf, self.pos
        end = buf.find(b"\n", self.scanned if self.scanned > pos else pos)
        if end < 0:
            self.scanned = len(buf)
            return b""
        self.pos = self.scanned = end + 1
        if end - pos > self.max_line:
            return None
        return bytes(buf[pos : end + 1])

    def fill(self) -> bool:
        """Block for more bytes (all that are there, up to a chunk); False at EOF."""
        chunk = self.chunk
        if chunk is None:
            # one buffer for every read: a fresh 256 KiB bytes object per read would cost an
            # mmap, an mremap, a munmap and page faults each time
            chunk = self.chunk = bytearray(self.CHUNK)
            self.view = memoryview(chunk)
        spinner = self.spinner
        if spinner is None:
            # loaded now, not at start: the first read comes after the handshake is out
            spinner = self.spinner = _load("_poll").Spinner(self.fd)
        spinner.spin()
        try:
            size = os.readv(self.fd, [chunk])
        except OSError:
            size = 0
        if not size:
            return False
        buf = self.buf
        if self.pos:
            del buf[: self.pos]
            self.scanned -= self.pos
            self.pos = 0
        data = self.view[:size]
        if self.skipping:
            end = chunk.find(b"\n", 0, size)
            if end < 0:
                return True
            self.skipping = False
            data = data[end + 1 :]
        buf += data
        if len(buf) > self.max_line and buf.find(b"\n", self.scanned) < 0:
            buf.clear()
            self.scanned = 0
            self.skipping = self.oversized = True
        return True

    def read(self) -> bytes | None:
        """The next line, blocking (b"" at EOF); None for a line over the size limit."""
        while True:
            line = self.take()
            if line != b"":
                return line
            if not self.fill():
                return b""


def _error_line(call_id: object, code: int, message: str) -> bytes:
    if not isinstance(call_id, (int, str)) or isinstance(call_id, bool):
        call_id = None  # an id the core never sends; keeps this line encodable
    return (_dumps(_error(call_id, code, message)) + "\n").encode("utf-8")


def _error(call_id: object, code: int, message: str, data: object = None) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": JSONRPC, "id": call_id, "error": error}


def _exception_error(call_id: object, exc: BaseException) -> dict[str, object]:
    """The error reply for what a call raised. The exception is the plugin's: its ``__str__``
    may raise or return a non-string, its class may lack what ``traceback`` reads; each part
    falls back on its own, so whatever was raised is answered and never kills the plugin."""
    type_name = _best_effort(lambda: str(type(exc).__name__), "Exception")
    tb = _best_effort(lambda: _format_traceback(exc), "")
    message = _text_of(exc) or type_name
    limit = _best_effort(lambda: _limit_hit(exc), "")
    if limit:
        message = f"plugin exceeded {limit}: {message}"
    data: wire.ErrorData = {"type": type_name, "traceback": tb}
    return _error(call_id, APPLICATION_ERROR, message, data)


def _text_of(exc: BaseException) -> str:
    """``str(exc)``, or "" when it fails (a plugin's ``__str__`` may raise or return None)."""
    return _best_effort(lambda: str(exc), "")


def _format_traceback(exc: BaseException) -> str:
    import traceback

    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # the exception's own text is what failed: leave it out
        return "".join(traceback.format_tb(exc.__traceback__))


def _best_effort(make: Callable[[], str], fallback: str) -> str:
    """``make()`` if it returns a string, else ``fallback``."""
    try:
        text = make()
    except Exception:  # a plugin's exception may raise anything here
        return fallback
    return text if isinstance(text, str) else fallback


def _guard_stdio(wire: int) -> int:
    """Keep the wire fd from the plugin's children and point fds 0/1 at /dev/null and stderr
    (the core already does at spawn; this holds whatever started us); return the wire fd."""
    os.set_inheritable(wire, False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(
        1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
    )
    sys.__stdout__ = sys.stdout  # type: ignore[misc]
    sys.__stdin__ = sys.stdin  # type: ignore[misc]
    return wire


def _negotiate() -> int:
    offered = os.environ.get(wire.VERSIONS_ENV, "")
    try:
        versions = {int(v) for v in offered.split(",") if v.strip()}
    except ValueError:
        versions = set()
    common = versions.intersection(wire.PROTOCOL_VERSIONS)
    if not common:
        sys.stderr.write(
            f"reva plugin bootstrap: protocol version mismatch: the core offers {offered!r}, "
            f"this bootstrap speaks {','.join(map(str, wire.PROTOCOL_VERSIONS))}\n"
        )
        raise SystemExit(1)
    return max(common)


class _LoggingHook:
    """Installs the JSON-lines log handler when (and only if) the plugin imports ``logging``:
    importing it up front would cost every plugin start several milliseconds."""

    def __init__(self, level: str) -> None:
        self.level = level

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "logging":
            return None
        sys.meta_path.remove(self)  # type: ignore[arg-type]
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)  # type: ignore[arg-type]
        loader = getattr(spec, "loader", None)
        if loader is None:
            return spec
        exec_module = loader.exec_module
        level = self.level

        def exec_and_install(module: object) -> None:
            exec_module(module)
            _install_logging(level)

        loader.exec_module = exec_and_install
        return spec


def _hook_logging(level: str) -> None:
    if "logging" in sys.modules:
        _install_logging(level)
    else:
        sys.meta_path.insert(0, _LoggingHook(level))  # type: ignore[arg-type]


def _install_logging(level: str) -> None:
    import logging

    class JSONLineHandler(logging.Handler):
        reserved = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

        def emit(self, record: logging.LogRecord) -> None:
            try:
                entry: dict[str, object] = {
                    wire.LOG_LEVEL: record.levelname.lower(),
                    wire.LOG_MESSAGE: record.getMessage(),
                    wire.LOG_MODULE: record.name,
                    wire.LOG_TIMESTAMP: record.created,
                }
                if record.exc_info:
                    entry[wire.LOG_EXCEPTION] = logging.Formatter().formatException(record.exc_info)
                for key, value in vars(record).items():
                    if key not in self.reserved:
                        entry[key] = (
                            value if isinstance(value, (str, int, float, bool)) else repr(value)
                        )
                sys.stderr.write(_dumps(entry) + "\n")
                sys.stderr.flush()
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    root.handlers[:] = [JSONLineHandler()]
    root.setLevel(level.upper())


def _load_entry_point(spec: wire.BootstrapInput) -> tuple[object, str, str, str]:
    """The plugin object and its entry point name, distribution and version."""
    value = spec.get("value")
    name = str(spec.get("name") or "")
    dist = str(spec.get("distribution") or "")
    version = str(spec.get("version") or "")
    if not value:
        from importlib.metadata import entry_points

        group = str(spec["group"])
        found = [ep for ep in entry_points(group=group) if not name or ep.name == name]
        if len(found) != 1:
            names = ", ".join(sorted(ep.name for ep in entry_points(group=group))) or "none"
            raise SystemExit(
                f"reva plugin bootstrap: cannot choose an entry point {name!r} in {group} "
                f"(found: {names})"
            )
        ep = found[0]
        value, name = ep.value, ep.name
        if ep.dist is not None:
            dist, version = ep.dist.name, ep.dist.version
    module_name, _, attrs = str(value).partition(":")
    module_name = module_name.strip()
    __import__(module_name)  # importlib.import_module would import the importlib package
    obj: object = sys.modules[module_name]
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    if callable(obj):
        obj = obj()
    return obj, name, dist, version


def _accepts_context(func: object) -> bool:
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    if code is None:
        return False
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return "context" in names


class Plugin:
    """A leader/follower pool: the thread that reads a call runs it, after handing the reading
    on to an idle thread. At most ``max_concurrency`` calls run at once; one more thread keeps
    reading, so ``$/cancel`` and ``$/ping`` are answered while every worker is busy.

    The reader goes through every request buffered, runs the quick ones (and control messages)
    right there, and writes all their replies with one write before it blocks again. A quick call
    that turns slow (a backend that stalls) would hold every other call up: a watch thread
    relieves such a reader after ``RELIEVE_AFTER``, handing the reading on to another thread
    while the slow call finishes where it runs.
    """

    def __init__(self, obj: object, wire: LineChannel, max_concurrency: int) -> None:
        self.obj = obj
        self.wire = wire
        self.max_concurrency = max(1, max_concurrency)
        if getattr(obj, "reva_single_threaded", False):
            self.max_concurrency = 1
        self.contexts: dict[object, CallContext] = {}
        self.methods: dict[str, tuple[object, bool]] = {}
        self.lock = threading.Lock()
        self.turn = threading.Condition(self.lock)
        self.idle = threading.Condition(self.lock)
        self.draining = False
        self.backlog: list[dict[str, object]] = []
        self.threads = 1
        self.waiting = 0
        self.executing = 0
        self.leading = False
        self.cost: dict[object, float] = {}
        self.cancellable: set[object] = set()
        self.out: list[bytes] = []  # replies of the batch being read, unsent
        self.epoch = 0  # counts hand-overs of the reading: a relieved reader sees it changed
        self.inline_since = 0.0  # when the quick call running on the reader began (0: none)
        self.watch: threading.Condition | None = None  # the relief watch, once started
        self.watch_idle = False  # the watch sleeps until the next quick call

    def method(self, name: str) -> tuple[object, bool] | None:
        cached = self.methods.get(name)
        if cached is None:
            if name.startswith(("_", CONTROL_PREFIX)):
                return None
            func = getattr(self.obj, name, None)
            if not callable(func):
                return None
            cached = self.methods[name] = (func, _accepts_context(func))
        return cached

    def follow(self) -> None:
        """A pool thread: run backlogged calls, or lead when nobody reads, or wait."""
        while True:
            with self.lock:
                while True:
                    if self.backlog and self.executing < self.max_concurrency:
                        request: dict[str, object] | None = self.backlog.pop(0)
                        self.executing += 1
                        break
                    if not self.leading:
                        self.leading = True
                        request = None
                        break
                    self.waiting += 1
                    self.turn.wait()
                    self.waiting -= 1
            if request is None:
                request = self.lead()
                if request is None:  # relieved of the reading: the call's reply is written
                    continue
            self.wire.write(self.run(request))

    def lead(self) -> dict[str, object] | None:
        """Read until a call must run on a thread of its own; hand the reading on and return it.
        None: a quick call turned slow here, the watch handed the reading on meanwhile, and the
        call's reply is written.

        A call that is known to be quick and cannot see cancellation (no ``context``) runs right
        here without handing the reading on: waking another thread costs more than such a call,
        and under the GIL quick calls gain nothing from running beside each other.
        """
        while True:
            request = self.next_call()
            with self.lock:
                if self.executing >= self.max_concurrency:
                    self.backlog.append(request)
                    continue
                if self.backlog:  # calls read before this one run first
                    self.backlog.append(request)
                    request = self.backlog.pop(0)
                self.executing += 1
                method = request["method"]
                inline = (
                    method != CONFIGURE  # run on the reader below, never relieved
                    and self.cost.get(method, 1.0) < INLINE_BELOW
                    and method not in self.cancellable
                )
                if inline:
                    epoch = self.epoch
                    self.inline_since = _clock()
                    if self.watch is None or self.watch_idle:
                        self._wake_watch()
            if method == CONFIGURE:
                # sent once, before any call: nothing waits behind it, and no thread (in an
                # idle plugin's memory for good) need start for it
                self.out.append(self.run(request))
                continue
            if inline:
                reply = self.run(request, epoch)
                if self.epoch != epoch:
                    self.wire.write(reply)
                    return None
                self.out.append(reply)
                continue
            self.flush()
            with self.lock:
                handed_on = self._hand_reading_on()
            if not handed_on:  # no thread to spare (a memory limit): run it here
                self.out.append(self.run(request))
                continue
            return request

    def _hand_reading_on(self) -> bool:
        """Let another thread read (call with the lock held): a waiting one, else a new one.
        False when there is none and none can be started (the caller reads on)."""
        if self.waiting:
            self.turn.notify()
        elif self.threads <= self.max_concurrency and _start_thread(self.follow):
            self.threads += 1
        else:
            return False
        self.leading = False
        self.epoch += 1
        return True

    def _wake_watch(self) -> None:
        """Start the relief watch, or wake it from its idle sleep (call with the lock held)."""
        self.watch_idle = False
        if self.watch is None:
            self.watch = threading.Condition(self.lock)
            if not _start_thread(self._watch):
                self.watch_idle = True  # no relief then; tried again at the next quick call
                self.watch = None
        else:
            self.watch.notify()

    def _watch(self) -> None:
        """Relieve a reader whose quick call has run for ``RELIEVE_AFTER``: the call finishes on
        that thread as a worker's, another thread reads. Ticks only while quick calls run; after
        ``WATCH_IDLE_TICKS`` quiet ticks it sleeps until the reader starts the next one."""
        watch = self.watch
        assert watch is not None
        quiet = 0
        with self.lock:
            while True:
                since = self.inline_since
                if not since:
                    quiet += 1
                elif _clock() - since >= RELIEVE_AFTER and self.leading:
                    quiet = 0
                    self.inline_since = 0.0
                    self._hand_reading_on()
                else:
                    quiet = 0
                if quiet >= WATCH_IDLE_TICKS:
                    self.watch_idle = True
                    quiet = 0
                    watch.wait()
                else:
                    watch.wait(RELIEVE_AFTER)

    def run(self, request: dict[str, object], epoch: int = -1) -> bytes:
        """Execute one call (counted in ``executing`` by the caller); its reply line.

        ``epoch``: the call runs on the reader, which held the reading at that epoch. Once this
        returns, the watch can no longer relieve it (``inline_since`` is cleared under the lock
        the watch decides under), so ``self.epoch != epoch`` tells the caller for good whether
        it was relieved meanwhile: only a reader moves the epoch, and it is no longer one."""
        method = request["method"]
        began = _clock()
        try:
            return self.wire.encode(self.execute(request), method)
        finally:
            took = _clock() - began
            self.cost[method] = (self.cost.get(method, took) + took) / 2
            with self.lock:
                self.executing -= 1
                if self.backlog and self.waiting:
                    # a thread that found every slot taken waits with calls backlogged: wake
                    # it now, as the reader may block for good (nothing more is coming)
                    self.turn.notify()
                if epoch == self.epoch:  # a relieved reader leaves the new one's mark alone
                    self.inline_since = 0.0
                if self.draining and not self.executing:
                    self.idle.notify_all()

    def flush(self) -> None:
        """Write the replies of the batch read so far, with one write."""
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.wire.write(data)

    def next_call(self) -> dict[str, object]:
        """The next call request; control messages and bad lines are answered on the way (their
        replies join the batch, written before the reader blocks)."""
        wire = self.wire
        out = self.out
        while True:
            line = wire.take()
            if line == b"":
                self.flush()
                if not wire.fill():
                    self.end(asked=False)
                continue
            if line is None:
                out.append(
                    wire.encode(
                        _error(None, INVALID_REQUEST, f"message longer than {wire.max_line} bytes")
                    )
                )
                continue
            try:
                request = _loads(line)
            except ValueError as exc:
                out.append(wire.encode(_error(None, PARSE_ERROR, f"invalid JSON: {exc}")))
                continue
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                call_id = request.get("id") if isinstance(request, dict) else None
                out.append(wire.encode(_error(call_id, INVALID_REQUEST, "not a JSON-RPC request")))
                continue
            if request["method"].startswith(CONTROL_PREFIX):
                self.control(request)
            elif "id" in request:
                return request

    def control(self, request: dict[str, object]) -> None:
        """Handle a ``$/`` control message."""
        method = request["method"]
        call_id = request.get("id")
        params = request.get("params")
        if method == wire.CANCEL:
            target = params.get("id") if isinstance(params, dict) else None
            context = self.contexts.get(target)
            if context is not None:
                context.cancelled.set()
        elif method == wire.PING:
            if call_id is not None:
                pong: wire.PingResult = {"pid": os.getpid()}
                reply = {"jsonrpc": JSONRPC, "id": call_id, "result": pong}
                self.out.append(self.wire.encode(reply))
        elif method == wire.SHUTDOWN:
            self.flush()
            with self.lock:
                self.draining = True
                self.idle.wait_for(lambda: not self.executing, 1.5)
            if call_id is not None:
                self.wire.send({"jsonrpc": JSONRPC, "id": call_id, "result": None})
            self.end(asked=True)
        elif call_id is not None:
            self.out.append(
                self.wire.encode(_error(call_id, METHOD_NOT_FOUND, f"method not found: {method}"))
            )

    def end(self, *, asked: bool) -> NoReturn:
        """Exit the process, taking every descendant with it: cleanly when the core asked,
        else (the core is gone) with the whole process group too."""
        sys.stderr.flush()
        _reap_descendants()
        if not asked:
            _reap_group()
        os._exit(0)

    def execute(self, request: dict[str, object]) -> dict[str, object]:
        call_id = request.get("id")
        name = request.get("method")
        params = request.get("params", {})
        if not isinstance(params, dict):
            return _error(call_id, INVALID_PARAMS, "params must be an object of keyword arguments")
        if name == wire.CONFIGURE:
            found = self.method(wire.CONFIGURE)
            if found is None:
                return {"jsonrpc": JSONRPC, "id": call_id, "result": None}
            configure: wire.ConfigureParams = {"config": params.get("config", {})}
            params = dict(configure)
        else:
            found = self.method(str(name))
        if found is None:
            return _error(call_id, METHOD_NOT_FOUND, f"method not found: {name}")
        func, wants_context = found
        context = None
        if wants_context:
            self.cancellable.add(name)  # never inline: it must be able to see $/cancel
        if wants_context:
            meta = request.get(wire.META)
            context = CallContext(call_id, meta if isinstance(meta, dict) else {})
            params = dict(params, context=context)
            self.contexts[call_id] = context
        try:
            result = func(**params)  # type: ignore[operator]
        except TypeError as exc:
            if _bad_arguments(func, params):
                return _error(call_id, INVALID_PARAMS, f"invalid params for {name}: {exc}")
            return _exception_error(call_id, exc)
        except BaseException as exc:
            return _exception_error(call_id, exc)
        finally:
            if context is not None:
                self.contexts.pop(call_id, None)
        return {"jsonrpc": JSONRPC, "id": call_id, "result": result}


def _start_thread(target: Callable[[], None]) -> bool:
    """Start a daemon thread; False when the system has none to give (``memory_mb``, a thread
    limit): the pool then makes do with the threads it has."""
    try:
        threading.Thread(target=target, daemon=True).start()
    except RuntimeError:
        return False
    return True


def _bad_arguments(func: object, params: dict[str, object]) -> bool:
    import inspect

    try:
        inspect.signature(func).bind(**params)  # type: ignore[arg-type]
    except TypeError:
        return True
    except Exception:  # a callable's own signature may raise anything
        return False
    return False


def main(argv: list[str]) -> int:
    if os.environ.get(wire.COOKIE_KEY) != wire.COOKIE_VALUE or len(argv) < 2:
        sys.stderr.write(wire.HUMAN_MESSAGE + "\n")
        return 1
    global WIRE_FD
    spec: wire.BootstrapInput = _loads(argv[1])
    _contain(spec)  # before anything of the plugin runs
    wire_fd = WIRE_FD = _guard_stdio(int(spec["wire_fd"]))
    # A child the plugin forks (multiprocessing, os.fork) must not hold the wire: it would write
    # on it, or keep it open after the plugin died, leaving the core waiting for an EOF.
    os.register_at_fork(after_in_child=_drop_wire)
    version = _negotiate()
    _hook_logging(spec["log_level"])
    channel = LineChannel(wire_fd, spec["max_line"])
    obj, name, dist, dist_version = _load_entry_point(spec)
    methods = sorted(
        n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))
    )
    handshake: wire.HandshakeParams = {
        "core_protocol": version,
        "app_protocols": list(getattr(obj, "reva_app_protocols", (1,))),
        "service": spec["service"],
        "entry_point": name,
        "distribution": dist,
        "version": dist_version,
        "methods": methods,
        "pid": os.getpid(),
        "python": ".".join(map(str, sys.version_info[:3])),
        "sandbox": SANDBOX_STATE,
    }
    channel.send({"jsonrpc": JSONRPC, "method": wire.HANDSHAKE, "params": handshake})
    Plugin(obj, channel, spec["max_concurrency"]).follow()
    return 0  # not reached: the pool ends the process


def _drop_wire() -> None:
    global WIRE_FD
    if WIRE_FD >= 0:
        try:
            os.close(WIRE_FD)
        except OSError:
            pass
        WIRE_FD = -1


def _reap_group() -> None:
    """The core is gone: take this plugin's whole process group down with us."""
    sys.stderr.flush()
    try:
        os.killpg(os.getpgid(0), 9)
    except OSError:
        pass


# -- containment: runs before the plugin is imported -------------------------------------------

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIGTERM = 15
_LIMITS: dict[str, object] = {}  # the limits in force, to name the one a failure hit


def _contain(spec: wire.BootstrapInput) -> None:
    """Tie this process's life to the core's and bound it, before any plugin code runs.

    - Its own process group (a Python 3.10 core cannot ask for one at spawn without a
      ``preexec_fn``, which is unsafe in the core's threaded process), so the core reaps it
      with ``killpg`` and a terminal's Ctrl-C does not reach it.
    - Linux: ``PR_SET_PDEATHSIG`` sends SIGTERM when the core dies (even ``kill -9``, even while
      the plugin is still importing); ``PR_SET_CHILD_SUBREAPER`` makes descendants that detach
      (double fork, ``setsid()``) re-parent here, so that they are found and killed when the
      plugin ends (EOF from the core, ``$/shutdown``, SIGTERM or the parent-death signal).
    - rlimits ``memory_mb`` (RLIMIT_AS), ``cpu_seconds`` (RLIMIT_CPU), ``open_files``
      (RLIMIT_NOFILE), and ``network = false`` (a private network namespace, Linux only).

    Elsewhere (macOS) only the process group, the EOF rule and the rlimits hold: a descendant
    that calls ``setsid()`` can outlive the plugin, and a plugin killed while importing (before
    it reads the wire) outlives a core killed with SIGKILL. A plugin can undo any of this
    itself (its own code runs with the same rights); it bounds careless plugins, not hostile
    ones (run those in a container).
    """
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)
    # _signal, not signal: signal imports enum (as ctypes does struct and more), and every
    # module the bootstrap imports stays in each idle plugin's memory
    if TYPE_CHECKING:
        import signal as _signal
    else:
        import _signal

    _signal.signal(SIGTERM, _terminated)
    limits = spec.get("limits")
    if isinstance(limits, dict):
        _LIMITS.update(limits)
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_PDEATHSIG, SIGTERM)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        if os.getppid() != spec.get("parent", os.getppid()):  # the core died before prctl
            _terminated(SIGTERM, None)
        if _LIMITS.get("network") is False:
            import ctypes

            _unshare_network(ctypes.CDLL(None, use_errno=True))
    elif _LIMITS.get("network") is False:
        raise SystemExit(
            f"reva plugin bootstrap: network = false is not supported here: {sys.platform} "
            "has no network namespaces"
        )
    if any(key in _LIMITS for key in ("memory_mb", "cpu_seconds", "open_files")):
        _set_rlimits()
    policy = spec.get("sandbox")
    if policy is not None:
        _enter_sandbox(policy)


#: what the handshake says of the sandbox (``wire.SANDBOX_*``)
SANDBOX_STATE: str = wire.SANDBOX_OFF


def _enter_sandbox(policy: wire.SandboxInput) -> None:
    """Apply the core's Landlock policy (after ``no_new_privs``): from here on this process and
    all it starts reach only the paths and ports it names. A policy the kernel refuses fails the
    start when it is required; otherwise the plugin runs unsandboxed and the handshake says so."""
    global SANDBOX_STATE
    sandbox = _load("_sandbox")
    try:
        abi = sandbox.apply(
            policy["read_exec"], policy["read"], policy["write"], policy.get("connect")
        )
    except OSError as exc:
        if policy["required"]:
            raise SystemExit(
                f"reva plugin bootstrap: sandbox = true cannot be had: {exc}"
            ) from None
        SANDBOX_STATE = f"{wire.SANDBOX_UNAVAILABLE}: {exc}"
        return
    SANDBOX_STATE = wire.SANDBOX_LANDLOCK.format(abi=abi)


#: bytes of stack per thread under ``memory_mb``: address space counts what a stack reserves,
#: and the default (8 MiB, from ``ulimit -s``) would spend a small limit on a few idle threads
LIMITED_THREAD_STACK = 2 * 1024 * 1024


def _set_rlimits() -> None:
    import resource

    if isinstance(_LIMITS.get("memory_mb"), int):
        threading.stack_size(LIMITED_THREAD_STACK)

    for key, kind, unit in (
        ("memory_mb", resource.RLIMIT_AS, 1024 * 1024),
        ("cpu_seconds", resource.RLIMIT_CPU, 1),
        ("open_files", resource.RLIMIT_NOFILE, 1),
    ):
        value = _LIMITS.get(key)
        if not isinstance(value, int):
            continue
        soft = value * unit
        hard = soft + 1 if key == "cpu_seconds" else soft  # then SIGXCPU becomes SIGKILL
        inherited = resource.getrlimit(kind)[1]
        if inherited != resource.RLIM_INFINITY:
            soft, hard = min(soft, inherited), min(hard, inherited)
        resource.setrlimit(kind, (soft, hard))


def _unshare_network(libc: Any) -> None:
    """A private network namespace (only a loopback): as root directly, else inside a new
    user namespace that maps this user onto itself."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNET if uid == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if libc.unshare(flags) != 0:
        import ctypes

        errno = ctypes.get_errno()
        names = "CLONE_NEWNET" if uid == 0 else "CLONE_NEWUSER|CLONE_NEWNET"
        raise SystemExit(
            "reva plugin bootstrap: network = false is not supported here: "
            f"unshare({names}) failed: [Errno {errno}] {os.strerror(errno)}"
        )
    if uid != 0:
        for name, text in (
            ("uid_map", f"{uid} {uid} 1"),
            ("setgroups", "deny"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _loopback_up(libc)


def _loopback_up(libc: Any) -> None:
    """Bring ``lo`` up (SIOCSIFFLAGS), so the plugin can still talk to itself on 127.0.0.1."""
    import ctypes

    sock = libc.socket(2, 2, 0)  # AF_INET, SOCK_DGRAM
    if sock < 0:
        return
    request = ctypes.create_string_buffer(b"lo", 40)  # struct ifreq: name[16], flags
    ctypes.c_short.from_buffer(request, 16).value = 0x1 | 0x8 | 0x40  # UP|LOOPBACK|RUNNING
    libc.ioctl(sock, 0x8914, request)
    libc.close(sock)


def _limit_hit(exc: BaseException) -> str:
    """The limit (``"memory_mb=64"``) an exception escaping a call shows was hit, or ""."""
    if isinstance(exc, MemoryError) and "memory_mb" in _LIMITS:
        return f"memory_mb={_LIMITS['memory_mb']}"
    if isinstance(exc, OSError) and exc.errno == 24 and "open_files" in _LIMITS:  # EMFILE
        return f"open_files={_LIMITS['open_files']}"
    return ""


def _prctl(option: int, value: int) -> None:
    """``prctl(option, value)`` through ``_ctypes`` alone: the ``ctypes`` package would add
    ~0.3 MiB to every plugin for two calls."""
    import _ctypes

    function = _ctypes.dlsym(_ctypes.dlopen(None, 2), "prctl")  # type: ignore[arg-type]
    _ctypes.call_function(function, (option, value, 0, 0, 0))


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (from the core, or the parent-death signal): take every descendant along,
    then die of the signal."""
    if TYPE_CHECKING:
        import signal as _signal
    else:
        import _signal

    _reap_descendants()
    sys.stderr.flush()
    _signal.signal(SIGTERM, _signal.SIG_DFL)
    os.kill(os.getpid(), SIGTERM)
    os._exit(128 + SIGTERM)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; empty elsewhere), parents first. In a
    sandbox, which sees no ``/proc`` but its own entries, only this process's own children: as
    their subreaper it inherits the orphans of those it kills, so repeated rounds reach all."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return _own_children() if pid == os.getpid() else []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _own_children() -> list[int]:
    """This process's children, from ``/proc/self/task/*/children`` (Linux 3.5 and later)."""
    found: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                found += [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def _reap_descendants() -> None:
    """Kill every descendant, however it detached: as their subreaper this process inherits
    the orphans of those it kills, so repeat until none is left (bounded)."""
    me = os.getpid()
    for _ in range(100):
        found = descendants(me)
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.005)


def run(argv: list[str]) -> NoReturn:
    """Run the bootstrap (as ``__main__``, from ``_launch.py``) and exit the process."""
    try:
        code = main(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
            code = 1
        else:
            code = exc.code or 0
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run(sys.argv)
