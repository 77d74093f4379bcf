"""Reva-shaped TOML configuration, loaded into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import difflib
import os
import pwd
import re
import stat
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import _defaults
from ._errors import ConfigError, UsageError
from ._protocol import ResourceLimits
from ._redact import redact
from .services import SERVICES, get_service

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


#: A ``sandbox`` setting: "auto" (on where the kernel allows it), True (required), False (off).
Sandbox = Literal["auto"] | bool


@dataclass(frozen=True)
class LoaderSettings:
    """The ``[plugins]`` table: how plugins are fetched, built and run."""

    cache_dir: Path | None = None
    installer: str = _defaults.INSTALLER
    python: str | None = None
    start_timeout: float = _defaults.START_TIMEOUT
    call_timeout: float = _defaults.CALL_TIMEOUT
    allowed_sources: tuple[str, ...] = _defaults.ALLOWED_SOURCES
    offline: bool = _defaults.OFFLINE
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    max_download_mb: int = _defaults.MAX_DOWNLOAD_MB
    allow_http: bool = _defaults.ALLOW_HTTP
    #: A bundle (``env export``'s tar file or folder) to build locked envs from, offline.
    bundle: Path | None = None
    #: Every plugin's sandbox: "auto" (Landlock where the kernel has it), True, False.
    sandbox: Sandbox = _defaults.SANDBOX
    #: Run every plugin as this user (and its group) when the core runs as root.
    user: str | None = None
    #: Not a key: the folder of the file this table was read from, which relative
    #: ``allowed_sources`` patterns resolve against wherever the settings are used (``env build
    #: SPEC --plugins-from``); None: the folder of the config they are part of.
    policy_dir: Path | None = None


@dataclass(frozen=True)
class PluginOptions:
    """A driver's ``plugin`` table: per-driver loader options."""

    entry_point: str | None = None
    python: str | None = None
    sha256: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    max_concurrency: int = _defaults.MAX_CONCURRENCY
    restart: str = _defaults.RESTART
    start_timeout: float | None = None
    call_timeout: float | None = None
    memory_mb: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    network: bool = _defaults.NETWORK
    #: None: as ``[plugins] sandbox`` says.
    sandbox: Sandbox | None = None
    #: Paths the sandboxed plugin may read, or read and write, besides those its table names.
    read_paths: tuple[Path, ...] = ()
    write_paths: tuple[Path, ...] = ()
    #: ``host:port`` entries: where set, outgoing TCP is limited to these ports (Landlock
    #: limits ports, not hosts).
    connect: tuple[str, ...] | None = None
    #: None: as ``[plugins] user`` says.
    user: str | None = None

    @property
    def connect_ports(self) -> tuple[int, ...] | None:
        """The ports of :attr:`connect` (validated when the config was read)."""
        if self.connect is None:
            return None
        return tuple(sorted({int(entry.rpartition(":")[2]) for entry in self.connect}))

    @property
    def limits(self) -> ResourceLimits:
        """The resource limits the plugin's process runs under."""
        return ResourceLimits(self.memory_mb, self.cpu_seconds, self.open_files, self.network)


@dataclass(frozen=True)
class ServiceConfig:
    """One ``[grpc.services.<name>]`` table."""

    service: str
    driver: str
    plugin: PluginOptions
    drivers: Mapping[str, Mapping[str, Any]]
    #: The driver's keys written beside ``driver`` (the shape of Reva's plugin guide).
    beside: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The TOML key of this service's table, for messages."""
        return f"grpc.services.{_show(self.service)}"

    @property
    def label(self) -> str:
        """How messages and logs name this service's driver: ``service (driver)``, the driver
        without credentials."""
        return f"{self.service} ({redact(self.driver)})"

    def driver_config(self, *names: str) -> dict[str, Any]:
        """The driver's own config: the keys beside ``driver``, overridden by the first of
        ``names`` present in ``drivers``."""
        for name in names:
            if name in self.drivers:
                return {**self.beside, **self.drivers[name]}
        return dict(self.beside)


# -- serve: the [grpc] and [metrics] tables `reva-plugins serve` reads -------------------------


@dataclass(frozen=True)
class ServeSettings:
    """The ``[grpc]`` and ``[metrics]`` tables: where and how ``serve`` listens.

    Of ``[grpc]`` only these keys are read; revad's others there (``network``,
    ``interceptors`` …) are left alone, so a revad config is served unchanged.
    """

    address: str = _defaults.SERVE_ADDRESS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    shutdown_grace: float = _defaults.SERVE_SHUTDOWN_GRACE
    workers: int = _defaults.SERVE_WORKERS
    #: worker processes sharing the port, or ``"auto"`` (see :meth:`process_count`)
    processes: int | Literal["auto"] = _defaults.SERVE_PROCESSES
    access_log: str = _defaults.ACCESS_LOG
    metrics_address: str | None = None

    def process_count(self) -> int:
        """How many worker processes serve: ``processes``, ``"auto"`` being the CPUs this
        process may use (its affinity, not the host's count)."""
        if self.processes != _defaults.SERVE_PROCESSES_AUTO:
            return int(self.processes)
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # no affinity API on this platform
            cpus = os.cpu_count() or _defaults.SERVE_PROCESSES
        low, high = _defaults.SERVE_PROCESSES_BOUNDS
        return max(low, min(cpus, high))


# -- revad's [log] table (read by serve only) ---------------------------------------------------

LogMode = Literal["console", "json"]


@dataclass(frozen=True)
class LogSettings:
    """revad's ``[log]`` table, as ``serve`` applies it to its own log and its access log."""

    #: the lowest level logged; None: the command line's (``-v``, ``-q``) or ``info``
    level: str | None = None
    #: ``console`` (one text line per record) or ``json`` (one JSON object per line)
    mode: LogMode = _defaults.LOG_MODE
    #: the file appended to (resolved against the config's folder); None: :attr:`stream`
    output: Path | None = None
    #: where lines go when ``output`` names no file
    stream: Literal["stderr", "stdout"] = _defaults.LOG_STREAM


def address_problem(value: str) -> str | None:
    """Why ``value`` is no ``HOST:PORT`` to listen on (see ``_defaults.PORT_BOUNDS``); None if
    it is."""
    host, sep, port = value.rpartition(":")
    low, high = _defaults.PORT_BOUNDS
    if not sep or not port.isascii() or not port.isdigit() or not low <= int(port) <= high:
        return f"must be HOST:PORT with a port from {low} to {high} (e.g. 0.0.0.0:19000)"
    if host.startswith("[") != host.endswith("]") or any(c.isspace() for c in host):
        return "must be HOST:PORT (an IPv6 host in brackets: [::1]:19000)"
    return None


@dataclass(frozen=True)
class Config:
    """A whole configuration: loader settings and the services that use plugins."""

    base_dir: Path
    plugins: LoaderSettings = LoaderSettings()
    services: tuple[ServiceConfig, ...] = ()
    file: Path | None = None
    serve: ServeSettings = ServeSettings()
    log: LogSettings = LogSettings()

    @property
    def source_name(self) -> str:
        """How messages name this configuration."""
        return str(self.file) if self.file else "<config>"

    def service(self, name: str) -> ServiceConfig:
        """The configuration of one service; a :class:`ConfigError` names the known ones."""
        for svc in self.services:
            if svc.service == name:
                return svc
        known = ", ".join(s.service for s in self.services) or "none"
        raise ConfigError(
            f"no service {name!r} is configured (configured: {known})", file=self.source_name
        )

    def with_overrides(self, **changes: Any) -> Config:
        """A copy whose loader settings have ``changes`` applied (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, plugins=dataclasses.replace(self.plugins, **changes))


def load_file(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    data = _read_toml(path)
    return parse(data, base_dir=path.resolve().parent, file=path)


def load_driver_table(path: str | Path) -> dict[str, Any]:
    """A TOML file holding one driver's own config table (for ``conformance --config``)."""
    return _read_toml(Path(path))


def parse(data: Mapping[str, Any], *, base_dir: Path, file: Path | None = None) -> Config:
    """Validate a configuration already read into a dict."""
    reader = _Reader(_printable(str(file)) if file else "<config>", base_dir)
    reader.check_nesting(data)
    plugins = reader.loader_settings(data.get("plugins", {}))
    grpc = reader.table(data.get("grpc", {}), "grpc")
    services = reader.table(grpc.get("services", {}), "grpc.services")
    parsed = tuple(
        reader.service(name, table)
        for name, table in services.items()
        if name in SERVICES or "driver" in reader.table(table, _key("grpc.services", name))
    )
    serve = reader.serve_settings(grpc, data.get("metrics", {}))
    log = reader.log_settings(data.get("log", {}))
    return Config(
        base_dir=base_dir, plugins=plugins, services=parsed, file=file, serve=serve, log=log
    )


def number_problem(value: float, bounds: tuple[float, float], unit: str) -> str | None:
    """Why ``value`` is not a finite number of ``unit`` within ``bounds``; None if it is."""
    low, high = bounds
    if low <= value <= high:  # false for nan; exact for ints of any size
        return None
    return f"must be a finite number of {unit} from {low:g} to {high:g}"


def text_problem(value: str) -> str | None:
    """Why ``value`` is no usable setting (empty, or with control characters); None if it is."""
    if not value.strip():
        return "must not be empty"
    bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        return f"must not contain control characters (found U+{ord(bad):04X})"
    return None


def nesting_exceeds(value: object, limit: int = _defaults.MAX_NESTING) -> bool:
    """True if tables/arrays (dicts/lists) in ``value`` nest deeper than ``limit`` levels."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:  # iterative: the point is to never recurse on hostile input
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's table; every way it can be wrong is a :class:`ConfigError` naming it."""
    shown = _printable(str(path))
    if text_problem(str(path)):
        raise ConfigError("the path must not be empty or contain control characters", file=shown)
    # Non-blocking, so that opening a FIFO does not wait for a writer; what it is comes next.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError("config file not found", file=shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=shown) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError("is a directory, not a config file", file=shown)
        if not stat.S_ISREG(mode):
            raise ConfigError("is not a regular file (a FIFO, device or socket)", file=shown)
        with open(fd, "rb", closefd=False) as f:
            raw = f.read(_defaults.MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=shown) from None
    finally:
        os.close(fd)
    if len(raw) > _defaults.MAX_CONFIG_BYTES:
        raise ConfigError(
            f"larger than {_defaults.MAX_CONFIG_BYTES >> 20} MiB: not a config file", file=shown
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=shown) from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=shown) from None
    except RecursionError:  # the TOML parser recurses once per nested array or inline table
        raise ConfigError(_too_deep(), file=shown) from None
    if nesting_exceeds(data):
        raise ConfigError(_too_deep(), file=shown)
    return data


def _too_deep() -> str:
    return f"tables and arrays nest deeper than {_defaults.MAX_NESTING} levels"


def _printable(text: str) -> str:
    """``text`` with control characters escaped (as TOML escapes them), so a message stays one
    line and puts nothing on a terminal but text."""
    return "".join(f"\\u{ord(c):04X}" if unicodedata.category(c) == "Cc" else c for c in text)


def _show(name: object) -> str:
    """A TOML key as written in a dotted key: bare if it can be, else quoted and escaped."""
    text = str(name)
    if text and all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        return text
    return '"' + _printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _key(table: str, name: object) -> str:
    return f"{table}.{_show(name)}"


#: The keys of the ``[plugins]`` table.
_LOADER_KEYS = tuple(f.name for f in dataclasses.fields(LoaderSettings) if f.name != "policy_dir")
#: The keys of a service table the core reads; every other key there is the driver's own.
SERVICE_KEYS = ("driver", "drivers", "plugin")
_PLUGIN_OPTIONS = tuple(f.name for f in dataclasses.fields(PluginOptions))


def _near_miss(name: object, keys: tuple[str, ...]) -> str | None:
    """The key of ``keys`` that ``name`` is most likely a misspelling of (None: none is)."""
    near = difflib.get_close_matches(str(name).lower(), keys, n=1, cutoff=0.75)
    return near[0] if near else None


@dataclass(frozen=True)
class _Reader:
    file: str
    base_dir: Path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    def check_nesting(self, data: Mapping[str, Any]) -> None:
        if nesting_exceeds(data):
            raise ConfigError(_too_deep(), file=self.file)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {type(value).__name__}")
        return value

    def check_keys(self, table: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
        unknown = sorted((str(k) for k in set(table) - set(allowed)), key=str)
        if unknown:
            near = _near_miss(unknown[0], allowed)
            hint = f"; did you mean {near!r}?" if near else ""
            raise self.error(
                _key(key, unknown[0]),
                f"unknown key{hint} (expected one of: {', '.join(allowed)})",
            )

    def typed(
        self, table: Mapping[str, Any], key: str, name: str, kind: type | tuple[type, ...]
    ) -> Any:
        value = table.get(name)
        if value is None:
            return None
        ok = isinstance(value, kind) and not (
            isinstance(value, bool) and kind in (int, float, (int, float))
        )
        if not ok:
            expected = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.error(f"{key}.{name}", f"must be {expected}, not {type(value).__name__}")
        return value

    def flag(self, table: Mapping[str, Any], key: str, name: str, default: bool) -> bool:
        """A boolean setting; ``default`` when it is not written."""
        value: bool | None = self.typed(table, key, name, bool)
        return default if value is None else value

    def text(self, table: Mapping[str, Any], key: str, name: str) -> str | None:
        """A string setting: present and non-empty, without control characters."""
        value: str | None = self.typed(table, key, name, str)
        problem = None if value is None else text_problem(value)
        if problem:
            raise self.error(f"{key}.{name}", problem)
        return value

    def timeout(self, table: Mapping[str, Any], key: str, name: str) -> float | None:
        value = self.typed(table, key, name, (int, float))
        if value is None:
            return None
        problem = number_problem(value, _defaults.TIMEOUT_BOUNDS, "seconds")
        if problem:
            raise self.error(f"{key}.{name}", problem)
        return float(value)

    def bounded_int(
        self, table: Mapping[str, Any], key: str, name: str, bounds: tuple[int, int]
    ) -> int | None:
        value: int | None = self.typed(table, key, name, int)
        low, high = bounds
        if value is not None and not low <= value <= high:
            raise self.error(f"{key}.{name}", f"must be a whole number from {low} to {high}")
        return value

    def choice(
        self, table: Mapping[str, Any], key: str, name: str, choices: tuple[str, ...]
    ) -> str | None:
        value = self.typed(table, key, name, str)
        if value is not None and value not in choices:
            shown = _printable(repr(value[:40]))
            raise self.error(f"{key}.{name}", f"must be one of {', '.join(choices)}, not {shown}")
        return value  # type: ignore[no-any-return]

    def strings(self, table: Mapping[str, Any], key: str, name: str) -> tuple[str, ...] | None:
        value = self.typed(table, key, name, list)
        if value is None:
            return None
        if not all(isinstance(item, str) for item in value):
            raise self.error(f"{key}.{name}", "must be a list of strings")
        for index, item in enumerate(value):
            problem = text_problem(item)
            if problem:
                raise self.error(f"{key}.{name}[{index}]", problem)
        return tuple(value)

    def path(self, key: str, value: str) -> Path:
        try:
            return (self.base_dir / Path(value).expanduser()).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # ~nosuchuser, symlink loops
            raise self.error(key, f"cannot resolve this path: {exc}") from None

    def python(self, table: Mapping[str, Any], key: str) -> str | None:
        value = self.text(table, key, "python")
        if value is None or "/" not in value:
            return value
        return str(self.path(f"{key}.python", value))

    def loader_settings(self, raw: Any) -> LoaderSettings:
        key = "plugins"
        table = self.table(raw, key)
        self.check_keys(table, key, _LOADER_KEYS)
        defaults = LoaderSettings()
        cache_dir = self.text(table, key, "cache_dir")
        find_links = self.strings(table, key, "find_links") or ()
        allowed = self.strings(table, key, "allowed_sources")
        bundle = self.text(table, key, "bundle")
        sandbox = self.sandbox(table, key)
        return LoaderSettings(
            cache_dir=None if cache_dir is None else self.path(f"{key}.cache_dir", cache_dir),
            installer=self.choice(table, key, "installer", _defaults.INSTALLERS)
            or defaults.installer,
            python=self.python(table, key),
            start_timeout=self.timeout(table, key, "start_timeout") or defaults.start_timeout,
            call_timeout=self.timeout(table, key, "call_timeout") or defaults.call_timeout,
            allowed_sources=defaults.allowed_sources if allowed is None else allowed,
            offline=self.flag(table, key, "offline", defaults.offline),
            index_url=self.text(table, key, "index_url"),
            find_links=tuple(
                link if "://" in link else str(self.path(f"{key}.find_links[{i}]", link))
                for i, link in enumerate(find_links)
            ),
            max_download_mb=self.bounded_int(
                table, key, "max_download_mb", _defaults.MAX_DOWNLOAD_MB_BOUNDS
            )
            or defaults.max_download_mb,
            allow_http=self.flag(table, key, "allow_http", defaults.allow_http),
            bundle=None if bundle is None else self.path(f"{key}.bundle", bundle),
            sandbox=defaults.sandbox if sandbox is None else sandbox,
            user=self.user(table, key),
            policy_dir=self.base_dir,
        )

    def sandbox(self, table: Mapping[str, Any], key: str) -> Sandbox | None:
        value = table.get("sandbox")
        if value is None:
            return None
        if value == "auto" or isinstance(value, bool):
            return value  # type: ignore[no-any-return]
        shown = _printable(repr(value)[:40])
        raise self.error(f"{key}.sandbox", f'must be "auto", true or false, not {shown}')

    def user(self, table: Mapping[str, Any], key: str) -> str | None:
        name = self.text(table, key, "user")
        if name is None:
            return None
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise self.error(f"{key}.user", f"no such user: {_printable(name)!r}") from None
        return name

    def existing_paths(self, table: Mapping[str, Any], key: str, name: str) -> tuple[Path, ...]:
        paths = []
        for index, value in enumerate(self.strings(table, key, name) or ()):
            where = f"{key}.{name}[{index}]"
            path = self.path(where, value)
            if not path.exists():
                raise self.error(where, f"{_printable(value)!r} does not exist")
            if path == Path(path.anchor):
                raise self.error(where, "the whole file system: use sandbox = false instead")
            paths.append(path)
        return tuple(paths)

    def connect(self, table: Mapping[str, Any], key: str, network: bool) -> tuple[str, ...] | None:
        entries = self.strings(table, key, "connect")
        if entries is None:
            return None
        if not network:
            raise self.error(f"{key}.connect", "needs network = true (network = false allows none)")
        for index, entry in enumerate(entries):
            problem = address_problem(entry)
            if problem or entry.endswith(":0"):
                raise self.error(f"{key}.connect[{index}]", problem or "port 0 is no port to reach")
        return entries

    def serve_settings(self, grpc: Mapping[str, Any], raw_metrics: Any) -> ServeSettings:
        metrics = self.table(raw_metrics, "metrics")
        self.check_keys(metrics, "metrics", ("address",))
        addresses = {"grpc": self.text(grpc, "grpc", "address")}
        addresses["metrics"] = self.text(metrics, "metrics", "address")
        for table, value in addresses.items():
            problem = None if value is None else address_problem(value)
            if problem:
                raise self.error(f"{table}.address", problem)
        tls = {name: self.text(grpc, "grpc", name) for name in ("tls_cert", "tls_key")}
        if (tls["tls_cert"] is None) != (tls["tls_key"] is None):
            raise self.error("grpc.tls_cert", "tls_cert and tls_key go together (or neither)")
        grace = self.typed(grpc, "grpc", "shutdown_grace", (int, float))
        problem = (
            None
            if grace is None
            else number_problem(grace, _defaults.SERVE_SHUTDOWN_GRACE_BOUNDS, "seconds")
        )
        if problem:
            raise self.error("grpc.shutdown_grace", problem)
        defaults = ServeSettings()
        return ServeSettings(
            address=addresses["grpc"] or defaults.address,
            tls_cert=self.path("grpc.tls_cert", tls["tls_cert"]) if tls["tls_cert"] else None,
            tls_key=self.path("grpc.tls_key", tls["tls_key"]) if tls["tls_key"] else None,
            shutdown_grace=defaults.shutdown_grace if grace is None else float(grace),
            workers=self.bounded_int(grpc, "grpc", "workers", _defaults.SERVE_WORKERS_BOUNDS)
            or defaults.workers,
            processes=self.processes(grpc),
            access_log=self.choice(grpc, "grpc", "access_log", _defaults.ACCESS_LOG_LEVELS)
            or defaults.access_log,
            metrics_address=addresses["metrics"],
        )

    def processes(self, grpc: Mapping[str, Any]) -> int | Literal["auto"]:
        value = grpc.get("processes")
        if value is None:
            return _defaults.SERVE_PROCESSES
        if value == _defaults.SERVE_PROCESSES_AUTO:
            return "auto"
        low, high = _defaults.SERVE_PROCESSES_BOUNDS
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            shown = str(value).lower() if isinstance(value, bool) else repr(value)
            problem = f'must be a whole number from {low} to {high} or "auto", not {shown[:40]}'
            raise self.error("grpc.processes", _printable(problem))
        return value

    def log_settings(self, raw: Any) -> LogSettings:
        table = self.table(raw, "log")
        self.check_keys(table, "log", ("level", "mode", "output"))
        level = self.choice(table, "log", "level", _defaults.LOG_LEVELS)
        mode = self.choice(table, "log", "mode", _defaults.LOG_MODES)
        output = self.text(table, "log", "output")
        settings = LogSettings(level, "json" if mode == "json" else _defaults.LOG_MODE)
        if output == "stdout":
            return dataclasses.replace(settings, stream="stdout")
        if output == "stderr":
            return settings
        if output is not None:
            return dataclasses.replace(settings, output=self.path("log.output", output))
        return settings

    def service(self, name: str, raw: Any) -> ServiceConfig:
        key = _key("grpc.services", name)
        table = self.table(raw, key)
        try:
            get_service(name)
        except UsageError as exc:
            raise self.error(key, _printable(exc.message)) from None
        if "driver" not in table:
            raise self.error(key, "missing key 'driver' (a driver name, path, URL or requirement)")
        driver = table["driver"]
        if not isinstance(driver, str) or text_problem(driver):
            raise self.error(
                f"{key}.driver", "must be a non-empty string without control characters"
            )
        drivers = self.table(table.get("drivers", {}), f"{key}.drivers")
        for dname, dtable in drivers.items():
            self.table(dtable, _key(f"{key}.drivers", dname))
        beside = {
            k: self.beside_driver(key, k, v) for k, v in table.items() if k not in SERVICE_KEYS
        }
        return ServiceConfig(
            service=name,
            driver=driver.strip(),
            plugin=self.plugin_options(table.get("plugin", {}), f"{key}.plugin"),
            drivers=drivers,
            beside=beside,
        )

    def beside_driver(self, key: str, name: str, value: Any) -> Any:
        """A key beside ``driver``: the driver's own config, unless it can only be a mistake.

        Reva's plugin guide writes the driver's keys beside ``driver``, so any key may be one.
        Refused are only keys no driver config should have there: a near-miss of a key the core
        reads (``dirvers``), a ``[…plugin]`` option (``sha256`` there would pin nothing), and a
        table of tables (a misplaced ``[….drivers.<name>]``). All fit in ``drivers.<name>``.
        """
        where = _key(key, name)
        own = f"(a key the driver itself reads goes in [{key}.drivers.<name>])"
        near = _near_miss(name, SERVICE_KEYS)
        if near:
            raise self.error(where, f"unknown key; did you mean {near!r}? {own}")
        if name in _PLUGIN_OPTIONS:
            raise self.error(where, f"a plugin option: put it in [{key}.plugin] {own}")
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            raise self.error(
                where, f"a table of tables is neither a key the core reads nor driver config {own}"
            )
        return value

    def plugin_options(self, raw: Any, key: str) -> PluginOptions:
        table = self.table(raw, key)
        self.check_keys(table, key, _PLUGIN_OPTIONS)
        env = self.table(table.get("env", {}), f"{key}.env")
        for name, value in env.items():
            where = _key(f"{key}.env", name)
            if not str(name) or "=" in str(name) or text_problem(str(name)):
                raise self.error(where, "not a valid environment variable name")
            if not isinstance(value, str):
                raise self.error(where, "must be a string")
            # Multi-line values (a PEM key) are fine; other control characters are not.
            if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in value):
                raise self.error(
                    where, "must not contain control characters (other than tabs and newlines)"
                )
        concurrency = self.bounded_int(
            table, key, "max_concurrency", _defaults.MAX_CONCURRENCY_BOUNDS
        )
        limits = {
            name: self.bounded_int(table, key, name, bounds)
            for name, bounds in (
                ("memory_mb", _defaults.MEMORY_MB_BOUNDS),
                ("cpu_seconds", _defaults.CPU_SECONDS_BOUNDS),
                ("open_files", _defaults.OPEN_FILES_BOUNDS),
            )
        }
        network = self.flag(table, key, "network", PluginOptions.network)
        sha256 = self.typed(table, key, "sha256", str)
        if sha256 is not None and not _is_sha256(sha256):
            raise self.error(f"{key}.sha256", "must be 64 hexadecimal digits")
        return PluginOptions(
            entry_point=self.text(table, key, "entry_point"),
            python=self.python(table, key),
            sha256=sha256.lower() if sha256 else None,
            env=dict(env),
            max_concurrency=concurrency or PluginOptions.max_concurrency,
            restart=self.choice(table, key, "restart", _defaults.RESTART_POLICIES)
            or PluginOptions.restart,
            start_timeout=self.timeout(table, key, "start_timeout"),
            call_timeout=self.timeout(table, key, "call_timeout"),
            network=network,
            sandbox=self.sandbox(table, key),
            read_paths=self.existing_paths(table, key, "read_paths"),
            write_paths=self.existing_paths(table, key, "write_paths"),
            connect=self.connect(table, key, network),
            user=self.user(table, key),
            **limits,
        )


def _is_sha256(value: str) -> bool:
    return re.fullmatch("[0-9a-fA-F]{64}", value) is not None
