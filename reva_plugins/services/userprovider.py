"""userprovider: Reva's ``user.Manager``."""

from __future__ import annotations

from typing import TypedDict

from .._hooks import hookspec

NAME = "userprovider"
CLAIMS = ("mail", "username", "uid", "gid")


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

    @hookspec(firstresult=True)
    def get_user(self, user_id: UserId, skip_fetching_groups: bool = False) -> User:  # type: ignore[empty-body]
        """The user with this id; raises ``NotFound``."""

    @hookspec(firstresult=True)
    def get_user_by_claim(  # type: ignore[empty-body]
        self, claim: str, value: str, skip_fetching_groups: bool = False
    ) -> User:
        """The user whose ``claim`` (mail, username, uid, gid) equals ``value``."""

    @hookspec(firstresult=True)
    def get_user_groups(self, user_id: UserId) -> list[str]:  # type: ignore[empty-body]
        """The groups of the user with this id."""

    @hookspec(firstresult=True)
    def find_users(self, query: str, skip_fetching_groups: bool = False) -> list[User]:  # type: ignore[empty-body]
        """Users whose username, display name, mail or id contain ``query``."""
