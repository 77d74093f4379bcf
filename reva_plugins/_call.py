"""A call as one value: made once by the service proxy and handed down unchanged, through the
``service_call`` wrappers, the driver and the plugin process to the client that sends it; the
thread and the asyncio paths carry the same value."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._defaults import DEADLINE_SLACK
from ._errors import CallCancelled, CallTimeout, UsageError
from ._protocol import META_DEADLINE

if TYPE_CHECKING:
    from ._client import Cancellation


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


@dataclass(frozen=True, slots=True)
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

    def __post_init__(self) -> None:
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        object.__setattr__(self, "deadline", deadline)

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

    def bounded(self, limit: float, plugin: str) -> Call:
        """This call as a plugin process sends it: its timeout at most ``limit`` (the operator's
        ``call_timeout`` holds whoever calls), and a meta sent tells the plugin the deadline.
        :class:`CallTimeout` when no time is left."""
        timeout = limit if self.timeout is None else min(self.timeout, limit)
        if timeout <= 0:  # a deadline already past (never "no deadline")
            raise CallTimeout(f"{self.method}: no time left for the call", plugin=plugin)
        meta = self.meta
        if meta and timeout:
            meta = {**meta, META_DEADLINE: time.time() + timeout}
        return Call(self.service, self.method, self.params, timeout, meta, self.cancellation)

    def cancelled(self, plugin: str) -> CallCancelled:
        """The error of this call cancelled by its caller."""
        return CallCancelled(f"{self.method} was cancelled", plugin=plugin)

    def timed_out(self, plugin: str) -> CallTimeout:
        """The error of this call out of time."""
        return CallTimeout(f"{self.method} timed out after {self.timeout:g} s", plugin=plugin)

    def interrupted(self, plugin: str) -> CallCancelled | CallTimeout:
        """The error of this call's task cancelled: at its deadline (by whoever set it) the call
        timed out, before it the caller cancelled it."""
        deadline = self.deadline
        if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK:
            return self.timed_out(plugin)
        return self.cancelled(plugin)
