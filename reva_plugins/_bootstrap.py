"""reva plugin bootstrap: runs inside a plugin's venv as ``<python> -I _bootstrap.py '<json>'``.

Standard library only, and only what a call needs at start: the plugin's venv holds nothing of
the core. Its stdin and stdout are the core's wire (a socket); before any plugin code is imported
the wire moves to a private fd, fd 0 becomes /dev/null and fd 1 becomes stderr, so a plugin (or a
C extension) that prints cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

COOKIE_KEY = "BASIC_PLUGIN"
COOKIE_VALUE = "reva"
PROTOCOL_VERSIONS = (1,)
HUMAN_MESSAGE = "This is a reva plugin bootstrap; it is started by the core, not by hand."

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
APPLICATION_ERROR = -32000

WIRE_FD = -1  # the private protocol fd, once taken (fault-injection tests write to it)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads


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
        value = self.meta.get("deadline")
        return float(value) if isinstance(value, (int, float)) else None


class Wire:
    """Line-delimited JSON over the private fd; writes are serialised by a lock."""

    def __init__(self, fd: int, max_line: int) -> None:
        self.fd = fd
        self.reader = os.fdopen(fd, "rb", buffering=65536, closefd=False)
        self.max_line = max_line
        self.lock = threading.Lock()

    def send(self, message: dict[str, object]) -> None:
        try:
            data = _dumps(message).encode("utf-8", "surrogatepass") + b"\n"
        except (TypeError, ValueError) as exc:
            data = _error_line(message.get("id"), INTERNAL_ERROR, f"result is not JSON: {exc}")
        view = memoryview(data)
        with self.lock:
            while view:
                view = view[os.write(self.fd, view) :]

    def lines(self) -> Iterator[bytes | None]:
        """Yield each incoming line (bytes); an oversized line yields None."""
        readline = self.reader.readline
        limit = self.max_line
        while True:
            line = readline(limit + 1)
            if not line:
                return
            if len(line) > limit and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):
                    line = readline(65536)
                yield None
                continue
            yield line


def _error_line(call_id: object, code: int, message: str, data: object = None) -> bytes:
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return (_dumps({"jsonrpc": "2.0", "id": call_id, "error": error}) + "\n").encode()


def _error(call_id: object, code: int, message: str, data: object = None) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": call_id, "error": error}


def _exception_error(call_id: object, exc: BaseException) -> dict[str, object]:
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    data = {"type": type(exc).__name__, "traceback": tb}
    return _error(call_id, APPLICATION_ERROR, str(exc) or type(exc).__name__, data)


def _guard_stdio() -> int:
    """Move the wire off fds 0/1 and point them at /dev/null and stderr; return the wire fd."""
    wire = os.dup(0)
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
    offered = os.environ.get("REVA_PLUGIN_PROTOCOL_VERSIONS", "1")
    try:
        versions = {int(v) for v in offered.split(",") if v.strip()}
    except ValueError:
        versions = set()
    common = versions.intersection(PROTOCOL_VERSIONS)
    if not common:
        sys.stderr.write(
            f"reva plugin bootstrap: protocol version mismatch: the core offers {offered!r}, "
            f"this bootstrap speaks {','.join(map(str, PROTOCOL_VERSIONS))}\n"
        )
        raise SystemExit(1)
    return max(common)


def _install_logging(level: str) -> None:
    import logging

    class JSONLineHandler(logging.Handler):
        reserved = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

        def emit(self, record: logging.LogRecord) -> None:
            try:
                entry: dict[str, object] = {
                    "@level": record.levelname.lower(),
                    "@message": record.getMessage(),
                    "@module": record.name,
                    "@timestamp": record.created,
                }
                if record.exc_info:
                    entry["@exception"] = logging.Formatter().formatException(record.exc_info)
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


def _load_entry_point(spec: dict[str, object]) -> tuple[object, str, str, str]:
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
    import importlib

    module_name, _, attrs = str(value).partition(":")
    obj: object = importlib.import_module(module_name.strip())
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
    """Dispatches requests to the plugin object; runs calls on up to ``max_concurrency`` threads."""

    def __init__(self, obj: object, wire: Wire, max_concurrency: int) -> None:
        self.obj = obj
        self.wire = wire
        self.max_concurrency = max(1, max_concurrency)
        if getattr(obj, "reva_single_threaded", False):
            self.max_concurrency = 1
        self.contexts: dict[object, CallContext] = {}
        self.methods: dict[str, tuple[object, bool]] = {}
        self.jobs: queue.SimpleQueue[dict[str, object]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.workers = 0
        self.in_flight = 0

    def method(self, name: str) -> tuple[object, bool] | None:
        cached = self.methods.get(name)
        if cached is None:
            if name.startswith(("_", "$")):
                return None
            func = getattr(self.obj, name, None)
            if not callable(func):
                return None
            cached = self.methods[name] = (func, _accepts_context(func))
        return cached

    def submit(self, request: dict[str, object]) -> None:
        """Queue a call; start another worker while calls outnumber workers (up to the limit)."""
        with self.lock:
            self.in_flight += 1
            if self.in_flight > self.workers and self.workers < self.max_concurrency:
                self.workers += 1
                threading.Thread(target=self.work, daemon=True, name=f"call-{self.workers}").start()
        self.jobs.put(request)

    def work(self) -> None:
        get = self.jobs.get
        while True:
            request = get()
            try:
                self.wire.send(self.execute(request))
            finally:
                with self.lock:
                    self.in_flight -= 1
                    if not self.in_flight:
                        self.idle.notify_all()

    def execute(self, request: dict[str, object]) -> dict[str, object]:
        call_id = request.get("id")
        name = request.get("method")
        params = request.get("params", {})
        if not isinstance(params, dict):
            return _error(call_id, INVALID_PARAMS, "params must be an object of keyword arguments")
        if name == "configure":
            found = self.method("configure")
            if found is None:
                return {"jsonrpc": "2.0", "id": call_id, "result": None}
            params = {"config": params.get("config", {})}
        else:
            found = self.method(str(name))
        if found is None:
            return _error(call_id, METHOD_NOT_FOUND, f"method not found: {name}")
        func, wants_context = found
        meta = request.get("meta")
        context = CallContext(call_id, meta if isinstance(meta, dict) else {})
        if wants_context:
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
            self.contexts.pop(call_id, None)
        return {"jsonrpc": "2.0", "id": call_id, "result": result}

    def drain(self, timeout: float) -> None:
        with self.lock:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout)


def _bad_arguments(func: object, params: dict[str, object]) -> bool:
    import inspect

    try:
        inspect.signature(func).bind(**params)  # type: ignore[arg-type]
    except TypeError:
        return True
    except ValueError:
        return False
    return False


def serve(plugin: Plugin, wire: Wire) -> bool:
    """Answer requests until the wire closes; True when the core asked for a shutdown."""
    for line in wire.lines():
        if line is None:
            wire.send(_error(None, INVALID_REQUEST, f"message longer than {wire.max_line} bytes"))
            continue
        try:
            request = _loads(line)
        except ValueError as exc:
            wire.send(_error(None, PARSE_ERROR, f"invalid JSON: {exc}"))
            continue
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            call_id = request.get("id") if isinstance(request, dict) else None
            wire.send(_error(call_id, INVALID_REQUEST, "not a JSON-RPC request"))
            continue
        method = request["method"]
        if method[0] == "$":
            if control(plugin, wire, request):
                return True
            continue
        if "id" not in request:
            continue
        plugin.submit(request)
    return False


def control(plugin: Plugin, wire: Wire, request: dict[str, object]) -> bool:
    """Handle a ``$/`` control message; True for ``$/shutdown``."""
    method = request["method"]
    call_id = request.get("id")
    params = request.get("params")
    if method == "$/cancel":
        target = params.get("id") if isinstance(params, dict) else None
        context = plugin.contexts.get(target)
        if context is not None:
            context.cancelled.set()
        return False
    if method == "$/ping":
        if call_id is not None:
            wire.send({"jsonrpc": "2.0", "id": call_id, "result": {"pid": os.getpid()}})
        return False
    if method == "$/shutdown":
        plugin.drain(timeout=1.5)
        if call_id is not None:
            wire.send({"jsonrpc": "2.0", "id": call_id, "result": None})
        return True
    if call_id is not None:
        wire.send(_error(call_id, METHOD_NOT_FOUND, f"method not found: {method}"))
    return False


def main(argv: list[str]) -> int:
    if os.environ.get(COOKIE_KEY) != COOKIE_VALUE or len(argv) < 2:
        sys.stderr.write(HUMAN_MESSAGE + "\n")
        return 1
    global WIRE_FD
    spec = _loads(argv[1])
    wire_fd = WIRE_FD = _guard_stdio()
    version = _negotiate()
    _install_logging(str(spec.get("log_level", "info")))
    wire = Wire(wire_fd, int(spec.get("max_line", 64 * 1024 * 1024)))
    obj, name, dist, dist_version = _load_entry_point(spec)
    methods = sorted(
        n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))
    )
    wire.send(
        {
            "jsonrpc": "2.0",
            "method": "$/handshake",
            "params": {
                "core_protocol": version,
                "app_protocols": list(getattr(obj, "reva_app_protocols", (1,))),
                "service": spec.get("service"),
                "entry_point": name,
                "distribution": dist,
                "version": dist_version,
                "methods": methods,
                "pid": os.getpid(),
                "python": ".".join(map(str, sys.version_info[:3])),
            },
        }
    )
    plugin = Plugin(obj, wire, int(spec.get("max_concurrency", 8)))
    asked = serve(plugin, wire)
    if not asked:
        _reap_group()
    return 0


def _reap_group() -> None:
    """The core is gone: take this plugin's whole process group down with us."""
    sys.stderr.flush()
    try:
        os.killpg(os.getpgid(0), 9)
    except OSError:
        pass


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
            code = 1
        else:
            code = exc.code or 0
    sys.stderr.flush()
    os._exit(code)
