"""``reva-plugins serve`` hardened (#19) and its conventions (#21): a reload to a config with
nothing to serve, a pid file that is no pid file, plugin text in the log, TLS files that do not
fit, a FIFO named as a pid file, caller timeouts that are no number, idle metrics connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the serve extra is not installed")

from reva_plugins import Host, RevaPluginError  # noqa: E402
from reva_plugins.serve import _commands, _server  # noqa: E402

from . import test_host_api  # noqa: E402
from .conftest import ROOT, cli, pid_alive, wait_until  # noqa: E402
from .factory import make_plugin  # noqa: E402
from .plugin_sources import CHAOS_PLUGIN  # noqa: E402
from .test_serve import (  # noqa: E402
    AUTH_API,
    EINSTEIN,
    GROUP_API,
    OK,
    SAMPLES_CONFIG,
    USER_API,
    Served,
    _chaos_config,
    _get,
    uid,
)

inproc_host = test_host_api.inproc_host  # a fixture

# The chaos plugin, raising an error whose text would drive a terminal and reorder a line.
EVIL_EXTRA = """

_get_user = Provider.get_user


def get_user(self, user_id, skip_fetching_groups=False, context=None):
    if user_id.get("opaque_id") == "evil":
        raise RuntimeError("\\x1b[2J\\x1b[31mred\\x07bell\\x08\\u202eevil\\x9b")
    return _get_user(self, user_id, skip_fetching_groups, context)


Provider.get_user = get_user
"""


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("evil")
    root = tmp / "plugin"
    make_plugin(root, name="reva-chaos-plugin", entry_points={"reva.userprovider": "demo"})
    (root / "reva_chaos_plugin" / "__init__.py").write_text(
        CHAOS_PLUGIN.format(marker="v1") + EVIL_EXTRA, encoding="utf-8"
    )
    server = Served(_chaos_config(tmp, root))
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow
def test_a_plugins_error_text_reaches_the_log_escaped(evil: Served) -> None:
    start = len(evil.lines)
    reply = _get(evil, "evil")
    assert reply.status.code != OK
    line = evil.wait_for(r"GetUser: \w+Error", start=start, timeout=30).string
    for raw in ("\x1b", "\x07", "\x08", "\u202e", "\x9b"):
        assert raw not in evil.text()
    assert "\\x1b[31mred\\x07bell\\x08\\u202eevil\\x9b" in line


@pytest.mark.slow
def test_a_reload_to_a_config_with_nothing_to_serve_keeps_the_previous_version(
    evil: Served,
) -> None:
    """A half-written config (truncated) reloaded: refused in one line, every service kept."""
    config = evil.config
    text = config.read_text(encoding="utf-8")
    try:
        for empty in ("", "[grpc]\n", '[grpc.services.gateway]\nx = "y"\n'):
            config.write_text(empty, encoding="utf-8")
            start = len(evil.lines)
            os.kill(evil.proc.pid, signal.SIGHUP)
            line = evil.wait_for(r"reload failed", start=start).string
            assert "still serving the previous version" in line
            assert "no service to serve" in line
            assert "dropped" not in evil.text()[-2000:]
            assert _get(evil, "demo").status.code == OK
        by_address = cli("reload", evil.address)
        assert by_address.returncode == 1, by_address.stderr
        assert "no service to serve" in by_address.stderr
        assert _get(evil, "demo").status.code == OK
    finally:
        config.write_text(text, encoding="utf-8")


@pytest.mark.slow
def test_serve_speaks_only_the_apis_it_serves(evil: Served) -> None:
    """Only the user provider is configured: the auth and group APIs are not registered
    (UNIMPLEMENTED, not listed by reflection), as with revad."""
    from cs3.auth.provider.v1beta1 import provider_api_pb2 as auth_api
    from cs3.auth.provider.v1beta1 import provider_api_pb2_grpc as auth_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with pytest.raises(grpc.RpcError) as unknown:
        auth_grpc.ProviderAPIStub(evil.channel).Authenticate(
            auth_api.AuthenticateRequest(client_id="marie", client_secret="x"), timeout=10
        )
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    stub = reflection_pb2_grpc.ServerReflectionStub(evil.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = [s.name for reply in replies for s in reply.list_services_response.service]
    assert USER_API in names
    assert AUTH_API not in names
    assert GROUP_API not in names
    assert _get(evil, "demo").status.code == OK


@pytest.mark.slow
def test_status_json_is_one_sorted_object(evil: Served) -> None:
    assert _get(evil, "demo").status.code == OK
    for address in (evil.address, f"127.0.0.1:{evil.metrics_port}"):
        result = cli("status", address, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        metrics = report["metrics"]
        assert list(metrics) == sorted(metrics)
        ok = f"reva_plugins_rpcs_total{{api={USER_API},code=CODE_OK,method=GetUser}}"
        assert metrics[ok] >= 1
    assert list(report) == ["metrics"]  # the metrics address: counters only
    by_grpc = json.loads(cli("status", evil.address, "--json").stdout)
    assert list(by_grpc["services"]) == ["userprovider"]
    fields = by_grpc["services"]["userprovider"]
    assert list(fields) == sorted(fields)
    assert fields["api"] == USER_API
    assert list(by_grpc["server"]) == sorted(by_grpc["server"])
    table = cli("status", evil.address).stdout.splitlines()
    server_fields = [f.split("=")[0] for f in table[0].split()[1:]]
    assert server_fields == sorted(server_fields)
    rows = [r for r in table if r.startswith("reva_plugins_")]
    assert rows == sorted(rows)


def _serve_refused(*args: str) -> subprocess.CompletedProcess[str]:
    result = cli("serve", *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_a_pidfile_that_is_no_pid_file_is_refused_and_kept(tmp_path: Path) -> None:
    """``--pidfile notes.txt`` and ``--pidfile CONFIG``: refused (exit 2, one line naming the
    file) before anything starts, the file untouched."""
    config = tmp_path / "revad.toml"
    config.write_text(SAMPLES_CONFIG, encoding="utf-8")
    before = config.read_text(encoding="utf-8")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for victim in (notes, config, empty):
        kept = victim.read_bytes()
        result = _serve_refused(str(config), "--pidfile", str(victim))
        assert f"--pidfile {victim}" in result.stderr
        assert "holds no pid" in result.stderr
        assert victim.read_bytes() == kept
    assert config.read_text(encoding="utf-8") == before


def test_a_stale_pid_file_is_taken_over(tmp_path: Path) -> None:
    """A pid file holding a pid (of a server gone, or of a process that is no server) is a
    pid file: a server takes it over; one of a server still running is refused."""
    from reva_plugins.serve import _files

    path = tmp_path / "serve.pid"
    path.write_text("1234\n", encoding="ascii")
    with pytest.raises(RevaPluginError, match="server 1234 is running with it"):
        _files.write_pidfile(path, lambda pid: pid == 1234)
    assert path.read_text(encoding="ascii") == "1234\n"
    _files.write_pidfile(path, lambda pid: False)
    assert path.read_text(encoding="ascii") == f"{os.getpid()}\n"
    _files.remove_pidfile(path)
    assert not path.exists()


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not on this machine to make a certificate")
    subprocess.run([openssl, *args], check=True, capture_output=True)


def _key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
        "-out", str(cert), "-subj", "/CN=localhost",
    )  # fmt: skip
    return cert, key


def test_tls_files_that_do_not_fit_say_what_is_wrong(tmp_path: Path) -> None:
    """Swapped, mismatched, garbage or encrypted: one line naming the TLS key, not the port."""
    cert, key = _key_pair(tmp_path, "one")
    other_cert, _ = _key_pair(tmp_path, "two")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        encoding="ascii",
    )
    locked = tmp_path / "locked.key"
    _openssl("rsa", "-in", str(key), "-out", str(locked), "-aes256", "-passout", "pass:secret")
    for tls_cert, tls_key, why in (
        (key, cert, "swapped"),
        (other_cert, key, "does not match"),
        (garbage, key, "no usable certificate and key"),
        (cert, locked, "encrypted"),
        (cert, cert, "holds no private key"),
        (key, key, "holds no certificate"),
    ):
        config = tmp_path / "tls.toml"
        config.write_text(
            SAMPLES_CONFIG.replace(
                "workers = 8", f'workers = 8\ntls_cert = "{tls_cert}"\ntls_key = "{tls_key}"'
            ),
            encoding="utf-8",
        )
        result = _serve_refused(str(config))
        assert why in result.stderr, (tls_cert, tls_key, result.stderr)
        assert "grpc.tls_" in result.stderr
        assert "cannot listen" not in result.stderr
        assert "PRIVATE KEY" not in result.stderr


def test_reload_of_a_fifo_or_a_url_answers_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "serve.pid"
    os.mkfifo(fifo)
    began = time.monotonic()
    result = cli("reload", str(fifo))
    assert result.returncode == 2, result.stderr
    assert "not a pid file" in result.stderr
    assert time.monotonic() - began < 30
    url = cli("reload", "http://x")
    assert url.returncode == 2, url.stderr
    assert "'http://x'" in url.stderr
    assert "not a URL" in url.stderr


@pytest.mark.parametrize(
    ("argv", "server"),
    [
        (["/venv/bin/reva-plugins", "serve", "revad.toml"], True),
        (["/venv/bin/python3", "/venv/bin/reva-plugins", "serve", "x.toml"], True),
        (["/usr/bin/python3.12", "-X", "dev", "-m", "reva_plugins", "-v", "serve", "x"], True),
        (["python3", "-I", "-m", "reva_plugins", "serve", "x"], True),
        (["bash", "-c", "sleep 100", "reva-plugins", "serve"], False),
        (["sh", "-c", "reva-plugins serve x.toml"], False),
        (["python3", "-c", "import time", "reva-plugins", "serve"], False),
        (["python3", "-m", "other", "reva_plugins", "serve"], False),
        (["reva-plugins", "status", "127.0.0.1:1"], False),
        ([], False),
    ],
)
def test_is_server_cmdline(argv: list[str], server: bool) -> None:
    assert _commands.is_server_cmdline(argv) is server


@pytest.mark.parametrize("bad", [True, float("nan"), "1", [1]])
def test_a_caller_timeout_that_is_no_number_is_one_clear_error(
    inproc_host: Host, bad: object
) -> None:
    users = inproc_host.service("userprovider")
    params = {"user_id": {"opaque_id": "demo"}}
    with pytest.raises(RevaPluginError, match="timeout must be None or a number of seconds"):
        users.call("get_user", params, timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(RevaPluginError, match="timeout must be None or a number of seconds"):
        asyncio.run(users.acall("get_user", params, timeout=bad))  # type: ignore[arg-type]
    assert users.call("get_user", params, timeout=5)["username"] == "in-process demo"


def test_idle_metrics_connections_are_bounded() -> None:
    """200 idle connections to the metrics endpoint hold at most METRICS_CONNECTIONS threads."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import MetricsHandler

    handler = MetricsHandler.factory(CollectorRegistry())
    server = _server._MetricsHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    before = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        assert threading.active_count() - before <= _server.METRICS_CONNECTIONS
    finally:
        for conn in idle:
            conn.close()
        server.shutdown()
        server.server_close()


# -- revad's [log] table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "why"),
    [
        ('[log]\nlevel = "loud"\n', "log.level", "must be one of debug, info, warn"),
        ('[log]\nmode = "xml"\n', "log.mode", "must be one of console, json"),
        ("[log]\nmode = 3\n", "log.mode", "must be str"),
        ('[log]\noutput = ""\n', "log.output", "must not be empty"),
        ('[log]\noutput = "."\n', "log.output", "Is a directory"),
        ('[log]\noutput = "fifo"\n', "log.output", "cannot write"),
        ('[log]\noutput = "missing/dir/serve.log"\n', "log.output", "cannot write"),
        ("[log]\ncolor = true\n", "log.color", "unknown key"),
        ('log = "info"\n', "log", "must be a table"),
    ],
)
def test_bad_log_settings_are_one_line_naming_the_key(
    tmp_path: Path, table: str, key: str, why: str
) -> None:
    os.mkfifo(tmp_path / "fifo")
    config = tmp_path / "revad.toml"
    config.write_text(table + SAMPLES_CONFIG, encoding="utf-8")
    result = _serve_refused(str(config))
    assert key in result.stderr, result.stderr
    assert why in result.stderr, result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_on(config: Path, stderr: Any) -> tuple[subprocess.Popen[bytes], str]:
    """``serve config`` (its [grpc] address a free port), once its user API serves."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = _free_port()
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace(
            'address = "127.0.0.1:0"\nshutdown', f'address = "127.0.0.1:{port}"\nshutdown'
        ),
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "reva_plugins", "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        cwd=ROOT,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.poll() is None, "serve exited"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=USER_API), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, address
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.slow
def test_log_json_to_a_file_with_timestamps_and_the_access_fields(tmp_path: Path) -> None:
    from cs3.identity.user.v1beta1 import user_api_pb2 as user_api
    from cs3.identity.user.v1beta1 import user_api_pb2_grpc as user_grpc

    config = tmp_path / "revad.toml"
    config.write_text(
        '[log]\nlevel = "debug"\nmode = "json"\noutput = "serve.log"\n' + SAMPLES_CONFIG,
        encoding="utf-8",
    )
    proc, address = _serve_on(config, subprocess.PIPE)
    try:
        with grpc.insecure_channel(address) as channel:
            reply = user_grpc.UserAPIStub(channel).GetUser(
                user_api.GetUserRequest(user_id=uid(EINSTEIN)), timeout=30
            )
        assert reply.status.code == OK
    finally:
        assert _stop(proc) == 0
    assert proc.stderr is not None
    assert proc.stderr.read() == b""  # everything went to the file
    entries = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries), entries
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", e["time"]) for e in entries)
    assert any(e["message"].startswith("serving ") for e in entries)
    rpcs = [e for e in entries if e["logger"] == "reva_plugins.serve.access"]
    assert len(rpcs) == 1, entries
    assert (rpcs[0]["method"], rpcs[0]["status"]) == ("GetUser", "CODE_OK")
    assert entries[-1]["message"] == "stopped"


@pytest.mark.slow
def test_a_full_stderr_pipe_never_stalls_the_rpcs(tmp_path: Path) -> None:
    """stderr is a pipe nobody reads: once it is full, RPCs are still answered at once (the
    log lines wait in a bounded queue, then are dropped and counted)."""
    from cs3.identity.user.v1beta1 import user_api_pb2 as user_api
    from cs3.identity.user.v1beta1 import user_api_pb2_grpc as user_grpc

    config = tmp_path / "revad.toml"
    config.write_text('[log]\nlevel = "debug"\n' + SAMPLES_CONFIG, encoding="utf-8")
    proc, address = _serve_on(config, subprocess.PIPE)  # never read until the end
    try:
        with grpc.insecure_channel(address) as channel:
            users = user_grpc.UserAPIStub(channel)
            request = user_api.GetUserRequest(user_id=uid(EINSTEIN))
            began = time.monotonic()
            for _ in range(1500):  # ~200 bytes of access log each: far more than a pipe holds
                assert users.GetUser(request, timeout=10).status.code == OK
            assert time.monotonic() - began < 120
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        out = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0
    lines = out.splitlines()
    assert sum("method=GetUser" in line for line in lines) == 1500
    assert re.match(r"\d{4}-\d\d-\d\dT\S+ reva-plugins: ", lines[0]), lines[0]


def test_records_beyond_the_queue_are_dropped_counted_and_never_wait() -> None:
    """The writer is stuck on a pipe nobody reads: logging 3x the queue returns at once; the
    lines dropped are counted in one line once the writer gets through."""
    from reva_plugins import _config
    from reva_plugins.serve import _log

    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w", buffering=1)
    root = logging.getLogger("reva_plugins")
    saved = (list(root.handlers), root.level, root.propagate)
    root.handlers[:] = [logging.StreamHandler(writer)]
    root.propagate = False
    root.setLevel(logging.INFO)
    undo = _log.configure(_config.LogSettings(), 0, "revad.toml")
    chunks: list[bytes] = []
    try:
        log = logging.getLogger("reva_plugins.serve")
        began = time.monotonic()
        for number in range(3 * _log.QUEUE_SIZE):
            log.info("line %d %s", number, "x" * 100)
        assert time.monotonic() - began < 30

        def drain() -> None:
            while chunk := os.read(read_fd, 1 << 16):
                chunks.append(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        undo()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]
        writer.close()
    reader.join(timeout=30)
    os.close(read_fd)
    text = b"".join(chunks).decode()
    dropped = re.findall(r"log: (\d+) lines dropped", text)
    written = text.count(" line ")
    assert dropped, text[-500:]
    assert written + sum(int(n) for n in dropped) == 3 * _log.QUEUE_SIZE


def test_log_settings_read_revads_log_table(tmp_path: Path) -> None:
    from reva_plugins import _config

    config = tmp_path / "revad.toml"
    for table, expected in (
        ("", _config.LogSettings()),
        ('[log]\nlevel = "warn"\noutput = "stderr"\n', _config.LogSettings(level="warn")),
        (
            '[log]\nmode = "json"\noutput = "stdout"\n',
            _config.LogSettings(mode="json", stream="stdout"),
        ),
        (
            '[log]\noutput = "logs/serve.log"\n',
            _config.LogSettings(output=tmp_path / "logs/serve.log"),
        ),
    ):
        config.write_text(table + SAMPLES_CONFIG, encoding="utf-8")
        assert _config.load_file(config).log == expected, table


# -- status and reload pointed at a gRPC server that is no reva-plugins serve -----------------


#: what a foreign server says, made to drive a terminal
_EVIL_DETAILS = "admin calls only from 10.0.0.1\x1b[2J\x1b[31m\x07\u202e"


class _Fake:  # a grpc.GenericRpcHandler (grpc asks only for service())
    """Answers every method as ``kind`` says: ``plain`` knows none (UNIMPLEMENTED), ``denied``
    aborts with PERMISSION_DENIED, ``silent`` never answers (until the test ends)."""

    def __init__(self, kind: str, done: threading.Event) -> None:
        self.kind = kind
        self.done = done
        self.asked: list[str] = []

    def service(self, details: Any) -> Any:
        self.asked.append(details.method)
        if self.kind == "plain":
            return None
        return grpc.unary_unary_rpc_method_handler(self.answer)

    def answer(self, request: bytes, context: Any) -> bytes:
        if self.kind == "denied":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, _EVIL_DETAILS)
        self.done.wait(60)
        return b""


@pytest.fixture(params=["plain", "denied", "silent"])
def fake_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, _Fake]]:
    """A real gRPC server on 127.0.0.1 that is no reva-plugins serve: its kind, its address."""
    from concurrent import futures

    done = threading.Event()
    handler = _Fake(request.param, done)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield request.param, f"127.0.0.1:{port}", handler
    finally:
        done.set()
        server.stop(None)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["status", "reload"])
def test_status_and_reload_at_a_server_that_is_no_serve_say_what_is_wrong(
    fake_server: tuple[str, str, _Fake], command: str
) -> None:
    """``status``/``reload`` at a gRPC server without the admin API, one that refuses the
    call, and one that never answers: one line naming the address and what is wrong, exit 1,
    no traceback."""
    kind, address, handler = fake_server
    result = cli(command, address, "--timeout", "3")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert address in lines[0]
    assert handler.asked, "the admin API was asked"
    why = {
        "plain": f"{address} is a gRPC server without the reva-plugins admin API",
        "denied": f"{address}: admin calls only from 10.0.0.1\\x1b[2J\\x1b[31m\\x07\\u202e",
        "silent": f"{address}: no answer within 3 s",
    }[kind]
    assert why in lines[0]
    assert lines[0].isprintable(), "what the server sent is not echoed raw"
    if command == "status":  # it looks for a [metrics] page first
        assert "the answer is not HTTP/1" in lines[0]
    assert result.stdout == ""


# -- reload through a pid file -------------------------------------------------------------------


@pytest.mark.slow
def test_reload_through_the_pid_file_reloads_and_a_zombie_is_refused(
    evil: Served, tmp_path: Path
) -> None:
    """``reload PIDFILE`` of a running serve: it reloads (its log says so) and keeps serving.
    A pid file naming a serve that has exited but is not yet reaped (a zombie: its pid still
    taken): refused in one line, exit 1, nothing signalled."""
    assert evil.pidfile.read_text(encoding="ascii").strip() == str(evil.proc.pid)
    start = len(evil.lines)
    result = cli("reload", str(evil.pidfile))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        f"reload requested from process {evil.proc.pid} (SIGHUP; its log says what it did)"
    )
    evil.wait_for(r"reload: configuration and drivers unchanged", start=start)
    assert _get(evil, "demo").status.code == OK
    gone = subprocess.Popen(
        [sys.executable, "-m", "reva_plugins", "serve", str(tmp_path / "missing.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: not pid_alive(gone.pid), timeout=60)  # exited, not reaped
        stale = tmp_path / "serve.pid"
        stale.write_text(f"{gone.pid}\n", encoding="ascii")
        refused = cli("reload", str(stale))
        assert refused.returncode == 1, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert f"process {gone.pid} is not a reva-plugins server" in lines[0]
        assert "nothing was signalled" in lines[0]
    finally:
        gone.wait(timeout=60)


@pytest.mark.slow
def test_status_at_an_http_server_that_is_no_metrics_page_escapes_what_it_says() -> None:
    """An HTTP server whose status line's reason would drive the terminal: ``status`` names
    the address and shows that reason escaped, on one line, exit 1."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    listener.settimeout(0.1)
    done = threading.Event()

    def answer() -> None:
        # the metrics read, then (from the same command) the gRPC channel's connections
        while not done.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(10)
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.0 500 gone\x1b[2J\x1b]0;owned\x07\x9b\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        result = cli("status", address, "--timeout", "3")
    finally:
        done.set()
        thread.join(60)
        listener.close()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"http://{address}/metrics" in lines[0]
    assert "gone\\x1b[2J\\x1b]0;owned\\x07\\x9b" in lines[0]
    assert lines[0].isprintable()


@pytest.mark.slow
def test_status_of_a_metrics_page_with_odd_samples_is_shown_safely() -> None:
    """A metrics page (another program's, or a hostile one) whose label values hold terminal
    escapes and whose samples are +Inf and NaN (valid Prometheus): ``status`` shows them
    escaped and as ``inf``/``nan`` (``--json``: strict JSON, the values as text), never an
    internal error."""
    import http.server

    page = (
        b'reva_plugins_calls_total{service="users\x1b[2J\x1b]0;owned\x07"} 3\n'
        b"reva_plugins_far +Inf\n"
        b"reva_plugins_unknown NaN\n"
    )

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        table = cli("status", address, "--timeout", "10")
        as_json = cli("status", address, "--json", "--timeout", "10")
    finally:
        server.shutdown()
        server.server_close()
    assert table.returncode == 0, table.stderr
    assert "internal error" not in table.stderr
    assert all(line.isprintable() for line in table.stdout.splitlines())
    assert "users\\x1b[2J\\x1b]0;owned\\x07" in table.stdout
    rows = dict(line.split() for line in table.stdout.splitlines())
    assert rows["reva_plugins_far"] == "inf"
    assert rows["reva_plugins_unknown"] == "nan"
    assert as_json.returncode == 0, as_json.stderr

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is no JSON")

    metrics = json.loads(as_json.stdout, parse_constant=refuse)["metrics"]
    assert metrics["reva_plugins_far"] == "inf"
    assert metrics["reva_plugins_unknown"] == "nan"
    assert metrics["reva_plugins_calls_total{service=users\\x1b[2J\\x1b]0;owned\\x07}"] == 3
