"""The wire protocol, core side: JSON-RPC 2.0 messages, one per line, and their error codes.

The bootstrap (which cannot import this module) keeps its own copy of the constants; a test holds
the two in step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from ._errors import RemoteError, remote_error

COOKIE_KEY = "BASIC_PLUGIN"
COOKIE_VALUE = "reva"
HUMAN_MESSAGE = "This is a reva plugin bootstrap; it is started by the core, not by hand."
PROTOCOL_VERSIONS = (1,)
VERSIONS_ENV = "REVA_PLUGIN_PROTOCOL_VERSIONS"
HANDSHAKE = "$/handshake"
PING = "$/ping"
CANCEL = "$/cancel"
SHUTDOWN = "$/shutdown"
DEFAULT_MAX_LINE = 64 * 1024 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
APPLICATION_ERROR = -32000

_STANDARD_TYPES = {
    PARSE_ERROR: "ParseError",
    INVALID_REQUEST: "InvalidRequest",
    METHOD_NOT_FOUND: "MethodNotFound",
    INVALID_PARAMS: "InvalidArgument",
    INTERNAL_ERROR: "InternalError",
}

BOOTSTRAP_FILE = Path(__file__).with_name("_bootstrap.py")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ID_RE = re.compile(rb'"id"\s*:\s*(\d+)')


class Response(NamedTuple):
    """A decoded reply: either ``result`` or ``error`` (a JSON-RPC error object)."""

    id: int | None
    result: Any
    error: dict[str, Any] | None


def encode_request(
    call_id: int | None, method: str, params: dict[str, Any], meta: dict[str, Any] | None = None
) -> bytes:
    """One request (or, without an id, a notification) as a line of bytes."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if call_id is not None:
        message["id"] = call_id
    if meta:
        message["meta"] = meta
    return _dumps(message).encode("utf-8", "surrogatepass") + b"\n"


def guess_id(line: bytes) -> int | None:
    """The id a broken message seems to answer, so only that call fails."""
    match = _ID_RE.search(line[:4096])
    return int(match.group(1)) if match else None


def error_to_exception(error: dict[str, Any], *, plugin: str) -> RemoteError:
    """The typed exception for a JSON-RPC error object."""
    code = error.get("code", APPLICATION_ERROR)
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    assert isinstance(data, dict)
    type_name = str(data.get("type") or _STANDARD_TYPES.get(code, "RemoteError"))
    message = str(error.get("message") or type_name)
    return remote_error(
        message,
        type_name=type_name,
        plugin=plugin,
        code=code if isinstance(code, int) else APPLICATION_ERROR,
        traceback=str(data.get("traceback") or ""),
        data=data,
    )
