"""reva plugin bootstrap: runs inside a plugin's venv as ``<python> -I _bootstrap.py '<json>'``.

Every name, code, limit and key the core also knows comes from ``_wire.py``, loaded by path from
this file's folder (``-I`` puts no folder on ``sys.path``, and the plugin's venv holds nothing of
the core); this file repeats none of them. The rest of the plugin's side is in files beside it,
loaded the same way (``_load``): ``_codec`` (the wire's JSON), ``_channel`` (its end of the
wire), ``_pool`` (running the calls); ``_poll`` (the core's own poll before a read) at the first
read; ``_contain`` (limits, network namespace, the sandbox's entry, reaping descendants) only
when it is needed; ``_sandbox`` only when a policy is sent. Standard library only, and only what
a call needs at start.

The core's wire is a socket passed as an extra fd (its number is ``wire_fd`` in the JSON
argument); stdin is /dev/null and stdout is the stderr pipe from the first byte the interpreter
runs, so nothing (a ``.pth`` file, a plugin, a C extension) that prints can corrupt the
protocol. Before the plugin is imported fd 0/1 and ``sys.stdin``/``sys.stdout`` are pointed at
/dev/null and stderr once more, whatever started us.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, NoReturn

_LOADED: dict[str, ModuleType] = {}
_LOADER: list[Any] = []  # the loader's type and the files' folder, set at the first load


def _load(name: str) -> ModuleType:
    """A module of the core this file needs (``_wire``, ``_channel``, …): the core's own when
    the core imports this file, else the file beside it, loaded by path once (through the
    bytecode cache when it is writable). A file loaded by path finds its own siblings through
    this function, handed to it as ``_sibling`` before it runs."""
    if __package__:  # the core imports this file: its modules are the core's own
        from . import _channel, _codec, _contain, _poll, _pool, _sandbox, _wire

        return {
            "_channel": _channel,
            "_codec": _codec,
            "_contain": _contain,
            "_poll": _poll,
            "_pool": _pool,
            "_sandbox": _sandbox,
            "_wire": _wire,
        }[name]
    module = _LOADED.get(name)
    if module is not None:
        return module
    if not _LOADED:  # the first: where the files are, and how to load them (once)
        # This script's own loader is a SourceFileLoader already: reusing its type spares
        # importing importlib.machinery (up to 0.2 ms of every start).
        loader_type: Any = type(globals().get("__loader__"))
        if loader_type.__name__ != "SourceFileLoader":  # pragma: no cover - run some other way
            from importlib.machinery import SourceFileLoader as loader_type
        _LOADER[:] = [loader_type, os.path.dirname(os.path.abspath(__file__))]
    loader_type, folder = _LOADER
    path = f"{folder}/{name}.py"
    module = type(sys)(f"_reva_plugins{name}")
    module.__file__ = path
    module._sibling = _load  # type: ignore[attr-defined]
    loader_type(module.__name__, path).exec_module(module)
    _LOADED[name] = module
    return module


if TYPE_CHECKING:
    from . import _channel, _pool
    from . import _wire as wire
else:
    wire = _load("_wire")
    _channel = _load("_channel")
    _pool = _load("_pool")
JSONRPC: str = wire.JSONRPC_VERSION
WIRE_FD = -1  # the private protocol fd, once taken (fault-injection tests write to it)
#: the limits in force (``BootstrapInput["limits"]``)
LIMITS: dict[str, object] = {}
#: what the handshake says of the sandbox (``wire.SANDBOX_*``)
SANDBOX_STATE: str = wire.SANDBOX_OFF
#: ``_contain``, once loaded (limits or a sandbox asked for, or descendants to reap)
_CONTAIN: list[ModuleType] = []


def _guard_stdio(wire: int) -> int:
    """Keep the wire fd from the plugin's children and point fds 0/1 at /dev/null and stderr
    (the core already does at spawn; this holds whatever started us); return the wire fd."""
    os.set_inheritable(wire, False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(
        1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
    )
    sys.__stdout__ = sys.stdout  # type: ignore[misc]
    sys.__stdin__ = sys.stdin  # type: ignore[misc]
    return wire


def _negotiate() -> int:
    offered = os.environ.get(wire.VERSIONS_ENV, "")
    try:
        versions = {int(v) for v in offered.split(",") if v.strip()}
    except ValueError:
        versions = set()
    common = versions.intersection(wire.PROTOCOL_VERSIONS)
    if not common:
        sys.stderr.write(
            f"reva plugin bootstrap: protocol version mismatch: the core offers {offered!r}, "
            f"this bootstrap speaks {','.join(map(str, wire.PROTOCOL_VERSIONS))}\n"
        )
        raise SystemExit(1)
    return max(common)


class _LoggingHook:
    """Installs the JSON-lines log handler when (and only if) the plugin imports ``logging``:
    importing it up front would cost every plugin start several milliseconds."""

    def __init__(self, level: str) -> None:
        self.level = level

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "logging":
            return None
        sys.meta_path.remove(self)  # type: ignore[arg-type]
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)  # type: ignore[arg-type]
        loader = getattr(spec, "loader", None)
        if loader is None:
            return spec
        exec_module = loader.exec_module
        level = self.level

        def exec_and_install(module: object) -> None:
            exec_module(module)
            _install_logging(level)

        loader.exec_module = exec_and_install
        return spec


def _hook_logging(level: str) -> None:
    if "logging" in sys.modules:
        _install_logging(level)
    else:
        sys.meta_path.insert(0, _LoggingHook(level))  # type: ignore[arg-type]


def _install_logging(level: str) -> None:
    import logging

    dumps = _load("_codec").dumps

    class JSONLineHandler(logging.Handler):
        reserved = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

        def emit(self, record: logging.LogRecord) -> None:
            try:
                entry: dict[str, object] = {
                    wire.LOG_LEVEL: record.levelname.lower(),
                    wire.LOG_MESSAGE: record.getMessage(),
                    wire.LOG_MODULE: record.name,
                    wire.LOG_TIMESTAMP: record.created,
                }
                if record.exc_info:
                    entry[wire.LOG_EXCEPTION] = logging.Formatter().formatException(record.exc_info)
                for key, value in vars(record).items():
                    if key not in self.reserved:
                        entry[key] = (
                            value if isinstance(value, (str, int, float, bool)) else repr(value)
                        )
                sys.stderr.write(dumps(entry) + "\n")
                sys.stderr.flush()
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    root.handlers[:] = [JSONLineHandler()]
    root.setLevel(level.upper())


def _load_entry_point(spec: wire.BootstrapInput) -> tuple[object, str, str, str]:
    """The plugin object and its entry point name, distribution and version."""
    value = spec.get("value")
    name = str(spec.get("name") or "")
    dist = str(spec.get("distribution") or "")
    version = str(spec.get("version") or "")
    if not value:
        from importlib.metadata import entry_points

        group = str(spec["group"])
        found = [ep for ep in entry_points(group=group) if not name or ep.name == name]
        if len(found) != 1:
            names = ", ".join(sorted(ep.name for ep in entry_points(group=group))) or "none"
            raise SystemExit(
                f"reva plugin bootstrap: cannot choose an entry point {name!r} in {group} "
                f"(found: {names})"
            )
        ep = found[0]
        value, name = ep.value, ep.name
        if ep.dist is not None:
            dist, version = ep.dist.name, ep.dist.version
    module_name, _, attrs = str(value).partition(":")
    module_name = module_name.strip()
    __import__(module_name)  # importlib.import_module would import the importlib package
    obj: object = sys.modules[module_name]
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    if callable(obj):
        obj = obj()
    return obj, name, dist, version


def main(argv: list[str]) -> int:
    if os.environ.get(wire.COOKIE_KEY) != wire.COOKIE_VALUE or len(argv) < 2:
        sys.stderr.write(wire.HUMAN_MESSAGE + "\n")
        return 1
    global WIRE_FD
    spec: wire.BootstrapInput = _load("_codec").loads(argv[1])
    _contain(spec)  # before anything of the plugin runs
    wire_fd = WIRE_FD = _guard_stdio(int(spec["wire_fd"]))
    # A child the plugin forks (multiprocessing, os.fork) must not hold the wire: it would write
    # on it, or keep it open after the plugin died, leaving the core waiting for an EOF.
    os.register_at_fork(after_in_child=_drop_wire)
    version = _negotiate()
    _hook_logging(spec["log_level"])
    channel = _channel.LineChannel(wire_fd, spec["max_line"])
    obj, name, dist, dist_version = _load_entry_point(spec)
    methods = sorted(
        n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))
    )
    handshake: wire.HandshakeParams = {
        "core_protocol": version,
        "app_protocols": list(getattr(obj, "reva_app_protocols", (1,))),
        "service": spec["service"],
        "entry_point": name,
        "distribution": dist,
        "version": dist_version,
        "methods": methods,
        "pid": os.getpid(),
        "python": ".".join(map(str, sys.version_info[:3])),
        "sandbox": SANDBOX_STATE,
    }
    channel.send({"jsonrpc": JSONRPC, "method": wire.HANDSHAKE, "params": handshake})
    pool = _pool.Plugin(obj, channel, spec["max_concurrency"], limits=LIMITS, end=_end)
    pool.follow()
    return 0  # not reached: the pool ends the process


def _drop_wire() -> None:
    global WIRE_FD
    if WIRE_FD >= 0:
        try:
            os.close(WIRE_FD)
        except OSError:
            pass
        WIRE_FD = -1


def _reap_group() -> None:
    """The core is gone: take this plugin's whole process group down with us."""
    sys.stderr.flush()
    try:
        os.killpg(os.getpgid(0), 9)
    except OSError:
        pass


# -- containment: runs before the plugin is imported -------------------------------------------

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SIGTERM = 15


def _contain(spec: wire.BootstrapInput) -> None:
    """Tie this process's life to the core's and bound it, before any plugin code runs.

    - Its own process group (a Python 3.10 core cannot ask for one at spawn without a
      ``preexec_fn``, which is unsafe in the core's threaded process), so the core reaps it
      with ``killpg`` and a terminal's Ctrl-C does not reach it.
    - Linux: ``PR_SET_PDEATHSIG`` sends SIGTERM when the core dies (even ``kill -9``, even while
      the plugin is still importing); ``PR_SET_CHILD_SUBREAPER`` makes descendants that detach
      (double fork, ``setsid()``) re-parent here, so that they are found and killed when the
      plugin ends (EOF from the core, ``$/shutdown``, SIGTERM or the parent-death signal).
    - rlimits ``memory_mb`` (RLIMIT_AS), ``cpu_seconds`` (RLIMIT_CPU), ``open_files``
      (RLIMIT_NOFILE), and ``network = false`` (a private network namespace, Linux only).

    Elsewhere (macOS) only the process group, the EOF rule and the rlimits hold: a descendant
    that calls ``setsid()`` can outlive the plugin, and a plugin killed while importing (before
    it reads the wire) outlives a core killed with SIGKILL. A plugin can undo any of this
    itself (its own code runs with the same rights); it bounds careless plugins, not hostile
    ones (run those in a container).

    The limits and the sandbox are ``_contain``'s, loaded only when they are asked for.
    """
    global SANDBOX_STATE
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)
    # _signal, not signal: signal imports enum (as ctypes does struct and more), and every
    # module the bootstrap imports stays in each idle plugin's memory
    if TYPE_CHECKING:
        import signal as _signal
    else:
        import _signal

    _signal.signal(SIGTERM, _terminated)
    limits = spec.get("limits")
    if isinstance(limits, dict):
        LIMITS.update(limits)
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_PDEATHSIG, SIGTERM)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        if os.getppid() != spec.get("parent", os.getppid()):  # the core died before prctl
            _terminated(SIGTERM, None)
    policy = spec.get("sandbox")
    if LIMITS or policy is not None:
        contain = _containment()
        assert contain is not None  # nothing of the plugin runs yet: it has fds and memory
        contain.set_limits(LIMITS)
        if policy is not None:
            SANDBOX_STATE = contain.enter_sandbox(policy)


def _containment() -> ModuleType | None:
    """``_contain``, loaded now if it was not before; None when it cannot be (the plugin used
    up its file descriptors or its memory, with no limit asked for: the core reaps what is
    left of it)."""
    if not _CONTAIN:
        try:
            _CONTAIN.append(_load("_contain"))
        except (OSError, MemoryError):
            return None
    return _CONTAIN[0]


def _reap_descendants() -> None:
    contain = _containment()
    if contain is not None:
        contain.reap_descendants()


def _end(asked: bool) -> None:
    """The pool ends the process: take every descendant along, and when the core did not
    ask (it is gone) the whole process group too."""
    _reap_descendants()
    if not asked:
        _reap_group()


def _prctl(option: int, value: int) -> None:
    """``prctl(option, value)`` through ``_ctypes`` alone: the ``ctypes`` package would add
    ~0.3 MiB to every plugin for two calls."""
    import _ctypes

    function = _ctypes.dlsym(_ctypes.dlopen(None, 2), "prctl")  # type: ignore[arg-type]
    _ctypes.call_function(function, (option, value, 0, 0, 0))


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (from the core, or the parent-death signal): take every descendant along,
    then die of the signal."""
    if TYPE_CHECKING:
        import signal as _signal
    else:
        import _signal

    _reap_descendants()
    sys.stderr.flush()
    _signal.signal(SIGTERM, _signal.SIG_DFL)
    os.kill(os.getpid(), SIGTERM)
    os._exit(128 + SIGTERM)


def run(argv: list[str]) -> NoReturn:
    """Run the bootstrap (as ``__main__``, from ``_launch.py``) and exit the process."""
    try:
        code = main(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
            code = 1
        else:
            code = exc.code or 0
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run(sys.argv)
