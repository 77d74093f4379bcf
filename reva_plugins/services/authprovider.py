"""authprovider: Reva's ``auth.Manager``."""

from __future__ import annotations

from typing import Any, TypedDict

from .._hooks import hookspec
from .userprovider import User

NAME = "authprovider"


class AuthResult(TypedDict):
    """What ``authenticate`` returns: the user and the scopes granted, by name."""

    user: User
    scopes: dict[str, Any]


class Spec:
    """The methods of an auth provider."""

    @hookspec(firstresult=True)
    def authenticate(self, client_id: str, client_secret: str) -> AuthResult:  # type: ignore[empty-body]
        """The user these credentials belong to; raises ``InvalidCredentials``."""
