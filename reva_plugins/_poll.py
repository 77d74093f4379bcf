"""Polling a socket briefly before a read blocks, for both ends of the wire: the core's lone
caller waiting for its reply, and the plugin's reader waiting for the next request.

With the other process on another CPU, a message that arrives while the reader polls needs no
wake-up: a cross-CPU interrupt, which on a virtual machine costs tens of microseconds on both
sides. A poll that finds nothing makes the next reads block at once (more of them each time),
so a slow peer or an idle plugin is hardly polled for; on one CPU nothing is polled (the poll
would take the CPU from the process it waits for).

Standard library only: the bootstrap loads this file by path (as it loads ``_wire``), at its
first read, so a plugin's start does not pay for it.
"""

from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: seconds a reader polls before its read blocks
SPIN = 50e-6
#: after a poll that found nothing, that many reads (doubling, up to this) block at once
SPIN_BACKOFF_MAX = 64
#: seconds between two looks at the CPUs this process (and its peer) may use: pinning changes
CPUS_RECHECK = 0.25


class Spinner:
    """The poll before each read of one fd; ``peer``: the other process's pid, when known (both
    processes count for whether they share one CPU)."""

    __slots__ = ("alone", "backoff", "cpus_at", "fd", "peer", "poll", "skip")

    def __init__(self, fd: int, peer: int | None = None) -> None:
        self.fd = fd
        self.peer = peer
        self.poll: Callable[[int], list[tuple[int, int]]] | None = None  # made at the first spin
        self.skip = 0  # reads left that block at once
        self.backoff = 0
        self.cpus_at = -CPUS_RECHECK  # when the CPUs were looked at
        self.alone = False

    def one_cpu(self) -> bool:
        """Whether this process (and the peer) may run on one and the same CPU only (pinned, or
        a one-CPU machine): looked at every ``CPUS_RECHECK``."""
        now = time.monotonic()
        if now - self.cpus_at < CPUS_RECHECK:
            return self.alone
        self.cpus_at = now
        try:
            cpus = os.sched_getaffinity(0)
            if self.peer is not None:
                cpus |= os.sched_getaffinity(self.peer)
            self.alone = len(cpus) == 1
        except (AttributeError, OSError):
            self.alone = (os.cpu_count() or 1) == 1
        return self.alone

    def spin(self) -> None:
        """Before a read: poll the fd for up to ``SPIN``, unless a backoff says this read
        blocks at once or the CPU is shared. Found nothing: the next reads block at once,
        twice as many as last time (up to ``SPIN_BACKOFF_MAX``); found something: start over."""
        if self.skip:
            self.skip -= 1
            return
        if time.monotonic() - self.cpus_at < CPUS_RECHECK:  # one_cpu's answer, without a call
            if self.alone:
                return
        elif self.one_cpu():
            return
        poll = self.poll
        if poll is None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            poll = self.poll = poller.poll
        clock = time.perf_counter
        deadline = clock() + SPIN
        while not poll(0):
            if clock() >= deadline:
                self.backoff = self.skip = min(self.backoff * 2 or 1, SPIN_BACKOFF_MAX)
                return
        self.backoff = 0
