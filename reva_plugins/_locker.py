"""Locking: a resolved driver to a lock table (its plugin built to a wheel, its dependencies
resolved with hashes for each target Python), and how a lock table differs from locking it
again. Every uv or pip command behind it runs through the :class:`Installer` it is given.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from . import _python
from ._config import ServiceConfig
from ._errors import EnvBuildError, SourceError
from ._fs import remove_tree
from ._installers import Installer, InstallOptions, Pin
from ._lockfile import LockedService, version_key
from ._redact import redact
from ._sources import Resolved, file_digest
from ._subprocess import CommandFailed


def differences(locked: LockedService, now: LockedService) -> list[str]:
    """How ``locked`` differs from ``now``, what locking its pins gives now: one line each."""
    out = []
    for name in ("spec", "kind", "identity", "plugin", "wheel"):
        have, want = getattr(locked, name), getattr(now, name)
        if have != want:
            out.append(f"the lock's {name} is {have!r}, locking it now gives {want!r}")
    if locked.wheel_sha256 != now.wheel_sha256:
        out.append(
            f"building the plugin's wheel now gives sha256:{now.wheel_sha256[:16]}…, the lock "
            f"pins sha256:{locked.wheel_sha256[:16]}… (the lock was edited, or the plugin's "
            "build is not reproducible)"
        )
    if dict(locked.pins) != dict(now.pins):
        have, want = dict(locked.pins), dict(now.pins)
        out.append(f"the lock's pins are {have}, locking it now gives {want}")
    for python in sorted(set(locked.targets) | set(now.targets), key=version_key):
        out += [f"Python {python}: {why}" for why in _package_differences(
            locked.targets.get(python, ()), now.targets.get(python, ())
        )]  # fmt: skip
    return out


def _package_differences(locked: Sequence[Pin], now: Sequence[Pin]) -> list[str]:
    have = {canonicalize_name(p.name): p for p in locked}
    want = {canonicalize_name(p.name): p for p in now}
    out = []
    for name in sorted(have.keys() | want.keys()):
        old, new = have.get(name), want.get(name)
        if old is None and new is not None:
            out.append(f"the lock has no {new.name}, resolving now gives {new.name} {new.version}")
        elif new is None and old is not None:
            out.append(f"the lock has {old.name} {old.version}, resolving now installs none")
        elif old is not None and new is not None and old.version != new.version:
            out.append(
                f"the lock has {old.name} {old.version}, resolving now gives "
                f"{new.name} {new.version}"
            )
        elif old is not None and new is not None and set(old.hashes) != set(new.hashes):
            out.append(
                f"the hashes of {old.name} {old.version} in the lock are not the ones resolving "
                "gives now"
            )
    if not out and tuple(locked) != tuple(now):
        out.append("the packages are not listed as 'reva-plugins lock' writes them")
    return out


@dataclass(frozen=True)
class Locker:
    """Resolves drivers to lock entries with ``installer``: the plugin built to a wheel (kept in
    ``wheel_cache``), its dependencies resolved with hashes for each target Python."""

    installer: Installer
    options: InstallOptions
    wheel_cache: Path

    def lock(
        self,
        svc: ServiceConfig,
        resolved: Resolved,
        interpreter: _python.Interpreter,
        targets: Mapping[str, _python.Interpreter] | None = None,
    ) -> LockedService:
        """The lock table of ``svc`` whose source resolved to ``resolved`` (its plugin built with
        ``interpreter``), for each target Python of ``targets`` (``{"3.12": interpreter}``;
        default: ``interpreter``'s own version)."""
        label = f"{svc.key} ({redact(svc.driver)})"
        wheel, wheel_sha256 = "", ""
        if resolved.wheel_from != "index":
            built = self.wheel_of(resolved, interpreter, label)
            wheel, wheel_sha256 = built.name, file_digest(built)
            plugin = canonicalize_name(parse_wheel_filename(built.name)[0])
            resolve_input = str(built)
        else:
            plugin = canonicalize_name(Requirement(resolved.install_args[0]).name)
            resolve_input = resolved.install_args[0]
        locked_for = {}
        for python, target in sorted((targets or {interpreter.short_version: interpreter}).items()):
            packages = self.resolve(resolve_input, target, label)
            if resolved.wheel_from != "index":
                packages = [p for p in packages if canonicalize_name(p.name) != plugin]
            locked_for[python] = tuple(sorted(packages, key=lambda p: canonicalize_name(p.name)))
        return LockedService(
            service=svc.service,
            # A path as the config writes it (relative to the config), so a lock made on one
            # machine reads the same on another.
            spec=redact(svc.driver) if resolved.local else resolved.spec,
            kind=resolved.kind,
            identity=resolved.identity,
            plugin=plugin,
            wheel=wheel,
            wheel_sha256=wheel_sha256,
            pins=dict(resolved.pins),
            targets=locked_for,
        )

    def resolve(self, requirement: str, interpreter: _python.Interpreter, label: str) -> list[Pin]:
        """Every distribution ``requirement`` installs on ``interpreter``, with hashes."""
        try:
            return self.installer.resolve_pinned(requirement, interpreter, self.options)
        except CommandFailed as exc:
            raise SourceError(f"{label}: resolving its dependencies failed:\n{exc.tail}") from None

    def wheel_of(self, resolved: Resolved, interpreter: _python.Interpreter, label: str) -> Path:
        """The plugin as a wheel: the file itself, or built (reproducibly) into the wheel cache.
        Built every time it is asked for, so callers can compare it with what a lock pins."""
        arg = resolved.install_args[0]
        self.wheel_cache.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="build-", dir=self.wheel_cache))
        try:
            if resolved.wheel_from == "file":
                shutil.copyfile(arg, out / Path(arg).name)
            else:
                try:
                    self.installer.build_wheel(arg, out, interpreter, self.options)
                except CommandFailed as exc:
                    raise EnvBuildError.of_command(
                        f"building the plugin's wheel failed: {exc.argv[0]} exited with "
                        f"{exc.returncode}",
                        exc,
                        plugin=label,
                    ) from None
            built = sorted(out.glob("*.whl"))
            if len(built) != 1:
                raise EnvBuildError(f"building {arg} gave {len(built)} wheels", plugin=label)
            digest = file_digest(built[0])
            final = self.wheel_cache / digest
            final.mkdir(exist_ok=True)
            os.replace(built[0], final / built[0].name)
            return final / built[0].name
        finally:
            remove_tree(out, within=self.wheel_cache)

    def cached_wheel(self, entry: LockedService) -> Path | None:
        """The wheel ``entry`` pins, if this cache holds it (checked against its sha256)."""
        path = self.wheel_cache / entry.wheel_sha256 / entry.wheel
        if entry.wheel and path.is_file() and file_digest(path) == entry.wheel_sha256:
            return path
        return None
