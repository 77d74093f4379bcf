"""One plugin process: spawned in its venv, the handshake, calls over its wire, its exit
watched and explained, what it left behind reaped. Its stderr is :mod:`._plugin_stderr`'s;
keeping it running is :mod:`._supervisor`'s."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from . import _defaults, _protocol
from ._call import Call
from ._client import Client
from ._contain import descendants
from ._environ import scrubbed
from ._errors import HandshakeError, PluginCrashed, RevaPluginError
from ._plugin_stderr import StderrLog
from ._subprocess import spawn

log = logging.getLogger("reva_plugins.process")

SHUTDOWN_GRACE = _defaults.SHUTDOWN_GRACE
_LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def _level_name(level: int) -> _LogLevel:
    """The bootstrap's name for the standard level at or below ``level`` (at least debug)."""
    names: tuple[_LogLevel, ...] = ("critical", "error", "warning", "info")
    return next((name for name in names if level >= getattr(logging, name.upper())), "debug")


_INSTANCES = itertools.count(1)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one plugin process."""

    service: str
    label: str
    python: Path
    entry: Mapping[str, Any]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout: float = _defaults.START_TIMEOUT
    call_timeout: float = _defaults.CALL_TIMEOUT
    restart: str = _defaults.RESTART
    max_concurrency: int = _defaults.MAX_CONCURRENCY
    max_line: int = _defaults.MAX_LINE
    protocol_versions: tuple[int, ...] = _protocol.PROTOCOL_VERSIONS
    config: Mapping[str, Any] = field(default_factory=dict)
    limits: _protocol.ResourceLimits = field(default_factory=_protocol.ResourceLimits)
    #: what the plugin may reach (None: no sandbox)
    sandbox: _protocol.SandboxPolicy | None = None
    #: what the handshake should say when no policy is sent (``off`` or ``unavailable: why``)
    sandbox_state: str = _protocol.SANDBOX_OFF
    #: run the plugin as this user (the core runs as root)
    user: str | None = None

    @property
    def logger_name(self) -> str:
        """The logger plugin log records are re-emitted on."""
        return f"reva_plugins.plugin.{self.service}"


def plugin_environment(spec: LaunchSpec, instance: str = "") -> dict[str, str]:
    """The scrubbed environment a plugin runs with: a few host variables plus its own ``env``
    (and the ``instance`` marker its descendants inherit)."""
    env = scrubbed()
    venv_bin = str(spec.python.parent)
    env["PATH"] = os.pathsep.join(filter(None, [venv_bin, env.get("PATH", os.defpath)]))
    env["VIRTUAL_ENV"] = str(spec.python.parent.parent)
    env.update(spec.env)
    env[_protocol.COOKIE_KEY] = _protocol.COOKIE_VALUE
    env[_protocol.VERSIONS_ENV] = ",".join(map(str, spec.protocol_versions))
    env["PYTHONUNBUFFERED"] = "1"
    if instance:
        env[_protocol.INSTANCE_ENV] = instance
    return env


def marked_processes(instance: str) -> list[int]:
    """Every process (of ours to see: Linux ``/proc``) whose environment carries the plugin
    instance marker: the plugin's descendants, wherever they moved (a new session, another
    parent) unless they dropped the variable."""
    needle = f"{_protocol.INSTANCE_ENV}={instance}\0".encode()
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        # the variable itself, never a value that holds its text
        if environ.startswith(needle) or b"\0" + needle in environ:
            found.append(int(entry))
    return found


class PluginProcess:
    """One running plugin: a child interpreter speaking line-delimited JSON-RPC over a socket."""

    def __init__(
        self,
        spec: LaunchSpec,
        on_exit: Callable[[PluginProcess, int | None, bool], None] | None = None,
        *,
        on_death: Callable[[PluginProcess, int | None, bool], None] | None = None,
    ) -> None:
        """``on_death`` runs as soon as the process is gone, before in-flight calls fail (keep
        it quick); ``on_exit`` runs after them (lifecycle hooks)."""
        self.spec = spec
        self._on_death = on_death
        self.handshake: dict[str, Any] = {}
        self.started_at = 0.0
        self.start_ms = 0.0
        self.returncode: int | None = None
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None
        self._stderr = StderrLog(logging.getLogger(spec.logger_name), self._prefix)
        self._threads: list[threading.Thread] = []
        self._exited = threading.Event()
        self._stderr_done = threading.Event()
        self._closing = False
        self._refused = False  # killed for a bad start: the start's error says why, not the exit
        self.exit_reason = ""
        # unique beyond this pid namespace too: a core that sees other namespaces' processes
        # must never take another core's plugin for one of its own
        self.instance = f"{os.getpid()}-{next(_INSTANCES)}-{secrets.token_hex(6)}"
        self._strays_reaped = False
        self._aborted = False
        self._tmpdir: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The plugin's process id, once started."""
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        """True while the process runs and its wire is open."""
        return (
            self._client is not None and self._client.closed is None and not self._exited.is_set()
        )

    @property
    def calls_in_flight(self) -> int:
        """Calls sent and not answered yet."""
        return len(self._client.pending) if self._client is not None else 0

    def start(self) -> dict[str, Any]:
        """Spawn, wait for the handshake, send ``configure``; return the handshake params."""
        began = time.perf_counter()
        parent, child = socket.socketpair()
        wire_fd = -1
        try:
            # The wire is an extra fd (>= 3 even if the core runs without stdio), never stdin or
            # stdout: whatever runs before the bootstrap (a .pth file) and prints goes to stderr.
            wire_fd = fcntl.fcntl(child.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
            env = plugin_environment(self.spec, instance=self.instance)
            if self.spec.sandbox is not None:
                env["TMPDIR"] = self._tmpdir = self._private_tmpdir()
            self._proc = spawn(
                [self.spec.python, "-I", _protocol.BOOTSTRAP_FILE, self._bootstrap_arg(wire_fd)],
                env=env,
                cwd=self.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.STDOUT,
                pass_fds=(wire_fd,),
                user=self.spec.user,
            )
        except OSError as exc:
            parent.close()
            self._remove_tmpdir()
            raise HandshakeError(f"cannot start plugin: {exc}", plugin=self.spec.label) from None
        finally:
            child.close()
            if wire_fd >= 0:
                os.close(wire_fd)
        self.started_at = time.time()
        if self._aborted:  # abort() came before there was a process to kill
            self._kill_group(signal.SIGKILL)
        self._client = Client(
            parent,
            label=self.spec.label,
            max_line=self.spec.max_line,
            on_eof=self._on_eof,
            peer_pid=self._proc.pid,
        )
        self._start_thread(self._watch, "watch")
        try:
            self._handshake()
            self.call(
                _protocol.CONFIGURE,
                {"config": dict(self.spec.config)},
                timeout=self.spec.start_timeout,
            )
        except BaseException:
            self.close(grace=0)
            raise
        self.start_ms = (time.perf_counter() - began) * 1000
        return self.handshake

    def _bootstrap_arg(self, wire_fd: int) -> str:
        level = logging.getLogger(self.spec.logger_name).getEffectiveLevel()
        entry = self.spec.entry
        arg: _protocol.BootstrapInput = {
            "group": str(entry["group"]),
            "name": str(entry["name"]),
            "value": str(entry.get("value", "")),
            "distribution": str(entry.get("distribution", "")),
            "version": str(entry.get("version", "")),
            "wire_fd": wire_fd,
            "service": self.spec.service,
            "max_concurrency": self.spec.max_concurrency,
            "max_line": self.spec.max_line,
            "log_level": _level_name(level),
            "limits": self.spec.limits.as_bootstrap_input(),
            "parent": os.getpid(),
        }
        if self.spec.sandbox is not None:
            tmp = (self._tmpdir,) if self._tmpdir else ()
            arg["sandbox"] = self.spec.sandbox.as_bootstrap_input(write=tmp)
        return json.dumps(arg, separators=(",", ":"))

    def _private_tmpdir(self) -> str:
        """A temporary folder of this plugin process's own (its ``TMPDIR`` in the sandbox,
        the only one it may write to beside its driver's paths); removed when it stops."""
        path = tempfile.mkdtemp(prefix=f"reva-plugin-{self.spec.service}-")
        if self.spec.user is not None:
            entry = pwd.getpwnam(self.spec.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def _remove_tmpdir(self) -> None:
        path, self._tmpdir = self._tmpdir, None
        if path:
            shutil.rmtree(path, ignore_errors=True)

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(
            target=target, name=f"reva-{self.spec.service}-{name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _handshake(self) -> None:
        assert self._client is not None
        timeout = self.spec.start_timeout
        params, instead, problem = self._client.first_message(timeout)
        if params is None:
            if self._client.eof or self._exited.wait(0.5):
                self._exited.wait(2)
                exited = self.exit_reason or f"plugin exited with {_describe_exit(self.returncode)}"
                reason = (
                    f"{exited} before the handshake "
                    f"(the core offers protocol versions {list(self.spec.protocol_versions)})"
                )
            elif instead:
                reason = f"the plugin's first message is not a handshake: {problem}"
            else:
                reason = f"no handshake within {timeout:g} s (start_timeout)"
            self._fail_start(reason, instead)
        assert params is not None
        self.handshake = params
        chosen = params.get("core_protocol")
        if chosen not in self.spec.protocol_versions:
            self._fail_start(
                f"protocol version mismatch: the core speaks {list(self.spec.protocol_versions)}, "
                f"the plugin chose {chosen!r}"
            )

    def _fail_start(self, reason: str, instead: str = "") -> NoReturn:
        self._refused = True
        self._kill_group(signal.SIGKILL)
        self._exited.wait(2)
        self._join_stderr()
        if instead:
            reason = f"{reason}\n--- plugin wrote instead of a handshake ---\n{instead}"
        raise HandshakeError(
            reason,
            plugin=self.spec.label,
            returncode=self.returncode,
            stderr_tail=self.stderr_tail(),
        )

    def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Ask the plugin to shut down, then terminate and kill its whole process group."""
        if self._proc is None:
            return
        self._closing = True
        client = self._client
        if client is not None and self.alive and grace > 0:
            with contextlib.suppress(RevaPluginError):
                client.send(_protocol.encode_request(0, _protocol.SHUTDOWN, {}))
        if client is not None:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_WR)
        try:
            self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._kill_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGKILL)
                self._proc.wait()
        self._kill_group(signal.SIGKILL)  # grandchildren left in the plugin's group
        self._exited.wait(2)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2)
        if client is not None:
            client.sock.close()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._remove_tmpdir()

    def abort(self) -> None:
        """Kill the process now, from any thread: a :meth:`start` in progress fails at once
        (and cleans up after itself) instead of waiting out ``start_timeout``."""
        self._aborted = True
        self._closing = True  # its exit is ours, not a crash
        self._kill_group(signal.SIGKILL)

    def _reap_strays(self) -> None:
        """The plugin is gone (a zombie: its pid still names its group): kill what it left
        behind, its process group and every process carrying its instance marker (those that
        left the group with ``setsid()``, which its death handed to init)."""
        proc = self._proc
        if self._strays_reaped or proc is None:
            return
        self._strays_reaped = True
        if proc.returncode is None:  # not reaped (by close()): the group id is still its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for _ in range(10):  # a stray may have started another meanwhile; it is marked too
            found = marked_processes(self.instance)
            if not found:
                break
            for pid in found:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        self._remove_tmpdir()

    def _kill_group(self, sig: int) -> None:
        """Signal the plugin's process group; with SIGKILL also every descendant that left the
        group (``setsid()``), found while the plugin (their subreaper) still holds them."""
        proc = self._proc
        if proc is None:
            return
        running = proc.returncode is None
        found = descendants(proc.pid) if running and sig == signal.SIGKILL else []
        if running:  # on a Python 3.10 core the bootstrap may not have made its group yet
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    # -- calls -----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Any:
        """:meth:`invoke` a call of ``method`` made of these parts."""
        return self.invoke(Call(self.spec.service, method, params, timeout, meta or {}))

    def invoke(self, call: Call) -> Any:
        """Send ``call``; raise the plugin's error, typed.

        Its ``timeout`` may shorten the driver's ``call_timeout``, never extend it: the
        operator's bound holds whoever calls (a gRPC client's deadline, a script's
        ``--timeout``).
        """
        client = self._client
        if client is None:
            raise self._crashed("plugin is not running")
        return client.invoke(call, self.spec.call_timeout)

    async def ainvoke(self, call: Call) -> Any:
        """:meth:`invoke` for a coroutine, never blocking its event loop."""
        client = self._running_client()
        return await client.ainvoke(call, self.spec.call_timeout)

    def _running_client(self) -> Client:
        client = self._client
        if client is None:
            raise self._crashed("plugin is not running")
        return client

    def ping(self, timeout: float = 5.0) -> float:
        """Round-trip a ``$/ping``; return its time in milliseconds."""
        began = time.perf_counter()
        self.call(_protocol.PING, {}, timeout=timeout)
        return (time.perf_counter() - began) * 1000

    # -- watching --------------------------------------------------------------------------

    def _on_eof(self) -> None:
        """The wire closed: the process should be exiting; make sure it does."""
        timer = threading.Timer(2.0, self._kill_group, (signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def _watch(self) -> None:
        """Wait for the process to exit, then fail what is in flight and tell the supervisor."""
        proc = self._proc
        assert proc is not None
        assert self._client is not None
        if self._stderr.pump(proc, self._reap_strays):
            self._stderr_done.set()
        else:
            self._start_thread(self._read_stderr, "stderr")
        cpu = _cpu_seconds_at_exit(proc.pid)  # waits for the exit, leaves the zombie
        self._reap_strays()
        self.returncode = proc.wait()
        self._join_stderr()
        expected = self._closing
        self.exit_reason = _exit_reason(self.returncode, self.spec.limits, cpu, self._stderr.tail())
        if self._on_death is not None:
            self._on_death(self, self.returncode, expected)
        with contextlib.suppress(OSError):
            # a descendant that inherited the wire (a fork) must not keep a reader waiting
            self._client.sock.shutdown(socket.SHUT_RD)
        self._client.close(self._crashed(self.exit_reason))
        self._exited.set()
        if not expected and not self._refused:
            log.warning("%s: %s", self.spec.label, self.exit_reason)
        if self._on_exit is not None:
            self._on_exit(self, self.returncode, expected)

    def _read_stderr(self) -> None:
        """Without pidfds: stderr read by a thread of its own, until its end."""
        assert self._proc is not None
        assert self._proc.stderr is not None
        try:
            self._stderr.read(self._proc.stderr)
        finally:
            self._stderr_done.set()

    def _prefix(self) -> str:
        """What marks a line as this plugin's: ``[userprovider pid 123]``."""
        return f"[{self.spec.service} pid {self.pid}]"

    def stderr_tail(self) -> str:
        """The last lines the plugin wrote to stderr (logs of warning level and above included)."""
        return self._stderr.tail()

    def _join_stderr(self) -> None:
        current = threading.current_thread()
        for thread in self._threads:
            if thread.name.endswith("stderr") and thread is not current:
                thread.join(timeout=1)
        if self._threads and self._threads[0] is not current:
            self._stderr_done.wait(1)  # the watcher reads stderr (see StderrLog.pump)

    def _crashed(self, message: str) -> PluginCrashed:
        return PluginCrashed(
            message,
            plugin=self.spec.label,
            returncode=self.returncode,
            stderr_tail=self.stderr_tail(),
        )


def _cpu_seconds_at_exit(pid: int) -> float | None:
    """The CPU time a child used, read once it has exited but before it is reaped (Linux)."""
    if not hasattr(os, "waitid"):
        return None
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


_MEMORY_SIGNS = (
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "bad_alloc",
    "can't start new thread",
)


def _exit_reason(
    returncode: int | None, limits: _protocol.ResourceLimits, cpu: float | None, tail: str
) -> str:
    """Why the plugin exited, naming the resource limit it exceeded if it was one."""
    described = f"plugin exited with {_describe_exit(returncode)}"
    if returncode is None or returncode == 0:
        return described
    exceeded = ""
    if limits.cpu_seconds is not None and (
        returncode == -signal.SIGXCPU
        or (returncode == -signal.SIGKILL and cpu is not None and cpu >= limits.cpu_seconds)
    ):
        exceeded = f"cpu_seconds={limits.cpu_seconds}"
    elif limits.memory_mb is not None and any(sign in tail for sign in _MEMORY_SIGNS):
        exceeded = f"memory_mb={limits.memory_mb}"
    elif limits.open_files is not None and "Too many open files" in tail:
        exceeded = f"open_files={limits.open_files}"
    return f"plugin exceeded {exceeded} ({described})" if exceeded else described


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "an unknown status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
