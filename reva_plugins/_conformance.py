"""The conformance suite: does a plugin honour its service's contract (SPEC §2)?"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import LoaderSettings, parse
from ._errors import RevaPluginError
from ._host import Host
from ._redact import REDACTED
from .services import CheckFailed, CheckSkipped, ConformanceContext, get_service
from .services._base import echoes

__all__ = ["Check", "Report", "run_conformance"]


@dataclass(frozen=True)
class Check:
    """One conformance check's outcome: ``status`` is ``pass``, ``fail`` or ``skip``."""

    name: str
    status: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        """False only for a failure."""
        return self.status != "fail"


@dataclass(frozen=True)
class Report:
    """All checks run on one plugin."""

    spec: str
    service: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(check.ok for check in self.checks)

    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [check for check in self.checks if not check.ok]


def _run_check(name: str, check: Callable[[], None], secret: str | None = None) -> Check:
    """One check's outcome; an error in the check itself is that check's failure, not the run's.

    A reason never shows ``secret`` (the operator's ``--credentials``), whatever the plugin echoed.
    """

    def failed(reason: str) -> Check:
        if secret and echoes(reason, secret):
            reason = reason.replace(secret, REDACTED)
        return Check(name, "fail", reason)

    try:
        check()
    except CheckSkipped as exc:
        return Check(name, "skip", str(exc))
    except (CheckFailed, AssertionError) as exc:
        return failed(str(exc) or type(exc).__name__)
    except RevaPluginError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return failed(f"{type(exc).__name__}: {first}")
    except Exception as exc:  # noqa: BLE001 - a buggy check (or its service module) fails alone
        return failed(f"the check raised {type(exc).__name__}: {exc}")
    return Check(name, "pass")


def _generic_checks(ctx: ConformanceContext) -> Iterator[tuple[str, Callable[[], None]]]:
    """The checks every service type gets, before its own."""

    def methods_listed() -> None:
        listed = set(ctx.handshake.get("methods", ()))
        missing = [m for m in ctx.service.methods if m not in listed]
        if missing:
            raise CheckFailed(f"the plugin does not implement: {', '.join(missing)}")

    yield "handshake lists every method", methods_listed


def _service_checks(ctx: ConformanceContext) -> list[tuple[str, Callable[[], None]]]:
    """The service type's own checks; a service module whose listing fails gets one failure."""
    try:
        return list(ctx.service.conformance_checks(ctx))
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, like any other
        reason = f"{ctx.service.name}: conformance_checks raised {type(exc).__name__}: {exc}"

        def unlisted() -> None:
            raise CheckFailed(reason)

        return [("the service's checks can be listed", unlisted)]


def run_conformance(
    spec: str,
    service: str,
    *,
    config: Mapping[str, Any] | None = None,
    base_dir: str | Path | None = None,
    credentials: tuple[str, str] | None = None,
    plugins: Mapping[str, Any] | LoaderSettings | None = None,
    **host_options: Any,
) -> Report:
    """Build the env for ``spec``, start the plugin as ``service`` and check it.

    ``config`` is the driver's own table (its relative paths resolve against ``base_dir``, where
    the plugin runs). ``plugins`` are the loader settings: a ``[plugins]`` table (relative to
    ``base_dir`` too), or the settings a config file was read into (``load_file(…).plugins``:
    its ``allowed_sources`` patterns stay relative to that file). ``host_options`` are what
    :class:`Host` takes (``cache_dir``, ``installer``, ``offline``).
    """
    service_type = get_service(service)
    base = Path(base_dir or Path.cwd()).resolve()
    table: dict[str, Any] = {"driver": spec}
    raw = {} if isinstance(plugins, LoaderSettings) else dict(plugins or {})
    whole = {"plugins": raw, "grpc": {"services": {service: table}}}

    def make_host() -> Host:
        parsed = parse(whole, base_dir=base)
        if isinstance(plugins, LoaderSettings):
            parsed = dataclasses.replace(parsed, plugins=plugins)
        return Host(parsed, **host_options)

    with make_host() as probe:
        plan = probe.planner.plan(probe.config.service(service))
    table["drivers"] = {plan.entry_name: dict(config or {})}
    checks: list[Check] = []
    with make_host() as host:
        try:
            proxy = host.service(service)
            handshake = proxy.driver.start()
        except RevaPluginError as exc:
            checks.append(Check("starts and accepts its config", "fail", str(exc).splitlines()[0]))
            return Report(spec, service, tuple(checks))
        checks.append(Check("starts and accepts its config", "pass"))
        ctx = ConformanceContext(service_type, proxy, handshake, credentials)
        secret = credentials[1] if credentials else None
        for name, check in itertools.chain(_generic_checks(ctx), _service_checks(ctx)):
            checks.append(_run_check(name, check, secret))
    return Report(spec, service, tuple(checks))
