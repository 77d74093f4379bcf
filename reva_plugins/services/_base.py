"""What a service type is: :class:`ServiceType` and the pieces it is made of.

A service type is data, not code paths: the config, loader, host, CLI, conformance suite and
scaffold read these fields and never switch on a service's name.
"""

from __future__ import annotations

import inspect
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import REMOTE_ERRORS, RemoteError, RevaPluginError

if TYPE_CHECKING:  # a cycle at run time: the host serves services
    from .._proxy import ServiceProxy

GROUP_PREFIX = "reva."
"""What every plugin entry-point group starts with: ``reva.<service>`` (the one place it is
spelled; :attr:`ServiceType.group` adds the name)."""

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""A service name: a TOML key, the suffix of the ``reva.<name>`` group and part of class names."""

Check = Callable[[], None]
"""One conformance check: returns if the plugin passes, raises :class:`CheckFailed` (or
``AssertionError``) if it does not, :class:`CheckSkipped` if it cannot tell."""


#: Words that name a secret when they end a key (``password``, ``bind_password``,
#: ``userPassword``, ``client-secret``, ``password_hash``, ``accessToken`` …), in any case.
SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "passphrase", "secret", "token", "hash", "credential",
     "credentials", "apikey", "privatekey"}
)  # fmt: skip
#: A secret echoed in a string is searched as a substring only from this length on; a shorter
#: one is flagged only as a whole value (short secrets occur in ordinary words by chance).
ECHO_MIN_LENGTH = 6


def is_secret_key(key: str) -> bool:
    """True if ``key`` names a secret: its last word (split at ``_``, ``-``, ``.``, camelCase) or
    its whole text, without separators, is one of :data:`SECRET_WORDS`."""
    words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    if not words:
        return False
    return words[-1] in SECRET_WORDS or "".join(words) in SECRET_WORDS


def secret_leaks(value: object, where: str, secret: str | None = None) -> list[str]:
    """Secret-like keys anywhere in ``value`` (at any depth), and strings echoing ``secret``.

    Every service's result validation starts with this: no service returns a secret.
    """
    problems: list[str] = []
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else str(key)
                if is_secret_key(str(key)):
                    problems.append(f"{where}: returns a secret ({child_path})")
                stack.append((child, child_path))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str) and secret is not None and echoes(item, secret):
            problems.append(f"{where}: echoes the client secret (in {path or 'the result'})")
    return sorted(problems)


def opaque_id(record: object) -> object:
    """``record["id"]["opaque_id"]`` of a user or group a plugin returned; None where missing."""
    ident = record.get("id") if isinstance(record, Mapping) else None
    return ident.get("opaque_id") if isinstance(ident, Mapping) else None


def echoes(text: str, secret: str) -> bool:
    """True if ``text`` shows ``secret`` (see :data:`ECHO_MIN_LENGTH`)."""
    if not secret:
        return False
    return text == secret or (len(secret) >= ECHO_MIN_LENGTH and secret in text)


def everything_shown(exc: RevaPluginError) -> str:
    """All an error carries that reaches a person: message, remote traceback and data."""
    if isinstance(exc, RemoteError):
        return "\n".join((str(exc), exc.traceback, json.dumps(exc.data, default=str)))
    return str(exc)


def random_secret() -> str:
    """A secret no plugin can know, long enough to be recognised when echoed."""
    return f"conformance-{secrets.token_urlsafe(12)}"


class CheckFailed(Exception):
    """Raised by a conformance check: the plugin breaks the contract (the message says how)."""


class CheckSkipped(Exception):
    """Raised by a conformance check that cannot run (e.g. no data to check against)."""


@dataclass(frozen=True)
class ConformanceContext:
    """What a service's conformance checks get: the started plugin and what the run was given.

    ``proxy`` calls the plugin (``ctx.proxy.get_user(uid)``; typed errors as for any caller),
    ``handshake`` is what the plugin announced, ``credentials`` the ``--credentials ID:SECRET``
    pair, if any.
    """

    service: ServiceType
    proxy: ServiceProxy
    handshake: Mapping[str, Any]
    credentials: tuple[str, str] | None = None

    def problems(self, method: str, value: object) -> list[str]:
        """``service.validate_result(method, value)``: what is wrong with a result of ``method``."""
        return self.service.validate_result(method, value)


ConformanceChecks = Callable[[ConformanceContext], Iterable[tuple[str, Check]]]
"""Given a context, the service's checks as ``(name, check)`` pairs, run in order."""


@dataclass(frozen=True)
class ScaffoldTemplate:
    """The plugin module ``reva-plugins new`` writes for a service type.

    ``module`` is a :meth:`str.format` template (literal braces doubled) with the keys ``dist``
    (distribution name), ``module`` (import name), ``entry`` (entry-point name), ``cls`` (the
    driver class to define), ``service`` and ``group`` (its entry-point group). The written
    distribution runs the conformance suite as its own test, so the module must pass it, with
    ``credentials`` if the service's checks need some (they become the test's and
    ``conformance --credentials`` arguments).
    """

    module: str
    credentials: tuple[str, str] | None = None


def no_checks(context: ConformanceContext) -> Iterable[tuple[str, Check]]:
    """The default :attr:`ServiceType.conformance_checks`: only the generic ones run."""
    return ()


def no_validation(method: str, value: object) -> list[str]:
    """The default :attr:`ServiceType.validate_result`: every result is accepted."""
    return []


@dataclass(frozen=True)
class ServiceType:
    """A kind of service a plugin can provide (Reva's ``user.Manager``, ``auth.Manager`` …).

    - ``name``: the config table (``[grpc.services.<name>]``), the entry-point group
      ``reva.<name>`` plugins declare, the ``--service`` value.
    - ``spec``: a plain class of typed method stubs with docstrings; each public method is one
      service method, and its parameters (names, defaults) and documented result are the wire
      contract. No base class, no decorators.
    - ``validate_result(method, value) -> list[str]``: what is wrong with a result of ``method``
      (empty when nothing is); the conformance checks use it, so may any caller.
    - ``conformance_checks(context) -> [(name, check), …]``: the service's own checks, run after
      the generic ones (the plugin starts; its handshake lists every method).
    - ``scaffold``: the module template for ``reva-plugins new``; without one a stub with every
      method is written.
    - ``errors``: the typed errors its methods raise, by class name (``NotFound`` …); the
      generated stubs define them.
    """

    name: str
    spec: type
    validate_result: Callable[[str, object], list[str]] = no_validation
    conformance_checks: ConformanceChecks = no_checks
    scaffold: ScaffoldTemplate | None = None
    errors: tuple[str, ...] = ("NotFound",)
    signatures: Mapping[str, inspect.Signature] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(
                f"service name {self.name!r} must be lower case letters, digits and _, "
                "starting with a letter"
            )
        if not inspect.isclass(self.spec):
            raise TypeError(f"service {self.name}: spec must be a class of method stubs")
        sigs = {
            method: _without_self(inspect.signature(func))
            for method, func in vars(self.spec).items()
            if inspect.isfunction(func) and not method.startswith("_")
        }
        if not sigs:
            raise ValueError(f"service {self.name}: spec {self.spec.__name__} has no methods")
        if "configure" in sigs:
            raise ValueError(f"service {self.name}: 'configure' is not a service method")
        unknown = [e for e in self.errors if e not in REMOTE_ERRORS]
        if unknown:
            raise ValueError(
                f"service {self.name}: unknown error names {unknown} "
                f"(known: {', '.join(sorted(REMOTE_ERRORS))})"
            )
        object.__setattr__(self, "signatures", sigs)

    @property
    def group(self) -> str:
        """The entry-point group plugins of this type declare."""
        return f"{GROUP_PREFIX}{self.name}"

    @property
    def methods(self) -> tuple[str, ...]:
        """The service's method names, in declaration order."""
        return tuple(self.signatures)

    def doc(self, method: str) -> str:
        """The docstring of ``method`` in the spec (empty if none)."""
        return inspect.getdoc(getattr(self.spec, method)) or ""


def _without_self(sig: inspect.Signature) -> inspect.Signature:
    params = list(sig.parameters.values())[1:]
    return sig.replace(parameters=params)
