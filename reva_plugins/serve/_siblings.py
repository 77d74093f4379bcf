"""What serve worker processes (``[grpc] processes = N``) know of each other.

With ``SO_REUSEPORT`` a call reaches any one worker, so each worker answers for all: it listens
on a Unix socket of its own in a folder only the parent's user can enter (the parent makes it
and removes it), and a worker asked for the status, a reload or the metrics asks its siblings
there. One request is one line of JSON (``{"op": "status"}``), one answer one line of JSON.
Stdlib only: the parent (which runs no gRPC) asks the same way for the metrics it serves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import _defaults
from .._errors import UsageError

log = logging.getLogger("reva_plugins.serve")

#: How the parent tells a process it started that it is a worker:
#: ``INDEX:COUNT:PARENT:RESTARTS:STDERR:FOLDER`` (``STDERR``: the fd of the parent's stderr, or
#: empty).
#: Taken out of the environment as soon as it is read, so no plugin inherits it.
ENV_VAR = "REVA_PLUGINS_SERVE_WORKER"
#: The largest request a worker reads, and the largest answer read (a status with its metrics).
MAX_REQUEST_BYTES = 1 << 10
MAX_ANSWER_BYTES = 64 << 20
Op = Literal["status", "reload", "metrics"]
OPS: tuple[Op, ...] = ("status", "reload", "metrics")


@dataclass(frozen=True)
class WorkerRole:
    """This process is worker ``index`` of ``count``, started by ``parent``; the sockets of
    all of them are in ``folder``; ``stderr`` is the parent's stderr, passed down as this fd
    (the worker's log lines go there straight, not through the parent); ``restarts`` is how
    often the parent restarted this worker's slot before."""

    index: int
    count: int
    parent: int
    folder: Path
    stderr: int | None = None
    restarts: int = 0

    def encode(self) -> str:
        """The value of :data:`ENV_VAR` that makes a process this worker."""
        stderr = "" if self.stderr is None else str(self.stderr)
        return f"{self.index}:{self.count}:{self.parent}:{self.restarts}:{stderr}:{self.folder}"

    @classmethod
    def from_environ(cls) -> WorkerRole | None:
        """The role the parent gave this process (taken out of the environment), or None."""
        raw = os.environ.pop(ENV_VAR, None)
        if raw is None:
            return None
        try:
            index, count, parent, restarts, stderr, folder = raw.split(":", 5)
            role = cls(
                int(index),
                int(count),
                int(parent),
                Path(folder),
                int(stderr) if stderr else None,
                int(restarts),
            )
        except ValueError:
            role = None
        if role is None or not 0 <= role.index < role.count or not role.folder.is_absolute():
            raise UsageError(
                f"{ENV_VAR} is set but names no serve worker (only serve's parent sets it); "
                "unset it"
            )
        return role

    def take_stderr(self) -> None:
        """Write to the parent's stderr from now on (the parent passed it down)."""
        if self.stderr is not None:
            os.dup2(self.stderr, 2)
            os.close(self.stderr)

    def socket_path(self, index: int | None = None) -> Path:
        """The control socket of worker ``index`` (this one's by default)."""
        return socket_path(self.folder, self.index if index is None else index)


def socket_path(folder: Path, index: int) -> Path:
    """Worker ``index``'s control socket in ``folder``."""
    return folder / f"worker-{index}.sock"


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST_BYTES)
        try:
            op = json.loads(line).get("op")
            if op not in OPS:
                raise ValueError(op)
            answer = self.server.answer(op)
        except Exception as exc:  # noqa: BLE001 (a sibling gets the reason, the worker serves on)
            answer = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(answer, default=str).encode("utf-8") + b"\n")


class ControlServer(socketserver.ThreadingUnixStreamServer):
    """A worker's control socket: answers its siblings and its parent, a thread per request."""

    daemon_threads = True

    def __init__(self, role: WorkerRole, answer: Callable[[Op], dict[str, Any]]) -> None:
        self.role = role
        self.answer = answer
        self.path = role.socket_path()
        # bound under a temporary name and renamed when it listens: a socket file that exists
        # answers, so the parent takes its appearance for "this worker serves"
        self._pending = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            self._pending.unlink()
        super().__init__(str(self._pending), _Handler)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a thread of its own and publish the socket."""
        self._thread = threading.Thread(target=self.serve_forever, name="siblings", daemon=True)
        self._thread.start()
        os.replace(self._pending, self.path)

    def close(self) -> None:
        """Stop answering and remove the socket."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._thread is not None:
            self.shutdown()
        self.server_close()


def ask(path: Path, op: Op, timeout: float) -> dict[str, Any]:
    """Ask the worker listening on ``path``; its answer, or ``{"error": why}``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(json.dumps({"op": op}).encode("ascii") + b"\n")
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_ANSWER_BYTES:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except OSError as exc:
        return {"error": f"no answer: {exc.strerror or exc}"}
    if size > MAX_ANSWER_BYTES:
        return {"error": "answer too large"}
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        return {"error": "no answer (it stopped?)"}
    return answer if isinstance(answer, dict) else {"error": "not an answer"}


def ask_all(
    folder: Path,
    count: int,
    op: Op,
    *,
    timeout: float = _defaults.WORKER_ASK_TIMEOUT,
    local: tuple[int, Callable[[], dict[str, Any]]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Every worker's answer to ``op``, by index, asked at once; ``local`` is this worker's
    index and how it answers itself (not through its own socket)."""

    def one(index: int) -> dict[str, Any]:
        if local is not None and index == local[0]:
            return local[1]()
        path = socket_path(folder, index)
        if not path.exists():
            return {"error": "not serving (starting or restarting)"}
        return ask(path, op, timeout)

    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="sibling") as pool:
        return dict(zip(range(count), pool.map(one, range(count)), strict=True))
