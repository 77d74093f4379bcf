"""userprovider: Reva's ``user.Manager``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import TypedDict

from ._base import (
    Check,
    CheckFailed,
    ConformanceContext,
    RecordChecks,
    ScaffoldTemplate,
    ServiceType,
    expect_not_found,
    fail_on,
    id_strings,
    list_problems,
    opaque_id,
    record_problems,
)

NAME = "userprovider"
CLAIMS = ("mail", "username", "uid", "gid")

USER_FIELDS: dict[str, type] = {
    "username": str,
    "mail": str,
    "display_name": str,
    "groups": list,
    "uid_number": int,
    "gid_number": int,
}


class _UserIdBase(TypedDict):
    idp: str
    opaque_id: str


class UserId(_UserIdBase, total=False):
    """A user's identity: the identity provider and an opaque id (``type`` is optional)."""

    type: int


class User(TypedDict, total=False):
    """A user as Reva's ``users.demo.json`` describes one, without ``secret``."""

    id: UserId
    username: str
    mail: str
    display_name: str
    groups: list[str]
    uid_number: int
    gid_number: int


class Spec:
    """The methods of a user provider."""

    def get_user(self, user_id: UserId, skip_fetching_groups: bool = False) -> User:  # type: ignore[empty-body]
        """The user with this id; raises ``NotFound``."""

    def get_user_by_claim(  # type: ignore[empty-body]
        self, claim: str, value: str, skip_fetching_groups: bool = False
    ) -> User:
        """The user whose ``claim`` (mail, username, uid, gid) equals ``value``."""

    def get_user_groups(self, user_id: UserId) -> list[str]:  # type: ignore[empty-body]
        """The groups of the user with this id."""

    def find_users(self, query: str, skip_fetching_groups: bool = False) -> list[User]:  # type: ignore[empty-body]
        """Users whose username, display name, mail or id contain ``query``."""


def user_id_problems(uid: object, where: str) -> list[str]:
    """What is wrong with a UserId value; empty if nothing."""
    if not isinstance(uid, dict):
        return [f"{where}: a UserId must be an object with idp and opaque_id"]
    problems = id_strings(uid, where)
    if "type" in uid and (not isinstance(uid["type"], int) or isinstance(uid["type"], bool)):
        problems.append(f"{where}.type must be an integer")
    return problems


def user_problems(user: object, where: str) -> list[str]:
    """What is wrong with a User value (SPEC §2 shapes); empty if nothing."""
    problems = record_problems(user, where, "User", USER_FIELDS, user_id_problems)
    groups = user.get("groups") if isinstance(user, dict) else None
    if isinstance(groups, list) and not all(isinstance(g, str) for g in groups):
        problems.append(f"{where}: groups must be strings")
    return problems


def validate_result(method: str, value: object) -> list[str]:
    """What is wrong with a result of ``method`` (User, list of Users, list of group names)."""
    if method in ("get_user", "get_user_by_claim"):
        return user_problems(value, f"{method}()")
    if method == "find_users":
        return list_problems(method, value, user_problems)
    if method == "get_user_groups" and (
        not isinstance(value, list) or not all(isinstance(g, str) for g in value)
    ):
        return ["get_user_groups() must return a list of strings"]
    return []


class _Checks(RecordChecks):
    """The user provider's checks, sharing one ``find_users('')`` answer."""

    def __init__(self, ctx: ConformanceContext) -> None:
        super().__init__(ctx, "user", user_problems)

    def unknown_user(self) -> None:
        ghost = {"idp": "conformance.invalid", "opaque_id": f"nobody-{secrets.token_hex(6)}"}
        proxy = self.proxy
        expect_not_found(
            (
                ("get_user", lambda: proxy.get_user(ghost)),
                ("get_user_groups", lambda: proxy.get_user_groups(ghost)),
                (
                    "get_user_by_claim",
                    lambda: proxy.get_user_by_claim("username", ghost["opaque_id"]),
                ),
            ),
            "an unknown user",
        )

    def groups_agree(self) -> None:
        for user in self.found():
            full = self.proxy.get_user(user["id"])
            groups = self.proxy.get_user_groups(user["id"])
            if sorted(groups) != sorted(full.get("groups", [])):
                name = user.get("username")
                raise CheckFailed(
                    f"get_user_groups({name!r}) = {groups} but get_user says {full.get('groups')}"
                )

    def claims(self) -> None:
        user = self.found()[0]
        for claim, field_name in (
            ("username", "username"),
            ("mail", "mail"),
            ("uid", "uid_number"),
        ):
            value = str(user.get(field_name))
            got = self.proxy.get_user_by_claim(claim, value)
            if opaque_id(got) != opaque_id(user):
                raise CheckFailed(
                    f"get_user_by_claim({claim!r}, {value!r}) returned {got.get('username')!r}"
                )

    def skip_groups(self) -> None:
        got = self.proxy.get_user(self.found()[0]["id"], skip_fetching_groups=True)
        fail_on(user_problems(got, "get_user(skip_fetching_groups=True)"))


def conformance_checks(ctx: ConformanceContext) -> Iterator[tuple[str, Check]]:
    """Shapes, NotFound for unknown ids, claims, groups agree, skip_fetching_groups, parallel."""
    checks = _Checks(ctx)
    yield "find_users returns Users", checks.find_shapes
    yield "get_user returns the User asked for", checks.get_shapes
    yield "unknown ids raise NotFound", checks.unknown_user
    yield "get_user_groups agrees with get_user", checks.groups_agree
    yield "claims username, mail, uid", checks.claims
    yield "skip_fetching_groups still returns a User", checks.skip_groups
    yield "parallel calls answer consistently", checks.parallel


SCAFFOLD = ScaffoldTemplate(
    module='''\
"""{dist}: a reva user provider.

It needs nothing from reva-plugins at run time: errors are its own classes, and the core maps
them to its typed exceptions by class name (``NotFound``, ``InvalidArgument``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported for annotations only: a plugin process pays imports at every start
    from typing import Any

#: A tiny demo data set, used when the driver's config has no ``users`` list.
DEMO_USERS: list[dict[str, Any]] = [
    {{
        "id": {{"idp": "https://demo.example.org", "opaque_id": "alice", "type": 1}},
        "username": "alice",
        "mail": "alice@example.org",
        "display_name": "Alice Demo",
        "groups": ["demo"],
        "uid_number": 1001,
        "gid_number": 1000,
    }},
    {{
        "id": {{"idp": "https://demo.example.org", "opaque_id": "bob", "type": 1}},
        "username": "bob",
        "mail": "bob@example.org",
        "display_name": "Bob Demo",
        "groups": ["demo", "admins"],
        "uid_number": 1002,
        "gid_number": 1000,
    }},
]
CLAIMS = {{"mail": "mail", "username": "username", "uid": "uid_number", "gid": "gid_number"}}


class NotFound(Exception):
    """No such user."""


class InvalidArgument(Exception):
    """A claim this provider does not know."""


class {cls}:
    """Reva's ``user.Manager``: look users up by id, claim or query."""

    def __init__(self) -> None:
        self.users: list[dict[str, Any]] = []

    def configure(self, config: dict[str, Any]) -> None:
        """Called once, with the driver's config table, before any other method."""
        self.users = list(config.get("users") or DEMO_USERS)

    def _find(self, user_id: dict[str, Any]) -> dict[str, Any]:
        for user in self.users:
            if user["id"]["opaque_id"] == user_id.get("opaque_id"):
                return user
        raise NotFound(f"user {{user_id.get('opaque_id')!r}} not found")

    @staticmethod
    def _public(user: dict[str, Any], skip_fetching_groups: bool = False) -> dict[str, Any]:
        out = {{k: v for k, v in user.items() if k != "secret"}}
        if skip_fetching_groups:
            out["groups"] = []
        return out

    def get_user(
        self, user_id: dict[str, Any], skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user with this id; raises ``NotFound``."""
        return self._public(self._find(user_id), skip_fetching_groups)

    def get_user_by_claim(
        self, claim: str, value: str, skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user whose ``claim`` (mail, username, uid, gid) equals ``value``."""
        field = CLAIMS.get(claim)
        if field is None:
            raise InvalidArgument(f"unsupported claim {{claim!r}}")
        for user in self.users:
            if str(user.get(field)) == str(value):
                return self._public(user, skip_fetching_groups)
        raise NotFound(f"no user with {{claim}} {{value!r}}")

    def get_user_groups(self, user_id: dict[str, Any]) -> list[str]:
        """The groups of the user with this id."""
        return list(self._find(user_id).get("groups", []))

    def find_users(self, query: str, skip_fetching_groups: bool = False) -> list[dict[str, Any]]:
        """Users whose username, display name, mail or id contain ``query`` (any case)."""
        needle = query.lower()

        def matches(user: dict[str, Any]) -> bool:
            values = (user["username"], user["display_name"], user["mail"], user["id"]["opaque_id"])
            return any(needle in str(value).lower() for value in values)

        return [self._public(u, skip_fetching_groups) for u in self.users if matches(u)]
'''
)

SERVICE = ServiceType(
    NAME,
    Spec,
    validate_result=validate_result,
    conformance_checks=conformance_checks,
    scaffold=SCAFFOLD,
    errors=("NotFound", "InvalidArgument"),
)
