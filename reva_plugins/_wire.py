"""The wire protocol's shared definitions, read by both sides: the core imports this module, the
bootstrap (which cannot import the core) loads it by path from its own folder.

Method names, error codes, environment variable names, limits, the bootstrap's input and the
handshake's params live here and nowhere else. Standard library only, and cheap to load: no
import at all at run time (``typing`` alone would cost a plugin start milliseconds), so the
``TypedDict`` declarations are plain ``dict`` subclasses at run time, real ``TypedDict`` for the
type checker; their annotations name the keys.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, TypedDict

    from typing_extensions import NotRequired
else:
    TypedDict = dict

#: The protocol versions this package speaks (the core offers them; the bootstrap chooses one).
PROTOCOL_VERSIONS = (1,)

# -- environment variables the core sets for the plugin process ---------------------------------

#: The magic cookie: set by the core, so a bootstrap started by hand explains itself and exits.
COOKIE_KEY = "BASIC_PLUGIN"
COOKIE_VALUE = "reva"
#: The protocol versions the core offers, comma-separated.
VERSIONS_ENV = "REVA_PLUGIN_PROTOCOL_VERSIONS"
#: Marks every process of one plugin instance (``<core pid>-<n>-<random>``): its descendants
#: inherit it, so those that left the plugin's group and outlived it are found by it and killed.
INSTANCE_ENV = "REVA_PLUGIN_INSTANCE"
HUMAN_MESSAGE = "This is a reva plugin bootstrap; it is started by the core, not by hand."
#: The handshake's ``sandbox``: a Landlock sandbox (with its ABI), none asked for, or none to be
#: had (``unavailable: why``).
SANDBOX_LANDLOCK = "landlock ABI {abi}"
SANDBOX_OFF = "off"
SANDBOX_UNAVAILABLE = "unavailable"

# -- messages -----------------------------------------------------------------------------------

#: The ``jsonrpc`` member of every message. The other member names (``id``, ``method``, ``params``,
#: ``result``, ``error`` with ``code``, ``message``, ``data``) are JSON-RPC 2.0's own.
JSONRPC_VERSION = "2.0"
#: The ``meta`` member a request may carry (caller context; the core adds :data:`META_DEADLINE`).
META = "meta"
#: In ``meta``: seconds since the epoch by which the caller wants an answer.
META_DEADLINE = "deadline"

# -- method names -------------------------------------------------------------------------------

#: The plugin's first message (a notification): :class:`HandshakeParams`.
HANDSHAKE = "$/handshake"
#: A health round trip; answered with ``{"pid": …}`` even while every worker is busy.
PING = "$/ping"
#: A notification: ``{"id": <call id>}``; the call's ``context.cancelled`` is set.
CANCEL = "$/cancel"
#: Finish in-flight calls (briefly), answer, exit.
SHUTDOWN = "$/shutdown"
#: Sent once after the handshake: ``{"config": {…}}``; a plugin without ``configure`` ignores it.
CONFIGURE = "configure"
#: Names starting with this are control messages, never plugin methods.
CONTROL_PREFIX = "$/"

# -- JSON-RPC error codes -----------------------------------------------------------------------

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: An exception raised by the plugin's method (``data``: ``type``, ``traceback``).
APPLICATION_ERROR = -32000

# -- plugin log records on stderr --------------------------------------------------------------

#: A plugin's log record is one JSON object per stderr line; its first member is LOG_LEVEL, so a
#: line starting with :data:`LOG_LINE_START` is a record. The other members are the record's
#: ``extra`` fields.
#: Every member the bootstrap sets starts with this; the record's extra fields are the rest.
LOG_MEMBER_PREFIX = "@"
LOG_LEVEL = "@level"
LOG_MESSAGE = "@message"
LOG_MODULE = "@module"
LOG_TIMESTAMP = "@timestamp"
LOG_EXCEPTION = "@exception"
LOG_LINE_START = '{"' + LOG_LEVEL + '"'

# -- limits -------------------------------------------------------------------------------------

#: The longest message (bytes, newline excluded) either side accepts unless configured.
DEFAULT_MAX_LINE = 64 * 1024 * 1024


class ConfigureParams(TypedDict):
    """The params of ``configure``: the driver's own config table."""

    config: dict[str, object]


class CancelParams(TypedDict):
    """The params of ``$/cancel``: the id of the call to cancel."""

    id: int


class PingResult(TypedDict):
    """What ``$/ping`` answers."""

    pid: int


class ErrorData(TypedDict):
    """The ``data`` of an :data:`APPLICATION_ERROR`: the exception's class name (the core raises
    its typed exception for the names it knows) and its formatted traceback."""

    type: str
    traceback: str


class ResourceLimitsInput(TypedDict):
    """Limits the bootstrap sets on itself before importing the plugin (only those set)."""

    memory_mb: NotRequired[int]
    cpu_seconds: NotRequired[int]
    open_files: NotRequired[int]
    network: NotRequired[bool]


class SandboxInput(TypedDict):
    """The Landlock policy the bootstrap applies to itself before importing the plugin."""

    #: folders and files it may read and run (its env, its Python, the system's programs)
    read_exec: list[str]
    #: what it may only read
    read: list[str]
    #: what it may read, write, create and remove in
    write: list[str]
    #: where set, the only TCP ports it may connect to
    connect: NotRequired[list[int]]
    #: true: a policy the kernel refuses fails the start; false ("auto"): it runs unsandboxed
    required: bool


class BootstrapInput(TypedDict):
    """The bootstrap's one argument (JSON): which entry point to run, and how."""

    group: str
    name: str
    #: ``module:attr``; empty to look the entry point up by ``group`` and ``name``
    value: str
    distribution: str
    version: str
    service: str
    #: the socket's fd number in the plugin process
    wire_fd: int
    max_concurrency: int
    max_line: int
    log_level: Literal["debug", "info", "warning", "error", "critical"]
    limits: NotRequired[ResourceLimitsInput]
    #: the core's pid: a bootstrap whose parent is already another process exits
    parent: NotRequired[int]
    #: the sandbox to apply (absent: none)
    sandbox: NotRequired[SandboxInput]


class HandshakeParams(TypedDict):
    """The params of the plugin's ``$/handshake`` notification."""

    #: the protocol version chosen from those in :data:`VERSIONS_ENV`
    core_protocol: int
    #: the service-contract versions the plugin implements (``reva_app_protocols``)
    app_protocols: list[int]
    service: str
    entry_point: str
    distribution: str
    version: str
    #: the public methods the plugin object has
    methods: list[str]
    pid: int
    #: ``major.minor.micro`` of the plugin's interpreter
    python: str
    #: the sandbox in force: ``landlock ABI 7``, ``off`` or ``unavailable: why``
    sandbox: NotRequired[str]
