"""What makes a served RPC cheap keeps what it serves: the access log's fields handed straight
to the writer give the lines ``logging`` gives, and anything of a user's on the way (a filter,
a handler) still sees every record."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Literal

import pytest

pytest.importorskip("grpc")

FIELDS = {
    "service": "cs3.identity.user.v1beta1.UserAPI",
    "method": "GetUser",
    "status": "CODE_OK",
    "duration_ms": 0.512,
    "plugin_pid": 4242,
    "generation": 1,
    "peer": "ipv4:127.0.0.1:5000",
}


@pytest.fixture
def configured(request: pytest.FixtureRequest) -> Iterator[tuple[io.StringIO, list[object]]]:
    """serve's log configured (as ``serve`` does) onto a string; yields it and a list where
    ``undo`` goes (called at the end if the test did not)."""
    from reva_plugins import _config
    from reva_plugins.serve import _log

    out = io.StringIO()
    root = logging.getLogger("reva_plugins")
    saved = (list(root.handlers), root.level, root.propagate)
    root.handlers[:] = [logging.StreamHandler(out)]
    root.propagate = False
    root.setLevel(logging.INFO)
    mode: Literal["console", "json"] = (
        "json" if getattr(request, "param", "") == "json" else "console"
    )
    undo = _log.configure(_config.LogSettings(mode=mode), 0, "revad.toml")
    undos: list[object] = [undo]
    try:
        yield out, undos
    finally:
        if undos:
            undo()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]


def _access() -> logging.Logger:
    """The access logger, with serve's handler alone on the way (as under ``serve``: pytest's
    capture handlers, added for the test's call, are taken off)."""
    from reva_plugins.serve import _log

    root = logging.getLogger("reva_plugins")
    for handler in [h for h in root.handlers if h is not _log._direct]:
        root.removeHandler(handler)
    return logging.getLogger("reva_plugins.serve.access")


def test_the_fast_access_line_is_the_line_logging_writes(
    configured: tuple[io.StringIO, list[object]],
) -> None:
    from reva_plugins.serve import _log

    out, undos = configured
    access = _access()
    assert _log._only_to(access, _log._direct)  # type: ignore[arg-type]
    _log.log_fields(access, logging.INFO, dict(FIELDS))
    access.info(_log.access_line(FIELDS), extra={"rpc": dict(FIELDS)})  # the way logging goes
    undos.pop()()  # type: ignore[operator]
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "
    fast, slow = (re.sub(stamp, "", line) for line in lines)
    assert fast == slow
    assert fast.startswith("reva-plugins: service=cs3.identity.user.v1beta1.UserAPI method=")
    assert all(re.match(stamp, line) for line in lines)


@pytest.mark.parametrize("configured", ["json"], indirect=True)
def test_the_fast_access_line_has_the_json_fields(
    configured: tuple[io.StringIO, list[object]],
) -> None:
    from reva_plugins.serve import _log

    out, undos = configured
    _log.log_fields(_access(), logging.WARNING, dict(FIELDS))
    undos.pop()()  # type: ignore[operator]
    (entry,) = (json.loads(line) for line in out.getvalue().splitlines())
    assert entry["level"] == "warning"
    assert entry["logger"] == "reva_plugins.serve.access"
    assert {key: entry[key] for key in FIELDS} == FIELDS
    assert entry["message"] == _log.access_line(FIELDS)


def test_a_filter_or_handler_of_a_users_still_sees_each_access_record(
    configured: tuple[io.StringIO, list[object]],
) -> None:
    """Hostile to the shortcut: whatever is on the way turns it off, record by record."""
    from reva_plugins.serve import _log

    out, undos = configured
    access = _access()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    dropping = logging.Filter("nothing.matches")
    access.addFilter(dropping)
    try:
        _log.log_fields(access, logging.INFO, dict(FIELDS, method="Dropped"))
    finally:
        access.removeFilter(dropping)
    keep = Keep()
    serve = logging.getLogger("reva_plugins.serve")
    serve.addHandler(keep)
    try:
        _log.log_fields(access, logging.INFO, dict(FIELDS, method="Kept"))
    finally:
        serve.removeHandler(keep)
    _log.log_fields(access, logging.INFO, dict(FIELDS, method="Fast"))
    undos.pop()()  # type: ignore[operator]
    text = out.getvalue()
    assert "method=Dropped" not in text
    assert "method=Kept" in text
    assert "method=Fast" in text
    assert [r.rpc["method"] for r in seen] == ["Kept"]  # type: ignore[attr-defined]
    assert _log._direct is None  # undone: nothing is handed to a writer that stopped
