"""Every default and every bound, in one place: config parsing, the process supervisor, the CLI,
``serve`` and the docs (``docs/config.md``, checked by ``tests/test_defaults.py``) read them from
here. So do the choices a setting allows (installers, restart policies, access log levels).

The wire's line limit is the protocol's own (``_wire.DEFAULT_MAX_LINE``): the bootstrap, which
cannot import this module, reads it there.
"""

from __future__ import annotations

from typing import Final, Literal

from ._wire import DEFAULT_MAX_LINE

RestartPolicy = Literal["on-failure", "never"]

# -- defaults: [plugins] ------------------------------------------------------------------------

#: ``installer``: ``auto`` is uv if it is installed, else virtualenv and pip.
INSTALLER: Final = "auto"
INSTALLERS: Final = ("auto", "uv", "pip")
#: ``allowed_sources``: every driver spec is allowed.
ALLOWED_SOURCES: Final[tuple[str, ...]] = ("*",)
#: ``offline``: the network may be used.
OFFLINE: Final = False
#: ``allow_http``: a plain ``http://`` archive needs a sha256 pin.
ALLOW_HTTP: Final = False

#: Seconds a plugin has to start and complete its handshake (``start_timeout``).
START_TIMEOUT: Final = 60.0
#: Seconds per call (``call_timeout``).
CALL_TIMEOUT: Final = 30.0
#: Calls in flight inside one plugin (``plugin.max_concurrency``).
MAX_CONCURRENCY: Final = 8
#: ``plugin.network``: the plugin may use the network.
NETWORK: Final = True
#: ``sandbox``: a Landlock sandbox where the kernel has one ("auto"), always (true), never (false).
SANDBOX: Final[Literal["auto"] | bool] = "auto"
#: What the supervisor does after a crash (``plugin.restart``).
RESTART: Final[RestartPolicy] = "on-failure"
RESTART_POLICIES: Final[tuple[RestartPolicy, ...]] = ("on-failure", "never")
#: The restart backoff: first delay, doubling up to the cap (seconds).
BACKOFF_FIRST: Final = 0.1
BACKOFF_CAP: Final = 5.0
#: This many crashes within the window (seconds) mark a service failed.
MAX_CRASHES: Final = 5
CRASH_WINDOW: Final = 60.0
#: Seconds a plugin has to exit after ``$/shutdown`` before it is terminated.
SHUTDOWN_GRACE: Final = 2.0
#: The longest wire message, in bytes.
MAX_LINE: Final = DEFAULT_MAX_LINE
#: Size cap of an archive URL download (``max_download_mb``).
MAX_DOWNLOAD_MB: Final = 1024
#: ``env prune --unused-days``.
UNUSED_DAYS: Final = 30.0

# -- defaults: [grpc] and [metrics] (``reva-plugins serve``) -------------------------------------

#: ``[grpc] address``: revad's own default.
SERVE_ADDRESS: Final = "0.0.0.0:19000"
#: ``[grpc] shutdown_grace``: seconds in-flight RPCs get to finish on SIGTERM.
SERVE_SHUTDOWN_GRACE: Final = 30.0
#: ``[grpc] workers``: RPCs served at once (each holds one plugin call in flight), and the
#: serving loop's worker threads (in-process drivers, plugin starts, reloads).
SERVE_WORKERS: Final = 16
#: ``[grpc] processes``: serve worker processes sharing the port (``SO_REUSEPORT``); ``"auto"``
#: is the CPUs this process may use. 1 is today's single process (no parent).
SERVE_PROCESSES: Final = 1
SERVE_PROCESSES_AUTO: Final = "auto"
#: A worker process that exits unasked is restarted after this many seconds, doubled for each
#: exit in a row up to the maximum; one that served this long resets the count.
WORKER_RESTART_DELAY: Final = 0.5
WORKER_RESTART_MAX_DELAY: Final = 30.0
WORKER_HEALTHY_AFTER: Final = 60.0
#: A worker that exits before serving this many times in a row: the parent gives up (exit 1).
WORKER_START_FAILURES: Final = 5
#: Seconds the parent gives its workers beyond ``shutdown_grace`` to stop before it kills them.
WORKER_STOP_MARGIN: Final = 10.0
#: Seconds a worker waits for a sibling's answer (status, reload excepted, metrics).
WORKER_ASK_TIMEOUT: Final = 5.0
#: The largest answer ``serve`` sends: what a gRPC client takes by default (4 MiB); a larger one
#: is answered CODE_RESOURCE_EXHAUSTED (and counted so), as the client would refuse it.
SERVE_MAX_RESPONSE_BYTES: Final = 4 << 20
#: A list result longer than this is turned into CS3 messages off the serving loop.
SERVE_BIG_LIST: Final = 1000
#: ``[grpc] access_log``: the level of the one-line-per-RPC log.
ACCESS_LOG: Final = "info"
ACCESS_LOG_LEVELS: Final = ("debug", "info", "warning", "off")
#: revad's ``[log]``: its levels (zerolog's names, ``warning`` as the access log spells it),
#: modes and where lines go when ``output`` names no file.
LOG_LEVELS: Final = ("debug", "info", "warn", "warning", "error")
LOG_MODES: Final = ("console", "json")
LOG_MODE: Final[Literal["console", "json"]] = "console"
LOG_STREAM: Final[Literal["stderr", "stdout"]] = "stderr"
#: ``reva-plugins status --timeout``: seconds to wait for a server's metrics.
STATUS_TIMEOUT: Final = 5.0
#: Seconds ``reload ADDRESS`` waits for the server's answer (a reload may build envs).
RELOAD_TIMEOUT: Final = 3600.0

# -- bounds: every number and every nesting a user writes (config file, Python API or command
# -- line) is checked against these, and only these.

#: Seconds any timeout may be (``start_timeout``, ``call_timeout``, ``call --timeout``). Below a
#: millisecond not even a ping round trip completes, so a smaller value is a mistake; above a day
#: a timeout bounds nothing a caller could wait for, and huge values break the waits themselves
#: (``inf`` overflows ``Lock.acquire``; ``nan`` compares false and so would mean "never").
TIMEOUT_BOUNDS: Final[tuple[float, float]] = (0.001, 86_400.0)
#: Seconds before its deadline from which a cancelled call (an asyncio task, a gRPC RPC) is
#: taken to have timed out rather than to have been cancelled by its caller: whoever set the
#: deadline cancels at it, a moment before the call's own timer would fire.
DEADLINE_SLACK: Final = 0.05
#: The largest TLS certificate or key file read (``[grpc] tls_cert``/``tls_key``, ``--tls-ca``).
MAX_PEM_BYTES: Final = 1 << 20
#: Calls in flight inside one plugin (each is a thread in the plugin process).
MAX_CONCURRENCY_BOUNDS: Final[tuple[int, int]] = (1, 1024)
#: ``max_download_mb``: at least a MiB; a TiB is more than any plugin archive.
MAX_DOWNLOAD_MB_BOUNDS: Final[tuple[int, int]] = (1, 1 << 20)
#: The resource limits a driver may set (``plugin.memory_mb``, ``cpu_seconds``, ``open_files``):
#: positive, and small enough for every platform's ``rlim_t``.
MEMORY_MB_BOUNDS: Final[tuple[int, int]] = (1, 1 << 30)
CPU_SECONDS_BOUNDS: Final[tuple[int, int]] = (1, 1 << 31)
OPEN_FILES_BOUNDS: Final[tuple[int, int]] = (1, 1 << 20)
#: ``[grpc] shutdown_grace``: 0 stops at once; an hour is longer than any RPC should take.
SERVE_SHUTDOWN_GRACE_BOUNDS: Final[tuple[float, float]] = (0.0, 3_600.0)
#: ``[grpc] workers``.
SERVE_WORKERS_BOUNDS: Final[tuple[int, int]] = (1, 1024)
#: ``[grpc] processes``: more worker processes than this is no host's core count.
SERVE_PROCESSES_BOUNDS: Final[tuple[int, int]] = (1, 256)
#: The port of an ``address`` (``[grpc]``, ``[metrics]``, ``serve --address``); 0 picks a free one.
PORT_BOUNDS: Final[tuple[int, int]] = (0, 65535)
#: ``env prune --unused-days``: 0 prunes every env not in use; 100 years is as good as "never".
UNUSED_DAYS_BOUNDS: Final[tuple[float, float]] = (0.0, 36_500.0)
#: How deeply tables and arrays in a config file (or ``call``'s PARAMS_JSON) may nest. Real
#: configs use a handful of levels; the bound keeps every recursive reader (tomllib, json, the
#: plugin's decoder) far from Python's recursion limit.
MAX_NESTING: Final = 64
#: The largest config file read, in bytes: a config is text a person wrote, never megabytes.
MAX_CONFIG_BYTES: Final = 4 << 20

#: Plugin log lines per second, sustained, before lines are dropped (and counted); the burst a
#: plugin may send at once above that rate.
LOG_RATE: Final = 100.0
LOG_BURST: Final = 1000
