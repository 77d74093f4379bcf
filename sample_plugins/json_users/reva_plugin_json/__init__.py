"""Reva's JSON user and auth providers: users come from a ``users.demo.json`` file."""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; a plugin process pays it on every start
    from typing import Any

__all__ = ["InvalidCredentials", "JSONAuthProvider", "JSONUserProvider", "NotFound"]

CLAIMS = {"mail": "mail", "username": "username", "uid": "uid_number", "gid": "gid_number"}


class NotFound(Exception):
    """No such user (the core maps this class name to its own ``NotFound``)."""


class InvalidCredentials(Exception):
    """Wrong client id or secret."""


class InvalidArgument(Exception):
    """A claim this driver does not support."""


def _load_users(config: dict[str, Any]) -> list[dict[str, Any]]:
    path = os.path.expanduser(config.get("users", "users.demo.json"))
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise InvalidArgument(f"{path}: expected a JSON list of users")
    return data


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
