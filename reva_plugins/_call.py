"""A call as one value: made once by the service proxy and handed down unchanged, through the
``service_call`` wrappers, the driver and the plugin process to the client that sends it; the
thread and the asyncio paths carry the same value. And :class:`Cancellation`, which a caller
passes to end its calls from another thread."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._defaults import DEADLINE_SLACK
from ._errors import CallCancelled, CallTimeout, UsageError
from ._protocol import META_DEADLINE


def checked_timeout(timeout: object, plugin: str) -> float | None:
    """A caller's ``timeout`` argument: None or a number of seconds that is not NaN (True, NaN
    and text would otherwise pass as "no caller timeout" or fail deep inside as a bare
    ``TypeError``); :class:`UsageError` naming the argument otherwise."""
    if timeout is None:
        return None
    number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if number and not math.isnan(timeout):  # type: ignore[arg-type]
        return timeout  # type: ignore[return-value]
    raise UsageError(
        f"timeout must be None or a number of seconds, not {timeout!r:.40}", plugin=plugin
    )


class Cancellation:
    """Cancels a call from another thread: pass it as ``ServiceProxy.call(...,
    cancellation=c)``; ``c.cancel()`` ends the call at once with :class:`CallCancelled` and
    sends the plugin ``$/cancel`` (its ``context.cancelled`` is set). One cancellation may serve
    several calls; cancelling is idempotent and a call started after it fails at once."""

    __slots__ = ("_callbacks", "_cancelled", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel every call using this (from any thread; a second call does nothing)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` on :meth:`cancel` (now, if it was cancelled already); returns
        what forgets it again."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


@dataclass(frozen=True, slots=True, init=False)
class Call:
    """One call of a service method, its arguments bound to the method's parameters."""

    service: str
    method: str
    #: keyword params: read, never changed, below the proxy
    params: dict[str, Any]
    #: seconds the caller allows (None: the driver's ``call_timeout``, which it never extends)
    timeout: float | None = None
    #: the caller's context sent with the call (a copy: ``service_call`` wrappers may add to it)
    meta: dict[str, Any] = field(default_factory=dict)
    #: lets another thread end the call (:class:`CallCancelled`)
    cancellation: Cancellation | None = None
    #: when ``timeout`` runs out (``time.monotonic()``), None without one
    deadline: float | None = field(init=False, compare=False)

    def __init__(
        self,
        service: str,
        method: str,
        params: dict[str, Any],
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
        cancellation: Cancellation | None = None,
    ) -> None:
        # Every call makes one of these: each slot is set through its descriptor, at half the
        # cost of the generated frozen __init__ (0.5 against 0.9 us), which looks
        # object.__setattr__ up for every field
        _set_service(self, service)
        _set_method(self, method)
        _set_params(self, params)
        _set_timeout(self, timeout)
        _set_meta(self, {} if meta is None else meta)
        _set_cancellation(self, cancellation)
        _set_deadline(self, None if timeout is None else time.monotonic() + timeout)

    def hook_kwargs(self, proxy: object) -> dict[str, Any]:
        """The arguments of the ``service_call`` hook for this call through ``proxy``."""
        return {
            "service": self.service,
            "method": self.method,
            "params": self.params,
            "meta": self.meta,
            "timeout": self.timeout,
            "proxy": proxy,
            "cancellation": self.cancellation,
        }

    def bound(self, limit: float | None, plugin: str) -> tuple[float | None, dict[str, Any]]:
        """The timeout and meta this call is sent with: its timeout at most ``limit`` (the
        operator's ``call_timeout`` holds whoever calls; None: no bound), and a meta sent tells
        the plugin the deadline. :class:`CallTimeout` when no time is left. (A pair, not a
        second Call: this is on every call's path.)"""
        timeout = self.timeout
        if limit is None:
            return timeout, self.meta
        if timeout is None or timeout > limit:
            timeout = limit
        if timeout <= 0:  # a deadline already past (never "no deadline")
            raise CallTimeout(f"{self.method}: no time left for the call", plugin=plugin)
        meta = self.meta
        if meta:
            meta = {**meta, META_DEADLINE: time.time() + timeout}
        return timeout, meta

    def cancelled(self, plugin: str) -> CallCancelled:
        """The error of this call cancelled by its caller."""
        return CallCancelled(f"{self.method} was cancelled", plugin=plugin)

    def timed_out(self, plugin: str, timeout: float | None = None) -> CallTimeout:
        """The error of this call out of time (after ``timeout``, by default its own)."""
        after = self.timeout if timeout is None else timeout
        return CallTimeout(f"{self.method} timed out after {after:g} s", plugin=plugin)

    def interrupted(self, plugin: str) -> CallCancelled | CallTimeout:
        """The error of this call's task cancelled: at its deadline (by whoever set it) the call
        timed out, before it the caller cancelled it."""
        deadline = self.deadline
        if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK:
            return self.timed_out(plugin)
        return self.cancelled(plugin)


#: each slot's setter (see ``Call.__init__``)
(
    _set_service,
    _set_method,
    _set_params,
    _set_timeout,
    _set_meta,
    _set_cancellation,
    _set_deadline,
) = (
    vars(Call)[name].__set__
    for name in ("service", "method", "params", "timeout", "meta", "cancellation", "deadline")
)
