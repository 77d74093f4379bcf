"""A reva user provider that logs: every record reaches the core's logger
``reva_plugins.plugin.userprovider`` with its level and extra fields.

Plain ``logging`` is all a plugin needs; the bootstrap turns records into JSON lines on stderr.
"""

from __future__ import annotations

import json
import logging
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("reva_plugin_logging")


class NotFound(Exception):
    """No such user."""


class LoggingUserProvider:
    """Reva's ``user.Manager`` over a ``users.demo.json``, logging each call."""

    def configure(self, config: dict[str, Any]) -> None:
        """Read the users file; log how many users there are."""
        with open(str(config.get("users", "users.demo.json")), encoding="utf-8") as f:
            self.users = [{k: v for k, v in u.items() if k != "secret"} for u in json.load(f)]
        log.info("loaded %d users", len(self.users), extra={"users": len(self.users)})

    def _lookup(self, what: str, match: Any, skip_fetching_groups: bool = False) -> dict[str, Any]:
        began = time.perf_counter()
        for user in self.users:
            if match(user):
                took = round((time.perf_counter() - began) * 1e6)
                log.info("found %s", user["username"], extra={"lookup": what, "micros": took})
                return dict(user, groups=[] if skip_fetching_groups else user["groups"])
        log.warning("no user for %s", what, extra={"lookup": what})
        raise NotFound(what)

    def get_user(
        self, user_id: dict[str, Any], skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user with this opaque id."""
        opaque = user_id.get("opaque_id")
        return self._lookup(
            f"id={opaque}", lambda u: u["id"]["opaque_id"] == opaque, skip_fetching_groups
        )

    def get_user_by_claim(
        self, claim: str, value: str, skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user whose claim (mail, username, uid, gid) is ``value``."""
        field = {"mail": "mail", "username": "username", "uid": "uid_number", "gid": "gid_number"}[
            claim
        ]
        return self._lookup(
            f"{claim}={value}", lambda u: str(u.get(field)) == str(value), skip_fetching_groups
        )

    def get_user_groups(self, user_id: dict[str, Any]) -> list[str]:
        """The user's groups."""
        return list(self.get_user(user_id)["groups"])

    def find_users(self, query: str, skip_fetching_groups: bool = False) -> list[dict[str, Any]]:
        """Case-insensitive substring match."""
        q = query.lower()
        found = [
            dict(u, groups=[] if skip_fetching_groups else u["groups"])
            for u in self.users
            if any(
                q in str(v).lower()
                for v in (u["username"], u["display_name"], u["mail"], u["id"]["opaque_id"])
            )
        ]
        log.debug(
            "find_users %r: %d found",
            query,
            len(found),
            extra={"query": query, "found": len(found)},
        )
        return found
