"""The one place subprocesses are started: argv lists, never a shell, output captured."""

from __future__ import annotations

import logging
import os
import pwd
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from ._redact import redact

log = logging.getLogger("reva_plugins.run")

TAIL_LINES = 25


class CommandFailed(Exception):
    """A command exited non-zero (or could not start); holds what it printed."""

    def __init__(self, argv: Sequence[str], returncode: int | None, output: str) -> None:
        super().__init__(f"{argv[0]} exited with {returncode}")
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output

    @property
    def tail(self) -> str:
        """The last lines of the command's output."""
        return tail(self.output)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of ``text``."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> str:
    """Run ``argv`` to completion and return its stdout+stderr; raise :class:`CommandFailed`."""
    args = [os.fspath(a) for a in argv]
    log.debug("run: %s", [redact(a) for a in args])
    started = time.perf_counter()
    try:
        # A session of its own: what it starts (a build backend under uv) is killed with it
        # when the command is interrupted (Ctrl-C) or times out, not left running as an orphan.
        proc = subprocess.Popen(
            args,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandFailed(args, None, f"command not found: {exc.filename}") from None
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_session(proc)
        out = (exc.output or b"").decode("utf-8", "replace")
        raise CommandFailed(args, None, f"{out}\ntimed out after {timeout} s") from None
    except BaseException:
        _kill_session(proc)
        raise
    output = stdout.decode("utf-8", "replace")
    log.debug(
        "run: %s exited %s in %.3f s", args[0], proc.returncode, time.perf_counter() - started
    )
    if proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, output)
    return output


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` and every process of its session (its group: the session's leader's)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # gone already: its group with it, or nothing left of it to kill
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def spawn(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    stdin: int | IO[Any],
    stdout: int | IO[Any],
    pass_fds: Sequence[int] = (),
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running child in its own process group (so the group can be reaped), from
    the core's one long-lived spawner thread (see :class:`_Spawner`); as ``user`` (with that
    user's group and no other) when given, which needs a core running as root.

    Its stderr is a pipe (``.stderr``); ``stdout=subprocess.STDOUT`` sends its stdout there too.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("spawn: %s", args)
    read_end = write_end = None
    if stdout == subprocess.STDOUT:  # Popen has no such option: share one pipe ourselves
        read_end, write_end = os.pipe()
    try:
        proc = _SPAWNER.popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=stdin,
            stdout=stdout if write_end is None else write_end,
            stderr=subprocess.PIPE if write_end is None else write_end,
            **_OWN_GROUP,
            pass_fds=tuple(pass_fds),
            close_fds=True,
            **_as_user(user),
        )
    except BaseException:
        if read_end is not None:
            os.close(read_end)
        raise
    finally:
        if write_end is not None:
            os.close(write_end)
    if read_end is not None:
        proc.stderr = open(read_end, "rb")  # noqa: SIM115 - owned by the caller, like Popen's
    return proc


def _as_user(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


# Its own process group, not its own session: a session per plugin also puts each plugin in its
# own CFS autogroup (with ``sched_autogroup``), which costs the core ~30 % throughput on one CPU.
# Python 3.10 has no ``process_group``, and a ``preexec_fn=os.setpgrp`` is unsafe in the
# threaded core (and forces a slow fork), so there the bootstrap calls ``setpgid`` itself.
_OWN_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {}


class _Spawner:
    """Runs ``Popen`` on one daemon thread that lives as long as the core process.

    Linux sends a child's parent-death signal (the bootstrap sets ``PR_SET_PDEATHSIG``) when the
    *thread* that forked it ends, not the process: a plugin started from a short-lived thread
    (an executor worker) would be killed with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._owner = 0  # the pid whose thread serves the queue (a forked core starts its own)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen(*args, **kwargs)``, forked by the spawner thread."""
        done: Future[subprocess.Popen[bytes]] = Future()
        with self._lock:
            if self._owner != os.getpid():
                self._jobs = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(self._jobs,), daemon=True, name="reva-spawner"
                ).start()
                self._owner = os.getpid()
            self._jobs.put((lambda: subprocess.Popen(*args, **kwargs), done))
        return done.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:
            job, done = jobs.get()
            try:
                done.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                done.set_exception(exc)


_SPAWNER = _Spawner()
