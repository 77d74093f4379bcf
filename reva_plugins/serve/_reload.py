"""Backends and generations: zero-downtime reload, one service at a time.

Each served service runs on its own :class:`Host` (a :class:`Backend`), so one service can be
replaced while the others keep serving untouched. A :class:`Generation` is the set of backends
RPCs use; a reload reads the config again, plans every service again (an unchanged driver
reuses its env at no cost and starts nothing), and builds, starts and pings a new backend only
for a service that is new, whose config or driver identity changed, or whose plugin is marked
failed. The new generation is swapped in atomically; the backends it replaced drain their RPCs
in flight, then their plugins stop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _config
from .._errors import ConfigError, RevaPluginError
from .._host import Host
from .._plugin_stderr import escape
from .._proxy import ServiceProxy
from .._redact import redact
from ._cs3 import APIS

log = logging.getLogger("reva_plugins.serve")

#: Seconds between looks at a draining backend's RPCs in flight (a drain is rare; RPCs never
#: wait for it).
DRAIN_POLL = 0.005

#: Attaches hook objects to a new host, for one service, before anything of it is planned.
Register = Callable[[Host, str], None]


@dataclass(frozen=True)
class HostOptions:
    """The command line's overrides, applied to every backend's host."""

    cache_dir: Path | None = None
    installer: str | None = None
    offline: bool | None = None


class Backend:
    """One served service on a host of its own: the proxy RPCs call, the RPCs in flight on it.

    An RPC counts itself in with :meth:`enter` and then checks the backend is not retired; a
    reload retires a backend only after the generation replacing it is installed, and then
    waits for the count to reach zero. So an RPC either is counted before the drain looks (and
    the plugin stays up until it ends), or sees the backend retired and takes its successor
    from the current generation: no RPC reaches a closed host.
    """

    __slots__ = ("_active", "host", "identity", "name", "number", "proxy", "retired")

    def __init__(
        self, name: str, host: Host, proxy: ServiceProxy, identity: tuple[Any, ...], number: int
    ) -> None:
        self.name = name
        self.host = host
        self.proxy = proxy
        #: what decides whether a reload must replace it (see :func:`identity`)
        self.identity = identity
        #: the generation that started it
        self.number = number
        # one item per RPC in flight: deque appends and pops are atomic, a counter is not
        self._active: collections.deque[None] = collections.deque()
        self.retired = False

    def enter(self) -> bool:
        """Count an RPC in; False (not counted) if the backend is retired."""
        active = self._active
        active.append(None)
        if self.retired:
            active.pop()
            return False
        return True

    def leave(self) -> None:
        """An RPC counted in by :meth:`enter` ended."""
        self._active.pop()

    @property
    def in_flight(self) -> int:
        """RPCs in flight on this backend."""
        return len(self._active)

    @property
    def failed(self) -> bool:
        """True when its plugin is marked failed (it crashed too often, or crashed with
        ``restart = "never"``): only a new backend brings the service back."""
        return self.proxy.info().state == "failed"

    def start(self) -> None:
        """Start the driver and check it answers ``$/ping``."""
        self.proxy.start()
        self.proxy.ping()

    def retire(self) -> None:
        """Refuse new RPCs (they go to the current generation's backend instead)."""
        self.retired = True

    def drain(self, deadline: float) -> bool:
        """Wait until ``deadline`` (monotonic) for the RPCs in flight to end; True if they did."""
        active = self._active
        while active and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL)
        return not active

    def close(self) -> None:
        """Stop the plugin now."""
        self.retired = True
        self.host.close()


@dataclass(frozen=True)
class Generation:
    """One configuration version: the backend of each served service, in config order."""

    config: _config.Config
    backends: Mapping[str, Backend]
    number: int

    @property
    def proxies(self) -> dict[str, ServiceProxy]:
        """The proxy of each served service."""
        return {name: backend.proxy for name, backend in self.backends.items()}


@dataclass(frozen=True)
class Outcome:
    """What one reload did."""

    #: ``swapped`` (a backend was replaced, added or dropped), ``unchanged`` or ``failed``
    result: str
    #: one line, for the log, ``reload`` on the command line and the admin RPC
    message: str
    generation: int
    restarted: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


def served_services(config: _config.Config) -> list[str]:
    """The configured services that have a CS3 API, in config order."""
    return [svc.service for svc in config.services if svc.service in APIS]


def require_served(config: _config.Config, path: Path) -> list[str]:
    """:func:`served_services`, or a ``ConfigError`` when there is none: ``serve`` refuses to
    start with nothing to serve, and a reload to such a config (a half-written file) keeps
    the previous version serving."""
    names = served_services(config)
    if not names:
        raise ConfigError(
            f"no service to serve (configure one of: {', '.join(APIS)})", file=str(path)
        )
    return names


def unserved_tables(config: _config.Config) -> list[str]:
    """``[grpc.services.*]`` tables of the config file that serve does not serve."""
    names: list[str] = []
    if config.file is not None:
        raw = _config._read_toml(config.file).get("grpc", {}).get("services", {})
        names = [str(n) for n in raw if n not in APIS] if isinstance(raw, Mapping) else []
    return names


def identity(config: _config.Config, name: str, proxy: ServiceProxy) -> tuple[Any, ...]:
    """What makes a backend stale: the service's table, and what its plan resolved (the env
    key, and for a plugin process everything it is launched with: interpreter, timeouts,
    limits, environment, the driver's config)."""
    plan = getattr(proxy.driver, "plan", None)
    launch = getattr(plan, "launch", None)
    entry = getattr(plan, "entry_point", None)
    return (config.service(name), proxy.driver.kind, getattr(plan, "env_key", None), launch, entry)


def plan_backend(
    config: _config.Config, options: HostOptions, name: str, number: int, register: Register
) -> Backend:
    """A backend for ``name``: its host made and its driver planned (its env built if need
    be), nothing started. On failure the host is closed and the error raised."""
    host = Host(config, **vars(options))
    try:
        register(host, name)
        proxy = host.service(name)
        return Backend(name, host, proxy, identity(config, name, proxy), number)
    except BaseException:
        host.close()
        raise


@dataclass
class _Ticket:
    """One reload run, shared by every request made before it read the config."""

    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None


class Reloader:
    """Builds and swaps generations; one reload at a time, requests coalesced.

    A request made while a reload runs waits for one more run (which reads the config after
    the request); requests made while that run waits share it.
    """

    def __init__(
        self,
        path: Path,
        options: HostOptions,
        register: Register,
        swapped: Callable[[Generation, Generation, tuple[str, ...]], None],
        grace: Callable[[], float],
    ) -> None:
        self.path = path
        self.options = options
        self._register = register
        self._swapped = swapped
        self._grace = grace
        self._run_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queued: _Ticket | None = None
        self._swap_lock = threading.Lock()  # guards current against close(), never held long
        self._closed = False
        self._numbers = 0
        self.current: Generation | None = None

    def first(self, config: _config.Config) -> Generation:
        """Plan, start and ping every served service of ``config`` and install them as the
        first generation; on any failure close what was made and raise (nothing is served)."""
        self._numbers = 1
        backends: dict[str, Backend] = {}
        try:
            for name in served_services(config):
                backends[name] = plan_backend(config, self.options, name, 1, self._register)
            for backend in backends.values():
                backend.start()
        except BaseException:
            for backend in backends.values():
                backend.close()
            raise
        gen = Generation(config, backends, 1)
        self.current = gen
        return gen

    def reload(self) -> Outcome:
        """Reload (see the class) and return what it did (also logged)."""
        with self._queue_lock:
            ticket = self._queued
            lead = ticket is None
            if ticket is None:
                ticket = self._queued = _Ticket()
        if not lead:
            log.info("reload: one is queued already; this request shares it")
            ticket.done.wait()
            assert ticket.outcome is not None
            return ticket.outcome
        try:
            with self._run_lock:
                with self._queue_lock:
                    self._queued = None  # a request from now on needs a run of its own
                ticket.outcome = self._reload()
        finally:
            if ticket.outcome is None:  # the run raised: waiters must not hang
                ticket.outcome = Outcome("failed", "reload failed", self._numbers)
            ticket.done.set()
        return ticket.outcome

    def close(self) -> None:
        """Stop every backend of the current generation; a reload still running then stops
        what it made instead of swapping it in."""
        with self._swap_lock:
            self._closed = True
            gen = self.current
        if gen is not None:
            for backend in gen.backends.values():
                backend.close()

    def _reload(self) -> Outcome:
        old = self.current
        assert old is not None
        began = time.perf_counter()
        log.info("reload: reading %s", self.path)
        number = self._numbers + 1
        kept: dict[str, Backend] = {}
        fresh: dict[str, Backend] = {}
        try:
            config = _config.load_file(self.path)
            for name in require_served(config, self.path):
                previous = old.backends.get(name)
                stale = previous is None or previous.failed
                candidate = plan_backend(config, self.options, name, number, self._register)
                if previous is not None and not stale and candidate.identity == previous.identity:
                    candidate.close()  # planned only: no plugin of it was started
                    kept[name] = previous
                else:
                    fresh[name] = candidate
            for backend in fresh.values():
                backend.start()
        except BaseException as exc:
            for backend in fresh.values():
                backend.close()
            if not isinstance(exc, RevaPluginError):
                raise
            # a plugin's start error may carry its text: escaped, as everything from a plugin
            first = escape(redact(str(exc).splitlines()[0])) if str(exc) else type(exc).__name__
            message = f"reload failed; still serving the previous version: {first}"
            log.error("%s", message)
            return Outcome("failed", message, old.number)
        retiring = [b for name, b in old.backends.items() if kept.get(name) is not b]
        dropped = tuple(name for name in old.backends if name not in kept and name not in fresh)
        changed = bool(fresh or dropped)
        if changed:
            self._numbers = number
        ordered = {name: kept.get(name) or fresh[name] for name in served_services(config)}
        new = Generation(config, ordered, number if changed else old.number)
        with self._swap_lock:
            if not self._closed:
                self.current = new  # the swap: RPCs from here on use the new generation
        if self.current is not new:  # the server stopped meanwhile
            for backend in fresh.values():
                backend.close()
            return Outcome("failed", "reload: the server is stopping", old.number)
        self._swapped(old, new, tuple(fresh))
        if not changed:
            message = "reload: configuration and drivers unchanged; every service kept serving"
            log.info("%s", message)
            return Outcome("unchanged", message, new.number, kept=tuple(kept))
        summary = "; ".join(
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("restarted", tuple(fresh)),
                ("kept", tuple(kept)),
                ("dropped", dropped),
            )
            if names
        )
        message = (
            f"reload: generation {new.number} serving after "
            f"{(time.perf_counter() - began) * 1000:.0f} ms ({summary})"
        )
        log.info("%s; draining what it replaced", message)
        for backend in retiring:
            backend.retire()
        deadline = time.monotonic() + self._grace()
        late = [b.name for b in retiring if not b.drain(deadline)]
        for backend in retiring:
            backend.close()
        if late:
            log.warning(
                "reload: RPCs still in flight on the previous %s after the grace",
                ", ".join(late),
            )
        return Outcome("swapped", message, new.number, tuple(fresh), tuple(kept), tuple(dropped))
