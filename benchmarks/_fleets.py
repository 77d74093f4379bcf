"""Bundle import vs bare ``uv pip install --no-index --find-links`` of the same wheels.

The five sample plugins (json, sqlite, logging, hashed auth, pinned-old: the last has
dependencies) are locked and exported once; then, into empty caches, ``env import`` (extract, check
every hash, one venv per plugin, hashed offline installs, metadata) is timed against creating the
same venvs with ``uv venv`` and installing the same wheels with ``uv pip install --no-index
--find-links``, in the same run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reva_plugins import _bundle, _fleet, _locker, _lockfile, _python
from reva_plugins._config import Config, LoaderSettings, PluginOptions, ServiceConfig
from reva_plugins._installers import InstallOptions, for_locking
from reva_plugins._sources import LocalFolder, ResolveContext

from . import _peers
from ._stats import ratio

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("json_users", "sqlite_users", "logging_users", "hashed_auth", "pinned_old")


def make_bundle(work: Path) -> Path:
    """Lock the five samples (one entry each) and export their bundle as a tar."""
    interpreter = _python.current()
    locker = _locker.Locker(
        for_locking(app_data=work / "virtualenv"), InstallOptions(), work / "wheels"
    )
    entries = {}
    for name in SAMPLES:
        folder = LocalFolder(ROOT / "sample_plugins" / name)
        svc = ServiceConfig(name, str(folder.path), PluginOptions(), {})
        entries[name] = locker.lock(svc, folder.resolve(ResolveContext()), interpreter)
    lock = _lockfile.LockFile(entries)
    text = _lockfile.dumps(lock, "samples.toml").encode()
    bundle = work / "bundle.tar"
    _bundle.export(_lockfile.loads(text), text, locker, bundle, "tar")
    return bundle


def timed_import(bundle: Path) -> float:
    """``env import`` of ``bundle`` into an empty cache; seconds."""
    with tempfile.TemporaryDirectory() as cache:
        config = Config(base_dir=Path.cwd(), plugins=LoaderSettings(cache_dir=Path(cache)))
        began = time.perf_counter()
        built = _fleet.import_bundle(config, bundle)
        seconds = time.perf_counter() - began
    assert all(done.built for _name, done in built)
    return seconds


def timed_bare(uv: str, bundle: Path) -> float:
    """Fresh venvs + ``uv pip install --no-index --find-links`` of each plugin's wheels."""
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp) / "wheels"
        subprocess.run(["tar", "-xf", str(bundle), "-C", tmp], check=True)
        lock = _lockfile.loads((Path(tmp) / "lock.toml").read_bytes())
        began = time.perf_counter()
        for name, locked in lock.services.items():
            entry = locked.entries()[0]
            venv = Path(tmp) / name
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
            reqs = [f"{p.name}=={p.version}" for p in entry.packages]
            reqs.append(f"{entry.plugin}=={entry.wheel_version}")
            subprocess.run(
                [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                 "--no-index", "--find-links", str(wheels), *reqs],
                check=True,
            )  # fmt: skip
        return time.perf_counter() - began


def bundle_import(n: int) -> dict[str, Any]:
    """Median seconds of ``n`` imports and ``n`` bare installs, alternated, in one run."""
    uv = _peers.which_uv()
    if uv is None:
        return {}
    with tempfile.TemporaryDirectory() as work:
        bundle = make_bundle(Path(work))
        ours, bare = [], []
        for _ in range(max(n, 1)):
            ours.append(timed_import(bundle))
            bare.append(timed_bare(uv, bundle))
    ours_s = round(sorted(ours)[len(ours) // 2], 3)
    bare_s = round(sorted(bare)[len(bare) // 2], 3)
    return {
        "plugins": len(SAMPLES),
        "ours_import_s": ours_s,
        "baseline_bare_uv_find_links_s": bare_s,
        "ratio": ratio(ours_s, bare_s),
    }


def row(results: dict[str, Any]) -> tuple[str, Any, Any, Any]:
    """The summary table's row."""
    return (
        f"bundle import, {results.get('plugins', 5)} plugins (s)",
        results.get("ours_import_s"),
        results.get("baseline_bare_uv_find_links_s"),
        results.get("ratio"),
    )
