"""What a service type is: :class:`ServiceType` and the pieces it is made of.

A service type is data, not code paths: the config, loader, host, CLI, conformance suite and
scaffold read these fields and never switch on a service's name.
"""

from __future__ import annotations

import inspect
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import REMOTE_ERRORS, NotFound, RemoteError, RevaPluginError

if TYPE_CHECKING:  # a cycle at run time: the host serves services
    from .._proxy import ServiceProxy

GROUP_PREFIX = "reva."
"""What every plugin entry-point group starts with: ``reva.<service>`` (the one place it is
spelled; :attr:`ServiceType.group` adds the name)."""

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""A service name: a TOML key, the suffix of the ``reva.<name>`` group and part of class names."""

Problems = Callable[[Any, str], list[str]]
"""What is wrong with a value, named in the messages by ``where``; empty if nothing."""

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


def id_strings(ident: Mapping[str, object], where: str) -> list[str]:
    """What is wrong with the ``idp`` and ``opaque_id`` of a user's or group's id (strings)."""
    return [
        f"{where}.{key} must be a string, got {ident.get(key)!r}"
        for key in ("idp", "opaque_id")
        if not isinstance(ident.get(key), str)
    ]


def record_problems(
    record: object, where: str, kind: str, fields: Mapping[str, type], id_problems: Problems
) -> list[str]:
    """What is wrong with a User or Group (``kind``): an object with no secret, an ``id`` object
    (``id_problems`` checks it) and each of ``fields`` of its type; empty if nothing."""
    if not isinstance(record, dict):
        return [f"{where}: a {kind} must be an object, got {type(record).__name__}"]
    problems = secret_leaks(record, where)
    if not isinstance(record.get("id"), dict):
        problems.append(f"{where}: 'id' must be an object with idp and opaque_id")
    else:
        problems += id_problems(record["id"], f"{where}: id")
    for key, expected in fields.items():
        value = record.get(key)
        if value is None:
            problems.append(f"{where}: missing field {key!r}")
        elif not isinstance(value, expected) or isinstance(value, bool):
            problems.append(
                f"{where}: {key} must be {expected.__name__}, got {type(value).__name__}"
            )
    return problems


def list_problems(method: str, value: object, item_problems: Problems) -> list[str]:
    """What is wrong with a result of ``method`` that must be a list of items."""
    if not isinstance(value, list):
        return [f"{method}() must return a list, got {type(value).__name__}"]
    return [p for i, item in enumerate(value) for p in item_problems(item, f"{method}()[{i}]")]


class CheckFailed(Exception):
    """Raised by a conformance check: the plugin breaks the contract (the message says how)."""


class CheckSkipped(Exception):
    """Raised by a conformance check that cannot run (e.g. no data to check against)."""


def expect_not_found(calls: Iterable[tuple[str, Callable[[], object]]], what: str) -> None:
    """Each call must raise ``NotFound``; a :class:`CheckFailed` naming the first that does not."""
    for label, call in calls:
        try:
            call()
        except NotFound:
            continue
        except RevaPluginError as exc:
            raise CheckFailed(
                f"{label} of {what} raised {type(exc).__name__}, not NotFound"
            ) from None
        raise CheckFailed(f"{label} of {what} returned instead of raising NotFound")


def fail_on(problems: list[str]) -> None:
    """Raise :class:`CheckFailed` with the first few ``problems``, if any."""
    if problems:
        raise CheckFailed("; ".join(problems[:5]))


def parallel_consistency(
    call: Callable[[int], object], count: int, label: Callable[[int], str]
) -> None:
    """8 threads repeat ``call(k)`` for ``k`` in ``range(count)``; every answer must equal the
    serial one (``label(k)`` names the call in the failure)."""
    expected = [call(k) for k in range(count)]
    errors: list[str] = []

    def worker(offset: int) -> None:
        for i in range(20):
            k = (offset + i) % count
            if call(k) != expected[k]:
                errors.append(f"{label(k)} answered differently under 8 parallel callers")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise CheckFailed(errors[0])


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


class RecordChecks:
    """The checks a provider of records (``noun``: user, group) shares: ``find_<noun>s('')``
    lists them (asked once), ``get_<noun>(id)`` returns each, in shape, under parallel callers.
    ``problems`` says what is wrong with one record."""

    def __init__(self, ctx: ConformanceContext, noun: str, problems: Problems) -> None:
        self.proxy = ctx.proxy
        self.noun = noun
        self.problems = problems
        self._found: list[dict[str, Any]] | None = None

    def get(self, ident: object, **options: object) -> Any:
        """``get_<noun>(ident, **options)`` of the plugin."""
        return getattr(self.proxy, f"get_{self.noun}")(ident, **options)

    def found(self) -> list[dict[str, Any]]:
        """The records ``find_<noun>s('')`` returned with an id object; skips the check if none."""
        find = f"find_{self.noun}s"
        if self._found is None:
            found = getattr(self.proxy, find)("")
            if not isinstance(found, list):
                raise CheckFailed(f"{find} must return a list, got {type(found).__name__}")
            self._found = [
                r for r in found if isinstance(r, dict) and isinstance(r.get("id"), dict)
            ]
        if not self._found:
            raise CheckSkipped(f"{find}('') returned no {self.noun}s to check against")
        return self._found

    def find_shapes(self) -> None:
        """Every record ``find_<noun>s('')`` returned is in shape."""
        where = f"find_{self.noun}s('')"
        fail_on([p for i, r in enumerate(self.found()) for p in self.problems(r, f"{where}[{i}]")])

    def get_shapes(self) -> None:
        """``get_<noun>`` returns each record found, in shape."""
        get = f"get_{self.noun}"
        for record in self.found():
            got = self.get(record["id"])
            fail_on(self.problems(got, f"{get}({record['id'].get('opaque_id')!r})"))
            if opaque_id(got) != opaque_id(record):
                raise CheckFailed(
                    f"{get}({record['id']}) returned another {self.noun}: {got.get('id')}"
                )

    def parallel(self) -> None:
        """``get_<noun>`` answers 8 parallel callers as it answers one."""
        ids = [r["id"] for r in self.found()]
        parallel_consistency(
            lambda k: self.get(ids[k]), len(ids), lambda k: f"get_{self.noun}({ids[k]})"
        )


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
