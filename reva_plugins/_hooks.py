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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ._client import Cancellation
    from ._errors import RevaPluginError
    from ._host import ServiceProxy

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
