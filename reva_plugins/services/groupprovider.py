"""groupprovider: Reva's ``group.Manager`` (CS3 ``GroupAPI``)."""

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
from .userprovider import UserId, user_id_problems

NAME = "groupprovider"
CLAIMS = ("group_name", "gid_number", "display_name")

GROUP_FIELDS: dict[str, type] = {
    "group_name": str,
    "mail": str,
    "display_name": str,
    "gid_number": int,
    "members": list,
}


class GroupId(TypedDict):
    """A group's identity: the identity provider and an opaque id."""

    idp: str
    opaque_id: str


class Group(TypedDict):
    """A group as CS3's ``Group`` describes one; ``members`` are the members' UserIds."""

    id: GroupId
    group_name: str
    mail: str
    display_name: str
    gid_number: int
    members: list[UserId]


class Spec:
    """The methods of a group provider."""

    def get_group(self, group_id: GroupId, skip_fetching_members: bool = False) -> Group:  # type: ignore[empty-body]
        """The group with this id; raises ``NotFound``."""

    def get_group_by_claim(  # type: ignore[empty-body]
        self, claim: str, value: str, skip_fetching_members: bool = False
    ) -> Group:
        """The group whose ``claim`` (group_name, gid_number, display_name) equals ``value``."""

    def get_members(self, group_id: GroupId) -> list[UserId]:  # type: ignore[empty-body]
        """The UserIds of the group's members; raises ``NotFound``."""

    def has_member(self, group_id: GroupId, user_id: UserId) -> bool:  # type: ignore[empty-body]
        """Whether the user is a member of the group; raises ``NotFound`` for an unknown group."""

    def find_groups(self, query: str, skip_fetching_members: bool = False) -> list[Group]:  # type: ignore[empty-body]
        """Groups whose group name, display name, mail or id contain ``query``."""


def group_problems(group: object, where: str) -> list[str]:
    """What is wrong with a Group value (SPEC §2 shapes); empty if nothing."""
    problems = record_problems(group, where, "Group", GROUP_FIELDS, id_strings)
    members = group.get("members") if isinstance(group, dict) else None
    if isinstance(members, list):
        for i, member in enumerate(members):
            problems += user_id_problems(member, f"{where}: members[{i}]")
    return problems


def validate_result(method: str, value: object) -> list[str]:
    """What is wrong with a result of ``method`` (Group, list of Groups or UserIds, bool)."""
    if method in ("get_group", "get_group_by_claim"):
        return group_problems(value, f"{method}()")
    if method == "find_groups":
        return list_problems(method, value, group_problems)
    if method == "get_members":
        return list_problems(method, value, user_id_problems)
    if method == "has_member" and not isinstance(value, bool):
        return [f"has_member() must return a bool, got {type(value).__name__}"]
    return []


def _ids(members: object) -> list[tuple[str, str]]:
    if not isinstance(members, list):
        return []
    return sorted(
        (str(m.get("idp")), str(m.get("opaque_id"))) for m in members if isinstance(m, dict)
    )


class _Checks(RecordChecks):
    """The group provider's checks, sharing one ``find_groups('')`` answer."""

    def __init__(self, ctx: ConformanceContext) -> None:
        super().__init__(ctx, "group", group_problems)

    def unknown_group(self) -> None:
        ghost = {"idp": "conformance.invalid", "opaque_id": f"nogroup-{secrets.token_hex(6)}"}
        someone = {"idp": "conformance.invalid", "opaque_id": "someone"}
        proxy = self.proxy
        expect_not_found(
            (
                ("get_group", lambda: proxy.get_group(ghost)),
                ("get_members", lambda: proxy.get_members(ghost)),
                ("has_member", lambda: proxy.has_member(ghost, someone)),
                (
                    "get_group_by_claim",
                    lambda: proxy.get_group_by_claim("group_name", ghost["opaque_id"]),
                ),
            ),
            "an unknown group",
        )

    def claims(self) -> None:
        group = self.found()[0]
        for claim in CLAIMS:
            value = str(group.get(claim))
            got = self.proxy.get_group_by_claim(claim, value)
            fail_on(group_problems(got, f"get_group_by_claim({claim!r}, {value!r})"))
            if opaque_id(got) != opaque_id(group):
                raise CheckFailed(
                    f"get_group_by_claim({claim!r}, {value!r}) returned {got.get('group_name')!r}"
                )

    def members_agree(self) -> None:
        stranger = {"idp": "conformance.invalid", "opaque_id": f"nobody-{secrets.token_hex(6)}"}
        for group in self.found():
            name = group.get("group_name")
            full = self.proxy.get_group(group["id"])
            members = self.proxy.get_members(group["id"])
            fail_on(validate_result("get_members", members))
            if _ids(members) != _ids(full.get("members")):
                raise CheckFailed(
                    f"get_members({name!r}) = {members} but get_group says {full.get('members')}"
                )
            for member in members:
                if self.proxy.has_member(group["id"], member) is not True:
                    raise CheckFailed(f"has_member({name!r}, {member}) is not True")
            if self.proxy.has_member(group["id"], stranger) is not False:
                raise CheckFailed(f"has_member({name!r}, an unknown user) is not False")

    def skip_members(self) -> None:
        got = self.proxy.get_group(self.found()[0]["id"], skip_fetching_members=True)
        fail_on(group_problems(got, "get_group(skip_fetching_members=True)"))
        if got.get("members"):
            raise CheckFailed("get_group(skip_fetching_members=True) still returns members")
        for found in self.proxy.find_groups("", skip_fetching_members=True):
            if isinstance(found, dict) and found.get("members"):
                raise CheckFailed("find_groups(skip_fetching_members=True) still returns members")


def conformance_checks(ctx: ConformanceContext) -> Iterator[tuple[str, Check]]:
    """Shapes, NotFound for unknown ids, claims, members agree, skip_fetching_members, parallel."""
    checks = _Checks(ctx)
    yield "find_groups returns Groups", checks.find_shapes
    yield "get_group returns the Group asked for", checks.get_shapes
    yield "unknown ids raise NotFound", checks.unknown_group
    yield "claims group_name, gid_number, display_name", checks.claims
    yield "get_members and has_member agree with get_group", checks.members_agree
    yield "skip_fetching_members returns no members", checks.skip_members
    yield "parallel calls answer consistently", checks.parallel


SCAFFOLD = ScaffoldTemplate(
    module='''\
"""{dist}: a reva group provider.

It needs nothing from reva-plugins at run time: errors are its own classes, and the core maps
them to its typed exceptions by class name (``NotFound``, ``InvalidArgument``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported for annotations only: a plugin process pays imports at every start
    from typing import Any

IDP = "https://demo.example.org"

#: A tiny demo data set, used when the driver's config has no ``groups`` list.
DEMO_GROUPS: list[dict[str, Any]] = [
    {{
        "id": {{"idp": IDP, "opaque_id": "demo"}},
        "group_name": "demo",
        "mail": "demo@example.org",
        "display_name": "Demo Users",
        "gid_number": 1000,
        "members": [
            {{"idp": IDP, "opaque_id": "alice", "type": 1}},
            {{"idp": IDP, "opaque_id": "bob", "type": 1}},
        ],
    }},
    {{
        "id": {{"idp": IDP, "opaque_id": "admins"}},
        "group_name": "admins",
        "mail": "admins@example.org",
        "display_name": "Administrators",
        "gid_number": 1001,
        "members": [{{"idp": IDP, "opaque_id": "bob", "type": 1}}],
    }},
]
CLAIMS = ("group_name", "gid_number", "display_name", "mail")


class NotFound(Exception):
    """No such group."""


class InvalidArgument(Exception):
    """A claim this provider does not know."""


class {cls}:
    """Reva's ``group.Manager``: look groups up by id, claim or query; list their members."""

    def __init__(self) -> None:
        self.groups: list[dict[str, Any]] = []

    def configure(self, config: dict[str, Any]) -> None:
        """Called once, with the driver's config table, before any other method."""
        self.groups = list(config.get("groups") or DEMO_GROUPS)

    def _find(self, group_id: dict[str, Any]) -> dict[str, Any]:
        for group in self.groups:
            if group["id"]["opaque_id"] == group_id.get("opaque_id"):
                return group
        raise NotFound(f"group {{group_id.get('opaque_id')!r}} not found")

    @staticmethod
    def _public(group: dict[str, Any], skip_fetching_members: bool = False) -> dict[str, Any]:
        out = dict(group)
        out["members"] = [] if skip_fetching_members else list(group.get("members", []))
        return out

    def get_group(
        self, group_id: dict[str, Any], skip_fetching_members: bool = False
    ) -> dict[str, Any]:
        """The group with this id; raises ``NotFound``."""
        return self._public(self._find(group_id), skip_fetching_members)

    def get_group_by_claim(
        self, claim: str, value: str, skip_fetching_members: bool = False
    ) -> dict[str, Any]:
        """The group whose ``claim`` (group_name, gid_number, display_name, mail) is ``value``."""
        if claim not in CLAIMS:
            raise InvalidArgument(f"unsupported claim {{claim!r}}")
        for group in self.groups:
            if str(group.get(claim)) == str(value):
                return self._public(group, skip_fetching_members)
        raise NotFound(f"no group with {{claim}} {{value!r}}")

    def get_members(self, group_id: dict[str, Any]) -> list[dict[str, Any]]:
        """The UserIds of the group's members."""
        return list(self._find(group_id).get("members", []))

    def has_member(self, group_id: dict[str, Any], user_id: dict[str, Any]) -> bool:
        """Whether the user (by opaque id, and idp if given) is a member of the group."""
        return any(
            member.get("opaque_id") == user_id.get("opaque_id")
            and (not user_id.get("idp") or member.get("idp") == user_id.get("idp"))
            for member in self._find(group_id).get("members", [])
        )

    def find_groups(
        self, query: str, skip_fetching_members: bool = False
    ) -> list[dict[str, Any]]:
        """Groups whose name, display name, mail or id contain ``query`` (any case)."""
        needle = query.lower()

        def matches(group: dict[str, Any]) -> bool:
            fields = ("group_name", "display_name", "mail")
            values = [group[f] for f in fields] + [group["id"]["opaque_id"]]
            return any(needle in str(value).lower() for value in values)

        return [self._public(g, skip_fetching_members) for g in self.groups if matches(g)]
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
