"""The one place subprocesses are started: argv lists, never a shell, output captured."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
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
        proc = subprocess.run(
            args,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandFailed(args, None, f"command not found: {exc.filename}") from None
    except subprocess.TimeoutExpired as exc:
        out = (exc.output or b"").decode("utf-8", "replace")
        raise CommandFailed(args, None, f"{out}\ntimed out after {timeout} s") from None
    output = proc.stdout.decode("utf-8", "replace")
    log.debug(
        "run: %s exited %s in %.3f s", args[0], proc.returncode, time.perf_counter() - started
    )
    if proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, output)
    return output


def spawn(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    stdin: int | IO[Any],
    stdout: int | IO[Any],
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a long-running child in its own session (so its process group can be reaped).

    Its stderr is a pipe (``.stderr``); ``stdout=subprocess.STDOUT`` sends its stdout there too.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("spawn: %s", args)
    read_end = write_end = None
    if stdout == subprocess.STDOUT:  # Popen has no such option: share one pipe ourselves
        read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=stdin,
            stdout=stdout if write_end is None else write_end,
            stderr=subprocess.PIPE if write_end is None else write_end,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            close_fds=True,
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
