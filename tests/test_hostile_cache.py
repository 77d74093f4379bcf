"""The env cache under attack or misuse: broken metadata, removal that never escapes the cache,
envs in use by a running host, a cache dir pointed at a user's folder. Each test failed before
its fix; SECURITY.md lists every class with its test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import pytest

from reva_plugins import (
    ConfigError,
    Host,
    RevaPluginError,
)
from reva_plugins._cli import main
from reva_plugins._store import EnvMetadata, Store, default_cache_dir, make_key

from .conftest import EXAMPLES, ROOT, SAMPLES, WriteConfig, cli, pid_alive, wait_until
from .test_hostile_credentials import _creds_backend_project
from .test_hostile_sources import _sources_one_line_error, _sources_snapshot

_store_DAY = 86400.0
_store_USERS = EXAMPLES / "users.demo.json"
_store_EINSTEIN = {
    "idp": "http://localhost:20080",
    "opaque_id": "4c510ada-c86b-4815-8820-42cdf82c3d51",
}


def _store_metadata(key: str, **changes: Any) -> dict[str, Any]:
    """A valid metadata object for ``key`` with ``changes`` applied."""
    major, minor = sys.version_info[:2]
    meta: dict[str, Any] = {
        "key": key,
        "spec": "/somewhere/plugin",
        "kind": "folder",
        "identity": "tree:abc",
        "mutable": False,
        "resolved": {},
        "python": {
            "implementation": "CPython",
            "version": f"{major}.{minor}",
            "executable": sys.executable,
        },
        "installer": {"name": "uv", "version": "0"},
        "options": {"index_url": None, "find_links": []},
        "protocol": [1],
        "distributions": [{"name": "x", "version": "1"}],
        "entry_points": {},
        "created": "2026-01-01T00:00:00+00:00",
    }
    meta.update(changes)
    return meta


def _store_fake_env(
    cache: Path, name: str, metadata: Any = None, *, raw: bytes | None = None
) -> Path:
    """An ``envs/<name>`` folder that looks like a healthy venv, with the given metadata."""
    env = cache / "envs" / name
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    major, minor, micro = sys.version_info[:3]
    (env / "pyvenv.cfg").write_text(
        f"home = {Path(sys.executable).parent}\nversion_info = {major}.{minor}.{micro}\n",
        encoding="utf-8",
    )
    if raw is not None:
        (env / "reva-env.json").write_bytes(raw)
    elif metadata is not None:
        (env / "reva-env.json").write_text(json.dumps(metadata), encoding="utf-8")
    (env / "reva-env.last-used").touch()
    return env


def _store_main(argv: list[str]) -> int:
    """The CLI in this process, leaving the logging set-up as it was (``main`` installs a
    handler bound to the current, captured, stderr)."""
    logger = logging.getLogger("reva_plugins")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        return main(argv)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _store_list(capsys: pytest.CaptureFixture[str], cache: Path) -> list[dict[str, Any]]:
    assert _store_main(["--cache-dir", str(cache), "env", "list"]) == 0  # the table prints too
    assert _store_main(["--cache-dir", str(cache), "env", "list", "--json"]) == 0
    out = capsys.readouterr().out
    rows: list[dict[str, Any]] = json.loads(out[out.index("[") :])
    return rows


def _store_json_config(driver: Path, **plugins: Any) -> dict[str, Any]:
    table = {"driver": str(driver), "drivers": {"json": {"users": str(_store_USERS)}}}
    return {"plugins": plugins, "grpc": {"services": {"userprovider": table}}}


def _store_config_file(write_config: WriteConfig) -> Path:
    driver = SAMPLES / "json_users"
    return write_config(
        f'[grpc.services.userprovider]\ndriver = "{driver}"\n'
        f'[grpc.services.userprovider.drivers.json]\nusers = "{_store_USERS}"\n'
    )


# -- 1. broken metadata -------------------------------------------------------------------------

_store_KEY = "0123456789abcdef01234567"


def _store_deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.slow
@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"[]", "must be an object"),
        (json.dumps({"python": 3}).encode(), "is missing"),
        (json.dumps(_store_metadata(_store_KEY, python=3)).encode(), "python must be an object"),
        (json.dumps(_store_metadata(_store_KEY, entry_points="x")).encode(), "entry_points"),
        (
            json.dumps(_store_metadata(_store_KEY, entry_points={"reva.x": {"a": 1}})).encode(),
            "entry_points.reva.x.a",
        ),
        (json.dumps(_store_metadata(_store_KEY, resolved={"sha256": 5})).encode(), "resolved"),
        (json.dumps(_store_metadata(_store_KEY, distributions={})).encode(), "distributions"),
        (json.dumps(_store_metadata(_store_KEY, installer={"name": 1})).encode(), "installer"),
        (json.dumps(_store_metadata(_store_KEY, mutable="no")).encode(), "mutable must be bool"),
        (json.dumps(_store_metadata(_store_KEY, protocol=[True])).encode(), "protocol"),
        (json.dumps(_store_metadata("ffffffffffffffffffffffff")).encode(), "is for env"),
        (json.dumps(_store_metadata("../../x")).encode(), "not an env key"),
        (b'{"key": NaN}', "must be str"),
        (b"\xff\xfe", "not valid JSON"),
        (_store_deep(200_000), "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_store_wrong_metadata_is_listed_broken_and_removable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes, why: str
) -> None:
    cache = tmp_path / "cache"
    _store_fake_env(cache, _store_KEY, raw=raw)
    rows = _store_list(capsys, cache)
    assert [r["key"] for r in rows] == [_store_KEY]
    assert rows[0]["health"].startswith("broken: ")
    assert why in rows[0]["health"]
    assert _store_main(["--cache-dir", str(cache), "env", "remove", _store_KEY[:6]]) == 0
    assert not (cache / "envs" / _store_KEY).exists()


def test_store_valid_metadata_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = _store_metadata(_store_KEY, future_field={"kept": True})
    assert EnvMetadata.from_json(meta).to_json() == meta
    _store_fake_env(tmp_path / "cache", _store_KEY, meta)
    assert [r["health"] for r in _store_list(capsys, tmp_path / "cache")] == ["ok"]


def test_store_unreadable_or_special_metadata_never_hangs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    keys = [make_key({"n": n}) for n in range(4)]
    os.mkfifo(_store_fake_env(cache, keys[0]) / "reva-env.json")
    (_store_fake_env(cache, keys[1]) / "reva-env.json").mkdir()
    (_store_fake_env(cache, keys[2]) / "reva-env.json").symlink_to("/dev/zero")
    _store_fake_env(cache, keys[3])  # no metadata at all
    health = {r["key"]: r["health"] for r in _store_list(capsys, cache)}
    assert health == {
        keys[0]: "broken: reva-env.json is not a regular file",
        keys[1]: "broken: reva-env.json is not a regular file",
        keys[2]: "broken: reva-env.json is not a regular file",
        keys[3]: "broken: reva-env.json is missing",
    }


@pytest.mark.slow
def test_store_check_rebuilds_an_env_with_broken_metadata(
    fresh_cache: Path, write_config: WriteConfig
) -> None:
    config = _store_config_file(write_config)
    assert cli("check", str(config)).returncode == 0
    (key,) = os.listdir(fresh_cache / "envs")
    metadata = fresh_cache / "envs" / key / "reva-env.json"
    metadata.write_text(json.dumps({"python": 3, "entry_points": "x"}), encoding="utf-8")
    checked = cli("check", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "Traceback" not in checked.stderr
    assert f"env {key} is broken (key is missing); rebuilding it" in checked.stderr
    assert EnvMetadata.from_json(json.loads(metadata.read_text())).key == key
    # The library path too: a Host rebuilds it the same way.
    metadata.write_text("[]", encoding="utf-8")
    with Host(_store_json_config(SAMPLES / "json_users")) as host:
        assert host.service("userprovider").get_user(_store_EINSTEIN)["username"] == "einstein"
    assert EnvMetadata.from_json(json.loads(metadata.read_text())).key == key


# -- 1/2. odd entries in envs/, keys that try to escape ------------------------------------------


def test_store_odd_entries_are_listed_broken_and_never_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("precious", encoding="utf-8")
    Store(cache).ensure()  # a real cache, into which odd entries were put
    link_key = make_key({"link": 1})
    (cache / "envs" / link_key).symlink_to(canary)
    file_key = make_key({"file": 1})
    (cache / "envs" / file_key).write_text("not a folder", encoding="utf-8")
    (cache / "envs" / "odd name\n").mkdir()
    os.mkdir(os.path.join(os.fsencode(cache / "envs"), b"bad-\xff"))
    health = {r["key"]: r["health"] for r in _store_list(capsys, cache)}
    assert health[link_key] == f"broken: a symlink to {canary}, not an env folder"
    assert health[file_key] == "broken: a file, not an env folder"
    assert health["odd name\\n"].startswith("broken: not an env key")
    assert health["bad-\\udcff"].startswith("broken: not an env key")
    assert _store_main(["--cache-dir", str(cache), "env", "remove", link_key]) == 0
    # Names the core never makes are someone else's: listed, never removed.
    assert _store_main(["--cache-dir", str(cache), "env", "remove", "odd"]) == 2
    assert _store_main(["--cache-dir", str(cache), "env", "prune", "--unused-days", "0"]) == 0
    assert sorted(os.listdir(os.fsencode(cache / "envs"))) == [b"bad-\xff", b"odd name\n"]
    assert (canary / "keep").read_text(encoding="utf-8") == "precious"


@pytest.mark.slow
@pytest.mark.parametrize("key", ["../../canary", "..", "../canary", "/tmp", "a/../../canary", ""])
def test_store_remove_never_escapes_the_cache(tmp_path: Path, key: str) -> None:
    cache = tmp_path / "cache" / "inner"
    canary = tmp_path / "cache" / "canary"
    canary.mkdir(parents=True)
    store = Store(cache)
    store.ensure()
    with pytest.raises(RevaPluginError) as refused:
        store.remove(key)
    assert refused.value.exit_code == 2
    assert canary.is_dir()
    assert cli("--cache-dir", str(cache), "env", "remove", key).returncode == 2
    assert canary.is_dir()
    assert (tmp_path / "cache" / "inner").is_dir()


# -- 3. envs in use, vanished envs, downloads and leftovers ---------------------------------------


@pytest.mark.slow
def test_store_prune_and_remove_spare_an_env_a_running_host_uses(fresh_cache: Path) -> None:
    host = Host(_store_json_config(SAMPLES / "json_users"))
    try:
        assert host.service("userprovider").get_user(_store_EINSTEIN)["username"] == "einstein"
        (key,) = os.listdir(fresh_cache / "envs")
        stamp = fresh_cache / "envs" / key / "reva-env.last-used"
        old = time.time() - 90 * _store_DAY
        os.utime(stamp, (old, old))
        pruned = cli("env", "prune", "--unused-days", "1")
        assert pruned.returncode == 0, pruned.stderr
        assert f"kept env {key}: a running host uses it" in pruned.stderr
        assert (fresh_cache / "envs" / key / "bin" / "python").exists()
        removed = cli("env", "remove", key)
        assert removed.returncode == 1
        assert removed.stderr.strip().splitlines() == [
            f"reva-plugins: error: env {key} is in use by a running host; stop the host first"
        ]
        assert host.service("userprovider").get_user(_store_EINSTEIN)["username"] == "einstein"
    finally:
        host.close()
    # Closing the host released the env and recorded it as used now.
    assert (fresh_cache / "envs" / key / "reva-env.last-used").stat().st_mtime > old
    assert cli("env", "prune", "--unused-days", "0").stdout.startswith(f"removed {key}")
    assert os.listdir(fresh_cache / "envs") == []


@pytest.mark.slow
def test_store_host_rebuilds_an_env_removed_under_it(
    fresh_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Host(_store_json_config(SAMPLES / "json_users")) as host:
        users = host.service("userprovider")
        assert users.get_user(_store_EINSTEIN)["username"] == "einstein"
        (key,) = os.listdir(fresh_cache / "envs")
        # Removed by hand (no lock taken), then the plugin dies: the restart must rebuild.
        shutil.rmtree(fresh_cache / "envs" / key)
        pid = users.info().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), timeout=10)
        assert wait_until(lambda: users.info().state != "running", timeout=10)
        with caplog.at_level(logging.WARNING, logger="reva_plugins"):
            assert users.get_user(_store_EINSTEIN)["username"] == "einstein"
        assert (fresh_cache / "envs" / key / "bin" / "python").exists()
        assert f"its env {key} is gone from the cache; rebuilding it" in caplog.text


@pytest.mark.slow
def test_store_prune_collects_unused_downloads_and_leftovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    store = Store(cache)
    store.ensure()
    old = time.time() - 40 * _store_DAY
    stale = time.time() - 7200

    def download(digest: str, when: float) -> Path:
        folder = cache / "downloads" / digest
        folder.mkdir(parents=True)
        (folder / "x-1.0-py3-none-any.whl").write_bytes(b"wheel")
        for path in (folder / "x-1.0-py3-none-any.whl", folder):
            os.utime(path, (when, when))
        return folder

    unused = download("a" * 64, old)
    referenced = download("b" * 64, old)
    recent = download("c" * 64, time.time())
    partial = cache / "downloads" / "dl-abc"
    partial.mkdir()
    os.utime(partial, (stale, stale))
    meta = _store_metadata(_store_KEY, resolved={"sha256": "b" * 64})
    _store_fake_env(cache, _store_KEY, meta)
    leftover = cache / "tmp" / "bundle-junk"
    leftover.mkdir()
    os.utime(leftover, (stale, stale))
    building_key = make_key({"building": 1})
    building = cache / "tmp" / f"{building_key}-xyz"
    building.mkdir()
    os.utime(building, (stale, stale))
    with filelock.FileLock(str(cache / "locks" / f"{building_key}.lock")):
        # A subprocess, so the build lock is held by another process as in real life.
        pruned = cli("--cache-dir", str(cache), "env", "prune", "--unused-days", "30")
    assert pruned.returncode == 0, pruned.stderr
    assert f"removed download {'a' * 64}" in pruned.stdout
    assert not unused.exists()
    assert not partial.exists()
    assert not leftover.exists()
    assert referenced.exists()
    assert recent.exists()
    assert building.exists()
    assert (cache / "envs" / _store_KEY).exists()


@pytest.mark.slow
@pytest.mark.parametrize("days", ["nan", "-1", "inf", "1e300"])
def test_store_prune_refuses_nonsense_days(tmp_path: Path, days: str) -> None:
    cache = tmp_path / "cache"
    _store_fake_env(cache, _store_KEY, _store_metadata(_store_KEY))
    pruned = cli("--cache-dir", str(cache), "env", "prune", "--unused-days", days)
    assert pruned.returncode == 2
    assert "--unused-days" in pruned.stderr
    assert "Traceback" not in pruned.stderr
    assert (cache / "envs" / _store_KEY).exists()


# -- 4. relative cache dirs ---------------------------------------------------------------------


@pytest.mark.slow
def test_store_relative_cache_dir_from_the_environment_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    config = conf / "revad.toml"
    config.write_text(
        f'[grpc.services.userprovider]\ndriver = "{SAMPLES / "json_users"}"\n'
        f'[grpc.services.userprovider.drivers.json]\nusers = "{_store_USERS}"\n',
        encoding="utf-8",
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {"REVA_PLUGINS_CACHE_DIR": ".cache"}
    for _ in range(2):  # the first run builds, the second starts from the cached env
        checked = cli("check", str(config), cwd=work, env=env)
        assert checked.returncode == 0, checked.stderr
    assert (work / ".cache" / "envs").is_dir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("REVA_PLUGINS_CACHE_DIR", "rel")
    assert default_cache_dir() == work / "rel"
    assert Store("other").root == work / "other"
    monkeypatch.delenv("REVA_PLUGINS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "reva-plugins"


# -- 5. unusable cache dirs ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["file", "under-file", "proc"])
@pytest.mark.parametrize("command", ["check", "call", "env build", "env list", "env prune"])
def test_store_unusable_cache_dir_is_one_line_and_exit_2(
    tmp_path: Path, write_config: WriteConfig, where: str, command: str
) -> None:
    config = _store_config_file(write_config)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file", encoding="utf-8")
    cache = {
        "file": blocker,
        "under-file": blocker / "cache",
        "proc": Path("/proc/reva-plugins-nope/cache"),
    }[where]
    args = {
        "check": ["check", str(config)],
        "call": ["call", str(config), "userprovider", "get_user", json.dumps({"user_id": {}})],
        "env build": ["env", "build", str(SAMPLES / "json_users")],
        "env list": ["env", "list"],
        "env prune": ["env", "prune"],
    }[command]
    result = cli("--cache-dir", str(cache), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cache dir {cache}" in lines[0]
    assert blocker.read_text(encoding="utf-8") == "a file"


# -- 6. a cache dir pointed at someone's folder; only the core's own names are ever deleted -------

_store_OLD = time.mktime((2020, 1, 1, 0, 0, 0, 0, 0, -1))


def _store_age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (_store_OLD, _store_OLD), follow_symlinks=False)


def _store_users_folder(root: Path, kind: str) -> None:
    """A folder of someone's files (old, so every age rule would reach them)."""
    files = {
        "repro": ["tmp/myproject/", "envs/photos/"],
        "user-files": ["tmp/myproject/main.py", "envs/photos/cat.jpg", "downloads/notes.txt",
                       "wheels/mine.whl", "report.pdf"],
        "foreign-tag": ["CACHEDIR.TAG", "data/blob"],
        "dotfile": [".keep"],
    }[kind]  # fmt: skip
    for name in files:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{name} of a user\n", encoding="utf-8")
    if kind == "foreign-tag":
        (root / "CACHEDIR.TAG").write_text(
            "Signature: 8a477f597d28d172789f06886806bc55\n# created by some-other-tool\n"
        )
    _store_age(*root.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["repro", "user-files", "foreign-tag", "dotfile"])
def test_a_cache_dir_pointed_at_a_users_folder_is_refused_and_nothing_in_it_is_touched(
    tmp_path: Path, write_config: WriteConfig, kind: str
) -> None:
    folder = tmp_path / "canary"
    folder.mkdir()
    _store_users_folder(folder, kind)
    config = _store_config_file(write_config)
    in_config = write_config(
        f'[plugins]\ncache_dir = "{folder}"\n\n[grpc.services.userprovider]\n'
        f'driver = "{SAMPLES / "json_users"}"\n',
        name="pointed.toml",
    )
    before = _sources_snapshot(folder, skip=())
    spec = str(SAMPLES / "json_users")
    commands = [
        ["check", str(config)],
        ["call", str(config), "userprovider", "get_user", json.dumps({"user_id": {}})],
        ["env", "build", str(config)],
        ["env", "build", spec],
        ["env", "list"],
        ["env", "list", "--json"],
        ["env", "remove", "photos"],
        ["env", "remove", _store_KEY],
        ["env", "prune"],
        ["env", "prune", "--unused-days", "0"],
        ["lock", str(config)],
        ["conformance", spec, "--service", "userprovider"],
    ]
    runs = [(args, cli("--cache-dir", str(folder), *args)) for args in commands]
    runs.append((["check", "(cache_dir in the config)"], cli("check", str(in_config))))
    env = {"REVA_PLUGINS_CACHE_DIR": str(folder)}
    runs.append((["env", "prune", "($REVA_PLUGINS_CACHE_DIR)"], cli("env", "prune", env=env)))
    for args, result in runs:
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert f"cache dir {folder} is neither empty nor a reva-plugins cache" in result.stderr
        assert _sources_snapshot(folder, skip=()) == before, f"{args} touched the folder"
    assert not (tmp_path / "revad.lock").exists()


def test_a_cache_dir_is_adopted_only_when_empty_or_already_a_cache(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "cache"
    Store(fresh).ensure()
    assert (fresh / "CACHEDIR.TAG").read_text(encoding="utf-8").startswith("Signature: 8a477f")
    (tmp_path / "empty").mkdir()
    Store(tmp_path / "empty").ensure()
    # Our own cache, whatever was put into it since, is ours.
    (fresh / "envs" / "photos").mkdir()
    Store(fresh).ensure()
    # A cache whose tag was lost, with nothing but what the core makes.
    lost = tmp_path / "lost"
    for name in (f"envs/{_store_KEY}/", f"locks/{_store_KEY}.lock", f"tmp/{_store_KEY}-x1/",
                 f"downloads/{'a' * 64}/", "downloads/dl-x/", f"wheels/{'b' * 64}/",
                 f"bundles/{_store_KEY}/", "virtualenv/anything/", "interpreters.json",
                 "wheels/put-here-by-hand.whl"):  # fmt: skip
        path = lost / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if name.endswith("/") else path.write_text("{}")
    Store(lost).ensure()
    assert (lost / "CACHEDIR.TAG").is_file()
    # A concurrent first ensure() still writing our tag.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "CACHEDIR.TAG").write_text("Signature: 8a47")
    Store(partial).ensure()
    refused: dict[str, Callable[[Path], object]] = {
        "tmp/myproject": lambda p: (p / "tmp" / "myproject").mkdir(parents=True),
        "notes.txt": lambda p: (p / "notes.txt").write_text("x"),
        "envs, not a folder": lambda p: (p / "envs").symlink_to(tmp_path / "empty"),
        "another program's CACHEDIR.TAG": lambda p: (p / "CACHEDIR.TAG").write_text("Signature: x"),
        "locks/other.lock": lambda p: (p / "locks" / "other.lock").mkdir(parents=True),
    }
    for why, make in refused.items():
        folder = tmp_path / f"refused-{len(why)}"
        folder.mkdir()
        make(folder)
        listed = sorted(os.listdir(folder))
        with pytest.raises(ConfigError) as error:
            Store(folder).ensure()
        assert sorted(os.listdir(folder)) == listed  # nothing written there
        assert error.value.exit_code == 2
        assert str(error.value) == (
            f"cache dir {folder} is neither empty nor a reva-plugins cache (it holds {why}); "
            "point the cache dir at a new or empty folder"
        )


@pytest.mark.slow
def test_env_prune_and_remove_in_a_cache_delete_only_names_the_core_makes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    Store(cache).ensure()
    theirs = [
        "envs/photos/cat.jpg", "envs/notes.txt", "tmp/myproject/main.py", "tmp/junk.txt",
        "downloads/readme.txt", "downloads/mine/x.whl", "wheels/mine.whl", "bundles/mine/b",
        f"tmp/{_store_KEY}", f"downloads/{'a' * 63}/x.whl",
    ]  # fmt: skip
    for name in theirs:
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_text(f"{name} of a user\n", encoding="utf-8")
    key = make_key({"ours": 1})
    _store_fake_env(cache, key, _store_metadata(key))
    ours = [cache / "envs" / key, cache / "tmp" / f"{key}-stale", cache / "tmp" / "bundle-stale",
            cache / "downloads" / "dl-stale", cache / "downloads" / ("c" * 64),
            cache / "wheels" / ("d" * 64), cache / "bundles" / key]  # fmt: skip
    for path in ours[1:]:
        path.mkdir(parents=True)
    _store_age(*cache.rglob("*"))
    before = _sources_snapshot(cache, skip=())
    # Their entries, and what they hold (the folders around them change as ours go).
    roots = {tuple(name.split("/")[:2]) for name in theirs}
    kept = {k: v for k, v in before.items() if tuple(k.split("/")[:2]) in roots}
    pruned = cli("--cache-dir", str(cache), "env", "prune", "--unused-days", "0")
    assert pruned.returncode == 0, pruned.stderr
    assert "left envs/photos alone" in pruned.stderr
    for path in ours:
        assert not os.path.lexists(path), path
    after = _sources_snapshot(cache, skip=())
    assert {k: v for k, v in after.items() if k in kept} == kept
    for name in ("photos", "notes.txt"):
        removed = cli("--cache-dir", str(cache), "env", "remove", name)
        line = _sources_one_line_error(removed, 2)
        assert f"envs/{name} is not an env reva-plugins built" in line, line
    assert _sources_snapshot(cache, skip=()) == after


# -- 7. a download a running build installs from ------------------------------------------------


def _store_sdist(folder: Path, hook: str) -> Path:
    """An sdist of the dependency-free backend project (see ``_creds_backend_project``)."""
    project = _creds_backend_project(folder / "src" / "reva_hard_plugin-1.0", hook)
    (project / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: reva-hard-plugin\nVersion: 1.0\n", encoding="utf-8"
    )
    sdist = folder / "reva_hard_plugin-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(project, arcname=project.name)
    return sdist


@pytest.mark.slow
def test_env_prune_spares_the_download_a_running_build_installs_from(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    sdist = _store_sdist(
        tmp_path / "dist",
        f"open({str(started)!r}, 'w').close()\n"
        "deadline = time.time() + 120\n"
        f"while not os.path.exists({str(go)!r}) and time.time() < deadline:\n"
        "    time.sleep(0.02)\n",
    )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    download = fresh_cache / "downloads" / digest
    config = write_config(f'[grpc.services.userprovider]\ndriver = "{sdist.as_uri()}"\n')
    build = subprocess.Popen(
        [sys.executable, "-m", "reva_plugins", "env", "build", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert wait_until(started.exists, timeout=120), "the build backend never started"
        assert (download / sdist.name).is_file()
        pruned = cli("env", "prune", "--unused-days", "0")
        assert pruned.returncode == 0, pruned.stderr
        assert (download / sdist.name).is_file(), "env prune removed the download being built"
    finally:
        go.touch()
        out, err = build.communicate(timeout=300)
    assert build.returncode == 0, err
    key = out.split()[0]
    # The build's process is gone: only its env keeps the download now, then nothing does.
    assert cli("env", "prune", "--unused-days", "30").returncode == 0
    assert download.is_dir()
    assert cli("env", "remove", key).returncode == 0
    assert cli("env", "prune", "--unused-days", "0").returncode == 0
    assert not download.exists()
