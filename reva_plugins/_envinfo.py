"""What a built env declares: its distributions, their ``reva.*`` entry points, and the PEP 610
``direct_url.json`` records checked against the pins the source resolved to.

Read from the env's files without running its interpreter.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from . import _python
from ._envmeta import DistributionInfo, EntryPointInfo, EnvMetadata, InstallerInfo, PythonInfo
from ._errors import EnvBuildError
from ._installers import InstallOptions
from ._sources import Resolved
from ._wire import PROTOCOL_VERSIONS
from .services import GROUP_PREFIX

EntryPoints = dict[str, dict[str, EntryPointInfo]]


def site_packages(venv: Path) -> list[Path]:
    """The venv's site-packages folders."""
    return sorted(venv.glob("lib/python*/site-packages"))


def _distributions(venv: Path) -> list[importlib_metadata.Distribution]:
    return list(importlib_metadata.distributions(path=[str(p) for p in site_packages(venv)]))


def scan_entry_points(venv: Path) -> EntryPoints:
    """The reva entry points a venv's distributions declare, read from its files."""
    return _entry_points(_distributions(venv))


def env_metadata(
    venv: Path,
    key: str,
    resolved: Resolved,
    interpreter: _python.Interpreter,
    installer: str,
    installer_version: str,
    options: InstallOptions,
) -> EnvMetadata:
    """The record an env keeps about itself (written last, so its presence marks a complete
    env): what ``resolved`` pinned, checked against what was installed."""
    dists = _distributions(venv)
    # Validated like a record read back: whatever installed a distribution wrote its files.
    recorded = sorted(
        (
            DistributionInfo.from_json(
                {"name": d.metadata["Name"], "version": d.version, **_direct_url(d)},
                f"distributions[{d.metadata['Name']!r}].",
            )
            for d in dists
        ),
        key=lambda d: d.name.lower(),
    )
    return EnvMetadata(
        key=key,
        spec=resolved.spec,
        kind=resolved.kind,
        identity=resolved.identity,
        mutable=resolved.mutable,
        resolved=cross_check(resolved, recorded),
        python=PythonInfo(interpreter.implementation, interpreter.version, interpreter.executable),
        installer=InstallerInfo(installer, installer_version),
        options=options.key_material(),
        protocol=PROTOCOL_VERSIONS,
        distributions=tuple(recorded),
        entry_points=_entry_points(dists),
        # microseconds: "newest first" (the offline fallback) must order two builds in a second
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
    )


def _member(obj: object, *path: str) -> object:
    """``obj[path[0]][path[1]]…``, or None where a member is missing or not an object
    (``direct_url.json`` is written by whatever installed the distribution)."""
    for name in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(name)
    return obj


def cross_check(resolved: Resolved, dists: Iterable[DistributionInfo]) -> dict[str, str]:
    """The pins of ``resolved``, checked against what PEP 610 ``direct_url.json`` recorded."""
    pins = dict(resolved.pins)
    for dist in dists:
        direct = dist.direct_url
        commit = _member(direct, "vcs_info", "commit_id")
        if isinstance(commit, str) and commit and "commit" in pins:
            if commit != pins["commit"]:
                raise EnvBuildError(
                    f"the installer checked out {commit}, not the resolved {pins['commit']}",
                    plugin=resolved.spec,
                )
            pins.setdefault("version", dist.version)
        if _member(direct, "archive_info") and "sha256" in pins:
            recorded = _member(direct, "archive_info", "hashes", "sha256") or _member(
                direct, "archive_info", "hash"
            )
            if isinstance(recorded, str) and recorded.removeprefix("sha256=") == pins["sha256"]:
                pins.setdefault("version", dist.version)
    return pins


def _entry_points(dists: Iterable[importlib_metadata.Distribution]) -> EntryPoints:
    out: EntryPoints = {}
    for dist in dists:
        for ep in dist.entry_points:
            if ep.group.startswith(GROUP_PREFIX):
                out.setdefault(ep.group, {})[ep.name] = EntryPointInfo(
                    ep.name, ep.value, dist.metadata["Name"], dist.version
                )
    return out


def _direct_url(dist: importlib_metadata.Distribution) -> dict[str, Any]:
    text = dist.read_text("direct_url.json")
    if not text:
        return {}
    try:
        return {"direct_url": json.loads(text)}
    except ValueError:
        return {}
