"""``reva-plugins serve``: the configured services as CS3 gRPC services (the ``serve`` extra).

Imported only by the ``serve``, ``status`` and ``reload`` commands, so the core never imports
grpc; ``Server`` and ``HostOptions`` load the extra on first use. An application embeds the
server with its own host hooks::

    from reva_plugins.serve import Server

    Server("revad.toml", hooks=[MyMetrics()]).run()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._reload import HostOptions
    from ._server import Server

__all__ = ["HostOptions", "Server"]


def __getattr__(name: str) -> Any:
    # lazily: importing the package (for its commands) must work without the serve extra
    if name == "Server":
        from ._server import Server  # noqa: PLC0415

        return Server
    if name == "HostOptions":
        from ._reload import HostOptions  # noqa: PLC0415

        return HostOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
