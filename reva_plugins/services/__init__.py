"""Service types: the built-in ones (one module each) and those other packages register.

A host application adds a service type without touching this package, either in code::

    reva_plugins.register_service(ServiceType("quotaprovider", QuotaSpec, ...))

or with an entry point in the group ``reva_plugins.services`` whose name is the service's name
and whose value is a :class:`ServiceType` or a module exposing one as ``SERVICE``::

    [project.entry-points."reva_plugins.services"]
    quotaprovider = "my_app.quota:SERVICE"

Entry points are loaded once, the first time the registry is read. One that cannot be loaded
is logged and skipped, so the rest of the core keeps working; naming its service then fails
with the reason (:func:`get_service`).
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Iterator, Mapping
from importlib import metadata as importlib_metadata

from .._errors import UsageError
from . import authprovider, groupprovider, userprovider
from ._base import (
    GROUP_PREFIX,
    Check,
    CheckFailed,
    CheckSkipped,
    ConformanceChecks,
    ConformanceContext,
    ScaffoldTemplate,
    ServiceType,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "GROUP_PREFIX",
    "SERVICES",
    "Check",
    "CheckFailed",
    "CheckSkipped",
    "ConformanceChecks",
    "ConformanceContext",
    "ScaffoldTemplate",
    "ServiceType",
    "get_service",
    "register_service",
]

ENTRY_POINT_GROUP = "reva_plugins.services"

BUILTIN: Mapping[str, ServiceType] = types.MappingProxyType(
    {m.SERVICE.name: m.SERVICE for m in (userprovider, authprovider, groupprovider)}
)

_log = logging.getLogger("reva_plugins.services")
_lock = threading.RLock()
_registered: dict[str, ServiceType] = {}
_broken: dict[str, str] = {}
_entry_points_loaded = False


def register_service(service: ServiceType) -> ServiceType:
    """Make ``service`` known to the core (config, loader, CLI, conformance, scaffold).

    Registering the same object again is a no-op; another service type under a taken name is a
    :class:`~reva_plugins.UsageError` (built-in names cannot be replaced).
    """
    if not isinstance(service, ServiceType):
        raise UsageError(f"register_service() takes a ServiceType, got {type(service).__name__}")
    with _lock:
        _load_entry_points()
        _add(service, "register_service()")
    return service


def get_service(name: str) -> ServiceType:
    """The service type called ``name``; a :class:`~reva_plugins.UsageError` saying why not."""
    with _lock:
        _load_entry_points()
        found = BUILTIN.get(name) or _registered.get(name)
        if found is not None:
            return found
        broken = _broken.get(name)
    if broken is not None:
        raise UsageError(f"service {name!r} is unavailable: {broken}")
    raise UsageError(f"unknown service {name!r} (known: {', '.join(sorted(SERVICES))})")


def _add(service: ServiceType, origin: str) -> None:
    taken = BUILTIN.get(service.name) or _registered.get(service.name)
    if taken is service:
        return
    if taken is not None:
        kind = "a built-in" if service.name in BUILTIN else "an already registered"
        raise UsageError(f"{origin}: {service.name!r} is {kind} service type")
    _registered[service.name] = service
    _broken.pop(service.name, None)


def _load_entry_points() -> None:
    """Import every ``reva_plugins.services`` entry point, once per process."""
    global _entry_points_loaded  # one lazy load per process, under _lock
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name} = {ep.value} in {ENTRY_POINT_GROUP}"
        try:
            loaded = ep.load()
            service = (
                getattr(loaded, "SERVICE", None) if isinstance(loaded, types.ModuleType) else loaded
            )
            if not isinstance(service, ServiceType):
                kind = type(service).__name__
                raise TypeError(f"it is a {kind}, not a ServiceType (or a module with SERVICE)")
            if service.name != ep.name:
                raise ValueError(f"it defines service {service.name!r}, not {ep.name!r}")
            _add(service, where)
        except Exception as exc:  # noqa: BLE001 - a broken extension must not stop the core
            reason = f"{where} cannot be loaded: {type(exc).__name__}: {exc}"
            _broken.setdefault(ep.name, reason)
            _log.warning("%s (skipped)", reason)


class _Registry(Mapping[str, ServiceType]):
    """Read-only: the built-in service types, then the registered ones."""

    def _all(self) -> dict[str, ServiceType]:
        with _lock:
            _load_entry_points()
            return {**BUILTIN, **_registered}

    def __getitem__(self, name: str) -> ServiceType:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __repr__(self) -> str:
        return f"SERVICES({', '.join(self._all())})"


SERVICES: Mapping[str, ServiceType] = _Registry()
"""Every known service type by name: the built-ins and the registered ones (read-only)."""
