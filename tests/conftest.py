"""Shared fixtures: every test runs with its caches in temp dirs, never in the user's home."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SAMPLES = ROOT / "sample_plugins"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` first: under pytest-xdist no worker starts one near the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per CPU this process may use. A third of a serial run is spent
    waiting (on plugin processes, servers, installers), so a worker per CPU leaves CPUs idle:
    on 2 CPUs, 4 workers run the suite in 4:20 against 6:06 for 2."""
    return 2 * len(os.sched_getaffinity(0))


_SHARES = re.compile(r'scope="(?:module|class|package)"|^pytestmark = .*xdist_group', re.M)


@functools.cache
def _shares_a_fixture(path: Path) -> bool:
    """True if the test file at ``path`` has a module- or class-scoped fixture, or is marked as
    one group (``pytestmark = pytest.mark.xdist_group(...)``)."""
    try:
        return _SHARES.search(path.read_text(encoding="utf-8")) is not None
    except OSError:
        return False


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n``'s default ``--dist load``, except that a test file sharing a module- or class-scoped
    fixture (a built env, a wheel, a plugin project) runs whole on one worker, so the fixture is
    built once; every other test goes to whichever worker is free.

    A scheduler, not ``--dist loadgroup``: xdist's groups rename node ids through a private
    attribute pytest 9 no longer reads, so its groups silently stop grouping.
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class SharedFixtureScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if _shares_a_fixture(config.rootpath / path) else nodeid

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def session_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Caches shared by the whole session (installer caches, a warm plugin env cache).

    Set for the whole session before any fixture runs, so even session- and module-scoped
    fixtures never write to the user's home; each test then re-applies them (see below).
    """
    base = tmp_path_factory.mktemp("session")
    dirs = {name: base / name for name in ("home", "uv", "pip", "reva", "xdg")}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The installers' caches are safe for concurrent use: the workers share them, as the
        # tests of one serial run do. The env cache is not shared: tests prune it.
        shared = tmp_path_factory.getbasetemp().parent / "shared"
        dirs |= {name: shared / name for name in ("uv", "pip")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        _point_caches_at(patch, dirs)
        yield dirs


def _point_caches_at(patch: pytest.MonkeyPatch, dirs: dict[str, Path]) -> None:
    patch.setenv("HOME", str(dirs["home"]))
    patch.setenv("XDG_CACHE_HOME", str(dirs["xdg"]))
    patch.setenv("UV_CACHE_DIR", str(dirs["uv"]))
    patch.setenv("PIP_CACHE_DIR", str(dirs["pip"]))
    patch.setenv("REVA_PLUGINS_CACHE_DIR", str(dirs["reva"]))
    patch.setenv("GIT_AUTHOR_NAME", "reva tests")
    patch.setenv("GIT_AUTHOR_EMAIL", "tests@example.org")
    patch.setenv("GIT_COMMITTER_NAME", "reva tests")
    patch.setenv("GIT_COMMITTER_EMAIL", "tests@example.org")
    patch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture(autouse=True)
def _isolated_caches(session_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _point_caches_at(monkeypatch, session_dirs)


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty env cache for this test only."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("REVA_PLUGINS_CACHE_DIR", str(cache))
    return cache


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    import time

    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m reva_plugins ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "reva_plugins", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a TOML config into the test's temp dir and return its path."""

    def write(text: str, name: str = "revad.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
