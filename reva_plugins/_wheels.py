"""Wheel tag checks: refuse, before building, a wheel the plugin's Python cannot install.

Which file is a wheel is its source kind's to say (``Source.wheel_file``): planning checks
that file name here before anything is fetched or built.
"""

from __future__ import annotations

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from . import _python
from ._errors import SourceError


def check_tags(filename: str, interpreter: _python.Interpreter, spec: str) -> None:
    """Refuse early (exit 2) the wheel ``filename`` (of the driver ``spec``) if its tags do not
    fit the plugin's interpreter; only CPython's tags are known here."""
    if interpreter.implementation != "CPython":
        return
    try:
        _name, _version, _build, wheel_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise SourceError(f"{spec}: {exc}") from None
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
