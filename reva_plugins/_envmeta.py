"""The env metadata record (``reva-env.json``): its schema, validated both when written and
when read back. Written last into a built env, so its presence marks a complete env."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

METADATA = "reva-env.json"
MAX_METADATA_BYTES = 16 << 20
KEY_LENGTH = 24
KEY_PATTERN = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}")
"""An env key: lowercase hex of :data:`KEY_LENGTH` digits."""


def is_key(name: str) -> bool:
    """True for a well-formed env key (lowercase hex of the expected length)."""
    return KEY_PATTERN.fullmatch(name) is not None


class MetadataError(ValueError):
    """An env's metadata is missing, unreadable or not of the expected shape."""


_T = TypeVar("_T")
_D = TypeVar("_D", bound="DataclassInstance")


def _field(data: Mapping[str, Any], name: str, kind: type[_T], where: str) -> _T:
    if name not in data:
        raise MetadataError(f"{where}{name} is missing")
    value = data[name]
    # bool is an int subclass: an int field must not accept true/false, nor the reverse.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise MetadataError(f"{where}{name} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MetadataError(f"{where} must be an object, not {type(value).__name__}")
    return value


def _strings(value: Any, where: str) -> dict[str, str]:
    table = _object(value, where)
    for name, item in table.items():
        if not isinstance(item, str):
            raise MetadataError(f"{where}.{name} must be str, not {type(item).__name__}")
    return dict(table)


class _Strings:
    """A dataclass whose fields are all strings, read from a JSON object."""

    @classmethod
    def from_json(cls: type[_D], data: Any, where: str) -> _D:
        """Validate and convert; raises :class:`MetadataError`."""
        table = _object(data, where.rstrip("."))
        return cls(*(_field(table, f.name, str, where) for f in dataclasses.fields(cls)))


@dataclass(frozen=True)
class PythonInfo(_Strings):
    """The interpreter an env was built for."""

    implementation: str
    version: str
    executable: str


@dataclass(frozen=True)
class InstallerInfo(_Strings):
    """The installer that built an env."""

    name: str
    version: str


@dataclass(frozen=True)
class EntryPointInfo(_Strings):
    """One ``reva.*`` entry point an env's distributions declare."""

    name: str
    value: str
    distribution: str
    version: str

    def to_json(self) -> dict[str, str]:
        """The JSON object written to the metadata file."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DistributionInfo:
    """One distribution installed in an env (``direct_url`` is PEP 610's record, if any)."""

    name: str
    version: str
    direct_url: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any, where: str) -> DistributionInfo:
        """Validate and convert; raises :class:`MetadataError`."""
        table = _object(data, where.rstrip("."))
        direct = table.get("direct_url")
        return cls(
            _field(table, "name", str, where),
            _field(table, "version", str, where),
            None if direct is None else _object(direct, f"{where}direct_url"),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the metadata file."""
        out: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.direct_url is not None:
            out["direct_url"] = dict(self.direct_url)
        return out


@dataclass(frozen=True)
class EnvMetadata:
    """What an env records about itself (``reva-env.json``), validated field by field."""

    key: str
    spec: str
    kind: str
    identity: str
    mutable: bool
    resolved: Mapping[str, str]
    python: PythonInfo
    installer: InstallerInfo
    options: Mapping[str, Any]
    protocol: tuple[int, ...]
    distributions: tuple[DistributionInfo, ...]
    entry_points: Mapping[str, Mapping[str, EntryPointInfo]]
    created: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> EnvMetadata:
        """Validate every field of a decoded metadata file; raises :class:`MetadataError`."""
        table = _object(data, "the metadata")
        key = _field(table, "key", str, "")
        if not is_key(key):
            raise MetadataError(f"key {key!r} is not an env key")
        protocol = _field(table, "protocol", list, "")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in protocol):
            raise MetadataError("protocol must be a list of integers")
        dists = _field(table, "distributions", list, "")
        groups = _object(_field(table, "entry_points", dict, ""), "entry_points")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            key=key,
            spec=_field(table, "spec", str, ""),
            kind=_field(table, "kind", str, ""),
            identity=_field(table, "identity", str, ""),
            mutable=_field(table, "mutable", bool, ""),
            resolved=_strings(_field(table, "resolved", dict, ""), "resolved"),
            python=PythonInfo.from_json(table.get("python"), "python."),
            installer=InstallerInfo.from_json(table.get("installer"), "installer."),
            options=dict(_field(table, "options", dict, "")),
            protocol=tuple(protocol),
            distributions=tuple(
                DistributionInfo.from_json(d, f"distributions[{i}].") for i, d in enumerate(dists)
            ),
            entry_points={
                group: {
                    name: EntryPointInfo.from_json(ep, f"entry_points.{group}.{name}.")
                    for name, ep in _object(eps, f"entry_points.{group}").items()
                }
                for group, eps in groups.items()
            },
            created=_field(table, "created", str, ""),
            extra={k: v for k, v in table.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to (and read back from) the metadata file."""
        return {
            **self.extra,
            "key": self.key,
            "spec": self.spec,
            "kind": self.kind,
            "identity": self.identity,
            "mutable": self.mutable,
            "resolved": dict(self.resolved),
            "python": dataclasses.asdict(self.python),
            "installer": dataclasses.asdict(self.installer),
            "options": dict(self.options),
            "protocol": list(self.protocol),
            "distributions": [d.to_json() for d in self.distributions],
            "entry_points": {
                group: {name: ep.to_json() for name, ep in eps.items()}
                for group, eps in self.entry_points.items()
            },
            "created": self.created,
        }

    def references(self, sha256: str) -> bool:
        """True when this env was built from the download with digest ``sha256``."""
        return self.resolved.get("sha256") == sha256 or self.identity == f"sha256:{sha256}"


def read_metadata(path: Path) -> EnvMetadata:
    """The validated metadata of the env folder ``path``; raises :class:`MetadataError`.

    Only a regular file of bounded size is read: a FIFO or a device there must not hang or
    exhaust the reader.
    """
    file = path / METADATA
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        raise MetadataError(f"{METADATA} is missing") from None
    except OSError as exc:
        raise MetadataError(f"cannot read {METADATA}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MetadataError(f"{METADATA} is not a regular file")
    if info.st_size > MAX_METADATA_BYTES:
        raise MetadataError(f"{METADATA} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_METADATA_BYTES + 1)
    except OSError as exc:
        raise MetadataError(f"cannot read {METADATA}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise MetadataError(f"{METADATA} is not valid JSON ({type(exc).__name__})") from None
    metadata = EnvMetadata.from_json(data)
    if metadata.key != path.name:
        raise MetadataError(f"{METADATA} is for env {metadata.key}, not {path.name}")
    return metadata
