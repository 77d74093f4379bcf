"""The ``wheel-url`` and ``sdist-url`` kinds: an archive URL, downloaded and keyed by its
sha256."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .. import _urls
from .._errors import SourceError
from .._holds import hold_download
from .._redact import redact
from ._base import (
    Kind,
    LockedPins,
    NeedsNetwork,
    Origin,
    ResolveContext,
    Resolved,
    Source,
    locked_resolved,
)
from ._digest import is_regular_file
from ._download import archive_filename, download

HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class ArchiveURL(Source):
    """An ``https://…/x.whl`` or ``.tar.gz`` URL, downloaded and keyed by its sha256.

    Made only from a checked URL: its file name is validated on construction (see
    :func:`archive_filename`), so it can never name a path outside the downloads folder.
    """

    KINDS: ClassVar[tuple[Kind, ...]] = ("wheel-url", "sdist-url")
    REQUIRED_PINS: ClassVar[tuple[str, ...]] = ("sha256", "url")

    url: str
    sha256: str | None = None
    filename: str = field(init=False)

    def __post_init__(self) -> None:
        _urls.check_url(self.url)
        if self.sha256 is not None and not HEX64.match(self.sha256):
            raise SourceError(f"{self.spec}: sha256 must be 64 hexadecimal digits")
        object.__setattr__(self, "filename", archive_filename(self.url))

    @classmethod
    def recognise(cls, spec: str, sha256: str | None) -> ArchiveURL | None:
        """A URL (``https``, ``http`` or ``file``) of a wheel or sdist, pinned by a
        ``#sha256=`` fragment or ``sha256``; another scheme is refused."""
        if "://" not in spec and not spec.startswith(("ext::", "fd::")):
            return None
        shown = redact(spec)
        scheme = spec.split(":", 1)[0].lower()
        if scheme not in ("https", "http", "file"):
            raise SourceError(
                f"unsupported URL scheme {scheme!r} in driver {shown!r} (use git+https://, "
                "git+ssh://, git+file://, https://…/x.whl or https://…/x.tar.gz)"
            )
        url, _, fragment = spec.partition("#")
        pinned = sha256.lower() if sha256 else None
        if fragment:
            name, _, value = fragment.partition("=")
            if name != "sha256" or not HEX64.match(value):
                raise SourceError(
                    f"driver {shown!r}: the only URL fragment accepted is #sha256=<64 hex>"
                )
            if pinned and pinned != value.lower():
                raise SourceError(f"driver {shown!r}: #sha256 and plugin.sha256 disagree")
            pinned = value.lower()
        return cls(url, pinned)

    @property
    def is_wheel(self) -> bool:
        """Whether the archive is a wheel (installed as it is)."""
        return self.filename.endswith(".whl")

    @property
    def kind(self) -> str:
        """``wheel-url`` or ``sdist-url``."""
        return "wheel-url" if self.is_wheel else "sdist-url"

    @property
    def spec(self) -> str:
        """The URL without credentials."""
        return redact(self.url)

    @property
    def origin(self) -> Origin:
        """The normalised URL (no credentials, query or fragment)."""
        return Origin("url", _urls.origin(self.url))

    @property
    def wheel_file(self) -> str | None:
        """The wheel's file name (None for an sdist)."""
        return self.filename if self.is_wheel else None

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """A pinned archive already downloaded costs nothing; otherwise download and hash it."""
        assert ctx.downloads is not None
        pin = self.sha256.lower() if self.sha256 else None
        if pin:
            cached = ctx.downloads / pin / self.filename
            # Held first (env prune then leaves it alone), then looked at again: a prune may
            # have removed it in between.
            if is_regular_file(cached) and hold_download(cached.parent) and is_regular_file(cached):
                # Refresh the mtime: `env prune` ages downloads by it.
                with contextlib.suppress(OSError):
                    os.utime(cached)
                return self._resolved(cached, pin)
        scheme = urllib.parse.urlsplit(self.url).scheme.lower()
        if scheme == "http" and not pin and not ctx.allow_http:
            raise SourceError(
                f"{self.spec}: a plain http:// archive needs a sha256 pin (#sha256=… or "
                "plugin.sha256), or [plugins] allow_http = true"
            )
        if ctx.offline:
            raise NeedsNetwork(f"{self.spec}: downloading the archive needs the network")
        path, digest = download(
            self.url,
            ctx.downloads,
            self.filename,
            expected_sha256=pin,
            max_bytes=ctx.max_download_bytes,
            allow_http=ctx.allow_http or pin is not None,
        )
        return self._resolved(path, digest)

    def _resolved(self, path: Path, digest: str) -> Resolved:
        return Resolved(
            self.kind,
            self.spec,
            f"sha256:{digest}",
            (str(path),),
            mutable=self.sha256 is None,
            pins={"sha256": digest, "url": self.spec},
            wheel_from="file" if self.is_wheel else "build",
        )

    def drift(self, entry: LockedPins, ctx: ResolveContext) -> str | None:
        """Another URL, or another sha256 pinned in the config."""
        if self.spec != entry.spec or (
            self.sha256 and self.sha256.lower() != entry.pins.get("sha256")
        ):
            return f"the lock pins {entry.spec}, the config now asks for {self.spec}"
        return None

    def pinned(self, entry: LockedPins, ctx: ResolveContext) -> Resolved:
        """The lock's pins, the archive not fetched (see :meth:`fetch_late`)."""
        return locked_resolved(entry, (self.url,))

    def repin(self, entry: LockedPins, ctx: ResolveContext) -> Resolved:
        """The archive fetched again (or found in the downloads) and checked against the
        locked sha256."""
        at = ArchiveURL(self.url, sha256=entry.pins["sha256"])
        return dataclasses.replace(at.resolve(ctx), spec=self.spec, mutable=False)

    def fetch_late(self, entry: LockedPins, ctx: ResolveContext) -> Resolved | None:
        """Downloaded now and checked against the locked sha256: a locked env is being built
        and the plugin's wheel is not cached."""
        return dataclasses.replace(self, sha256=entry.pins["sha256"]).resolve(ctx)
