"""``[grpc] processes = N``: one parent and N serve worker processes sharing the port.

One process is one core's worth of Python, so with N > 1 ``serve`` becomes a parent that
serves no RPC itself. Before any worker starts it checks what a single server checks (the pid
file, the addresses, the TLS files), reserves the port (a bound ``SO_REUSEPORT`` socket that
never listens, so port 0 is picked once and the port stays this server's while a worker
restarts), serves ``[metrics]`` (every worker's counters added up, asked for when scraped:
nothing per RPC), writes the pid file and plans every service once, so the envs are built
once and each worker finds them cached. Then it starts the workers: ``python -m reva_plugins
serve`` with :data:`~._siblings.ENV_VAR` set, each a whole server with its own plugin
processes, binding the port with ``SO_REUSEPORT`` (the kernel spreads connections across
them). They write their log lines to the parent's stderr themselves (a line is one write),
so the parent costs nothing per RPC; what a worker writes before it takes it over passes
through the parent.

It forwards SIGHUP (every worker reloads, each with zero downtime) and SIGTERM/SIGINT (every
worker drains within ``shutdown_grace``; one still running ``WORKER_STOP_MARGIN`` later is
killed, and its plugins with it: they die with their parent), restarts a worker that exits
unasked, with backoff, and gives up (exit 1) when one exits ``WORKER_START_FAILURES`` times in
a row before serving. A worker dies with the parent (``PR_SET_PDEATHSIG``), even on ``kill -9``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from .. import _config, _defaults, _fs, _subprocess
from .._errors import ExitCode, RevaPluginError
from ._commands import is_server_pid
from ._files import check_free, check_key_pair, check_pidfile, remove_pidfile, write_pidfile
from ._metrics import MetricsHTTPServer, WorkersCollector, serve_metrics
from ._reload import HostOptions, plan_backend, require_served, unserved_tables
from ._siblings import ENV_VAR, WorkerRole, ask_all, socket_path

log = logging.getLogger("reva_plugins.serve")

#: Seconds between the parent's looks at its workers (and at the signals it received).
POLL = 0.05
#: The lines of a worker's stderr (before it writes to ours itself) kept for the message when
#: the parent gives up.
TAIL = 5
_PR_SET_PDEATHSIG = 1
#: The sockets' folder's name: this prefix, the parent's pid, a dash and mkdtemp's letters.
FOLDER_PREFIX = "reva-plugins-serve-"
#: The longest temp dir path the sockets' folder goes in (a Unix socket path is 108 bytes).
MAX_SOCKET_BASE = 60


class _Worker:
    """One worker slot: its current process (None while it waits for a restart)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.ready = False
        #: exits in a row (for the backoff), and of those before serving (to give up)
        self.exits = 0
        self.early_exits = 0
        #: restarts of this slot so far (its worker's ``status`` shows them)
        self.restarts = 0
        self.restart_at: float | None = None
        #: a SIGHUP came while it started (before it handles one, SIGHUP would kill it)
        self.reload_pending = False
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL)
        self.relay: threading.Thread | None = None


class Parent:
    """The parent of ``count`` worker processes serving ``config`` (see the module)."""

    def __init__(
        self,
        config: _config.Config,
        path: Path,
        count: int,
        *,
        address: str | None,
        options: HostOptions,
        pidfile: Path | None,
        argv: Sequence[str],
    ) -> None:
        self.config = config
        self.path = path.resolve()
        self.count = count
        self.settings = config.serve
        self.address = address or self.settings.address
        self.address_source = "--address" if address else "grpc.address"
        self.options = options
        self.pidfile = pidfile
        #: the command line a worker runs, without its ``--address``
        self.argv = list(argv)
        self.workers = [_Worker(index) for index in range(count)]
        self.folder: Path | None = None
        self._stderr: int | None = None  # our stderr, for the workers to write to
        self._reserved: socket.socket | None = None
        self._metrics_server: MetricsHTTPServer | None = None
        self._signals: collections.deque[int] = collections.deque()
        self.registry = CollectorRegistry(auto_describe=True)
        self.restarts = Counter(
            "reva_plugins_worker_restarts",
            "serve worker processes restarted after exiting unasked",
            ["worker"],
            registry=self.registry,
        )
        self.serving = Gauge(
            "reva_plugins_workers_serving", "serve worker processes serving", registry=self.registry
        )
        self.serving.set_function(lambda: sum(1 for w in self.workers if w.ready))
        self.registry.register(WorkersCollector(self._pages))

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers, supervise them until SIGTERM/SIGINT, stop them; the exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            try:
                code = self._start()
                if code is None:
                    code = self._supervise()
            finally:
                self._stop()
            return code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _start(self) -> int | None:
        """Check, reserve, plan, start; None when every worker serves, else the exit code."""
        config, settings = self.config, self.settings
        for name in unserved_tables(config):
            log.info("[grpc.services.%s]: no CS3 API served by reva-plugins; skipped", name)
        services = require_served(config, self.path)
        if settings.tls_cert is not None and settings.tls_key is not None:
            check_key_pair(settings.tls_cert, settings.tls_key, self.path)
        if self.pidfile is not None:
            check_pidfile(self.pidfile, is_server_pid)
        check_free(self.address, self.address_source)
        if settings.metrics_address:
            check_free(settings.metrics_address, "metrics.address")
        self.address = self._reserve()
        if settings.metrics_address:
            self._metrics_server = serve_metrics(settings.metrics_address, self.registry)
            host = settings.metrics_address.rpartition(":")[0]
            port = self._metrics_server.server_address[1]
            log.info("metrics on http://%s:%d/metrics (every worker's)", host, port)
        if self.pidfile is not None:
            write_pidfile(self.pidfile, is_server_pid)
        for name in services:  # built once here: every worker finds the env cached
            plan_backend(config, self.options, name, 0, lambda host, service: None).close()
        if self._stopping():  # SIGTERM while the envs were built: start nothing
            return ExitCode.OK
        base = _socket_base()
        _remove_stale_folders(Path(base))
        self.folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=base))
        for worker in self.workers:
            self._spawn(worker)
        while not all(w.ready for w in self.workers):
            if self._stopping():
                return ExitCode.OK
            for worker in self.workers:
                code = worker.proc.poll() if worker.proc is not None else None
                if code is not None:
                    self._relayed(worker)
                    log.error(
                        "worker %d (pid %d) %s before serving; stopping",
                        worker.index,
                        worker.proc.pid if worker.proc else 0,
                        _how(code),
                    )
                    return code if code > 0 else ExitCode.FAILURE
                self._check_ready(worker)
            time.sleep(POLL)
        pids = ", ".join(str(w.proc.pid) for w in self.workers if w.proc is not None)
        log.info(
            "%d worker processes serving on %s (pids %s; parent %d)",
            self.count,
            self.address,
            pids,
            os.getpid(),
        )
        return None

    def _reserve(self) -> str:
        """Bind (never listen on) the address with ``SO_REUSEPORT``: the port is picked once
        (port 0) and no other server takes it while a worker restarts. The address the workers
        bind."""
        host, _, port = self.address.rpartition(":")
        found = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, sockaddr = found[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
        except OSError:
            sock.close()
            raise
        self._reserved = sock
        return f"{host}:{sock.getsockname()[1]}"

    def _spawn(self, worker: _Worker) -> None:
        assert self.folder is not None
        with contextlib.suppress(FileNotFoundError):
            socket_path(self.folder, worker.index).unlink()
        if self._stderr is None:
            with contextlib.suppress(OSError):
                self._stderr = os.dup(2)
        role = WorkerRole(
            worker.index, self.count, os.getpid(), self.folder, self._stderr, worker.restarts
        )
        argv = [*self.argv, "--address", self.address]
        worker.tail.clear()
        worker.proc = _subprocess.spawn(
            argv,
            env={**os.environ, ENV_VAR: role.encode()},
            cwd=None,
            stdin=subprocess.DEVNULL,
            stdout=_stdout(),
            pass_fds=() if self._stderr is None else (self._stderr,),
        )
        worker.started = time.monotonic()
        worker.ready = False
        worker.restart_at = None
        worker.reload_pending = False  # it reads the config as it is now
        worker.relay = threading.Thread(
            target=_relay,
            args=(worker, worker.proc),
            name=f"worker-{worker.index}-log",
            daemon=True,
        )
        worker.relay.start()

    def _check_ready(self, worker: _Worker) -> bool:
        """True the first time ``worker``'s control socket is there (it serves)."""
        if worker.ready or worker.proc is None or self.folder is None:
            return False
        if socket_path(self.folder, worker.index).exists():
            worker.ready = True
            if worker.reload_pending:  # it may have read the config before the change
                worker.reload_pending = False
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGHUP)
            return True
        return False

    def _stopping(self) -> bool:
        """Handle the signals received: True on SIGTERM/SIGINT; SIGHUP is forwarded."""
        while self._signals:
            signum = self._signals.popleft()
            if signum != signal.SIGHUP:
                log.info("%s received", signal.Signals(signum).name)
                return True
            log.info("SIGHUP: every worker process reloads %s", self.path)
            for worker in self.workers:
                if worker.ready:
                    self._signal(worker, signal.SIGHUP)
                else:  # one starting reloads once it serves
                    worker.reload_pending = True
        return False

    def _supervise(self) -> int:
        while not self._stopping():
            now = time.monotonic()
            for worker in self.workers:
                proc = worker.proc
                if proc is None:
                    if worker.restart_at is not None and now >= worker.restart_at:
                        self._spawn(worker)
                    continue
                code = proc.poll()
                if code is None:
                    if self._check_ready(worker):
                        log.info("worker %d (pid %d) serving again", worker.index, proc.pid)
                    continue
                given_up = self._exited(worker, proc, code, now)
                if given_up is not None:
                    return given_up
            time.sleep(POLL)
        return ExitCode.OK

    def _exited(
        self, worker: _Worker, proc: subprocess.Popen[bytes], code: int, now: float
    ) -> int | None:
        """A worker exited unasked: schedule its restart; an exit code when giving up."""
        self._relayed(worker)
        assert self.folder is not None
        with contextlib.suppress(FileNotFoundError):
            socket_path(self.folder, worker.index).unlink()
        if worker.ready and now - worker.started >= _defaults.WORKER_HEALTHY_AFTER:
            worker.exits = 0
        worker.exits += 1
        worker.early_exits = 0 if worker.ready else worker.early_exits + 1
        worker.proc = None
        worker.ready = False
        if worker.early_exits >= _defaults.WORKER_START_FAILURES:
            last = f": {worker.tail[-1]}" if worker.tail else "; its lines are above"
            log.error(
                "worker %d exited %d times in a row before serving (last %s%s); giving up",
                worker.index,
                worker.early_exits,
                _how(code),
                last,
            )
            return ExitCode.FAILURE
        delay = min(
            _defaults.WORKER_RESTART_DELAY * 2 ** (worker.exits - 1),
            _defaults.WORKER_RESTART_MAX_DELAY,
        )
        log.warning(
            "worker %d (pid %d) %s; restarting it in %.1f s",
            worker.index,
            proc.pid,
            _how(code),
            delay,
        )
        self.restarts.labels(str(worker.index)).inc()
        worker.restarts += 1
        worker.restart_at = now + delay
        return None

    def _relayed(self, worker: _Worker) -> None:
        """Wait (briefly) until what ``worker`` wrote before it exited is passed on."""
        if worker.relay is not None:
            worker.relay.join(1.0)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            self._signal(worker, signum)

    @staticmethod
    def _signal(worker: _Worker, signum: int) -> None:
        if worker.proc is not None and worker.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signum)

    def _stop(self) -> None:
        """Every worker drained and gone (killed after the grace and a margin), then the
        metrics endpoint, the folder, the pid file and the port."""
        live = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        if live:
            log.info("stopping %d worker process%s", len(live), "es" if len(live) > 1 else "")
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace + _defaults.WORKER_STOP_MARGIN
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop: killed", worker.index, proc.pid)
                proc.kill()
                proc.wait()
            self._relayed(worker)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.folder is not None:
            _fs.remove_tree(self.folder, within=self.folder.parent)
        if self.pidfile is not None:
            remove_pidfile(self.pidfile)
        if self._reserved is not None:
            self._reserved.close()
        if self._stderr is not None:
            os.close(self._stderr)
        if self.folder is not None:  # a start refused in its one line says nothing more
            log.info("stopped")

    def _pages(self) -> list[str]:
        """Every serving worker's metrics page."""
        if self.folder is None:
            return []
        answers = ask_all(self.folder, self.count, "metrics")
        return [str(a["metrics"]) for a in answers.values() if "metrics" in a]


def _socket_base() -> str:
    """Where the sockets' folder goes: the temp dir, unless its path is too long for a Unix
    socket's (108 bytes with the folder's and the socket's names)."""
    base = tempfile.gettempdir()
    return base if len(base) <= MAX_SOCKET_BASE else "/tmp"  # noqa: S108 (a private mkdtemp)


def _remove_stale_folders(base: Path) -> None:
    """Remove the sockets' folders of parents that are gone (killed with ``-9``: their workers
    removed their sockets, nobody the folder); never another user's or a live server's."""
    try:
        found = list(base.glob(f"{FOLDER_PREFIX}*-*"))
    except OSError:
        return
    for folder in found:
        pid = folder.name[len(FOLDER_PREFIX) :].partition("-")[0]
        try:
            mine = folder.lstat().st_uid == os.getuid() and folder.is_dir()
        except OSError:
            continue
        if mine and pid.isdigit() and not is_server_pid(int(pid)):
            with contextlib.suppress(OSError, RevaPluginError):
                _fs.remove_tree(folder, within=base)


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _stdout() -> Any:
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def _relay(worker: _Worker, proc: subprocess.Popen[bytes]) -> None:
    """Pass a worker's stderr on to ours, whole lines at a time (the workers' lines never
    interleave mid-line), keeping its last lines."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        end = pending.rfind(b"\n") + 1
        if end:
            _write_err(pending[:end])
            worker.tail.extend(
                line.decode("utf-8", "replace") for line in pending[:end].splitlines()[-TAIL:]
            )
            pending = pending[end:]
    if pending:
        _write_err(pending + b"\n")
        worker.tail.append(pending.decode("utf-8", "replace"))
    proc.stderr.close()


def _write_err(data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(2, view)
        except OSError:
            return  # our stderr is gone: keep draining the worker's
        view = view[written:]


def die_with_parent(parent: int) -> None:
    """Make this worker receive SIGTERM when ``parent`` dies (even by ``kill -9``), and exit
    now if it died already."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        raise RevaPluginError("the parent serve process is gone; this worker stops")


class _WorkerTag(logging.Filter):
    """Starts each line of a worker's log with ``worker N:`` (they share one output)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.tag = f"worker {index}: "

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag ``record`` once (a record may pass more than one handler)."""
        if not getattr(record, "worker_tagged", False):
            record.msg = f"{self.tag}{record.msg}"
            record.worker_tagged = True
        return True


def tag_log(index: int) -> None:
    """Make every line this worker logs say which worker it is."""
    tag = _WorkerTag(index)
    for handler in logging.getLogger("reva_plugins").handlers:
        handler.addFilter(tag)
