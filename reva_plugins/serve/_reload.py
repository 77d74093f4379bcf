"""Generations: one :class:`Host` per configuration version, built in the background, swapped in
atomically, and drained before its plugins stop (zero-downtime reload)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _config
from .._errors import RevaPluginError
from .._host import Host, ServiceProxy
from .._redact import redact
from ._cs3 import APIS

log = logging.getLogger("reva_plugins.serve")


@dataclass(frozen=True)
class HostOptions:
    """The command line's overrides, applied to every generation's host."""

    cache_dir: Path | None = None
    installer: str | None = None
    offline: bool | None = None


@dataclass
class Generation:
    """One configuration version: its host, the proxies served and the RPCs in flight on it."""

    config: _config.Config
    host: Host
    proxies: dict[str, ServiceProxy]
    identities: dict[str, tuple[Any, ...]]
    number: int
    _in_flight: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)

    def enter(self) -> None:
        """An RPC starts on this generation."""
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        """An RPC on this generation ended."""
        with self._idle:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()

    def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the RPCs in flight to end; True if they did."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._in_flight, timeout=grace)

    def same_as(self, other: Generation) -> bool:
        """Same services with the same config and the same driver identities (env keys)."""
        return self.identities == other.identities


def served_services(config: _config.Config) -> list[str]:
    """The configured services that have a CS3 API, in config order."""
    return [svc.service for svc in config.services if svc.service in APIS]


def unserved_tables(config: _config.Config) -> list[str]:
    """``[grpc.services.*]`` tables of the config file that serve does not serve."""
    names: list[str] = []
    if config.file is not None:
        raw = _config._read_toml(config.file).get("grpc", {}).get("services", {})
        names = [str(n) for n in raw if n not in APIS] if isinstance(raw, Mapping) else []
    return names


def _identity(config: _config.Config, name: str, proxy: ServiceProxy) -> tuple[Any, ...]:
    plan = getattr(proxy.driver, "plan", None)
    return (config.service(name), proxy.driver.kind, getattr(plan, "env_key", None))


def build(
    path: Path,
    options: HostOptions,
    number: int,
    register: Callable[[Host], None],
) -> Generation:
    """Load ``path``, plan every served service (building envs), start and ping each plugin.

    ``register`` attaches hook objects to the new host before any plugin starts (they see the
    env builds and starts). Raises on the first failure, having closed the new host: the caller
    keeps serving the old generation.
    """
    config = _config.load_file(path)
    host = Host(config, **vars(options))
    try:
        register(host)
        proxies: dict[str, ServiceProxy] = {}
        identities: dict[str, tuple[Any, ...]] = {}
        for name in served_services(config):
            proxy = host.service(name)
            proxy.driver.start()
            proxy.driver.ping()
            proxies[name] = proxy
            identities[name] = _identity(config, name, proxy)
    except BaseException:
        host.close()
        raise
    return Generation(config, host, proxies, identities, number)


class Reloader:
    """Builds the next generation in the background and swaps it in; one reload at a time."""

    def __init__(
        self,
        path: Path,
        options: HostOptions,
        register: Callable[[Host, Generation | None], None],
        swapped: Callable[[Generation, Generation], None],
        grace: Callable[[], float],
    ) -> None:
        self.path = path
        self.options = options
        self._register = register
        self._swapped = swapped
        self._grace = grace
        self._lock = threading.Lock()
        self._numbers = 1
        self.current: Generation | None = None

    def first(self) -> Generation:
        """Build and install the first generation (failures propagate: nothing is served)."""
        gen = build(self.path, self.options, 1, lambda h: self._register(h, None))
        self.current = gen
        return gen

    def reload(self) -> str:
        """Build the next generation and swap it in; on failure keep the current one.

        Returns what happened, in one line (also logged).
        """
        if not self._lock.acquire(blocking=False):
            log.info("reload: one is already running; this request joins it")
            return "already running"
        try:
            return self._reload()
        finally:
            self._lock.release()

    def _reload(self) -> str:
        old = self.current
        assert old is not None
        self._numbers += 1
        began = time.perf_counter()
        log.info("reload: reading %s", self.path)
        try:
            new = build(
                self.path,
                self.options,
                self._numbers,
                lambda h: self._register(h, old),
            )
        except RevaPluginError as exc:
            first = redact(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
            log.error("reload failed; still serving the previous version: %s", first)
            return "failed"
        if new.same_as(old):
            new.host.close()
            log.info("reload: configuration and drivers unchanged; nothing to swap")
            return "unchanged"
        self.current = new  # the swap: RPCs from here on use the new generation
        self._swapped(old, new)
        log.info(
            "reload: generation %d serving after %.0f ms; draining the previous one",
            new.number,
            (time.perf_counter() - began) * 1000,
        )
        if not old.drain(self._grace()):
            log.warning("reload: RPCs still in flight on the previous version after the grace")
        old.host.close()
        return "swapped"
