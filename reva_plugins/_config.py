"""Reva-shaped TOML configuration, loaded into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError, UsageError
from ._protocol import ResourceLimits
from .services import SERVICES, get_service

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

INSTALLERS = ("auto", "uv", "pip")
RESTART_POLICIES = ("on-failure", "never")


@dataclass(frozen=True)
class LoaderSettings:
    """The ``[plugins]`` table: how plugins are fetched, built and run."""

    cache_dir: Path | None = None
    installer: str = "auto"
    python: str | None = None
    start_timeout: float = 60.0
    call_timeout: float = 30.0
    allowed_sources: tuple[str, ...] = ("*",)
    offline: bool = False
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    max_download_mb: int = 1024
    allow_http: bool = False


@dataclass(frozen=True)
class PluginOptions:
    """A driver's ``plugin`` table: per-driver loader options."""

    entry_point: str | None = None
    python: str | None = None
    sha256: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    max_concurrency: int = 8
    restart: str = "on-failure"
    start_timeout: float | None = None
    call_timeout: float | None = None
    memory_mb: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    network: bool = True

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

    @property
    def key(self) -> str:
        """The TOML key of this service's table, for messages."""
        return f"grpc.services.{self.service}"

    def driver_config(self, *names: str) -> dict[str, Any]:
        """The driver's own config table: the first of ``names`` present in ``drivers``."""
        for name in names:
            if name in self.drivers:
                return dict(self.drivers[name])
        return {}


@dataclass(frozen=True)
class Config:
    """A whole configuration: loader settings and the services that use plugins."""

    base_dir: Path
    plugins: LoaderSettings = LoaderSettings()
    services: tuple[ServiceConfig, ...] = ()
    file: Path | None = None

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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(path)) from None
    return parse(data, base_dir=path.resolve().parent, file=path)


def load_driver_table(path: str | Path) -> dict[str, Any]:
    """A TOML file holding one driver's own config table (for ``conformance --config``)."""
    path = Path(path)
    try:
        table: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(path)) from None
    return table


def parse(data: Mapping[str, Any], *, base_dir: Path, file: Path | None = None) -> Config:
    """Validate a configuration already read into a dict."""
    reader = _Reader(str(file) if file else "<config>", base_dir)
    plugins = reader.loader_settings(data.get("plugins", {}))
    grpc = reader.table(data.get("grpc", {}), "grpc")
    services = reader.table(grpc.get("services", {}), "grpc.services")
    parsed = tuple(
        reader.service(name, table)
        for name, table in services.items()
        if name in SERVICES or "driver" in reader.table(table, f"grpc.services.{name}")
    )
    return Config(base_dir=base_dir, plugins=plugins, services=parsed, file=file)


@dataclass(frozen=True)
class _Reader:
    file: str
    base_dir: Path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {type(value).__name__}")
        return value

    def check_keys(self, table: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise self.error(
                f"{key}.{unknown[0]}", f"unknown key (expected one of: {', '.join(allowed)})"
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

    def timeout(self, table: Mapping[str, Any], key: str, name: str) -> float | None:
        value = self.typed(table, key, name, (int, float))
        if value is not None and value <= 0:
            raise self.error(f"{key}.{name}", "must be a positive number of seconds")
        return None if value is None else float(value)

    def bounded_int(self, table: Mapping[str, Any], key: str, name: str, high: int) -> int | None:
        value = self.typed(table, key, name, int)
        if value is not None and not 1 <= value <= high:
            raise self.error(f"{key}.{name}", f"must be a whole number from 1 to {high}")
        return value  # type: ignore[no-any-return]

    def choice(
        self, table: Mapping[str, Any], key: str, name: str, choices: tuple[str, ...]
    ) -> str | None:
        value = self.typed(table, key, name, str)
        if value is not None and value not in choices:
            raise self.error(f"{key}.{name}", f"must be one of {', '.join(choices)}, not {value!r}")
        return value  # type: ignore[no-any-return]

    def strings(self, table: Mapping[str, Any], key: str, name: str) -> tuple[str, ...] | None:
        value = self.typed(table, key, name, list)
        if value is None:
            return None
        if not all(isinstance(item, str) for item in value):
            raise self.error(f"{key}.{name}", "must be a list of strings")
        return tuple(value)

    def path(self, value: str) -> Path:
        return (self.base_dir / Path(value).expanduser()).resolve()

    def python(self, value: str | None) -> str | None:
        if value is None or "/" not in value:
            return value
        return str(self.path(value))

    def loader_settings(self, raw: Any) -> LoaderSettings:
        key = "plugins"
        table = self.table(raw, key)
        fields = tuple(f.name for f in dataclasses.fields(LoaderSettings))
        self.check_keys(table, key, fields)
        defaults = LoaderSettings()
        cache_dir = self.typed(table, key, "cache_dir", str)
        find_links = self.strings(table, key, "find_links") or ()
        allowed = self.strings(table, key, "allowed_sources")
        return LoaderSettings(
            cache_dir=self.path(cache_dir) if cache_dir else None,
            installer=self.choice(table, key, "installer", INSTALLERS) or defaults.installer,
            python=self.python(self.typed(table, key, "python", str)),
            start_timeout=self.timeout(table, key, "start_timeout") or defaults.start_timeout,
            call_timeout=self.timeout(table, key, "call_timeout") or defaults.call_timeout,
            allowed_sources=defaults.allowed_sources if allowed is None else allowed,
            offline=bool(self.typed(table, key, "offline", bool)),
            index_url=self.typed(table, key, "index_url", str),
            find_links=tuple(
                link if "://" in link else str(self.path(link)) for link in find_links
            ),
            max_download_mb=self.bounded_int(table, key, "max_download_mb", 1 << 20)
            or defaults.max_download_mb,
            allow_http=bool(self.typed(table, key, "allow_http", bool)),
        )

    def service(self, name: str, raw: Any) -> ServiceConfig:
        key = f"grpc.services.{name}"
        table = self.table(raw, key)
        try:
            get_service(name)
        except UsageError as exc:
            raise self.error(key, exc.message) from None
        driver = table.get("driver")
        if driver is None:
            raise self.error(key, "missing key 'driver' (a driver name, path, URL or requirement)")
        if not isinstance(driver, str) or not driver.strip():
            raise self.error(f"{key}.driver", "must be a non-empty string")
        drivers = self.table(table.get("drivers", {}), f"{key}.drivers")
        for dname, dtable in drivers.items():
            self.table(dtable, f"{key}.drivers.{dname}")
        return ServiceConfig(
            service=name,
            driver=driver.strip(),
            plugin=self.plugin_options(table.get("plugin", {}), f"{key}.plugin"),
            drivers=drivers,
        )

    def plugin_options(self, raw: Any, key: str) -> PluginOptions:
        table = self.table(raw, key)
        self.check_keys(table, key, tuple(f.name for f in dataclasses.fields(PluginOptions)))
        env = self.table(table.get("env", {}), f"{key}.env")
        for name, value in env.items():
            if not isinstance(value, str):
                raise self.error(f"{key}.env.{name}", "must be a string")
        concurrency = self.typed(table, key, "max_concurrency", int)
        if concurrency is not None and concurrency < 1:
            raise self.error(f"{key}.max_concurrency", "must be at least 1")
        limits = {
            name: self.bounded_int(table, key, name, high)
            for name, high in (
                ("memory_mb", 1 << 30),
                ("cpu_seconds", 1 << 31),
                ("open_files", 1 << 20),
            )
        }
        network = self.typed(table, key, "network", bool)
        sha256 = self.typed(table, key, "sha256", str)
        if sha256 is not None and not _is_sha256(sha256):
            raise self.error(f"{key}.sha256", "must be 64 hexadecimal digits")
        return PluginOptions(
            entry_point=self.typed(table, key, "entry_point", str),
            python=self.python(self.typed(table, key, "python", str)),
            sha256=sha256.lower() if sha256 else None,
            env=dict(env),
            max_concurrency=concurrency or PluginOptions.max_concurrency,
            restart=self.choice(table, key, "restart", RESTART_POLICIES) or "on-failure",
            start_timeout=self.timeout(table, key, "start_timeout"),
            call_timeout=self.timeout(table, key, "call_timeout"),
            network=True if network is None else network,
            **limits,
        )


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)
