"""The event loop the gRPC server runs on, in a thread of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class EventLoopThread:
    """An asyncio event loop running in a thread of its own, for the gRPC server; its default
    executor (``asyncio.to_thread``: in-process drivers, plugin starts) has ``workers``
    threads, and reloads have a thread of their own. :meth:`run` and :meth:`submit` hand it
    coroutines from other threads."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, *, workers: int) -> None:
        """Start the loop and its thread."""
        loop = self._loop = asyncio.new_event_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="rpc"
        )
        loop.set_default_executor(self._executor)
        # reloads wait out drains: never on the threads RPCs need
        self._admin = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="admin"
        )
        self._thread = threading.Thread(target=loop.run_forever, name="serve-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and wait for what it returns or raises."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def in_admin_thread(self, func: Callable[[], Any]) -> Any:
        """``func()`` in the admin thread (reloads), awaited on the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._admin, func)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop without waiting (in the order submitted); dropped when
        the loop is not running."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # closed meanwhile
            coro.close()

    def stop(self) -> None:
        """Run what is queued, then stop and close the loop and its executor."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            self.run(asyncio.sleep(0))  # callbacks queued by closing hosts run first
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        # not waited for: in-process code that never returns must not hang the shutdown
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._admin.shutdown(wait=False, cancel_futures=True)
        loop.close()
        self._loop = self._thread = None
