"""pluggy markers and the host's lifecycle hooks that an embedding application may implement."""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "reva"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class LifecycleSpec:
    """Hooks called by the host; register an object implementing them with ``Host.register``."""

    @hookspec
    def plugin_started(self, service: str, handshake: dict[str, Any]) -> None:
        """A plugin process for ``service`` completed its handshake."""

    @hookspec
    def plugin_exited(self, service: str, pid: int, returncode: int | None, expected: bool) -> None:
        """A plugin process for ``service`` exited; ``expected`` is False for a crash."""
