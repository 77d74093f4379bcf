"""Plugins that misbehave as OS processes: orphans, process groups, resource limits, forged log
lines. Each test failed before its fix; SECURITY.md lists every class with its test.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import (
    HandshakeError,
    Host,
    PluginCrashed,
    RemoteError,
)
from reva_plugins._drivers import IsolatedDriver
from reva_plugins._plugin_stderr import LOG_BURST, escape
from reva_plugins._supervisor import Supervisor

from .conftest import pid_alive, wait_until
from .plugin_sources import PROCESS_HOSTILE, PROCESS_HOSTILE_PYPROJECT


@pytest.fixture(scope="module")
def process_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-process") / "plugin"
    (root / "reva_hostile_process").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PROCESS_HOSTILE_PYPROJECT)
    (root / "reva_hostile_process" / "__init__.py").write_text(PROCESS_HOSTILE)
    return root


def _process_config(plugin: Path, tmp_path: Path, **settings: Any) -> dict[str, Any]:
    settings.setdefault("start_timeout", 60)
    # The plugin (sandboxed, as by default) writes the tests' pid and marker files there.
    settings.setdefault("write_paths", [str(tmp_path)])
    return {"grpc": {"services": {"userprovider": {"driver": str(plugin), "plugin": settings}}}}


@pytest.fixture
def process_host(process_plugin: Path, tmp_path: Path) -> Iterator[Any]:
    hosts: list[Host] = []

    def make(**settings: Any) -> Any:
        host = Host(_process_config(process_plugin, tmp_path, **settings), base_dir=tmp_path)
        hosts.append(host)
        return _supervisor_of(host)

    yield make
    for host in hosts:
        host.close()


def _supervisor_of(host: Host) -> Supervisor:
    """The supervisor behind the user provider: these tests call the process plugin's own
    methods (detach, allocate …), which are not part of the service."""
    driver = host.service("userprovider").driver
    assert isinstance(driver, IsolatedDriver)
    return driver.supervisor


def _process_core(
    plugin: Path, tmp_path: Path, body: str, prelude: str = "", **settings: Any
) -> subprocess.Popen[str]:
    """A separate core process running a Host; ``body`` runs with ``sup`` (the supervisor)."""
    script = prelude + textwrap.dedent(
        """
        import json, sys, time
        from reva_plugins import Host
        host = Host({config!r}, base_dir={base!r})
        sup = host.service("userprovider").driver.supervisor
        """
    ).format(config=_process_config(plugin, tmp_path, **settings), base=str(tmp_path))
    return subprocess.Popen(
        [sys.executable, "-c", script + textwrap.dedent(body)], stdout=subprocess.PIPE, text=True
    )


# -- orphans -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_setsid_grandchild_dies_with_host_close(process_plugin: Path, tmp_path: Path) -> None:
    host = Host(_process_config(process_plugin, tmp_path), base_dir=tmp_path)
    supervisor = _supervisor_of(host)
    grandchild = supervisor.call("detach", {"pidfile": str(tmp_path / "gc")})
    plugin = host.service("userprovider").info().pid
    assert plugin is not None
    assert pid_alive(grandchild)
    assert os.getsid(grandchild) != os.getsid(plugin)  # it really left the plugin's session
    host.close()
    assert wait_until(lambda: not pid_alive(grandchild) and not pid_alive(plugin), timeout=10)


@pytest.mark.slow
def test_a_setsid_grandchild_dies_when_the_core_is_killed(
    process_plugin: Path, tmp_path: Path
) -> None:
    core = _process_core(
        process_plugin,
        tmp_path,
        f"""
        grandchild = sup.call("detach", {{"pidfile": {str(tmp_path / "gc")!r}}})
        print(json.dumps([sup.process.pid, grandchild]), flush=True)
        time.sleep(300)
        """,
    )
    assert core.stdout is not None
    plugin, grandchild = json.loads(core.stdout.readline())
    assert pid_alive(plugin)
    assert pid_alive(grandchild)
    core.kill()
    core.wait()
    assert wait_until(lambda: not pid_alive(plugin) and not pid_alive(grandchild), timeout=10)


@pytest.mark.slow
def test_a_plugin_still_importing_dies_with_a_killed_core(
    process_plugin: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "importing"
    core = _process_core(
        process_plugin,
        tmp_path,
        'sup.call("detach", {"pidfile": "unused"})\n',
        env={"HP_IMPORT_SLEEP": str(pidfile)},
    )
    assert wait_until(pidfile.exists, timeout=60)
    plugin = int(pidfile.read_text())
    grandchild = int(Path(f"{pidfile}.grandchild").read_text())
    assert pid_alive(plugin)
    assert pid_alive(grandchild)
    core.kill()
    core.wait()
    assert wait_until(lambda: not pid_alive(plugin) and not pid_alive(grandchild), timeout=10)


@pytest.mark.slow
def test_a_plugin_killed_while_importing_takes_its_descendants(
    process_host: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "importing"
    with pytest.raises(HandshakeError, match="no handshake within"):
        process_host(env={"HP_IMPORT_SLEEP": str(pidfile)}, start_timeout=3).call("busy", {})
    grandchild = int(Path(f"{pidfile}.grandchild").read_text())
    assert wait_until(lambda: not pid_alive(grandchild), timeout=10)


@pytest.mark.slow
def test_the_plugin_has_its_own_process_group_but_not_its_own_session(
    process_host: Any,
) -> None:
    supervisor = process_host()
    supervisor.call("stderr", {"text": "up"})
    pid = supervisor.process.pid
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == os.getsid(0)


# -- resource limits ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_seconds_kills_a_busy_loop_and_says_so(process_host: Any) -> None:
    supervisor = process_host(cpu_seconds=1, call_timeout=120)
    with pytest.raises(PluginCrashed, match=r"plugin exceeded cpu_seconds=1 \(") as info:
        supervisor.call("busy", {})
    assert info.value.returncode in (-signal.SIGXCPU, -signal.SIGKILL)


@pytest.mark.slow
def test_memory_mb_stops_a_big_allocation_and_names_the_limit(process_host: Any) -> None:
    limited = process_host(memory_mb=128)
    with pytest.raises(RemoteError, match=r"plugin exceeded memory_mb=128") as info:
        limited.call("allocate", {"mb": 500})
    assert info.value.type == "MemoryError"
    assert limited.call("allocate", {"mb": 8}) == 8 * 1024 * 1024  # it survived
    assert process_host().call("allocate", {"mb": 500}) == 500 * 1024 * 1024


@pytest.mark.slow
def test_a_crash_under_memory_mb_names_the_limit(process_host: Any) -> None:
    supervisor = process_host(memory_mb=256)
    with pytest.raises(PluginCrashed, match=r"plugin exceeded memory_mb=256"):
        supervisor.call("crash", {"text": "MemoryError"})


@pytest.mark.slow
def test_open_files_limits_descriptors_and_names_the_limit(process_host: Any) -> None:
    with pytest.raises(RemoteError, match=r"plugin exceeded open_files=32: .*Too many open"):
        process_host(open_files=32).call("open_many", {"n": 100})
    assert process_host().call("open_many", {"n": 100}) == 100


@pytest.fixture
def process_server() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.mark.slow
def test_network_false_cuts_the_plugin_off(process_host: Any, process_server: int) -> None:
    assert process_host().call("connect", {"port": process_server}) == "connected"
    isolated = process_host(network=False)
    with pytest.raises(RemoteError) as info:
        isolated.call("connect", {"port": process_server})
    assert info.value.type in ("ConnectionRefusedError", "OSError")
    assert isolated.call("stderr", {"text": "the wire still works"}) is True


_process_NO_USERNS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.geteuid(), os.getegid()
assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())  # CLONE_NEWUSER
for name, text in (("uid_map", f"1000 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"1000 {gid} 1")):
    with open(f"/proc/self/{name}", "w") as f:
        f.write(text)
with open("/proc/sys/user/max_user_namespaces", "w") as f:  # this namespace's own limit
    f.write("0")
"""


@pytest.mark.slow
def test_network_false_where_the_kernel_refuses_fails_the_start_clearly(
    process_plugin: Path, tmp_path: Path
) -> None:
    # The core runs as a non-root user inside a user namespace that may hold no more user
    # namespaces: the bootstrap cannot get its private network there.
    probe = subprocess.run(
        [sys.executable, "-c", _process_NO_USERNS], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace here: {probe.stderr.strip()[-200:]}")
    core = _process_core(
        process_plugin,
        tmp_path,
        """
        try:
            sup.call("stderr", {"text": "started"})
            print(json.dumps(["started", ""]), flush=True)
        except Exception as exc:
            print(json.dumps([type(exc).__name__, str(exc)]), flush=True)
        host.close()
        """,
        prelude=_process_NO_USERNS,
        network=False,
    )
    assert core.stdout is not None
    kind, message = json.loads(core.stdout.readline())
    core.wait()
    assert kind == "HandshakeError"
    assert "network = false is not supported here" in message
    assert "unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: [Errno 28]" in message


# -- log lines ---------------------------------------------------------------------------------


def _process_plugin_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "reva_plugins.plugin.userprovider"]


@pytest.mark.slow
def test_plugin_text_cannot_forge_core_lines_or_drive_the_terminal(
    process_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reva_plugins.plugin")
    supervisor = process_host()
    forged = "ok\rreva-plugins: error: forged\n\x1b[2Jreva-plugins: all good\x1b]0;title\x07"
    supervisor.call("stderr", {"text": forged})
    supervisor.call("log", {"message": forged, "field": "\x1b[31mred\r\n"})
    with pytest.raises(RemoteError):
        supervisor.call("raise_error", {"message": forged})
    pid = supervisor.process.pid
    # The stderr reader runs on its own thread: wait for the structured record too.
    assert wait_until(
        lambda: any(r.levelno == logging.WARNING for r in _process_plugin_records(caplog))
    )
    for record in _process_plugin_records(caplog):
        shown = record.getMessage()
        assert shown.startswith(f"[userprovider pid {pid}] ")
        assert not any(c in shown for c in "\r\n\x1b\x07")
    logged = [r for r in _process_plugin_records(caplog) if r.levelno == logging.WARNING]
    assert logged[-1].field == "\\x1b[31mred\\r\\n"  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_stderr_tail_in_a_crash_is_escaped_and_bounded(process_host: Any) -> None:
    supervisor = process_host()
    with pytest.raises(PluginCrashed) as info:
        supervisor.call("crash", {"text": "\x1b[2J" + "x" * 100_000})
    tail = info.value.stderr_tail
    assert "\x1b" not in tail
    assert "\\x1b[2J" in tail
    assert len(tail) < 10_000


@pytest.mark.slow
def test_a_log_flood_is_dropped_counted_and_never_blocks_the_plugin(
    process_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reva_plugins.plugin")
    supervisor = process_host()
    process = supervisor.start()
    total = 200_000
    assert supervisor.call("flood", {"n": total}) == total
    assert supervisor.call("stderr", {"text": "still answering"}) is True
    process.close()
    records = _process_plugin_records(caplog)
    shown = [r for r in records if str(getattr(r, "plugin_message", "")).startswith("flood ")]
    dropped = sum(getattr(r, "plugin_dropped", 0) for r in records)
    assert LOG_BURST <= len(shown) < total
    assert dropped > 0
    assert any(
        "dropped" in r.getMessage() and "lines from plugin" in r.getMessage() for r in records
    )
    # every line is either shown or counted (and "still answering" is one of either)
    assert len(shown) + dropped in (total, total + 1)


@pytest.mark.slow
def test_escape_keeps_text_readable() -> None:
    assert escape("plain text\twith tab") == "plain text\twith tab"
    assert escape("a\nb\r\x1b\x9b\u202e") == "a\\nb\\r\\x1b\\x9b\\u202e"
    assert escape("a\nb", keep_newlines=True) == "a\nb"
