"""The wire protocol, core side: encoding requests, decoding errors into exceptions.

The definitions both sides share (method names, error codes, limits, the bootstrap's input and
the handshake) live in ``_wire``, re-exported here; the JSON codec is ``_codec``'s (which the
bootstrap loads by path) and is shared from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._codec import dumps, loads, loads_yielding
from ._errors import RemoteError, UsageError, remote_error
from ._wire import (
    APPLICATION_ERROR,
    CANCEL,
    CONFIGURE,
    COOKIE_KEY,
    COOKIE_VALUE,
    DEFAULT_MAX_LINE,
    HANDSHAKE,
    HUMAN_MESSAGE,
    INSTANCE_ENV,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSONRPC_VERSION,
    LOG_EXCEPTION,
    LOG_LEVEL,
    LOG_LINE_START,
    LOG_MEMBER_PREFIX,
    LOG_MESSAGE,
    LOG_MODULE,
    LOG_TIMESTAMP,
    META,
    META_DEADLINE,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PING,
    PROTOCOL_VERSIONS,
    SANDBOX_LANDLOCK,
    SANDBOX_OFF,
    SANDBOX_UNAVAILABLE,
    SHUTDOWN,
    VERSIONS_ENV,
    BootstrapInput,
    HandshakeParams,
    ResourceLimitsInput,
    SandboxInput,
)

__all__ = [
    "APPLICATION_ERROR", "BOOTSTRAP_FILE", "CANCEL", "CONFIGURE", "COOKIE_KEY", "COOKIE_VALUE",
    "DEFAULT_MAX_LINE", "HANDSHAKE", "HUMAN_MESSAGE", "INSTANCE_ENV", "INTERNAL_ERROR",
    "INVALID_PARAMS", "INVALID_REQUEST", "JSONRPC_VERSION", "LOG_EXCEPTION", "LOG_LEVEL",
    "LOG_LINE_START", "LOG_MEMBER_PREFIX", "LOG_MESSAGE", "LOG_MODULE", "LOG_TIMESTAMP", "META",
    "META_DEADLINE", "METHOD_NOT_FOUND", "PARSE_ERROR", "PING", "PROTOCOL_VERSIONS",
    "SANDBOX_LANDLOCK", "SANDBOX_OFF", "SANDBOX_UNAVAILABLE", "SHUTDOWN",
    "VERSIONS_ENV", "BootstrapInput", "HandshakeParams", "ResourceLimits", "ResourceLimitsInput",
    "SandboxInput", "SandboxPolicy",
    "dumps", "encode_request", "error_to_exception", "guess_id", "ids_near_ends", "loads",
    "loads_yielding",
]  # fmt: skip


@dataclass(frozen=True)
class ResourceLimits:
    """Per-plugin limits the bootstrap sets on itself before the plugin is imported.

    ``None`` leaves a limit as inherited. ``network=False`` asks for a private network namespace
    (no interfaces but loopback) where the kernel allows an unprivileged one.
    """

    memory_mb: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    network: bool = True

    def as_bootstrap_input(self) -> ResourceLimitsInput:
        """The ``limits`` member of the bootstrap's input (only what is set)."""
        out: ResourceLimitsInput = {}
        if self.memory_mb is not None:
            out["memory_mb"] = self.memory_mb
        if self.cpu_seconds is not None:
            out["cpu_seconds"] = self.cpu_seconds
        if self.open_files is not None:
            out["open_files"] = self.open_files
        if not self.network:
            out["network"] = False
        return out


@dataclass(frozen=True)
class SandboxPolicy:
    """What a sandboxed plugin may reach (see ``_sandbox.apply``); planning names it."""

    read_exec: tuple[str, ...]
    read: tuple[str, ...]
    write: tuple[str, ...]
    #: where set, the only TCP ports it may connect to
    connect: tuple[int, ...] | None = None
    #: ``sandbox = true``: a refused policy fails the start (``"auto"``: runs unsandboxed)
    required: bool = False

    def as_bootstrap_input(self, *, write: tuple[str, ...] = ()) -> SandboxInput:
        """The ``sandbox`` member of the bootstrap's input, with ``write`` (the plugin's
        private temporary folder) added."""
        out: SandboxInput = {
            "read_exec": list(self.read_exec),
            "read": list(self.read),
            "write": [*self.write, *write],
            "required": self.required,
        }
        if self.connect is not None:
            out["connect"] = list(self.connect)
        return out


_STANDARD_TYPES = {
    PARSE_ERROR: "ParseError",
    INVALID_REQUEST: "InvalidRequest",
    METHOD_NOT_FOUND: "MethodNotFound",
    INVALID_PARAMS: "InvalidArgument",
    INTERNAL_ERROR: "InternalError",
}

BOOTSTRAP_FILE = Path(__file__).with_name("_launch.py")

_ID_RE = re.compile(rb'"id"\s*:\s*(\d{1,18})\b')


def encode_request(
    call_id: int | None, method: str, params: dict[str, Any], meta: dict[str, Any] | None = None
) -> bytes:
    """One request (or, without an id, a notification) as a line of bytes.

    Raises :class:`UsageError` for params (or meta) that are not strict JSON: NaN or infinity,
    objects JSON has no type for, lone surrogates, cycles.
    """
    message: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": method, "params": params}
    if call_id is not None:
        message["id"] = call_id
    if meta:
        message[META] = meta
    try:
        return dumps(message).encode("utf-8") + b"\n"
    except (TypeError, ValueError, RecursionError) as exc:
        reason = str(exc).encode("utf-8", "replace").decode("utf-8")
        raise UsageError(f"params of {method!r} are not valid JSON: {reason}") from None


def guess_id(line: bytes) -> int | None:
    """The id a broken message seems to answer, so only that call fails: the first ``"id"`` near
    its start, else the last near its end (where an encoder that writes ``id`` last puts it)."""
    match = _ID_RE.search(line[:4096])
    if match is None:
        match = next(reversed(list(_ID_RE.finditer(line[-4096:]))), None)
    return int(match.group(1)) if match else None


def ids_near_ends(line: bytes) -> set[int]:
    """Every id a message seems to carry within 4 KiB of its start or its end, where an encoder
    puts the top level's ``"id"`` (ids in strings or nested objects there included)."""
    found = {int(m.group(1)) for m in _ID_RE.finditer(line[:4096])}
    if len(line) > 4096:
        found.update(int(m.group(1)) for m in _ID_RE.finditer(line[-4096:]))
    return found


def _text(value: object) -> str:
    """A string field of a plugin's error as text (anything else is not trusted to ``str``)."""
    return value if isinstance(value, str) else ""


def error_to_exception(error: dict[str, Any], *, plugin: str) -> RemoteError:
    """The typed exception for a JSON-RPC error object (any shape: fields of the wrong type
    are ignored)."""
    code = error.get("code")
    if type(code) is not int:
        code = APPLICATION_ERROR
    data = error.get("data")
    if not isinstance(data, dict):
        data = {}
    type_name = _text(data.get("type")) or _STANDARD_TYPES.get(code, "RemoteError")
    message = _text(error.get("message")) or type_name
    return remote_error(
        message,
        type_name=type_name,
        plugin=plugin,
        code=code,
        traceback=_text(data.get("traceback")),
        data=data,
    )
