"""The command line's conventions: --version, help on everything, global options only where they
mean something, shell completion, verdict lines, ``lock --upgrade CONFIG`` and ``env list``."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reva_plugins
from reva_plugins._cli import _parser
from reva_plugins._cli_env import short_identity
from reva_plugins._completion import SHELLS
from reva_plugins._errors import ExitCode, installer_reason

from .conftest import SAMPLES, cli, pid_alive, wait_until
from .factory import commit_marker, make_repo
from .test_hostile_wire import _wire_make_plugin
from .test_wire_hardening import _tagged_processes

CALL_DEMO = ("userprovider", "get_user", '{"user_id": {"opaque_id": "demo"}}')


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return found


def test_version_is_the_package_metadata_version() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reva-plugins {reva_plugins.__version__}"
    assert importlib.metadata.version("reva-plugins") == reva_plugins.__version__


def test_every_positional_and_option_has_help() -> None:
    missing = [
        f"{name}: {action.metavar or action.dest}"
        for name, sub in _subparsers(_parser()).items()
        for action in sub._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_defaults_are_shown_in_help() -> None:
    result = cli("env", "prune", "--help")
    assert result.returncode == 0
    assert "(default: 30" in " ".join(result.stdout.split())
    status = " ".join(cli("status", "--help").stdout.split())
    assert "seconds to wait for the answer (default: " in status


@pytest.mark.parametrize(
    "argv",
    [
        ("new", "x", "--service", "userprovider", "--offline"),
        ("status", "127.0.0.1:1", "--installer", "uv"),
        ("reload", "127.0.0.1:1", "--cache-dir", "/tmp"),
        ("env", "list", "--offline"),
        ("completion", "bash", "--installer", "uv"),
    ],
)
def test_global_options_are_refused_where_they_mean_nothing(argv: tuple[str, ...]) -> None:
    result = cli(*argv)
    assert result.returncode == 2, result.stderr
    assert "unrecognized arguments" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_global_options_still_work_before_the_command(tmp_path: Path) -> None:
    result = cli("--cache-dir", str(tmp_path / "cache"), "env", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def _bash_complete(script: str, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1))\n"
        'cd /nonexistent-dir-for-completion 2>/dev/null; _reva_plugins; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile"],
        input=program,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.split()


def test_bash_completion_completes_commands_options_and_choices() -> None:
    result = cli("completion", "bash")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert "check" in _bash_complete(script, "reva-plugins", "")
    assert _bash_complete(script, "reva-plugins", "en") == ["env"]
    assert _bash_complete(script, "reva-plugins", "env", "pr") == ["prune"]
    assert "--unused-days" in _bash_complete(script, "reva-plugins", "env", "prune", "--")
    assert _bash_complete(script, "reva-plugins", "check", "--installer", "") == [
        "auto",
        "uv",
        "pip",
    ]
    assert _bash_complete(script, "reva-plugins", "completion", "z") == ["zsh"]
    assert set(_bash_complete(script, "reva-plugins", "lock", "--up")) == {
        "--upgrade",
        "--upgrade-package",
    }


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_parse_in_their_shell(shell: str, tmp_path: Path) -> None:
    result = cli("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "reva-plugins" in result.stdout
    assert "unused-days" in result.stdout
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed here: only the script's content is checked")
    script = tmp_path / f"completion.{shell}"
    script.write_text(result.stdout)
    checked = subprocess.run(
        [shell, "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_fish_completes_subcommands_in_fish(tmp_path: Path) -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed here")
    script = tmp_path / "reva-plugins.fish"
    script.write_text(cli("completion", "fish").stdout)
    done = subprocess.run(
        ["fish", "--no-config", "-c", f"source {script}; complete -C 'reva-plugins env pr'"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.split()[0] == "prune"


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = cli("completion", "tcsh")
    assert result.returncode == 2
    assert "invalid choice: 'tcsh'" in result.stderr
    assert set(SHELLS) == {"bash", "zsh", "fish"}


def test_lock_without_a_config_is_one_line_exit_2() -> None:
    for argv in (("lock",), ("lock", "--upgrade"), ("lock", "--check")):
        result = cli(*argv)
        assert result.returncode == 2, argv
        assert "CONFIG" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_new_names_the_folder_quoted(tmp_path: Path) -> None:
    result = cli("new", "Bad Name", "--service", "authprovider", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created a plugin for authprovider in 'Bad Name'; next: cd 'Bad Name'" in result.stderr
    result = cli("new", "users", "--service", "userprovider", cwd=tmp_path)
    assert "created a plugin for userprovider in users;" in result.stderr


@pytest.mark.slow
def test_lock_upgrade_config_as_documented_and_upgrade_package(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", marker="first")
    spec = f"git+file://{repo}@main#subdirectory=plugins/demo"
    config = tmp_path / "revad.toml"
    config.write_text(f'[grpc.services.userprovider]\ndriver = "{spec}"\n')
    cache = ("--cache-dir", str(tmp_path / "cache"))
    assert cli("lock", str(config), *cache).returncode == 0
    check = cli("lock", "--check", str(config), *cache)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == f"{config}.lock: up to date"

    commit_marker(repo, "plugins/demo", "second")
    upgraded = cli("lock", "--upgrade", str(config), *cache)  # as docs/lock.md shows it
    assert upgraded.returncode == 0, upgraded.stderr
    assert "\tlocked" in upgraded.stdout
    reply = cli("call", str(config), *CALL_DEMO, *cache)
    assert json.loads(reply.stdout)["display_name"] == "second"

    commit_marker(repo, "plugins/demo", "third")
    one = cli("lock", "--upgrade-package", "userprovider", str(config), *cache)
    assert one.returncode == 0, one.stderr
    assert "\tlocked" in one.stdout
    older = cli("lock", "--upgrade", "userprovider", str(config), *cache)  # the older form
    assert older.returncode == 0, older.stderr
    assert "\tunchanged" in older.stdout
    both = cli("lock", "--upgrade", "--upgrade-package", "userprovider", str(config), *cache)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


@pytest.mark.slow
def test_env_list_shows_whole_identities_the_installer_and_utc_times(tmp_path: Path) -> None:
    cache = ("--cache-dir", str(tmp_path / "cache"))
    nothing = cli("env", "prune", *cache)
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.strip() == "nothing to prune (nothing unused for 30 days)"
    built = cli("env", "build", str(SAMPLES / "json_users"), *cache)
    assert built.returncode == 0, built.stderr
    rows = json.loads(cli("env", "list", "--json", *cache).stdout)
    assert len(rows) == 1
    row = rows[0]
    for field in ("created", "last_used"):
        when = datetime.datetime.fromisoformat(row[field])
        assert when.utcoffset() == datetime.timedelta(0), (field, row[field])
    table = cli("env", "list", *cache).stdout.splitlines()
    assert table[0].split()[:6] == ["KEY", "KIND", "SOURCE", "IDENTITY", "PYTHON", "INSTALLER"]
    assert row["installer"] in table[1].split()


@pytest.mark.parametrize(
    ("identity", "shown"),
    [
        ("reva-plugin-ldap==2.4.1", "reva-plugin-ldap==2.4.1"),
        (
            "reva-plugin-very-long-name-indeed==10.20.30",
            "reva-plugin-very-long-name-indeed==10.20.30",
        ),
        ("tree:" + "ab" * 32, "ab" * 6),
        ("sha256:" + "0f" * 32, "0f" * 6),
        ("1b2c3d4e5f60718293a4b5c6d7e8f90112233445", "1b2c3d4e5f60"),
        ("", ""),
    ],
)
def test_env_list_cuts_digests_never_requirements(identity: str, shown: str) -> None:
    assert short_identity(identity) == shown


UV_NO_SOLUTION = """\
Using Python 3.11.7 environment at: /c/tmp/x
  \u00d7 No solution found when resolving dependencies:
  \u2570\u2500\u25b6 Because reva-plugin-ldap was not found in the package registry and you require
      reva-plugin-ldap==9.9, we can conclude that your requirements are unsatisfiable.
"""
PIP_NO_DIST = """\
Looking in indexes: https://***@example.org/simple
ERROR: Could not find a version that satisfies the requirement reva-plugin-ldap==9.9 (from versions: none)
ERROR: No matching distribution found for reva-plugin-ldap==9.9
"""


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (
            UV_NO_SOLUTION,
            (
                "No solution found when resolving dependencies: Because reva-plugin-ldap was not "
                "found in the package registry and you require reva-plugin-ldap==9.9"
            ),
        ),
        (PIP_NO_DIST, "Could not find a version that satisfies the requirement"),
        ("fatal: repository 'x' not found\n", "repository 'x' not found"),
        ("building...\nsomething odd happened\n", "something odd happened"),
        ("", ""),
    ],
)
def test_the_installers_reason_is_its_error_lines_on_one_line(output: str, reason: str) -> None:
    found = installer_reason(output)
    assert found.startswith(reason)
    assert "\n" not in found
    assert "Using Python" not in found
    assert "Looking in indexes" not in found


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_check_says_why_a_build_failed_once_per_line(installer: str, tmp_path: Path) -> None:
    index = tmp_path / "index" / "simple"
    index.mkdir(parents=True)
    (index / "index.html").write_text("<html></html>\n")
    config = tmp_path / "revad.toml"
    config.write_text(
        f'[plugins]\nindex_url = "{index.as_uri()}"\n'
        '[grpc.services.userprovider]\ndriver = "reva-plugin-ldap==9.9"\n'
    )
    args = ("--cache-dir", str(tmp_path / "cache"), "--installer", installer)
    result = cli("check", str(config), *args)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("reva-plugins: error: userprovider: building the env failed: ")
    assert error.count("userprovider") == 1  # no doubled prefix
    assert "reva-plugin-ldap==9.9" in error.split("exited with 1: ", 1)[1]
    row = result.stdout.splitlines()[1]
    assert row.count("\u2026") == 2, row  # the installer's "…" and the cell's
    assert len(row) < 200, row
    listed = json.loads(cli("check", str(config), "--json", *args).stdout)
    assert "reva-plugin-ldap==9.9" in listed[0]["status"]


def _interrupted(
    argv: list[str], marker: Path, *, twice: bool = False
) -> tuple[int, str, str, int]:
    """``reva-plugins ARGV`` in a process group of its own (a terminal's foreground job), given
    Ctrl-C (SIGINT to the group; with ``twice``, again while the first one's cleanup runs) once
    what it runs has written its pid to ``marker`` (and is alive): exit code, stdout, stderr and
    that pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", "reva_plugins", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        got_it = wait_until(lambda: marker.exists() and marker.read_text() != "", timeout=120)
        assert got_it, f"{argv[0]} never got that far"
        pid = int(marker.read_text())
        assert pid_alive(pid)
        os.killpg(process.pid, signal.SIGINT)
        if twice:
            time.sleep(0.3)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stdout, stderr, pid


@pytest.mark.slow
@pytest.mark.parametrize("during", ["call", "check", "call-twice"])
def test_ctrl_c_is_one_line_exit_130_and_no_plugin_left(during: str, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) while ``call`` waits for a plugin that
    sleeps, or while ``check`` waits for the handshake of one that sleeps as it is imported:
    "interrupted" on one line, exit 130 as shells report SIGINT, no traceback, and the plugin
    process is gone."""
    project = _wire_make_plugin(tmp_path / "hostile")
    marker = tmp_path / "sleeping"
    tag = str(tmp_path)
    config = tmp_path / "revad.toml"
    mode = "sleep_import" if during == "check" else ""
    config.write_text(
        f'[grpc.services.userprovider]\ndriver = "{project}"\n'
        "[grpc.services.userprovider.plugin]\nstart_timeout = 120\n"
        f'write_paths = ["{tmp_path}"]\n'
        f'env = {{ REVA_TEST_TAG = "{tag}", HOSTILE_MODE = "{mode}", HOSTILE_MARKER = "{marker}" }}\n',
        encoding="utf-8",
    )
    built = cli("env", "build", str(config))
    assert built.returncode == 0, built.stderr
    params = json.dumps({"user_id": {"opaque_id": "sleep", "marker": str(marker)}})
    if during.startswith("call"):
        argv = ["call", str(config), "userprovider", "get_user", params]
    else:
        argv = ["check", str(config)]
    returncode, stdout, stderr, _ = _interrupted(argv, marker, twice=during == "call-twice")
    assert returncode == ExitCode.INTERRUPTED, stderr  # 130, as shells report SIGINT
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == ["interrupted"], stderr
    assert stdout == ""
    assert wait_until(lambda: not _tagged_processes(tag)), "a plugin process was left behind"


# A build backend that stalls (ignoring SIGINT, as a stubborn one may), saying so in MARKER (a
# path written in: the installer's environment is the core's to choose).
_STALLING_BACKEND = """\
import os, signal, time

MARKER = {marker!r}

def _stall(*args, **kwargs):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(MARKER, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

build_wheel = build_sdist = prepare_metadata_for_build_wheel = _stall

def get_requires_for_build_wheel(config_settings=None):
    return []
"""


@pytest.mark.slow
def test_ctrl_c_during_a_build_leaves_no_build_process_and_no_env(
    tmp_path: Path, fresh_cache: Path
) -> None:
    """Ctrl-C while ``env build`` waits for a build backend that ignores SIGINT: "interrupted"
    on one line, exit 130; the backend does not outlive the command, the half-built env is not
    kept (``env list`` is empty) and its temporary folder is gone."""
    project = tmp_path / "slow"
    (project / "reva_slow").mkdir(parents=True)
    (project / "reva_slow" / "__init__.py").write_text("class Slow:\n    pass\n", encoding="utf-8")
    marker = tmp_path / "building"
    backend_source = _STALLING_BACKEND.format(marker=str(marker))
    (project / "slowbackend.py").write_text(backend_source, encoding="utf-8")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "slowbackend"\nbackend-path = ["."]\n\n'
        '[project]\nname = "reva-slow"\nversion = "0.1"\n\n'
        '[project.entry-points."reva.userprovider"]\nslow = "reva_slow:Slow"\n',
        encoding="utf-8",
    )
    config = tmp_path / "revad.toml"
    config.write_text(f'[grpc.services.userprovider]\ndriver = "{project}"\n', encoding="utf-8")
    returncode, stdout, stderr, backend = _interrupted(["env", "build", str(config)], marker)
    assert returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert stdout == ""
    assert wait_until(lambda: not pid_alive(backend)), "the build backend outlived the command"
    listed = cli("env", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert not any((fresh_cache / "tmp").glob("*")), "the half-built env's folder was left"


@pytest.mark.slow
def test_a_command_that_times_out_takes_what_it_started_with_it(tmp_path: Path) -> None:
    """A command (an installer) that times out is killed with what it started (a build backend
    that ignores SIGTERM and SIGINT), which would otherwise run on as an orphan."""
    from reva_plugins._subprocess import CommandFailed, run

    marker = tmp_path / "child"
    code = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(120)\n"
    )
    with pytest.raises(CommandFailed) as failed:
        run([sys.executable, "-c", code], timeout=3)
    assert "started" in failed.value.output
    assert "timed out after 3 s" in failed.value.output
    child = int(marker.read_text())
    assert wait_until(lambda: not pid_alive(child)), "what the command started outlived it"
