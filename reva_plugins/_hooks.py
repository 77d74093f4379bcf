"""The host's extension points: the one job pluggy has in reva-plugins.

pluggy carries what an application embedding the core plugs into its :class:`~reva_plugins.Host`
(metrics, tracing, audit logs, alerts): implement any of the hooks below on an object, mark them
with :data:`hookimpl`, and ``host.register(obj)``. pluggy is *not* the way to a driver: a call is
a plain method call, ``ServiceProxy.method(*args)`` → bind the arguments → ``driver.invoke(method,
params, timeout, meta)``, and service types are plain classes (their methods are the contract).

**Lifecycle hooks** are called once per event, from the thread where it happened (a caller's, or
a process watcher's): keep them quick and do not call the service from them.

- ``env_built(service, env_key, seconds)``: an environment was built for ``service`` (not when a
  cached one was reused).
- ``plugin_started(service, pid, handshake, seconds, restarts)``: a plugin process completed its
  handshake and configure in ``seconds``; ``restarts`` is how often the service's plugin was
  restarted after a crash (0 for the first start).
- ``plugin_exited(service, pid, returncode, expected)``: a plugin process exited; ``expected`` is
  False for a crash.
- ``plugin_restarting(service, restarts, delay)``: the supervisor restarts a crashed plugin (this
  is restart number ``restarts``) after ``delay`` seconds of backoff.
- ``service_failed(service, error)``: the plugin crashed too often and the service is marked
  failed; calls raise ``error`` until the host is rebuilt.

**The call hook** ``service_call(service, method, params, meta, timeout, proxy)`` runs around
every call made through a proxy, in the caller's thread. The host's own implementation (it runs
last) invokes the driver; register a wrapper around it::

    class Metrics:
        @hookimpl(wrapper=True)
        def service_call(self, service, method):
            began = time.perf_counter()
            outcome = "ok"
            try:
                return (yield)  # the call; raises what the call raises
            except RevaPluginError as exc:
                outcome = type(exc).__name__
                raise
            finally:
                observe(service, method, outcome, time.perf_counter() - began)

Take only the arguments you need (pluggy passes them by name). ``meta`` is the dict sent with the
call (the caller's, copied, or empty): a tracing wrapper may add to it (e.g. a ``traceparent``)
and a plugin method that accepts ``context`` sees it. ``params`` are the bound arguments: read,
do not change them. A plain (non-wrapper) implementation that returns something other than None
answers the call instead of the driver (a test double, a cache). With no ``service_call``
implementation registered a call does not touch pluggy at all.

``ServiceProxy.acall`` (and so ``reva-plugins serve``) runs the same implementations, in the same
order, around a call it awaits: each wrapper runs up to its ``yield`` on the event loop, before
the request is sent, and resumes there when the reply is in, so it never blocks the loop if it
is quick. A task cancelled meanwhile reaches the wrappers as :class:`CallCancelled`, as a
cancelled call in a thread does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pluggy import HookCaller

    from ._client import Cancellation
    from ._errors import RevaPluginError
    from ._proxy import ServiceProxy

PROJECT = "reva"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class HostSpec:
    """The hooks a host calls; register an object implementing some of them with
    ``Host.register``."""

    @hookspec
    def env_built(self, service: str, env_key: str, seconds: float) -> None:
        """An environment was built for ``service`` in ``seconds``."""

    @hookspec
    def plugin_started(
        self, service: str, pid: int, handshake: dict[str, Any], seconds: float, restarts: int
    ) -> None:
        """A plugin process for ``service`` completed its handshake and configure."""

    @hookspec
    def plugin_exited(self, service: str, pid: int, returncode: int | None, expected: bool) -> None:
        """A plugin process for ``service`` exited; ``expected`` is False for a crash."""

    @hookspec
    def plugin_restarting(self, service: str, restarts: int, delay: float) -> None:
        """The plugin for ``service`` crashed and is restarted after ``delay`` seconds."""

    @hookspec
    def service_failed(self, service: str, error: RevaPluginError) -> None:
        """``service`` crashed too often and is marked failed."""

    @hookspec(firstresult=True)
    def service_call(
        self,
        service: str,
        method: str,
        params: dict[str, Any],
        meta: dict[str, Any],
        timeout: float | None,
        proxy: ServiceProxy,
        cancellation: Cancellation | None,
    ) -> Any:
        """One call through ``proxy``; wrap it with ``@hookimpl(wrapper=True)``."""


_Teardowns = list[tuple[bool, Generator[Any, Any, Any]]]


async def around(
    caller: HookCaller,
    kwargs: dict[str, Any],
    inner: Callable[[], Awaitable[Any]],
    *,
    innermost: Callable[[object], bool],
    cancelled: Callable[[], BaseException],
) -> Any:
    """Run ``caller``'s implementations around an awaited call, as pluggy runs them around a
    plain one (``firstresult``): wrappers first to last up to their ``yield``, the first plain
    implementation that answers (else ``inner()``, awaited, in place of the implementation
    ``innermost`` picks out), then the wrappers' rest in reverse. A task cancelled meanwhile
    is thrown into the wrappers as ``cancelled()``, and re-raised to the task after them."""
    teardowns: _Teardowns = []
    result: Any = None
    error: BaseException | None = None
    task_cancelled: BaseException | None = None
    try:
        answered, result, after = _enter(caller, kwargs, innermost, teardowns)
        if not answered:
            try:
                result = await inner()
            except asyncio.CancelledError as exc:
                task_cancelled = exc
                raise cancelled() from None
            for impl in after if result is None else ():  # as pluggy: on to the next
                result = impl.function(*[kwargs[name] for name in impl.argnames])
                if result is not None:
                    break
    except BaseException as exc:  # noqa: BLE001 - handed to the wrappers, as pluggy does
        error = exc
    result, error = _exit(teardowns, result, error)
    if task_cancelled is not None:
        raise task_cancelled
    if error is not None:
        raise error
    return result


def _enter(
    caller: HookCaller,
    kwargs: dict[str, Any],
    innermost: Callable[[object], bool],
    teardowns: _Teardowns,
) -> tuple[bool, Any, list[Any]]:
    """Run the wrappers up to their ``yield`` (appended to ``teardowns``; pluggy orders every
    wrapper before the plain implementations) and the plain implementations before the
    innermost until one answers: (whether one did, its answer, the plain implementations
    after the innermost)."""
    impls = list(reversed(caller.get_hookimpls()))
    for index, impl in enumerate(impls):
        if innermost(impl.plugin):
            return False, None, impls[index + 1 :]
        args = [kwargs[name] for name in impl.argnames]
        if impl.hookwrapper or impl.wrapper:
            gen: Generator[Any, Any, Any] = impl.function(*args)  # type: ignore[assignment]
            next(gen)
            teardowns.append((impl.hookwrapper, gen))
            continue
        answer = impl.function(*args)
        if answer is not None:
            return True, answer, []
    return False, None, []


def _exit(
    teardowns: _Teardowns, result: Any, error: BaseException | None
) -> tuple[Any, BaseException | None]:
    """Resume the wrappers, innermost first, with the result or the error; what the
    outermost made of it."""
    for old_style, gen in reversed(teardowns):
        outcome = pluggy.Result.from_call(_outcome(result, error)) if old_style else None
        try:
            if outcome is not None:
                gen.send(outcome)
            elif error is not None:
                gen.throw(error)
            else:
                gen.send(result)
        except StopIteration as stop:
            if outcome is None:
                result, error = stop.value, None
                continue
            try:
                result, error = outcome.get_result(), None
            except BaseException as exc:  # noqa: BLE001
                error = exc
            continue
        except BaseException as exc:  # noqa: BLE001
            error = exc
            continue
        error = RuntimeError(f"service_call wrapper {gen!r} has a second yield")
    return result, error


def _outcome(result: Any, error: BaseException | None) -> Callable[[], Any]:
    def get() -> Any:
        if error is not None:
            raise error
        return result

    return get
