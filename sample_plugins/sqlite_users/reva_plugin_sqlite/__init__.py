"""A reva user provider backed by SQLite.

Config: ``database`` (a file, or ``:memory:``) and optionally ``seed``, a Reva
``users.demo.json`` whose users are loaded into an empty database. One connection per thread:
the core runs calls on several threads at once.
"""

from __future__ import annotations

import json
import sqlite3
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    opaque_id TEXT PRIMARY KEY, idp TEXT NOT NULL, type INTEGER NOT NULL DEFAULT 1,
    username TEXT UNIQUE NOT NULL, mail TEXT NOT NULL, display_name TEXT NOT NULL,
    uid_number INTEGER NOT NULL, gid_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    opaque_id TEXT NOT NULL REFERENCES users(opaque_id), grp TEXT NOT NULL,
    PRIMARY KEY (opaque_id, grp)
);
"""
CLAIMS = {"mail": "mail", "username": "username", "uid": "uid_number", "gid": "gid_number"}


class NotFound(Exception):
    """No such user."""


class InvalidArgument(Exception):
    """An unsupported claim."""


class SQLiteUserProvider:
    """Reva's ``user.Manager`` over a SQLite database."""

    def configure(self, config: dict[str, Any]) -> None:
        """Open (and, with ``seed``, fill) the database."""
        database = str(config.get("database", "users.db"))
        # A shared in-memory database, so every thread's connection sees the same data.
        self.uri = (
            "file:reva-users?mode=memory&cache=shared"
            if database == ":memory:"
            else f"file:{database}"
        )
        self.local = threading.local()
        self.keeper = self._connect()  # keeps a shared in-memory database alive
        self.keeper.executescript(SCHEMA)
        if config.get("seed") and not self.keeper.execute("SELECT 1 FROM users").fetchone():
            with open(str(config["seed"]), encoding="utf-8") as f:
                self._seed(json.load(f))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.uri, uri=True, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self._connect()
        return conn

    def _seed(self, users: list[dict[str, Any]]) -> None:
        with self.keeper:
            for u in users:
                self.keeper.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (u["id"]["opaque_id"], u["id"]["idp"], u["id"].get("type", 1), u["username"],
                     u["mail"], u["display_name"], u["uid_number"], u["gid_number"]),
                )  # fmt: skip
                self.keeper.executemany(
                    "INSERT INTO memberships VALUES (?, ?)",
                    [(u["id"]["opaque_id"], g) for g in u.get("groups", [])],
                )

    def _user(self, row: sqlite3.Row, skip_fetching_groups: bool) -> dict[str, Any]:
        groups = [] if skip_fetching_groups else self._groups(row["opaque_id"])
        return {
            "id": {"idp": row["idp"], "opaque_id": row["opaque_id"], "type": row["type"]},
            "username": row["username"],
            "mail": row["mail"],
            "display_name": row["display_name"],
            "groups": groups,
            "uid_number": row["uid_number"],
            "gid_number": row["gid_number"],
        }

    def _groups(self, opaque_id: str) -> list[str]:
        rows = self.db.execute(
            "SELECT grp FROM memberships WHERE opaque_id = ? ORDER BY grp", (opaque_id,)
        )
        return [r["grp"] for r in rows]

    def _one(self, where: str, value: object, skip_fetching_groups: bool) -> dict[str, Any]:
        row = self.db.execute(f"SELECT * FROM users WHERE {where} = ?", (value,)).fetchone()  # noqa: S608
        if row is None:
            raise NotFound(f"no user with {where} {value!r}")
        return self._user(row, skip_fetching_groups)

    def get_user(
        self, user_id: dict[str, Any], skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user with this opaque id."""
        return self._one("opaque_id", user_id.get("opaque_id"), skip_fetching_groups)

    def get_user_by_claim(
        self, claim: str, value: str, skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user whose claim (mail, username, uid, gid) is ``value``."""
        column = CLAIMS.get(claim)
        if column is None:
            raise InvalidArgument(f"unsupported claim {claim!r}")
        return self._one(column, value, skip_fetching_groups)

    def get_user_groups(self, user_id: dict[str, Any]) -> list[str]:
        """The user's groups."""
        return self.get_user(user_id)["groups"]

    def find_users(self, query: str, skip_fetching_groups: bool = False) -> list[dict[str, Any]]:
        """Case-insensitive substring match on username, display name, mail and opaque id."""
        pattern = f"%{query.lower()}%"
        rows = self.db.execute(
            "SELECT * FROM users WHERE lower(username) LIKE ? OR lower(display_name) LIKE ? "
            "OR lower(mail) LIKE ? OR lower(opaque_id) LIKE ? ORDER BY username",
            (pattern,) * 4,
        )
        return [self._user(r, skip_fetching_groups) for r in rows.fetchall()]
