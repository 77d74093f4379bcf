"""A call in flight, as the core's client keeps it: its slot (filled with the result or the
error), and how its owner learns of it: a thread sleeps on an eventfd waker, an asyncio call's
future is settled on its own loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
from typing import Any


class Waker:
    """What a waiting caller sleeps on: an eventfd. Waking it is a ``write``, which drops the GIL
    while the kernel wakes the thread (a lock release wakes with the GIL held). Measured side by
    side on two vCPUs, 16 unpinned threads made 36-44k calls/s this way against 20-29k with a
    per-call lock; a pipe did no better than an eventfd and costs two fds."""

    __slots__ = ("fd", "poller")

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def wait(self, timeout: float | None) -> bool:
        """Sleep until woken (True) or ``timeout`` seconds pass (False)."""
        if not self.poller.poll(None if timeout is None else timeout * 1000):
            return False
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return False
        return True

    def wake(self) -> None:
        os.eventfd_write(self.fd, 1)

    def __del__(self) -> None:
        # only a waker left behind by an interrupted wait is ever dropped; whoever was to
        # wake it holds a reference while it writes
        with contextlib.suppress(OSError):
            os.close(self.fd)


#: wakers not in use: one per thread that waits at a time, kept for the next (list.pop and
#: list.append are atomic)
idle_wakers: list[Waker] = []
# a forked child must not share its parent's eventfds: a wake-up could reach the wrong process
os.register_at_fork(after_in_child=idle_wakers.clear)


def take_waker() -> Waker:
    try:
        return idle_wakers.pop()
    except IndexError:
        return Waker()


class Slot:
    """One call in flight. Its owner, when it has to wait, sleeps on ``waker`` (taken only
    then: a lone caller reading its own reply never waits) until the slot is filled;
    ``signalled`` says a wake-up was sent (exactly one per wait). An asyncio call's slot has a
    ``future`` instead, settled in its ``loop`` (whose thread is ``thread``)."""

    # class defaults, no __init__: a lone caller's slot sets only what it uses (a slot lives
    # for one call, and this is on every call's path)
    future: asyncio.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    thread = 0
    waker: Waker | None = None
    done = False
    waiting = False
    signalled = False
    result: Any = None
    error: BaseException | None = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if not future.done():  # a cancelled task's future is done already
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def settle_from_anywhere(slot: Slot) -> None:
    """Settle an asyncio call's future: at once on its loop's thread, else through the loop
    (a loop that closed meanwhile has nobody left to tell)."""
    assert slot.future is not None
    assert slot.loop is not None
    if threading.get_ident() == slot.thread:
        _settle(slot.future, slot.result, slot.error)
    else:
        with contextlib.suppress(RuntimeError):
            slot.loop.call_soon_threadsafe(_settle, slot.future, slot.result, slot.error)
