"""The host's extension points: the one job pluggy has in reva-plugins.

pluggy carries what an application embedding the core plugs into its :class:`~reva_plugins.Host`
(metrics, tracing, audit logs, alerts): implement any of the hooks below on an object, mark them
with :data:`hookimpl`, and ``host.register(obj)``. pluggy is *not* the way to a driver: a call is
a plain method call, ``ServiceProxy.method(*args)`` → bind the arguments → ``driver.invoke(call)``
(one :class:`~._call.Call`), and service types are plain classes (their methods are the contract).

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
is quick. A task cancelled meanwhile reaches the wrappers as :class:`CallCancelled` (as a
cancelled call in a thread does), or as :class:`CallTimeout` when it was cancelled at the call's
deadline. Both ways run the implementations through one :class:`CallWrappers`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, NoReturn

import pluggy

if TYPE_CHECKING:
    from pluggy import HookCaller, HookImpl

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


class CallWrappers:
    """The ``service_call`` implementations as one list, in the order pluggy calls them, run
    around a call made in a thread (:meth:`run`) or awaited (:meth:`arun`) alike.

    pluggy registers, validates and orders the implementations; it cannot run them around an
    awaited call (its hook calls are synchronous), so both paths run them here, by the rules
    pluggy documents for a ``firstresult`` hook: wrappers first to last up to their ``yield``,
    then the plain implementations until one answers (the call itself stands where the
    host's own implementation stands), then the wrappers' rest in reverse, each given the
    result (or the error thrown in) and returning (or raising) what the next one gets.
    Old-style ``hookwrapper=True`` wrappers get a :class:`pluggy.Result`, as pluggy gives them.
    """

    __slots__ = ("_links",)

    def __init__(self, caller: HookCaller, innermost: Callable[[object], bool]) -> None:
        """The implementations of ``caller`` now; the call goes where ``innermost`` picks out
        an implementation's plugin (after every implementation if it picks none)."""
        links: list[_Link] = []
        for impl in reversed(caller.get_hookimpls()):
            if innermost(impl.plugin):
                links.append(_CALL)
                continue
            function = _old_style(impl) if impl.hookwrapper else impl.function
            names = tuple(impl.argnames), tuple(impl.kwargnames)
            links.append(_Link(function, *names, wraps=impl.hookwrapper or impl.wrapper))
        if _CALL not in links:
            links.append(_CALL)
        self._links = tuple(links)

    def run(self, kwargs: dict[str, Any], call: Callable[[], Any]) -> Any:
        """The implementations around ``call()``, given ``kwargs`` (the hook's arguments)."""
        steps = self._steps(kwargs)
        try:
            next(steps)
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - the wrappers get it, as in pluggy
                steps.throw(exc)
            else:
                steps.send(result)
        except StopIteration as done:
            return done.value
        raise AssertionError("unreachable: the steps end after the call")  # pragma: no cover

    async def arun(
        self,
        kwargs: dict[str, Any],
        call: Callable[[], Awaitable[Any]],
        interrupted: Callable[[], BaseException],
    ) -> Any:
        """:meth:`run` around an awaited call, on the running loop. A task cancelled meanwhile
        reaches the wrappers as ``interrupted()`` and is cancelled after them."""
        steps = self._steps(kwargs)
        cancelled: asyncio.CancelledError | None = None
        try:
            next(steps)
            try:
                result = await call()
            except asyncio.CancelledError as exc:
                cancelled = exc
                steps.throw(interrupted())
            except BaseException as exc:  # noqa: BLE001 - the wrappers get it, as in pluggy
                steps.throw(exc)
            else:
                steps.send(result)
        except StopIteration as done:
            if cancelled is not None:
                raise cancelled from None
            return done.value
        except BaseException:
            if cancelled is not None:
                raise cancelled from None
            raise
        raise AssertionError("unreachable: the steps end after the call")  # pragma: no cover

    def _steps(self, kwargs: dict[str, Any]) -> Generator[None, Any, Any]:
        """The implementations as one generator: it yields where the call goes (unless an
        implementation answered first), is sent its result or thrown its error, and returns
        what the outermost wrapper made of it."""
        teardowns: list[Generator[Any, Any, Any]] = []
        result: Any = None
        error: BaseException | None = None
        try:
            links = self._links
            for index, link in enumerate(links):
                if link is _CALL:
                    result = yield
                    for after in links[index + 1 :] if result is None else ():
                        result = after.invoke(kwargs)  # pluggy orders wrappers first
                        if result is not None:
                            break
                    break
                if link.wraps:
                    gen = link.invoke(kwargs)
                    try:
                        next(gen)
                    except StopIteration:
                        _wrapfail(gen, "did not yield")
                    teardowns.append(gen)
                    continue
                result = link.invoke(kwargs)
                if result is not None:
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the wrappers, as pluggy does
            error = exc
        for gen in reversed(teardowns):
            try:
                if error is not None:
                    gen.throw(error)
                else:
                    gen.send(result)
                gen.close()
            except StopIteration as stop:
                result, error = stop.value, None
                continue
            except BaseException as exc:  # noqa: BLE001
                error = exc
                continue
            _wrapfail(gen, "has second yield")
        if error is not None:
            raise error
        return result


class _Link:
    """One implementation in a :class:`CallWrappers` list (or the call's own place)."""

    __slots__ = ("argnames", "function", "kwargnames", "wraps")

    def __init__(
        self,
        function: Callable[..., Any],
        argnames: tuple[str, ...],
        kwargnames: tuple[str, ...],
        *,
        wraps: bool,
    ) -> None:
        #: a wrapper (its generator runs around what follows), else a plain implementation
        self.wraps = wraps
        self.function = function
        self.argnames = argnames
        self.kwargnames = kwargnames

    def invoke(self, kwargs: dict[str, Any]) -> Any:
        """The implementation given the hook's arguments as pluggy passes them: by position,
        and those with a default by name."""
        args = [kwargs[name] for name in self.argnames]
        if not self.kwargnames:
            return self.function(*args)
        named = {name: kwargs[name] for name in self.kwargnames if name in kwargs}
        return self.function(*args, **named)


#: the call's own place among the implementations
_CALL = _Link(lambda: None, (), (), wraps=False)


def _old_style(impl: HookImpl) -> Callable[..., Generator[None, Any, Any]]:
    """An old-style wrapper as a new-style one: it is sent the outcome as a
    :class:`pluggy.Result` (which it may change) and the result is what that holds."""

    def wrapper(*args: Any, **kwargs: Any) -> Generator[None, Any, Any]:
        gen: Generator[None, Any, None] = impl.function(*args, **kwargs)  # type: ignore[assignment]
        try:
            next(gen)
        except StopIteration:
            _wrapfail(gen, "did not yield")
        try:
            outcome: pluggy.Result[Any] = pluggy.Result((yield), None)
        except BaseException as exc:  # noqa: BLE001 - an outcome, as pluggy makes it
            outcome = pluggy.Result(None, exc)
        try:
            gen.send(outcome)
        except StopIteration:
            pass
        else:
            _wrapfail(gen, "has second yield")
        finally:
            gen.close()
        return outcome.get_result()

    return wrapper


def _wrapfail(gen: Generator[Any, Any, Any], message: str) -> NoReturn:
    """pluggy's error for a wrapper that does not yield once."""
    code = gen.gi_code  # type: ignore[attr-defined]
    raise RuntimeError(
        f"wrap_controller at {code.co_name!r} {code.co_filename}:{code.co_firstlineno} {message}"
    )
