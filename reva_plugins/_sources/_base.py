"""What every source kind shares: the resolved value, the resolve context, the origin
``allowed_sources`` matches, and what a kind must answer (:class:`Source`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, TypeVar

from .._errors import SourceError

if TYPE_CHECKING:
    from .inprocess import InProcess
    from .venv import PrebuiltVenv

Kind = Literal[
    "in-process", "venv", "folder", "sdist", "wheel", "git", "wheel-url", "sdist-url", "requirement"
]
"""Every source kind (what ``check`` shows, what a lock entry records)."""

WheelFrom = Literal["build", "file", "index"]
"""How locking gets a plugin as a wheel: built from its source, the source's own wheel file,
or none (a package of the index, installed by name)."""


@dataclass(frozen=True)
class Resolved:
    """A source pinned to its content: what keys the env and what the installer is given."""

    kind: str
    spec: str
    identity: str
    install_args: tuple[str, ...] = ()
    mutable: bool = False
    pins: Mapping[str, str] = field(default_factory=dict)
    #: How locking turns the plugin into a wheel (see :data:`WheelFrom`).
    wheel_from: WheelFrom = "index"
    #: A local path: a lock records the spec as the config writes it (relative to the config).
    local: bool = False


class NeedsNetwork(SourceError):
    """Resolving this source would touch the network, and the loader is offline."""


@dataclass(frozen=True)
class ResolveContext:
    """What resolving may use: the network or not, where downloads go, how to ask an index,
    how large a download may be and whether plain ``http://`` is allowed without a pin."""

    offline: bool = False
    downloads: Path | None = None
    find_version: Callable[[str], str] | None = None
    max_download_bytes: int = 1024 << 20
    allow_http: bool = False


OriginKind = Literal["path", "name", "url"]


@dataclass(frozen=True)
class Origin:
    """Where a source comes from, normalised: what ``[plugins] allowed_sources`` matches.

    ``path``: the resolved real path (folders, wheel/sdist files, venvs); ``name``: the canonical
    name (in-process drivers, requirements); ``url``: the normalised URL (git, archives).
    """

    kind: OriginKind
    value: str


class LockedPins(Protocol):
    """What a lock entry pins a source to (a ``_lock`` entry has these fields)."""

    @property
    def kind(self) -> str:
        """The kind the source had when locked."""
        ...

    @property
    def spec(self) -> str:
        """The spec as locked."""
        ...

    @property
    def identity(self) -> str:
        """The content identity the source resolved to."""
        ...

    @property
    def plugin(self) -> str:
        """The plugin's distribution name."""
        ...

    @property
    def pins(self) -> Mapping[str, str]:
        """The kind's pins (``commit``, ``sha256``, ``version``, ``url``)."""
        ...


_T_co = TypeVar("_T_co", covariant=True)


class SourceHandler(Protocol[_T_co]):
    """What consumes a classified source (planning): one method per way a driver runs, so
    nothing but the sources tells kinds apart."""

    def in_process(self, source: InProcess) -> _T_co:
        """A driver installed in the core's own environment, by entry point name."""
        ...

    def prebuilt(self, source: PrebuiltVenv) -> _T_co:
        """A ready venv used as is."""
        ...

    def built(self, source: Source) -> _T_co:
        """A source its own env is built from."""
        ...


class AtPath:
    """What a spec that is a path on this host means (a folder, a file, a prebuilt venv): the
    spec, the origin ``allowed_sources`` matches and the local path are all that path."""

    path: Path

    @property
    def spec(self) -> str:
        """The path."""
        return str(self.path)

    @property
    def origin(self) -> Origin:
        """The resolved path."""
        return Origin("path", str(self.path))

    @property
    def local_path(self) -> Path | None:
        """The path."""
        return self.path


class Source(ABC):
    """One kind of driver spec that gets an env of its own (folder, wheel, git URL …): all a
    kind means, from its spec to its lock entry. The kinds are frozen dataclasses."""

    #: The kinds the class stands for (what ``check`` shows, what a lock entry records).
    KINDS: ClassVar[tuple[Kind, ...]]
    #: The pins a lock entry of this kind must have.
    REQUIRED_PINS: ClassVar[tuple[str, ...]] = ()
    #: Whether a lock entry of this kind pins a plugin wheel of its own.
    LOCKS_A_WHEEL: ClassVar[bool] = True

    @property
    @abstractmethod
    def kind(self) -> str:
        """A short name of the kind, shown by ``check``."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The spec as written (credentials stripped)."""

    @property
    @abstractmethod
    def origin(self) -> Origin:
        """What ``allowed_sources`` matches."""

    @property
    def local_path(self) -> Path | None:
        """The resolved path of a source on this host (None for a name or URL)."""
        return None

    @property
    def wheel_file(self) -> str | None:
        """The file name of a wheel the source installs as it is: its tags are checked against
        the plugin's Python before anything is fetched or built (None: nothing to check)."""
        return None

    def accept(self, handler: SourceHandler[_T_co]) -> _T_co:
        """``handler.built(self)``."""
        return handler.built(self)

    @abstractmethod
    def resolve(self, ctx: ResolveContext) -> Resolved:
        """Pin the source to its content; may read files or ask a remote."""

    @abstractmethod
    def drift(self, entry: LockedPins, ctx: ResolveContext) -> str | None:
        """Why this source no longer matches what ``entry`` (of the same kind) pins."""

    def pinned(self, entry: LockedPins, ctx: ResolveContext) -> Resolved:
        """What this source resolves to under ``entry``'s pins, never asking a remote (call it
        when it does not drift). By default resolved as is: local content, just checked."""
        return self.resolve(ctx)

    def repin(self, entry: LockedPins, ctx: ResolveContext) -> Resolved:
        """Resolved anew at ``entry``'s pins: what locking it now gives without moving it. By
        default resolved as is (a local source has no pin to hold)."""
        return self.resolve(ctx)

    def fetch_late(self, entry: LockedPins, ctx: ResolveContext) -> Resolved | None:
        """What a locked env installs the plugin from when its wheel is not cached, fetched
        now (an archive a lock pins without fetching it); None: :meth:`pinned` says."""
        return None


class LocalPackage(AtPath, Source):
    """A package on this host (a folder, a file): it drifts when its content does."""

    #: What messages call it.
    NOUN: ClassVar[str]

    def drift(self, entry: LockedPins, ctx: ResolveContext) -> str | None:
        """The content's digest moved."""
        now = self.resolve(ctx).identity
        if now != entry.identity:
            return (
                f"the lock pins {short_identity(entry.identity)} for {self.spec}, the "
                f"{self.NOUN} now is {short_identity(now)}"
            )
        return None


def short_identity(identity: str) -> str:
    """``sha256:0123456789ab``: an identity cut for messages."""
    kind, _, value = identity.partition(":")
    return f"{kind}:{value[:12]}"


def locked_resolved(entry: LockedPins, install_args: tuple[str, ...]) -> Resolved:
    """``entry`` as a resolved source installed from ``install_args``."""
    return Resolved(entry.kind, entry.spec, entry.identity, install_args, pins=dict(entry.pins))
