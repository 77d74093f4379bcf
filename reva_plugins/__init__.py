"""reva-plugins: Reva-style plugin drivers in isolated environments and processes."""

from __future__ import annotations

from ._build import BuildProgress
from ._client import Cancellation
from ._config import Config, load_file
from ._drivers import ServiceInfo
from ._errors import (
    CallCancelled,
    CallTimeout,
    ConfigError,
    EnvBuildError,
    EnvInUse,
    FetchError,
    HandshakeError,
    InvalidArgument,
    InvalidCredentials,
    NotFound,
    PermissionDenied,
    PluginCrashed,
    ProcessError,
    ProtocolError,
    RemoteError,
    RevaPluginError,
    SourceError,
    UsageError,
)
from ._hooks import hookimpl, hookspec
from ._host import Host, ServiceCheck
from ._proxy import ServiceProxy
from ._supervisor import ServiceState
from ._version import __version__
from .services import SERVICES, ServiceType, register_service

__all__ = [
    "SERVICES",
    "BuildProgress",
    "CallCancelled",
    "CallTimeout",
    "Cancellation",
    "Config",
    "ConfigError",
    "EnvBuildError",
    "EnvInUse",
    "FetchError",
    "HandshakeError",
    "Host",
    "InvalidArgument",
    "InvalidCredentials",
    "NotFound",
    "PermissionDenied",
    "PluginCrashed",
    "ProcessError",
    "ProtocolError",
    "RemoteError",
    "RevaPluginError",
    "ServiceCheck",
    "ServiceInfo",
    "ServiceProxy",
    "ServiceState",
    "ServiceType",
    "SourceError",
    "UsageError",
    "__version__",
    "hookimpl",
    "hookspec",
    "load_file",
    "register_service",
]
