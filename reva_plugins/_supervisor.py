"""Supervision: one plugin process kept running, restarted after a crash with backoff, the
service marked failed after too many crashes."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from . import _defaults
from ._errors import PluginCrashed, ProcessError, RevaPluginError
from ._process import LaunchSpec, PluginProcess

ServiceState = Literal["stopped", "starting", "running", "restarting", "failed"]


class Supervisor:
    """Keeps one plugin process running: starts it, restarts it after a crash with exponential
    backoff, and marks the service failed after too many crashes.

    Starting is explicit, as go-plugin's ``Start()``: :meth:`start` spawns the process unless one
    is running, and is idempotent and thread-safe. :meth:`call` calls it first, so a plugin nobody
    started starts on its first call, and a crashed one restarts on the next call.
    """

    MAX_CRASHES = _defaults.MAX_CRASHES
    CRASH_WINDOW = _defaults.CRASH_WINDOW
    BACKOFF_FIRST = _defaults.BACKOFF_FIRST
    BACKOFF_CAP = _defaults.BACKOFF_CAP

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        on_start: Callable[[PluginProcess], None],
        on_exit: Callable[[PluginProcess, int | None, bool], None],
        on_restart: Callable[[int, float], None],
    ) -> None:
        """``on_restart(restarts, delay)`` runs before a crashed plugin is started again."""
        self.spec = spec
        self._on_start = on_start
        self._on_exit = on_exit
        self._on_restart = on_restart
        self._lock = threading.Lock()
        #: the current process (it may have exited), None before the first start
        self.current: PluginProcess | None = None
        self._crashes: collections.deque[float] = collections.deque(maxlen=self.MAX_CRASHES)
        self._failed: ProcessError | None = None
        self._closed = False
        self._closing = threading.Event()  # interrupts a backoff wait
        self._starting = False
        self._starting_process: PluginProcess | None = None
        self.restarts = 0

    @property
    def process(self) -> PluginProcess | None:
        """The current process (it may have exited), None before the first start; never
        starts one (:meth:`start` does)."""
        return self.current

    @property
    def failure(self) -> ProcessError | None:
        """Why the service is marked failed (it crashed too often), or None."""
        return self._failed

    @property
    def state(self) -> ServiceState:
        """Where the plugin is in its life; ``restarting`` also when a crashed plugin waits for
        the next call to restart it."""
        if self._failed is not None:
            return "failed"
        if self._closed:
            return "stopped"
        current = self.current
        if self._starting:
            return "starting" if current is None else "restarting"
        if current is None:
            return "stopped"
        if current.alive:
            return "running"
        return "failed" if self.spec.restart == "never" else "restarting"

    def start(self) -> PluginProcess:
        """Start the plugin unless it is running; return the running process.

        Idempotent: while the process runs this returns it at once; concurrent callers wait for
        one start. After a crash it starts a new process (after the backoff) unless
        ``restart = 'never'`` or the service is marked failed; after :meth:`close` it raises.
        Waits up to ``start_timeout`` for the handshake.
        """
        current = self.current
        if current is not None and current.alive:
            return current
        with self._lock:
            return self._ensure()

    def _ensure(self) -> PluginProcess:
        current = self.current
        if current is not None and current.alive:
            return current
        if self._closed:
            raise PluginCrashed("the host is closed", plugin=self.spec.label)
        if self._failed is not None:
            raise self._failed
        if current is not None and self.spec.restart == "never":
            raise current._crashed(f"{current.exit_reason} and restart = 'never'")
        self._starting = True
        try:
            if current is not None:
                self.restarts += 1
                self._on_restart(self.restarts, self._backoff_delay())
            self._wait_backoff()
            process = PluginProcess(self.spec, on_exit=self._on_exit, on_death=self._count_crash)
            self._starting_process = process  # before the check: close() sees it, or we see closed
            if self._closed:
                raise PluginCrashed("the host is closed", plugin=self.spec.label)
            try:
                process.start()
            except RevaPluginError:
                if self._closed:  # aborted by close()
                    raise PluginCrashed("the host is closed", plugin=self.spec.label) from None
                raise
            if self._closed:
                process.close(grace=0)
                raise PluginCrashed("the host is closed", plugin=self.spec.label)
            self.current = process
        finally:
            self._starting = False
            self._starting_process = None
        self._on_start(process)
        return process

    def _backoff_delay(self) -> float:
        if not self._crashes:
            return 0.0
        delay = min(self.BACKOFF_FIRST * 2.0 ** (len(self._crashes) - 1), self.BACKOFF_CAP)
        return max(0.0, self._crashes[-1] + delay - time.monotonic())

    def _wait_backoff(self) -> None:
        remaining = self._backoff_delay()
        if remaining > 0:
            self._closing.wait(remaining)

    def _count_crash(self, process: PluginProcess, returncode: int | None, expected: bool) -> None:
        if not expected:
            now = time.monotonic()
            self._crashes.append(now)
            recent = [t for t in self._crashes if now - t <= self.CRASH_WINDOW]
            if len(recent) >= self.MAX_CRASHES:
                self._failed = PluginCrashed(
                    f"crashed {len(recent)} times in {self.CRASH_WINDOW:g} s; the service is "
                    "marked failed until the host is reloaded",
                    plugin=self.spec.label,
                    returncode=returncode,
                    stderr_tail=process.stderr_tail(),
                )

    def call(self, method: str, params: dict[str, Any], *, timeout: float | None = None) -> Any:
        """Call ``method`` in the plugin, starting it first if need be."""
        return self.start().call(method, params, timeout=timeout)

    def running(self) -> PluginProcess | None:
        """The process if it runs (no start, no wait): an event loop's fast path."""
        current = self.current
        return current if current is not None and current.alive else None

    def close(self) -> None:
        """Shut the plugin down; later calls fail. A start in progress (a slow import, a
        backoff) is cut short rather than waited for."""
        self._closed = True
        self._closing.set()
        starting = self._starting_process
        if starting is not None:
            starting.abort()
        with self._lock:
            self._closed = True
            process, self.current = self.current, None
        if process is not None:
            process.close()
