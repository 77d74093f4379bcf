"""The plugin's end of the wire: ``LineChannel`` (lines in from the private fd, whole lines
out) and the reply lines it writes (a result, an error, what a raised exception becomes).

Standard library only: the bootstrap loads this file by path, and its siblings (``_wire``,
``_codec``, ``_poll``) through the loader it hands it; the core imports it as a module.
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from . import _poll
    from . import _wire as wire
    from ._codec import dumps

    def _sibling(name: str) -> ModuleType: ...
elif __package__:  # the core imports this module
    from . import _wire as wire
    from ._codec import dumps
else:  # loaded by path: the bootstrap hands it its loader (``_sibling``) before it runs
    wire = _sibling("_wire")
    dumps = _sibling("_codec").dumps

INTERNAL_ERROR: int = wire.INTERNAL_ERROR
APPLICATION_ERROR: int = wire.APPLICATION_ERROR
JSONRPC: str = wire.JSONRPC_VERSION


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
            return dumps(message).encode("utf-8") + b"\n"
        except Exception as exc:  # a result's own types (a dict subclass) may raise anything
            what = "result" if "result" in message else "error"
            text = text_of(exc) or type(exc).__name__
            reason = f"{method}: {what} is not valid JSON: {text}" if method else text
            # the reason may quote the offending text (a lone surrogate): keep it encodable
            reason = reason.encode("utf-8", "replace").decode("utf-8")[:2000]
            return error_line(message.get("id"), INTERNAL_ERROR, reason)

    def send(self, message: dict[str, object], method: object = None) -> None:
        """Write one message (see ``encode``)."""
        self.write(self.encode(message, method))

    def write(self, data: bytes) -> None:
        """Write whole lines, all of them."""
        with self.lock:
            written = os.write(self.fd, data)  # all of it, but for a reply past the socket's room
            if written < len(data):
                view = memoryview(data)[written:]
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
            spinner = self.spinner = _poll_module().Spinner(self.fd)
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


def error_line(call_id: object, code: int, message: str) -> bytes:
    if not isinstance(call_id, (int, str)) or isinstance(call_id, bool):
        call_id = None  # an id the core never sends; keeps this line encodable
    return (dumps(error(call_id, code, message)) + "\n").encode("utf-8")


def error(call_id: object, code: int, message: str, data: object = None) -> dict[str, object]:
    body: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": JSONRPC, "id": call_id, "error": body}


def exception_error(
    call_id: object, exc: BaseException, limits: dict[str, object]
) -> dict[str, object]:
    """The error reply for what a call raised. The exception is the plugin's: its ``__str__``
    may raise or return a non-string, its class may lack what ``traceback`` reads; each part
    falls back on its own, so whatever was raised is answered and never kills the plugin.
    ``limits``: those in force (``BootstrapInput["limits"]``), to name the one a failure hit."""
    type_name = best_effort(lambda: str(type(exc).__name__), "Exception")
    tb = best_effort(lambda: format_traceback(exc), "")
    message = text_of(exc) or type_name
    limit = best_effort(lambda: limit_hit(exc, limits), "")
    if limit:
        message = f"plugin exceeded {limit}: {message}"
    data: wire.ErrorData = {"type": type_name, "traceback": tb}
    return error(call_id, APPLICATION_ERROR, message, data)


def text_of(exc: BaseException) -> str:
    """``str(exc)``, or "" when it fails (a plugin's ``__str__`` may raise or return None)."""
    return best_effort(lambda: str(exc), "")


def format_traceback(exc: BaseException) -> str:
    import traceback

    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # the exception's own text is what failed: leave it out
        return "".join(traceback.format_tb(exc.__traceback__))


def best_effort(make: Callable[[], str], fallback: str) -> str:
    """``make()`` if it returns a string, else ``fallback``."""
    try:
        text = make()
    except Exception:  # a plugin's exception may raise anything here
        return fallback
    return text if isinstance(text, str) else fallback


def limit_hit(exc: BaseException, limits: dict[str, object]) -> str:
    """The limit (``"memory_mb=64"``) an exception escaping a call shows was hit, or ""."""
    if isinstance(exc, MemoryError) and "memory_mb" in limits:
        return f"memory_mb={limits['memory_mb']}"
    if isinstance(exc, OSError) and exc.errno == 24 and "open_files" in limits:  # EMFILE
        return f"open_files={limits['open_files']}"
    return ""


def _poll_module() -> ModuleType:
    """``_poll``, loaded at the first read (after the handshake is out), not at start."""
    if __package__:
        from . import _poll

        return _poll
    return _sibling("_poll")
