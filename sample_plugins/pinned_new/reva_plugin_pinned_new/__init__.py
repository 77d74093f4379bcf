"""A plugin pinning packaging>=24,<27: its one user reports the packaging version it sees."""

from __future__ import annotations

from typing import Any

import packaging


class NotFound(Exception):
    """No such user."""


class InvalidCredentials(Exception):
    """Wrong secret."""


class VersionReporter:
    """User packaging (secret version) whose display name is the version imported here."""

    def configure(self, config: dict[str, Any]) -> None:
        """Nothing to configure."""

    def _user(self) -> dict[str, Any]:
        return {
            "id": {"idp": "local", "opaque_id": "packaging", "type": 1},
            "username": "packaging",
            "mail": "packaging@example.org",
            "display_name": f"packaging {packaging.__version__}",
            "groups": [],
            "uid_number": 1000,
            "gid_number": 1000,
        }

    def get_user(
        self, user_id: dict[str, Any], skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The one user, by opaque id."""
        if user_id.get("opaque_id") != "packaging":
            raise NotFound(user_id.get("opaque_id"))
        return self._user()

    def get_user_by_claim(
        self, claim: str, value: str, skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The one user, by username."""
        if (claim, value) != ("username", "packaging"):
            raise NotFound(f"{claim}={value}")
        return self._user()

    def get_user_groups(self, user_id: dict[str, Any]) -> list[str]:
        """No groups."""
        return []

    def find_users(self, query: str, skip_fetching_groups: bool = False) -> list[dict[str, Any]]:
        """The one user if the query matches."""
        return [self._user()] if query.lower() in "packaging" else []

    def authenticate(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """packaging / version."""
        if (client_id, client_secret) != ("packaging", "version"):
            raise InvalidCredentials("invalid client id or secret")
        return {"user": self._user(), "scopes": {}}
