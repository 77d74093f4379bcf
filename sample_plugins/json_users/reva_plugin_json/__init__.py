"""Reva's JSON user, auth and group providers: a ``users.demo.json`` and a ``groups.demo.json``.

Users files of every vintage are read: newer ones carry ``uid_number``/``gid_number``; the one in
Reva's runtime-plugin example keeps uid and gid in ``opaque.map`` (``{"decoder": "plain",
"value": <base64 of the number>}``). Both answer the ``uid``/``gid`` claims; a user without the
number fields gets them from the opaque map, which is returned unchanged.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; a plugin process pays it on every start
    from typing import Any

__all__ = [
    "InvalidArgument",
    "InvalidCredentials",
    "JSONAuthProvider",
    "JSONGroupProvider",
    "JSONUserProvider",
    "NotFound",
]

CLAIMS = {"mail": "mail", "username": "username", "uid": "uid_number", "gid": "gid_number"}
GROUP_CLAIMS = ("group_name", "gid_number", "display_name", "mail")


class NotFound(Exception):
    """No such user (the core maps this class name to its own ``NotFound``)."""


class InvalidCredentials(Exception):
    """Wrong client id or secret."""


class InvalidArgument(Exception):
    """A claim this driver does not support."""


def _load_list(config: dict[str, Any], key: str) -> list[dict[str, Any]]:
    path = os.path.expanduser(config.get(key, f"{key}.demo.json"))
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise InvalidArgument(f"{path}: expected a JSON list of {key}")
    return data


def _load_users(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [_with_numbers(user) for user in _load_list(config, "users")]


def _opaque_number(user: dict[str, Any], key: str) -> int | None:
    """``opaque.map[key]`` as Reva's ``plain`` decoder reads it (base64 of the decimal text)."""
    entry = ((user.get("opaque") or {}).get("map") or {}).get(key)
    if not isinstance(entry, dict) or entry.get("decoder", "plain") != "plain":
        return None
    # only the old vintage needs these: each import stays in an idle plugin's memory
    import base64  # noqa: PLC0415
    import binascii  # noqa: PLC0415

    try:
        return int(base64.b64decode(str(entry.get("value", "")), validate=True).decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _with_numbers(user: dict[str, Any]) -> dict[str, Any]:
    """The user with ``uid_number``/``gid_number``, from the opaque map if the file has none."""
    out = dict(user)
    for field, key in (("uid_number", "uid"), ("gid_number", "gid")):
        if field not in out:
            number = _opaque_number(user, key)
            if number is not None:
                out[field] = number
    return out


def _public(user: dict[str, Any], skip_fetching_groups: bool = False) -> dict[str, Any]:
    out = {k: v for k, v in user.items() if k != "secret"}
    if skip_fetching_groups:
        out["groups"] = []
    return out


class JSONUserProvider:
    """Reva's ``user.Manager`` over a JSON file."""

    def __init__(self) -> None:
        self.users: list[dict[str, Any]] = []

    def configure(self, config: dict[str, Any]) -> None:
        """Read the users file named by ``config["users"]``."""
        self.users = _load_users(config)

    def _find(self, user_id: dict[str, Any]) -> dict[str, Any]:
        opaque = user_id.get("opaque_id")
        idp = user_id.get("idp")
        for user in self.users:
            uid = user["id"]
            if opaque in (uid.get("opaque_id"), user.get("username")) and (
                not idp or idp == uid.get("idp")
            ):
                return user
        raise NotFound(f"user {opaque!r} not found")

    def get_user(
        self, user_id: dict[str, Any], skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user with this id (opaque id or username, and idp if given)."""
        return _public(self._find(user_id), skip_fetching_groups)

    def get_user_by_claim(
        self, claim: str, value: str, skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user whose ``claim`` (mail, username, uid, gid) is ``value``."""
        field = CLAIMS.get(claim)
        if field is None:
            raise InvalidArgument(f"unsupported claim {claim!r} (supported: {', '.join(CLAIMS)})")
        for user in self.users:
            if str(user.get(field)) == str(value):
                return _public(user, skip_fetching_groups)
        raise NotFound(f"no user with {claim} {value!r}")

    def get_user_groups(self, user_id: dict[str, Any]) -> list[str]:
        """The groups of the user with this id."""
        return list(self._find(user_id).get("groups", []))

    def find_users(self, query: str, skip_fetching_groups: bool = False) -> list[dict[str, Any]]:
        """Case-insensitive substring match on username, display name, mail and opaque id."""
        needle = query.lower()
        return [
            _public(user, skip_fetching_groups)
            for user in self.users
            if any(
                needle in str(value).lower()
                for value in (
                    user.get("username"),
                    user.get("display_name"),
                    user.get("mail"),
                    user["id"].get("opaque_id"),
                )
            )
        ]


class JSONAuthProvider:
    """Reva's ``auth.Manager`` over a JSON file: client id = username, secret = password."""

    def __init__(self) -> None:
        self.users: list[dict[str, Any]] = []

    def configure(self, config: dict[str, Any]) -> None:
        """Read the users file named by ``config["users"]``."""
        self.users = _load_users(config)

    def authenticate(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """The user and its scopes, if the secret matches."""
        for user in self.users:
            if user.get("username") == client_id and user.get("secret") == client_secret:
                return {
                    "user": _public(user),
                    "scopes": {"user": {"resource": {"decoder": "json", "value": "*"}, "role": 1}},
                }
        raise InvalidCredentials("invalid client id or secret")


def _same_id(wanted: dict[str, Any], have: dict[str, Any]) -> bool:
    """Same opaque id, and same idp when ``wanted`` names one."""
    idp = wanted.get("idp")
    return wanted.get("opaque_id") == have.get("opaque_id") and (not idp or idp == have.get("idp"))


class JSONGroupProvider:
    """Reva's ``group.Manager`` over a JSON file (Reva's ``groups.demo.json`` format)."""

    def __init__(self) -> None:
        self.groups: list[dict[str, Any]] = []

    def configure(self, config: dict[str, Any]) -> None:
        """Read the groups file named by ``config["groups"]``."""
        self.groups = _load_list(config, "groups")

    def _find(self, group_id: dict[str, Any]) -> dict[str, Any]:
        opaque = group_id.get("opaque_id")
        idp = group_id.get("idp")
        for group in self.groups:
            gid = group["id"]
            if opaque in (gid.get("opaque_id"), group.get("group_name")) and (
                not idp or idp == gid.get("idp")
            ):
                return group
        raise NotFound(f"group {opaque!r} not found")

    @staticmethod
    def _public(group: dict[str, Any], skip_fetching_members: bool = False) -> dict[str, Any]:
        out = dict(group)
        out["members"] = [] if skip_fetching_members else list(group.get("members", []))
        return out

    def get_group(
        self, group_id: dict[str, Any], skip_fetching_members: bool = False
    ) -> dict[str, Any]:
        """The group with this id (opaque id or group name, and idp if given)."""
        return self._public(self._find(group_id), skip_fetching_members)

    def get_group_by_claim(
        self, claim: str, value: str, skip_fetching_members: bool = False
    ) -> dict[str, Any]:
        """The group whose ``claim`` (group_name, gid_number, display_name, mail) is ``value``."""
        if claim not in GROUP_CLAIMS:
            supported = ", ".join(GROUP_CLAIMS)
            raise InvalidArgument(f"unsupported claim {claim!r} (supported: {supported})")
        for group in self.groups:
            if str(group.get(claim)) == str(value):
                return self._public(group, skip_fetching_members)
        raise NotFound(f"no group with {claim} {value!r}")

    def get_members(self, group_id: dict[str, Any]) -> list[dict[str, Any]]:
        """The UserIds of the group's members."""
        return list(self._find(group_id).get("members", []))

    def has_member(self, group_id: dict[str, Any], user_id: dict[str, Any]) -> bool:
        """Whether the user (opaque id, and idp if given) is a member of the group."""
        return any(_same_id(user_id, m) for m in self._find(group_id).get("members", []))

    def find_groups(self, query: str, skip_fetching_members: bool = False) -> list[dict[str, Any]]:
        """Case-insensitive substring match on group name, display name, mail and opaque id."""
        needle = query.lower()
        return [
            self._public(group, skip_fetching_members)
            for group in self.groups
            if any(
                needle in str(value).lower()
                for value in (
                    group.get("group_name"),
                    group.get("display_name"),
                    group.get("mail"),
                    group["id"].get("opaque_id"),
                )
            )
        ]
