"""A reva auth provider that checks bcrypt hashes (the maintained ``bcrypt`` package).

Config: ``passwords`` maps usernames to bcrypt hashes; ``users`` names a Reva
``users.demo.json`` for the user details (its ``secret`` fields are ignored).
"""

from __future__ import annotations

import json

import bcrypt

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Checked when the user is unknown, so a wrong name costs as long as a wrong password.
_DUMMY = bcrypt.hashpw(b"reva", bcrypt.gensalt(rounds=8))


class InvalidCredentials(Exception):
    """Unknown user or wrong password."""


class HashedAuthProvider:
    """Reva's ``auth.Manager`` with bcrypt-hashed passwords."""

    def configure(self, config: dict[str, Any]) -> None:
        """Load the hashes and the user details."""
        self.hashes = {name: h.encode() for name, h in dict(config.get("passwords", {})).items()}
        with open(str(config.get("users", "users.demo.json")), encoding="utf-8") as f:
            self.users = {u["username"]: u for u in json.load(f)}

    def authenticate(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """The user and scopes if ``client_secret`` matches the stored hash."""
        stored = self.hashes.get(client_id)
        ok = bcrypt.checkpw(client_secret.encode(), stored or _DUMMY)
        user = self.users.get(client_id)
        if not ok or stored is None or user is None:
            raise InvalidCredentials("invalid client id or secret")
        public = {k: v for k, v in user.items() if k != "secret"}
        return {
            "user": public,
            "scopes": {"user": {"resource": {"decoder": "json", "value": "*"}, "role": 1}},
        }
