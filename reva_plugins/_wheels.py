"""Wheel tag checks: refuse, before building, a wheel the plugin's Python cannot install."""

from __future__ import annotations

from pathlib import Path

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from . import _python
from ._errors import SourceError
from ._sources import Resolved


def check_wheel(resolved: Resolved, interpreter: _python.Interpreter) -> None:
    """Refuse early (exit 2) a wheel whose tags do not fit the plugin's interpreter."""
    if not resolved.kind.startswith("wheel") or interpreter.implementation != "CPython":
        return
    filename = Path(resolved.install_args[0]).name
    try:
        _name, _version, _build, wheel_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise SourceError(f"{resolved.spec}: {exc}") from None
    major, minor = (int(p) for p in interpreter.version.split(".")[:2])
    platforms = list(tags.platform_tags())
    supported = {
        *tags.cpython_tags((major, minor), platforms=platforms),
        *tags.compatible_tags((major, minor), interpreter=f"cp{major}{minor}", platforms=platforms),
    }
    if not wheel_tags & supported:
        shown = ", ".join(sorted(str(t) for t in wheel_tags))
        raise SourceError(
            f"wheel {filename} does not fit Python {interpreter.version} ({shown}); build it for "
            "that Python or set plugin.python"
        )
