"""The conformance suite: does a plugin honour its service's contract (SPEC §2)?"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import InvalidCredentials, NotFound, RevaPluginError
from ._host import Host, ServiceProxy
from .services import SERVICES

USER_FIELDS: dict[str, type] = {
    "username": str,
    "mail": str,
    "display_name": str,
    "groups": list,
    "uid_number": int,
    "gid_number": int,
}


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


class _Failed(Exception):
    pass


class _Skipped(Exception):
    pass


def user_problems(user: object, where: str) -> list[str]:
    """What is wrong with a User value (SPEC §2 shapes); empty if nothing."""
    if not isinstance(user, dict):
        return [f"{where}: a User must be an object, got {type(user).__name__}"]
    problems = []
    if "secret" in user:
        problems.append(f"{where}: returns the user's secret")
    uid = user.get("id")
    if not isinstance(uid, dict):
        problems.append(f"{where}: 'id' must be an object with idp and opaque_id")
    else:
        for key in ("idp", "opaque_id"):
            if not isinstance(uid.get(key), str):
                problems.append(f"{where}: id.{key} must be a string, got {uid.get(key)!r}")
        if "type" in uid and (not isinstance(uid["type"], int) or isinstance(uid["type"], bool)):
            problems.append(f"{where}: id.type must be an integer")
    for key, kind in USER_FIELDS.items():
        value = user.get(key)
        if value is None:
            problems.append(f"{where}: missing field {key!r}")
        elif not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"{where}: {key} must be {kind.__name__}, got {type(value).__name__}")
    groups = user.get("groups")
    if isinstance(groups, list) and not all(isinstance(g, str) for g in groups):
        problems.append(f"{where}: groups must be strings")
    return problems


class _Suite:
    """Runs the checks of one service against a loaded proxy."""

    def __init__(
        self, proxy: ServiceProxy, handshake: Mapping[str, Any], credentials: tuple[str, str] | None
    ) -> None:
        self.proxy = proxy
        self.handshake = handshake
        self.credentials = credentials
        self.checks: list[Check] = []
        self._users: list[dict[str, Any]] | None = None

    def run(self, name: str, check: Callable[[], None]) -> None:
        try:
            check()
        except _Skipped as exc:
            self.checks.append(Check(name, "skip", str(exc)))
        except _Failed as exc:
            self.checks.append(Check(name, "fail", str(exc)))
        except RevaPluginError as exc:
            self.checks.append(
                Check(name, "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            )
        else:
            self.checks.append(Check(name, "pass"))

    # -- common --------------------------------------------------------------------------

    def methods_listed(self) -> None:
        listed = set(self.handshake.get("methods", ()))
        missing = [m for m in self.proxy.service.methods if m not in listed]
        if missing:
            raise _Failed(f"the plugin does not implement: {', '.join(missing)}")

    # -- userprovider --------------------------------------------------------------------

    def users(self) -> list[dict[str, Any]]:
        if self._users is None:
            found = self.proxy.find_users("")
            if not isinstance(found, list):
                raise _Failed(f"find_users must return a list, got {type(found).__name__}")
            self._users = [
                u for u in found if isinstance(u, dict) and isinstance(u.get("id"), dict)
            ]
        if not self._users:
            raise _Skipped("find_users('') returned no users to check against")
        return self._users

    def find_users_shapes(self) -> None:
        problems = [
            p for i, u in enumerate(self.users()) for p in user_problems(u, f"find_users('')[{i}]")
        ]
        if problems:
            raise _Failed("; ".join(problems[:5]))

    def get_user_shapes(self) -> None:
        for user in self.users():
            got = self.proxy.get_user(user["id"])
            problems = user_problems(got, f"get_user({user['id'].get('opaque_id')!r})")
            if problems:
                raise _Failed("; ".join(problems[:5]))
            if got.get("id", {}).get("opaque_id") != user["id"].get("opaque_id"):
                raise _Failed(f"get_user({user['id']}) returned another user: {got.get('id')}")

    def unknown_user(self) -> None:
        ghost = {"idp": "conformance.invalid", "opaque_id": f"nobody-{secrets.token_hex(6)}"}
        calls: tuple[tuple[str, Callable[[], object]], ...] = (
            ("get_user", lambda: self.proxy.get_user(ghost)),
            ("get_user_groups", lambda: self.proxy.get_user_groups(ghost)),
            (
                "get_user_by_claim",
                lambda: self.proxy.get_user_by_claim("username", ghost["opaque_id"]),
            ),
        )
        for label, call in calls:
            try:
                call()
            except NotFound:
                continue
            except RevaPluginError as exc:
                raise _Failed(
                    f"{label} of an unknown user raised {type(exc).__name__}, not NotFound"
                ) from None
            raise _Failed(f"{label} of an unknown user returned instead of raising NotFound")

    def groups_agree(self) -> None:
        for user in self.users():
            full = self.proxy.get_user(user["id"])
            groups = self.proxy.get_user_groups(user["id"])
            if sorted(groups) != sorted(full.get("groups", [])):
                name = user.get("username")
                raise _Failed(
                    f"get_user_groups({name!r}) = {groups} but get_user says {full.get('groups')}"
                )

    def claims(self) -> None:
        user = self.users()[0]
        for claim, field_name in (
            ("username", "username"),
            ("mail", "mail"),
            ("uid", "uid_number"),
        ):
            value = str(user.get(field_name))
            got = self.proxy.get_user_by_claim(claim, value)
            if got.get("id", {}).get("opaque_id") != user["id"].get("opaque_id"):
                raise _Failed(
                    f"get_user_by_claim({claim!r}, {value!r}) returned {got.get('username')!r}"
                )

    def skip_groups(self) -> None:
        user = self.users()[0]
        got = self.proxy.get_user(user["id"], skip_fetching_groups=True)
        problems = user_problems(got, "get_user(skip_fetching_groups=True)")
        if problems:
            raise _Failed("; ".join(problems[:5]))

    def parallel(self) -> None:
        ids = [u["id"] for u in self.users()]
        expected = [self.proxy.get_user(uid) for uid in ids]
        errors: list[str] = []

        def worker(offset: int) -> None:
            for i in range(20):
                k = (offset + i) % len(ids)
                if self.proxy.get_user(ids[k]) != expected[k]:
                    errors.append(
                        f"get_user({ids[k]}) answered differently under 8 parallel callers"
                    )

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise _Failed(errors[0])

    # -- authprovider --------------------------------------------------------------------

    def bad_credentials(self) -> None:
        try:
            self.proxy.authenticate(f"nobody-{secrets.token_hex(4)}", secrets.token_hex(8))
        except InvalidCredentials:
            return
        except RevaPluginError as exc:
            raise _Failed(
                f"bad credentials raised {type(exc).__name__}, not InvalidCredentials"
            ) from None
        raise _Failed("bad credentials were accepted")

    def good_credentials(self) -> None:
        if self.credentials is None:
            raise _Skipped("no credentials given (--credentials ID:SECRET)")
        result = self.proxy.authenticate(*self.credentials)
        if not isinstance(result, dict) or "user" not in result or "scopes" not in result:
            raise _Failed("authenticate must return {'user': User, 'scopes': {...}}")
        problems = user_problems(result["user"], "authenticate().user")
        if not isinstance(result["scopes"], dict):
            problems.append("authenticate().scopes must be an object keyed by scope name")
        if problems:
            raise _Failed("; ".join(problems[:5]))
        wrong = self.credentials[1] + "-wrong"
        try:
            self.proxy.authenticate(self.credentials[0], wrong)
        except InvalidCredentials:
            return
        raise _Failed("a wrong secret for a known client id was accepted")

    def checks_for(self, service: str) -> Iterator[tuple[str, Callable[[], None]]]:
        yield "handshake lists every method", self.methods_listed
        if service == "userprovider":
            yield "find_users returns Users", self.find_users_shapes
            yield "get_user returns the User asked for", self.get_user_shapes
            yield "unknown ids raise NotFound", self.unknown_user
            yield "get_user_groups agrees with get_user", self.groups_agree
            yield "claims username, mail, uid", self.claims
            yield "skip_fetching_groups still returns a User", self.skip_groups
            yield "parallel calls answer consistently", self.parallel
        elif service == "authprovider":
            yield "bad credentials raise InvalidCredentials", self.bad_credentials
            yield "good credentials return a User and scopes", self.good_credentials


def run_conformance(
    spec: str,
    service: str,
    *,
    config: Mapping[str, Any] | None = None,
    base_dir: str | Path | None = None,
    credentials: tuple[str, str] | None = None,
    plugins: Mapping[str, Any] | None = None,
    **host_options: Any,
) -> Report:
    """Build the env for ``spec``, start the plugin as ``service`` and check it.

    ``config`` is the driver's own table, ``plugins`` the loader settings (``[plugins]``),
    ``host_options`` what :class:`Host` takes (``cache_dir``, ``installer``, ``offline``).
    """
    if service not in SERVICES:
        from ._errors import UsageError  # noqa: PLC0415

        raise UsageError(f"unknown service {service!r} (known: {', '.join(sorted(SERVICES))})")
    base = Path(base_dir or Path.cwd()).resolve()
    table: dict[str, Any] = {"driver": spec}
    whole = {"plugins": dict(plugins or {}), "grpc": {"services": {service: table}}}
    with Host(whole, base_dir=base, **host_options) as probe:
        plan = probe.loader.plan(probe.config.service(service))
    table["drivers"] = {plan.entry_name: dict(config or {})}
    checks: list[Check] = []
    with Host(whole, base_dir=base, **host_options) as host:
        try:
            proxy = host.service(service)
            handshake = proxy.driver.start()
        except RevaPluginError as exc:
            checks.append(Check("starts and accepts its config", "fail", str(exc).splitlines()[0]))
            return Report(spec, service, tuple(checks))
        checks.append(Check("starts and accepts its config", "pass"))
        suite = _Suite(proxy, handshake, credentials)
        for name, check in suite.checks_for(service):
            suite.run(name, check)
        checks.extend(suite.checks)
    return Report(spec, service, tuple(checks))
