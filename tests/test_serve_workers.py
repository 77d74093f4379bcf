"""``[grpc] processes = N``: worker processes sharing the port under one parent, real servers on
127.0.0.1 with a real plugin. Nothing here asserts a time: every wait is on a condition."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the serve extra is not installed")

from cs3.identity.user.v1beta1 import resources_pb2 as user_res  # noqa: E402
from cs3.identity.user.v1beta1 import user_api_pb2 as user_api  # noqa: E402
from cs3.identity.user.v1beta1 import user_api_pb2_grpc as user_grpc  # noqa: E402
from cs3.rpc.v1beta1 import code_pb2  # noqa: E402

from reva_plugins import _config  # noqa: E402

from .conftest import cli, pid_alive, wait_until  # noqa: E402
from .factory import make_plugin  # noqa: E402
from .plugin_sources import WORKER_PLUGIN  # noqa: E402
from .test_serve import Served, _sample, _samples  # noqa: E402

OK = code_pb2.CODE_OK


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One plugin folder for the module: its env is built once."""
    root = tmp_path_factory.mktemp("workers") / "plugin"
    make_plugin(root, name="reva-workers-plugin", entry_points={"reva.userprovider": "demo"})
    (root / "reva_workers_plugin" / "__init__.py").write_text(WORKER_PLUGIN, encoding="utf-8")
    return root


def _config_file(tmp_path: Path, plugin: Path, marker: str = "m0", processes: str = "2") -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    config = tmp_path / "revad.toml"
    config.write_text(
        f"""
[grpc]
address = "127.0.0.1:0"
processes = {processes}
shutdown_grace = 10
workers = 16

[metrics]
address = "127.0.0.1:0"

[grpc.services.userprovider]
driver = "{plugin}"

[grpc.services.userprovider.drivers.demo]
dir = "{state}"
marker = "{marker}"
""",
        encoding="utf-8",
    )
    return config


_STARTED: list[Served] = []


@pytest.fixture(autouse=True)
def _no_server_left() -> Iterator[None]:
    """A test that fails half-way leaves no server (nor its workers and plugins) running."""
    yield
    while _STARTED:
        server = _STARTED.pop()
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


def _start(config: Path, env: dict[str, str] | None = None) -> Served:
    server = Served(config, env=env)
    _STARTED.append(server)
    server.wait_for(r"\d+ worker processes serving on ")
    return server


def _workers(server: Served) -> dict[int, int]:
    """Worker index to pid, as the parent's log said most recently."""
    found: dict[int, int] = {}
    started = server.wait_for(r"worker processes serving on \S+ \(pids ([\d, ]+);")
    for index, pid in enumerate(started.group(1).split(", ")):
        found[index] = int(pid)
    for line in server.lines:
        match = re.search(r"worker (\d+) \(pid (\d+)\) serving again", line)
        if match:
            found[int(match.group(1))] = int(match.group(2))
    return found


def _channel(server: Served) -> Any:
    """A channel with a connection of its own (SO_REUSEPORT spreads connections, not calls)."""
    return grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])


def _get(stub: Any, opaque: str = "demo", timeout: float = 30, *, wait: bool = False) -> Any:
    request = user_api.GetUserRequest(user_id=user_res.UserId(idp="test", opaque_id=opaque))
    return stub.GetUser(request, timeout=timeout, wait_for_ready=wait)


def _answering_pid(reply: Any) -> int:
    return int(reply.user.display_name.split(":")[0])


def _status(server: Served) -> dict[str, Any]:
    result = cli("status", server.address, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _started_plugins(state: Path) -> set[int]:
    return {int(path.name.split("-")[1]) for path in state.glob("started-*")}


@pytest.mark.slow
def test_two_workers_serve_and_every_one_is_reported(tmp_path: Path, plugin: Path) -> None:
    server = _start(_config_file(tmp_path, plugin))
    try:
        workers = _workers(server)
        assert len(set(workers.values())) == 2
        for index in workers:  # they share one output: each line says which worker wrote it
            assert re.search(rf"reva-plugins: worker {index}: serving userprovider", server.text())
        # each channel is a connection of its own; the kernel spreads them over both workers
        seen: set[int] = set()
        for _ in range(64):
            channel = _channel(server)
            try:
                reply = _get(user_grpc.UserAPIStub(channel))
            finally:
                channel.close()
            assert reply.status.code == OK
            seen.add(_answering_pid(reply))
            if len(seen) == 2:
                break
        assert seen == set(workers.values())

        report = _status(server)
        assert report["server"]["pid"] == server.proc.pid
        assert report["server"]["processes"] == 2
        listed = report["workers"]
        assert sorted(listed) == ["0", "1"]
        assert {int(w["pid"]) for w in listed.values()} == set(workers.values())
        assert all(w["state"] == "serving" for w in listed.values())
        plugin_pids = {int(w["services"]["userprovider"]["pid"]) for w in listed.values()}
        assert len(plugin_pids) == 2
        table = cli("status", server.address).stdout
        for index, pid in workers.items():
            assert re.search(rf"^worker\s+{index}\s+.*pid={pid}\b", table, re.M), table

        # the metrics endpoint (the parent's) adds up every worker's counters
        text = server.metrics()
        rss = _samples(text, "reva_plugins_plugin_rss_bytes")
        assert {int(labels["pid"]) for labels, _ in rss} == plugin_pids
        ok = _sample(
            text,
            "reva_plugins_rpcs_total",
            api="cs3.identity.user.v1beta1.UserAPI",
            method="GetUser",
            code="CODE_OK",
        )
        assert ok >= 1
        assert wait_until(
            lambda: len([line for line in server.lines if "status=CODE_OK" in line]) == ok
        )
        assert _sample(text, "reva_plugins_workers_serving") == 2

        # reload through the admin API reaches every worker and reports each
        reload = cli("reload", server.address)
        assert reload.returncode == 0, reload.stderr
        assert "worker 0: reload:" in reload.stderr
        assert "worker 1: reload:" in reload.stderr
    finally:
        assert server.stop() == 0
    assert not server.pidfile.exists()
    for pid in [*workers.values(), *plugin_pids]:
        assert wait_until(lambda pid=pid: not pid_alive(pid))


@pytest.mark.slow
def test_a_worker_killed_under_load_fails_only_its_calls_and_comes_back(
    tmp_path: Path, plugin: Path
) -> None:
    server = _start(_config_file(tmp_path, plugin))
    workers = _workers(server)
    victim, survivor = workers[0], workers[1]
    # SO_REUSEPORT hashes each connection to a worker (8 connections all land on one 1 time in
    # 128): connections are opened until each worker holds four of them
    held: dict[int, list[Any]] = {victim: [], survivor: []}
    for _ in range(200):
        if all(len(channels) == 4 for channels in held.values()):
            break
        channel = _channel(server)
        pid = _answering_pid(_get(user_grpc.UserAPIStub(channel), wait=True))
        if len(held[pid]) < 4:
            held[pid].append(channel)
        else:
            channel.close()
    assert all(len(channels) == 4 for channels in held.values()), held
    stop = threading.Event()
    killed = threading.Event()
    # per client: the worker its connection reached before the kill, and what failed
    reached: dict[int, set[int]] = {}
    failures: dict[int, list[str]] = {}
    after: dict[int, int] = {}

    def client(number: int, channel: Any) -> None:
        stub = user_grpc.UserAPIStub(channel)
        reached[number], failures[number], after[number] = set(), [], 0
        try:
            for _ in range(100_000):  # bounded; the event ends it long before
                if stop.is_set():
                    return
                was_killed = killed.is_set()
                try:
                    # a call made while its channel reconnects waits for the connection (else
                    # it fails fast during the client's reconnect backoff: not the server's
                    # doing); one in flight on the killed worker fails whatever the flag
                    reply = _get(stub, "nap0.05", wait=True)
                except grpc.RpcError as exc:
                    failures[number].append(str(exc.code()))
                    continue
                if reply.status.code != OK:
                    failures[number].append(reply.status.message)
                elif was_killed:
                    after[number] += 1
                else:
                    reached[number].add(_answering_pid(reply))
        finally:
            channel.close()

    clients = [
        threading.Thread(target=client, args=(n, channel))
        for n, channel in enumerate(held[victim] + held[survivor])
    ]
    for thread in clients:
        thread.start()
    try:
        assert wait_until(lambda: len(set().union(*reached.values())) == 2, timeout=60)
        start = len(server.lines)
        killed.set()
        os.kill(victim, signal.SIGKILL)
        server.wait_for(
            rf"worker 0 \(pid {victim}\) was killed by SIGKILL; restarting", start=start
        )
        back = server.wait_for(r"worker 0 \(pid (\d+)\) serving again", start=start)
        assert wait_until(lambda: all(count >= 5 for count in after.values()), timeout=60)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    for number, workers_reached in reached.items():
        if workers_reached == {survivor}:
            assert failures[number] == [], number  # the other worker's calls never failed
        else:  # what was in flight on the killed worker, and (a kernel race) a connection
            # made as it died, accepted into its queue and reset: UNAVAILABLE, never an answer
            # with an error in it; the count depends on timing
            assert set(failures[number]) <= {"StatusCode.UNAVAILABLE"}, (failures, reached)
    assert any(victim in workers_reached for workers_reached in reached.values()), reached
    assert not pid_alive(victim)
    report = _status(server)
    assert {int(w["pid"]) for w in report["workers"].values()} == {int(back.group(1)), survivor}
    assert [w["restarts"] for _, w in sorted(report["workers"].items())] == [1, 0]
    assert server.stop() == 0


@pytest.mark.slow
def test_a_sighup_storm_with_two_workers_fails_no_call(tmp_path: Path, plugin: Path) -> None:
    config = _config_file(tmp_path, plugin, marker="m0")
    server = _start(config)
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        channel = _channel(server)
        stub = user_grpc.UserAPIStub(channel)
        try:
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    reply = _get(stub)
                except grpc.RpcError as exc:
                    failures.append(str(exc.code()))
                    continue
                if reply.status.code != OK:
                    failures.append(reply.status.message)
                else:
                    answers.append(reply.user.display_name.split(":")[1])
        finally:
            channel.close()

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        assert wait_until(lambda: len(answers) > 20, timeout=60)
        for round_ in range(1, 9):  # each changes the driver's config: a real swap
            _config_file(tmp_path, plugin, marker=f"m{round_}")
            os.kill(server.proc.pid, signal.SIGHUP)
            seen = len(answers)
            assert wait_until(lambda seen=seen: len(answers) > seen + 3, timeout=60)

        def settled() -> bool:
            report = _status(server)
            return (
                all(
                    w.get("state") == "serving"
                    and w["services"]["userprovider"]["state"] == "running"
                    for w in report["workers"].values()
                )
                and answers[-12:] == ["m8"] * 12
            )

        assert wait_until(settled, timeout=120, interval=0.5), "\n".join(server.lines[-40:])
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    assert failures == []
    assert "m8" in answers
    assert server.stop() == 0


@pytest.mark.slow
def test_sigterm_during_a_reload_leaves_nothing(tmp_path: Path, plugin: Path) -> None:
    config = _config_file(tmp_path, plugin, marker="m0")
    server = _start(config)
    workers = _workers(server)
    state = tmp_path / "state"
    folder = _folder_of(server)
    _config_file(tmp_path, plugin, marker="m1")
    start = len(server.lines)
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for(r"reload: reading", start=start)
    os.kill(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=120) == 0
    server.stop()
    for pid in [*workers.values(), *_started_plugins(state)]:
        assert wait_until(lambda pid=pid: not pid_alive(pid)), pid
    assert not server.pidfile.exists()
    assert not folder.exists()


def _folder_of(server: Served) -> Path:
    """The parent's private folder: a worker's initial environment names it (/proc keeps the
    initial one; the worker took it out of ``os.environ``)."""
    pid = _workers(server)[0]
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    raw = dict(items)[b"REVA_PLUGINS_SERVE_WORKER"]
    folder = Path(raw.decode().split(":", 5)[5])
    assert folder.is_dir()
    return folder


@pytest.mark.slow
def test_a_worker_that_keeps_dying_at_start_makes_the_parent_give_up(
    tmp_path: Path, plugin: Path
) -> None:
    server = _start(_config_file(tmp_path, plugin))
    workers = _workers(server)
    state = tmp_path / "state"
    (state / "fail").write_text("", encoding="utf-8")  # every new plugin start now fails
    os.kill(workers[0], signal.SIGKILL)
    assert server.proc.wait(timeout=300) == 1
    server.stop()
    assert re.search(r"worker 0 exited 5 times in a row before serving .*giving up", server.text())
    for pid in [*workers.values(), *_started_plugins(state)]:
        assert wait_until(lambda pid=pid: not pid_alive(pid)), pid
    assert not server.pidfile.exists()


@pytest.mark.parametrize("value", ["0", "-1", '"many"', "true", "2.5", "257", '"AUTO"', "[2]"])
def test_hostile_processes_are_refused_in_one_line(tmp_path: Path, value: str) -> None:
    config = tmp_path / "revad.toml"
    config.write_text(
        f'[grpc]\nprocesses = {value}\n[grpc.services.userprovider]\ndriver = "json"\n',
        encoding="utf-8",
    )
    result = cli("serve", str(config))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "grpc.processes" in result.stderr
    assert str(config) in result.stderr
    assert 'or "auto"' in result.stderr
    assert "Traceback" not in result.stderr


def test_processes_auto_is_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    config = tmp_path / "revad.toml"
    for value, expected in (
        ('"auto"', len(os.sched_getaffinity(0))),
        ("3", 3),
        (None, 1),
    ):
        line = "" if value is None else f"processes = {value}\n"
        config.write_text(
            f'[grpc]\n{line}[grpc.services.userprovider]\ndriver = "json"\n', encoding="utf-8"
        )
        assert _config.load_file(config).serve.process_count() == expected


@pytest.mark.parametrize(
    "value", ["", "x", "0:2:1", "5:2:1:0::/tmp", "0:2:1:0::relative", "a:b:c:d:e:f", "0:2:1::/tmp"]
)
def test_a_bogus_worker_role_in_the_environment_is_one_line(tmp_path: Path, value: str) -> None:
    config = tmp_path / "revad.toml"
    config.write_text('[grpc.services.userprovider]\ndriver = "json"\n', encoding="utf-8")
    result = cli("serve", str(config), env={"REVA_PLUGINS_SERVE_WORKER": value})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "REVA_PLUGINS_SERVE_WORKER" in result.stderr
    assert "Traceback" not in result.stderr


def test_hostile_requests_on_a_workers_control_socket(tmp_path: Path) -> None:
    """Garbage, an unknown op, an endless line, a client that hangs up: each gets an error (or
    nothing) and the socket keeps answering."""
    import socket

    from reva_plugins.serve._siblings import ControlServer, WorkerRole, ask

    role = WorkerRole(0, 1, os.getpid(), tmp_path)
    answered: list[str] = []

    def answer(op: str) -> dict[str, Any]:
        answered.append(op)
        return {"op": op}

    server = ControlServer(role, answer)
    server.start()
    try:
        path = role.socket_path()
        for payload in (b"not json\n", b'{"op": "shutdown"}\n', b"[]\n", b"{" * 5000 + b"\n", b""):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(10)
                conn.connect(str(path))
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                reply = conn.recv(1 << 16)
            assert b'"error"' in reply, (payload[:20], reply)
        assert answered == []
        assert ask(path, "status", 10) == {"op": "status"}
        assert ask(tmp_path / "nobody.sock", "status", 10)["error"].startswith("no answer")
    finally:
        server.close()
    assert not role.socket_path().exists()


@pytest.mark.slow
def test_tls_with_two_workers_and_the_admin_api_over_it(tmp_path: Path, plugin: Path) -> None:
    import shutil

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not on this machine to make a certificate")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    config = _config_file(tmp_path, plugin)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("workers = 16", 'workers = 16\ntls_cert = "cert.pem"\ntls_key = "key.pem"'),
        encoding="utf-8",
    )
    server = _start(config)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "cert.pem").read_bytes())
        with grpc.secure_channel(server.address, creds) as channel:
            assert _get(user_grpc.UserAPIStub(channel)).status.code == OK
        ca = str(tmp_path / "cert.pem")
        status = cli("status", server.address, "--tls-ca", ca, "--json")
        assert status.returncode == 0, status.stderr
        assert set(json.loads(status.stdout)["workers"]) == {"0", "1"}
        reload = cli("reload", server.address, "--tls-ca", ca)
        assert reload.returncode == 0, reload.stderr
        assert reload.stderr.count("worker ") == 2
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_a_busy_port_or_a_running_servers_pidfile_starts_no_worker(
    tmp_path: Path, plugin: Path
) -> None:
    import socket

    config = _config_file(tmp_path, plugin)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", str(config), "--address", f"127.0.0.1:{port}")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "--address" in result.stderr
    assert not list((tmp_path / "state").glob("started-*"))  # no plugin, so no worker, ran
    server = _start(config)
    try:
        second = cli("serve", str(config), "--pidfile", str(server.pidfile))
        assert second.returncode == 2, second.stderr
        assert f"server {server.proc.pid} is running" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_sighups_while_a_worker_restarts_do_not_kill_it(tmp_path: Path, plugin: Path) -> None:
    """Before a starting worker handles SIGHUP, SIGHUP's default action would kill it: the
    parent holds the reload until the worker serves, then sends it."""
    import time

    config = _config_file(tmp_path, plugin, marker="m0")
    server = _start(config)
    try:
        victim = _workers(server)[1]
        start = len(server.lines)
        os.kill(victim, signal.SIGKILL)
        server.wait_for(rf"worker 1 \(pid {victim}\) was killed", start=start)
        _config_file(tmp_path, plugin, marker="m1")
        back = None
        for _ in range(2000):  # SIGHUPs until it serves again (bounded)
            os.kill(server.proc.pid, signal.SIGHUP)
            back = next(
                (m for m in (re.search(r"worker 1 \(pid (\d+)\) serving again", line)
                             for line in server.lines[start:]) if m),
                None,
            )  # fmt: skip
            if back is not None:
                break
            time.sleep(0.02)
        assert back is not None, server.text()
        restarted = int(back.group(1))
        assert "restarting" not in "\n".join(
            line for line in server.lines[start:] if f"pid {restarted})" in line
        )

        def reloaded() -> bool:
            report = _status(server)
            worker = report["workers"]["1"]
            return bool(worker.get("pid") == restarted and worker.get("state") == "serving")

        assert wait_until(reloaded, timeout=60, interval=0.2)
        channel = _channel(server)
        try:  # every worker answers with the new config
            stub = user_grpc.UserAPIStub(channel)
            assert wait_until(lambda: _get(stub).user.display_name.endswith(":m1"), timeout=60)
        finally:
            channel.close()
        assert pid_alive(restarted)
    finally:
        assert server.stop() == 0


def _running_with(text: str) -> list[int]:
    """The processes whose command line names ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in argv and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_sigterm_while_the_workers_start_leaves_nothing(tmp_path: Path, plugin: Path) -> None:
    import sys

    from .conftest import ROOT

    config = _config_file(tmp_path, plugin)
    pidfile = tmp_path / "serve.pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reva_plugins", "serve", str(config), "--pidfile", str(pidfile)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:  # the parent's first line: the workers start next
        lines.append(line)
        if "metrics on http://" in line:
            break
    assert wait_until(pidfile.exists, timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Traceback" not in rest
    assert wait_until(lambda: _running_with(str(config)) == []), _running_with(str(config))
    for pid in _started_plugins(tmp_path / "state"):
        assert wait_until(lambda pid=pid: not pid_alive(pid)), pid
    assert not pidfile.exists()


@pytest.mark.slow
def test_a_temp_dir_too_long_for_a_unix_socket_is_worked_around(
    tmp_path: Path, plugin: Path
) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    server = _start(_config_file(tmp_path, plugin), env={"TMPDIR": str(deep)})
    try:
        assert set(_status(server)["workers"]) == {"0", "1"}
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_the_parent_killed_takes_every_worker_and_plugin_with_it(
    tmp_path: Path, plugin: Path
) -> None:
    server = _start(_config_file(tmp_path, plugin))
    workers = _workers(server)
    plugins = _started_plugins(tmp_path / "state")
    assert len(plugins) == 2
    folder = _folder_of(server)
    server.kill()  # SIGKILL: no signal forwarded; the workers get their parent-death signal
    for pid in [*workers.values(), *plugins]:
        assert wait_until(lambda pid=pid: not pid_alive(pid), timeout=60), pid
    assert folder.exists()  # nobody left to remove it
    # the pid file is stale now: the next server takes it over, and removes the folder
    again = _start(_config_file(tmp_path, plugin))
    try:
        assert again.pidfile.read_text(encoding="ascii").strip() == str(again.proc.pid)
        assert not folder.exists()
        assert _folder_of(again).exists()
    finally:
        assert again.stop() == 0


@pytest.mark.slow
def test_sigterm_lets_every_workers_calls_in_flight_finish(tmp_path: Path, plugin: Path) -> None:
    server = _start(_config_file(tmp_path, plugin))
    workers = _workers(server)
    state = tmp_path / "state"
    results: list[Any] = []

    def slow(n: int) -> None:
        channel = _channel(server)
        try:
            reply = _get(user_grpc.UserAPIStub(channel), f"slow{n}")
            results.append((reply.status.code, _answering_pid(reply)))
        except grpc.RpcError as exc:
            results.append((exc.code(), 0))
        finally:
            channel.close()

    threads = [threading.Thread(target=slow, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(list(state.glob("slow*"))) == 10, timeout=60)
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert [code for code, _ in results] == [OK] * 10
    assert {pid for _, pid in results} <= set(workers.values())
    assert server.proc.wait(timeout=60) == 0
    server.stop()
    for pid in [*workers.values(), *_started_plugins(state)]:
        assert wait_until(lambda pid=pid: not pid_alive(pid)), pid
    assert not server.pidfile.exists()
