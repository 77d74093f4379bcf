"""Every driver spec kind, content keys, offline use and the env cache's guarantees."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import EnvBuildError, Host, SourceError
from reva_plugins._installers import find_uv

from .conftest import cli, wait_until
from .factory import build_dists, commit_marker, git, make_library, make_plugin, make_repo

DEMO = {"idp": "test", "opaque_id": "demo"}


def config_for(driver: str, **plugins: Any) -> dict[str, Any]:
    plugin = plugins.pop("plugin", {})
    table: dict[str, Any] = {"driver": driver}
    if plugin:
        table["plugin"] = plugin
    return {"plugins": plugins, "grpc": {"services": {"userprovider": table}}}


def marker_of(config: dict[str, Any], base_dir: Path, **options: Any) -> str:
    with Host(config, base_dir=base_dir, **options) as host:
        result: str = host.service("userprovider").get_user(DEMO)["display_name"]
        return result


def env_key(config: dict[str, Any], base_dir: Path, **options: Any) -> str:
    with Host(config, base_dir=base_dir, **options) as host:
        svc = host.config.service("userprovider")
        plan = host.planner.plan(svc)
        key = getattr(plan, "env_key", None)
        assert key
        return str(key)


def commands(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "reva_plugins.run" and r.getMessage().startswith("run: ")
    ]


@pytest.fixture
def run_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="reva_plugins.run")
    return caplog


# -- local files and folders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dists")
    project = make_plugin(root / "project", marker="from-dist")
    return build_dists(project, root / "dist")


@pytest.mark.slow
def test_wheel_and_sdist_files_load(dists: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("wheel", "sdist"):
        assert marker_of(config_for(str(dists[kind])), tmp_path) == "from-dist"


@pytest.mark.slow
def test_sha256_pin_is_checked(dists: dict[str, Path], tmp_path: Path) -> None:
    from reva_plugins._sources import file_digest

    good = file_digest(dists["wheel"])
    assert (
        marker_of(config_for(str(dists["wheel"]), plugin={"sha256": good}), tmp_path) == "from-dist"
    )
    with pytest.raises(SourceError, match="sha256 mismatch"):
        marker_of(config_for(str(dists["wheel"]), plugin={"sha256": "0" * 64}), tmp_path)


@pytest.mark.slow
def test_folder_second_load_runs_nothing_and_an_edit_rebuilds(
    tmp_path: Path, fresh_cache: Path, run_log: pytest.LogCaptureFixture
) -> None:
    project = make_plugin(tmp_path / "plugin", marker="one")
    config = config_for("./plugin")
    first = env_key(config, tmp_path)
    run_log.clear()
    assert marker_of(config, tmp_path) == "one"
    assert commands(run_log) == []  # no installer, no git: only the plugin process is spawned
    (project / "reva_test_plugin" / "__init__.py").write_text(
        (project / "reva_test_plugin" / "__init__.py").read_text().replace("'one'", "'two'")
    )
    assert marker_of(config, tmp_path) == "two"
    assert env_key(config, tmp_path) != first
    assert (fresh_cache / "envs" / first).is_dir()  # the old env stays until pruned


@pytest.mark.slow
def test_prebuilt_venv_is_used_as_is(tmp_path: Path, session_dirs: dict[str, Path]) -> None:
    uv = find_uv()
    if uv is None:
        pytest.skip("needs uv")
    project = make_plugin(tmp_path / "plugin", marker="prebuilt")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(project)],
        check=True,
    )
    config = config_for("./venv")
    with Host(config, base_dir=tmp_path) as host:
        assert host.service("userprovider").get_user(DEMO)["display_name"] == "prebuilt"
        assert host.check()[0].kind == "venv"


# -- git --------------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.mark.slow
def test_git_tag_branch_commit_and_subdirectory(repo: Path, tmp_path: Path) -> None:
    url = f"git+file://{repo}"
    commit = git(repo, "rev-parse", "HEAD")
    for ref in ("v1", "main", commit, commit[:10]):
        spec = f"{url}@{ref}#subdirectory=plugins/demo"
        assert marker_of(config_for(spec), tmp_path) == "v1", ref


@pytest.mark.slow
def test_moving_a_branch_makes_a_new_env(repo: Path, tmp_path: Path) -> None:
    spec = f"git+file://{repo}@main#subdirectory=plugins/demo"
    first = env_key(config_for(spec), tmp_path)
    assert marker_of(config_for(spec), tmp_path) == "v1"
    commit_marker(repo, "plugins/demo", "v2")
    assert marker_of(config_for(spec), tmp_path) == "v2"
    assert env_key(config_for(spec), tmp_path) != first


@pytest.mark.slow
def test_pinned_commit_never_asks_the_remote(
    repo: Path, tmp_path: Path, run_log: pytest.LogCaptureFixture
) -> None:
    commit = git(repo, "rev-parse", "HEAD")
    spec = f"git+file://{repo}@{commit}#subdirectory=plugins/demo"
    assert marker_of(config_for(spec), tmp_path) == "v1"
    assert not any("ls-remote" in c for c in commands(run_log))
    run_log.clear()
    assert marker_of(config_for(spec), tmp_path) == "v1"
    assert commands(run_log) == []
    # ... even offline, and even when the repository is gone
    shutil.rmtree(repo)
    assert marker_of(config_for(spec, offline=True), tmp_path) == "v1"


@pytest.mark.slow
def test_offline_branch_uses_the_newest_cached_env_or_fails_clearly(
    repo: Path, tmp_path: Path, run_log: pytest.LogCaptureFixture
) -> None:
    spec = f"git+file://{repo}@main#subdirectory=plugins/demo"
    assert marker_of(config_for(spec), tmp_path) == "v1"
    commit_marker(repo, "plugins/demo", "v2")
    assert marker_of(config_for(spec), tmp_path) == "v2"
    run_log.clear()
    assert marker_of(config_for(spec, offline=True), tmp_path) == "v2"
    assert commands(run_log) == []
    other = f"git+file://{repo}@v1#subdirectory=plugins/demo"
    with pytest.raises(SourceError, match="offline, and no env"):
        marker_of(config_for(other, offline=True), tmp_path)


def test_github_web_urls_are_rewritten() -> None:
    from reva_plugins._git import parse

    parsed = parse("https://github.com/cs3org/reva-plugins/tree/v1.2/plugins/json")
    assert (parsed.url, parsed.ref, parsed.subdirectory) == (
        "https://github.com/cs3org/reva-plugins.git",
        "v1.2",
        "plugins/json",
    )
    plain = parse("https://github.com/cs3org/reva-plugins")
    assert (plain.url, plain.ref, plain.subdirectory) == (
        "https://github.com/cs3org/reva-plugins.git",
        None,
        None,
    )
    creds = parse("git+https://user:s3cret@example.org/repo.git@main")
    assert "s3cret" not in creds.display()
    assert creds.ref == "main"


# -- archive URLs and requirements --------------------------------------------------------------


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_archive_url_with_sha256(
    dists: dict[str, Path],
    http_dir: tuple[Path, str],
    tmp_path: Path,
    run_log: pytest.LogCaptureFixture,
) -> None:
    from reva_plugins._sources import file_digest

    root, base = http_dir
    shutil.copy(dists["wheel"], root)
    digest = file_digest(dists["wheel"])
    url = f"{base}/{dists['wheel'].name}#sha256={digest}"
    assert marker_of(config_for(url), tmp_path) == "from-dist"
    (root / dists["wheel"].name).unlink()  # pinned and cached: no download needed any more
    run_log.clear()
    assert marker_of(config_for(url), tmp_path) == "from-dist"
    assert commands(run_log) == []
    shutil.copy(dists["sdist"], root)
    unpinned = config_for(f"{base}/{dists['sdist'].name}", allow_http=True)  # plain http, no pin
    assert marker_of(unpinned, tmp_path) == "from-dist"
    shutil.copy(dists["wheel"], root)
    with pytest.raises(SourceError, match="sha256 mismatch"):
        marker_of(config_for(f"{base}/{dists['wheel'].name}#sha256={'1' * 64}"), tmp_path)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of a tiny library in two major versions and two plugins pinning each of them."""
    root = tmp_path_factory.mktemp("wheelhouse")
    house = root / "wheels"
    for version in ("1.0", "2.0"):
        build_dists(
            make_library(root / f"clashlib-{version}", "reva-demo-clashlib", version),
            house,
            sdist=False,
        )
    body = (
        "        import reva_demo_clashlib\n        return 'clashlib ' + reva_demo_clashlib.VERSION"
    )
    for name, pin in (
        ("reva-clash-old", "reva-demo-clashlib==1.*"),
        ("reva-clash-new", "reva-demo-clashlib>=2,<3"),
    ):
        project = make_plugin(root / name, name, dependencies=(pin,), marker_body=body)
        build_dists(project, house, sdist=False)
    (root / "empty-index").mkdir()
    return house


def local_index(house: Path) -> dict[str, Any]:
    return {"index_url": (house.parent / "empty-index").as_uri(), "find_links": [str(house)]}


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_requirements_from_a_local_index_and_clashing_pins_coexist(
    wheelhouse: Path, tmp_path: Path, installer: str
) -> None:
    if installer == "uv" and find_uv() is None:
        pytest.skip("needs uv")
    config = {
        "plugins": {**local_index(wheelhouse), "installer": installer},
        "grpc": {
            "services": {
                "userprovider": {"driver": "reva-clash-old==1.0"},
                "authprovider": {"driver": "reva-clash-new>=1"},
            }
        },
    }
    with Host(config, base_dir=tmp_path) as host:
        old = host.service("userprovider").get_user(DEMO)["display_name"]
        new = host.service("authprovider").authenticate("demo", "ok")["user"]["display_name"]
    assert (old, new) == ("clashlib 1.0", "clashlib 2.0")


@pytest.mark.slow
def test_missing_dependency_fails_with_the_installer_tail_and_leaves_nothing(
    wheelhouse: Path, tmp_path: Path, fresh_cache: Path
) -> None:
    project = make_plugin(
        tmp_path / "bad", "reva-bad-plugin", dependencies=("reva-no-such-dependency==9.9",)
    )
    house = tmp_path / "house"
    shutil.copytree(wheelhouse, house)
    (tmp_path / "empty-index").mkdir()
    build_dists(project, house, sdist=False)
    with pytest.raises(EnvBuildError) as info:
        marker_of(
            {
                "plugins": local_index(house),
                "grpc": {"services": {"userprovider": {"driver": "reva-bad-plugin==1.0"}}},
            },
            tmp_path,
        )
    assert "reva-no-such-dependency" in str(info.value)
    assert list((fresh_cache / "envs").iterdir()) == []
    assert list((fresh_cache / "tmp").iterdir()) == []


@pytest.mark.slow
def test_broken_pyproject_fails_and_leaves_nothing(tmp_path: Path, fresh_cache: Path) -> None:
    project = make_plugin(tmp_path / "plugin")
    (project / "pyproject.toml").write_text("[project\nname = 'broken'\n")
    result = cli(
        "check", str(write(tmp_path, '[grpc.services.userprovider]\ndriver = "./plugin"\n'))
    )
    assert result.returncode == 1
    assert "building the env failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((fresh_cache / "envs").iterdir()) == []
    assert list((fresh_cache / "tmp").iterdir()) == []


def write(folder: Path, text: str) -> Path:
    path = folder / "revad.toml"
    path.write_text(text)
    return path


# -- concurrency, interruption, health ----------------------------------------------------------


@pytest.mark.slow
def test_four_processes_build_one_spec_once(tmp_path: Path, fresh_cache: Path) -> None:
    make_plugin(tmp_path / "plugin", marker="shared")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "reva_plugins", "env", "build", "./plugin"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    states = [out.strip().split("\t")[-1] for out, _ in outputs]
    assert sum(s.startswith("built") for s in states) == 1, states
    assert len({out.split("\t")[0] for out, _ in outputs}) == 1
    assert len(list((fresh_cache / "envs").iterdir())) == 1


@pytest.mark.slow
def test_killed_build_leaves_nothing_the_next_load_trips_over(
    tmp_path: Path, fresh_cache: Path
) -> None:
    make_plugin(tmp_path / "plugin", marker="after-kill")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reva_plugins", "--installer", "pip", "env", "build", "./plugin"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert wait_until(
        lambda: (
            any((fresh_cache / "tmp").glob("*/env/bin"))
            if (fresh_cache / "tmp").is_dir()
            else False
        ),
        timeout=60,
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((fresh_cache / "envs").iterdir()) == []
    assert marker_of(config_for("./plugin", installer="pip"), tmp_path) == "after-kill"
    assert list((fresh_cache / "tmp").iterdir()) == []


@pytest.mark.slow
def test_deleted_interpreter_means_a_rebuild_with_a_warning(
    tmp_path: Path, fresh_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_plugin(tmp_path / "plugin", marker="healthy")
    key = env_key(config_for("./plugin"), tmp_path)
    python = fresh_cache / "envs" / key / "bin" / "python"
    python.unlink()
    with caplog.at_level(logging.WARNING, logger="reva_plugins.store"):
        assert marker_of(config_for("./plugin"), tmp_path) == "healthy"
    assert any(
        "broken" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records
    )
    assert python.exists()


# -- metadata and the env commands --------------------------------------------------------------


@pytest.mark.slow
def test_metadata_and_env_commands(repo: Path, tmp_path: Path, fresh_cache: Path) -> None:
    commit = git(repo, "rev-parse", "HEAD")
    spec = f"git+file://{repo}@v1#subdirectory=plugins/demo"
    built = cli("env", "build", spec)
    assert built.returncode == 0, built.stderr
    key = built.stdout.split("\t")[0]
    meta = json.loads((fresh_cache / "envs" / key / "reva-env.json").read_text())
    assert meta["resolved"]["commit"] == commit
    assert meta["resolved"]["version"] == "1.0"
    assert meta["entry_points"]["reva.userprovider"]["demo"]["value"] == "reva_test_plugin:Provider"
    assert meta["installer"]["name"] in ("uv", "pip")
    assert {d["name"] for d in meta["distributions"]} >= {"reva-test-plugin"}
    listed = json.loads(cli("env", "list", "--json").stdout)
    assert [(e["key"], e["identity"], e["health"]) for e in listed] == [(key, commit, "ok")]
    assert listed[0]["size"] > 0
    assert cli("env", "remove", "nope").returncode == 2
    pruned = cli("env", "prune", "--unused-days", "1").stdout  # the env was just used
    assert pruned == "nothing to prune (nothing unused for 1 days)\n"
    removed = cli("env", "remove", key[:8])
    assert removed.returncode == 0
    assert json.loads(cli("env", "list", "--json").stdout) == []


# -- bad specs ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("driver", "needle"),
    [
        ("ftp://example.org/plugin.whl", "unsupported URL scheme"),
        ("ext::sh -c touch% /tmp/pwned", "unsupported URL scheme"),
        ("git+ext::sh -c id", "remote helpers"),
        ("git+ftp://example.org/repo.git", "unsupported VCS scheme"),
        ("reva-plugin-ldap", "give a version"),
        ("./demo-1.0-cp27-cp27mu-linux_x86_64.whl", "does not fit Python"),
        ("not a driver !!", "cannot tell what driver"),
    ],
)
def test_bad_specs_exit_2_with_one_line(tmp_path: Path, driver: str, needle: str) -> None:
    (tmp_path / "demo-1.0-cp27-cp27mu-linux_x86_64.whl").write_bytes(b"not really a wheel")
    result = cli(
        "check", str(write(tmp_path, f'[grpc.services.userprovider]\ndriver = "{driver}"\n'))
    )
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_missing_ref_and_interpreter_exit_2(repo: Path, tmp_path: Path) -> None:
    spec = f"git+file://{repo}@no-such-branch#subdirectory=plugins/demo"
    result = cli(
        "check", str(write(tmp_path, f'[grpc.services.userprovider]\ndriver = "{spec}"\n'))
    )
    assert result.returncode == 2
    assert "ref 'no-such-branch' does not exist" in result.stderr
    config = f'[plugins]\npython = "2.1"\n[grpc.services.userprovider]\ndriver = "git+file://{repo}@v1#subdirectory=plugins/demo"\n'
    result = cli("check", str(write(tmp_path, config)))
    assert result.returncode == 2
    assert "no Python 2.1 found" in result.stderr


@pytest.mark.slow
def test_per_plugin_python(tmp_path: Path) -> None:
    from reva_plugins._python import find

    try:
        find("3.12")
    except Exception:
        pytest.skip("no Python 3.12 here")
    make_plugin(tmp_path / "plugin")
    with Host(config_for("./plugin", plugin={"python": "3.12"}), base_dir=tmp_path) as host:
        host.service("userprovider").get_user(DEMO)
        handshake = host.service("userprovider").driver.start()
    assert handshake["python"].startswith("3.12.")


@pytest.mark.slow
def test_plugin_entry_point_chooses_among_several_and_each_mistake_is_named(
    tmp_path: Path, fresh_cache: Path
) -> None:
    project = make_plugin(tmp_path / "plugin", marker="chosen")
    pyproject = project / "pyproject.toml"
    line = 'demo = "reva_test_plugin:Provider"\n'
    assert line in pyproject.read_text()
    pyproject.write_text(
        pyproject.read_text().replace(line, line + 'other = "reva_test_plugin:Provider"\n', 1)
    )
    several = r"declares several entry points in reva\.userprovider \(demo, other\); choose one "
    with pytest.raises(SourceError, match=several + r"with grpc\.services\.userprovider\.plugin"):
        marker_of(config_for("./plugin"), tmp_path)
    missing = r"plugin\.entry_point: 'nope' is not declared in reva\.userprovider by .*\(declared"
    with pytest.raises(SourceError, match=missing + r": demo, other\)"):
        marker_of(config_for("./plugin", plugin={"entry_point": "nope"}), tmp_path)
    assert marker_of(config_for("./plugin", plugin={"entry_point": "other"}), tmp_path) == "chosen"
    groups = {"grpc": {"services": {"groupprovider": {"driver": "./plugin"}}}}
    with (
        pytest.raises(
            SourceError, match=r"declares no entry point in the group reva\.groupprovider"
        ),
        Host(groups, base_dir=tmp_path) as host,
    ):
        host.service("groupprovider")
