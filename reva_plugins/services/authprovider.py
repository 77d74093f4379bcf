"""authprovider: Reva's ``auth.Manager``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any, TypedDict

from .._errors import InvalidCredentials, RevaPluginError
from ._base import (
    Check,
    CheckFailed,
    CheckSkipped,
    ConformanceContext,
    ScaffoldTemplate,
    ServiceType,
    echoes,
    everything_shown,
    random_secret,
    secret_leaks,
)
from .userprovider import User, user_problems

NAME = "authprovider"


class AuthResult(TypedDict):
    """What ``authenticate`` returns: the user and the scopes granted, by name."""

    user: User
    scopes: dict[str, Any]


class Spec:
    """The methods of an auth provider."""

    def authenticate(self, client_id: str, client_secret: str) -> AuthResult:  # type: ignore[empty-body]
        """The user these credentials belong to; raises ``InvalidCredentials``."""


def validate_result(method: str, value: object) -> list[str]:
    """What is wrong with a result of ``authenticate`` (``{"user": User, "scopes": {...}}``)."""
    if method != "authenticate":
        return []
    if not isinstance(value, dict) or "user" not in value or "scopes" not in value:
        return ["authenticate must return {'user': User, 'scopes': {...}}"]
    problems = user_problems(value["user"], "authenticate().user")
    if not isinstance(value["scopes"], dict):
        problems.append("authenticate().scopes must be an object keyed by scope name")
    return problems


def conformance_checks(ctx: ConformanceContext) -> Iterator[tuple[str, Check]]:
    """Bad credentials are refused; good ones (``--credentials``) give a User and scopes; no
    result or error ever shows the secret it was given."""
    proxy = ctx.proxy

    def rejects(client_id: str, secret: str, what: str) -> None:
        """``authenticate(client_id, secret)`` raises InvalidCredentials and does not echo it."""
        try:
            result = proxy.authenticate(client_id, secret)
        except RevaPluginError as exc:
            if echoes(everything_shown(exc), secret):
                raise CheckFailed(f"the error for {what} echoes the client secret") from None
            if not isinstance(exc, InvalidCredentials):
                raise CheckFailed(
                    f"{what} raised {type(exc).__name__}, not InvalidCredentials"
                ) from None
            return
        leaks = secret_leaks(result, "authenticate()", secret)
        raise CheckFailed("; ".join([f"{what}: accepted, not refused", *leaks[:4]]))

    def bad_credentials() -> None:
        rejects(f"nobody-{secrets.token_hex(4)}", random_secret(), "bad credentials")

    def good_credentials() -> None:
        if ctx.credentials is None:
            raise CheckSkipped("no credentials given (--credentials ID:SECRET)")
        client_id, secret = ctx.credentials
        result = proxy.authenticate(client_id, secret)
        problems = secret_leaks(result, "authenticate()", secret)
        problems += [p for p in validate_result("authenticate", result) if p not in problems]
        if problems:
            raise CheckFailed("; ".join(problems[:5]))
        rejects(client_id, random_secret(), "a wrong secret for a known client id")

    yield "bad credentials raise InvalidCredentials", bad_credentials
    yield "good credentials return a User and scopes", good_credentials


SCAFFOLD = ScaffoldTemplate(
    module='''\
"""{dist}: a reva auth provider.

It needs nothing from reva-plugins at run time: ``InvalidCredentials`` is its own class, and the
core maps it to its typed exception by class name.
"""

from __future__ import annotations

import hmac

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported for annotations only: a plugin process pays imports at every start
    from typing import Any

#: A demo account, used when the driver's config has no ``accounts`` table.
DEMO_ACCOUNTS: dict[str, str] = {{"demo": "demo-secret"}}


class InvalidCredentials(Exception):
    """Unknown client id or wrong secret."""


class {cls}:
    """Reva's ``auth.Manager``: check a client id and secret."""

    def __init__(self) -> None:
        self.accounts: dict[str, str] = {{}}

    def configure(self, config: dict[str, Any]) -> None:
        """Called once, with the driver's config table, before any other method."""
        self.accounts = dict(config.get("accounts") or DEMO_ACCOUNTS)

    def authenticate(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """The user and its scopes; raises ``InvalidCredentials``."""
        expected = self.accounts.get(client_id)
        if expected is None or not hmac.compare_digest(expected, client_secret):
            raise InvalidCredentials("invalid client id or secret")
        user = {{
            "id": {{"idp": "https://demo.example.org", "opaque_id": client_id, "type": 1}},
            "username": client_id,
            "mail": f"{{client_id}}@example.org",
            "display_name": client_id.title(),
            "groups": [],
            "uid_number": 1000,
            "gid_number": 1000,
        }}
        return {{"user": user, "scopes": {{"user": {{"role": 1}}}}}}
''',
    credentials=("demo", "demo-secret"),
)

SERVICE = ServiceType(
    NAME,
    Spec,
    validate_result=validate_result,
    conformance_checks=conformance_checks,
    scaffold=SCAFFOLD,
    errors=("InvalidCredentials",),
)
