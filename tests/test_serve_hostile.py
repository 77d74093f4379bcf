"""Hostile and careless uses of ``reva-plugins serve`` on grpc.aio: real server processes on
127.0.0.1, real gRPC clients, a plugin that crashes, hangs, floods and sends junk."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the serve extra is not installed")

from cs3.identity.user.v1beta1 import user_api_pb2 as user_api  # noqa: E402
from cs3.rpc.v1beta1 import code_pb2  # noqa: E402
from google.protobuf import empty_pb2, struct_pb2  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from .conftest import pid_alive, wait_until  # noqa: E402
from .factory import make_plugin  # noqa: E402
from .plugin_sources import CHAOS_PLUGIN, HOSTILE_EXTRA  # noqa: E402
from .test_serve import (  # noqa: E402
    NOT_SERVING,
    OK,
    SERVING,
    USER_API,
    Served,
    _chaos_config,
    _get,
    _sample,
    uid,
)

pytestmark = pytest.mark.slow  # real servers, venvs and processes

ADMIN = "/reva_plugins.admin.v1.AdminAPI"


def _hostile_plugin(root: Path, marker: str = "v1") -> Path:
    make_plugin(root, name="reva-chaos-plugin", entry_points={"reva.userprovider": "demo"})
    (root / "reva_chaos_plugin" / "__init__.py").write_text(
        CHAOS_PLUGIN.format(marker=marker) + HOSTILE_EXTRA, encoding="utf-8"
    )
    return root


def _serve(
    tmp_path: Path,
    *,
    workers: int = 16,
    grace: float = 10,
    marker: str = "v1",
    call_timeout: float | None = None,
) -> Served:
    plugin = _hostile_plugin(tmp_path / "plugin", marker=marker)
    config = _chaos_config(tmp_path, plugin, grace=grace)
    text = config.read_text().replace("workers = 16", f"workers = {workers}")
    if call_timeout is not None:
        text = text.replace("call_timeout = ", f"call_timeout = {call_timeout}\n# was ")
    config.write_text(text)
    return Served(config)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(**kwargs: Any) -> Served:
        server = _serve(tmp_path, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(name))
    return found


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _admin(server: Served, method: str, timeout: float = 30) -> dict[str, Any]:
    call = server.channel.unary_unary(
        f"{ADMIN}/{method}",
        request_serializer=empty_pb2.Empty.SerializeToString,
        response_deserializer=struct_pb2.Struct.FromString,
    )
    from google.protobuf import json_format

    reply = call(empty_pb2.Empty(), timeout=timeout)
    return dict(json_format.MessageToDict(reply))


def _outcome(server: Served, opaque: str, timeout: float) -> tuple[Any, float]:
    """The CS3 code (or gRPC status code) of one GetUser and how long it took."""
    began = time.monotonic()
    try:
        code: Any = _get(server, opaque, timeout=timeout).status.code
    except grpc.RpcError as exc:
        code = exc.code()
    return code, time.monotonic() - began


def _in_flight(server: Served) -> float:
    return _sample(server.metrics(), "reva_plugins_calls_in_flight", service="userprovider")


class _HealthProbe:
    """Health Check in a loop on a channel of its own: the worst latency seen, the failures."""

    def __init__(self, server: Served) -> None:
        self.channel = grpc.insecure_channel(server.address)
        from grpc_health.v1 import health_pb2_grpc

        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.worst = 0.0
        self.failures: list[str] = []
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        request = health_pb2.HealthCheckRequest(service="")
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.stub.Check(request, timeout=5)
            except grpc.RpcError as exc:
                self.failures.append(str(exc.code()))
            self.worst = max(self.worst, time.monotonic() - began)
            self.checks += 1
            time.sleep(0.02)

    def __enter__(self) -> _HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.channel.close()


# -- SIGTERM while RPCs wait for a slot ---------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_with_rpcs_waiting_for_a_slot_drains_them_all(
    make_server: Callable[..., Served], tmp_path: Path, workers: int
) -> None:
    """Six 1 s calls on ``workers`` slots, SIGTERM while most wait their turn: each is served
    within the grace, the process exits 0, no plugin is left, the pidfile is gone."""
    server = make_server(workers=workers, grace=15)
    state = tmp_path / "state"
    plugin_pid = server.plugin_pids()["userprovider"]
    results: list[Any] = []

    def slow(n: int) -> None:
        results.append(_outcome(server, f"slow{n}", timeout=25)[0])

    threads = [threading.Thread(target=slow, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(list(state.glob("slow*"))) >= workers, timeout=30)
    time.sleep(0.2)  # the others are queued for a slot by now
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=40)
    assert results == [OK] * 6
    assert server.proc.wait(timeout=30) == 0
    assert wait_until(lambda: not pid_alive(plugin_pid))
    assert not server.pidfile.exists()


def test_sigterm_with_a_grace_shorter_than_the_queue_ends_every_rpc_and_exits(
    make_server: Callable[..., Served], tmp_path: Path
) -> None:
    """``workers = 1``, grace 2 s, a hung call and ten queued behind it: at SIGTERM nobody waits
    past the grace (plus the plugin's stop), the process exits 0, the plugin is gone."""
    server = make_server(workers=1, grace=2)
    state = tmp_path / "state"
    plugin_pid = server.plugin_pids()["userprovider"]
    results: list[tuple[Any, float]] = []
    hung = threading.Thread(
        target=lambda: results.append(_outcome(server, "hang-term", timeout=25)), daemon=True
    )
    hung.start()
    assert wait_until((state / "hang-term.started").exists, timeout=30)
    queued = [
        threading.Thread(target=lambda: results.append(_outcome(server, "demo", timeout=25)))
        for _ in range(10)
    ]
    for thread in queued:
        thread.start()
    time.sleep(0.3)
    began = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    took = time.monotonic() - began
    for thread in [hung, *queued]:
        thread.join(timeout=30)
    assert len(results) == 11
    assert all(elapsed < 20 for _, elapsed in results), results
    assert took < 20
    assert wait_until(lambda: not pid_alive(plugin_pid))
    assert not server.pidfile.exists()


# -- SIGHUP reloads while the loop is saturated -------------------------------------------------


def test_sighup_reloads_while_saturated_fail_nothing_and_leak_nothing(
    make_server: Callable[..., Served], tmp_path: Path
) -> None:
    """Twelve clients on two workers, four reloads that each replace the plugin: not one RPC
    fails, the old plugin processes are gone, and the server holds as many fds as before."""
    server = make_server(workers=2)
    pid = server.proc.pid
    failures: list[str] = []
    answers: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                reply = _get(server, "demo", timeout=30)
            except grpc.RpcError as exc:
                failures.append(str(exc.code()))
                continue
            if reply.status.code != OK:
                failures.append(reply.status.message)
            else:
                answers.append(reply.user.display_name)

    assert _get(server, "demo").status.code == OK
    fds_before = _fds(pid)
    clients = [threading.Thread(target=client) for _ in range(12)]
    for thread in clients:
        thread.start()
    plugin_pids: list[int] = [server.plugin_pids()["userprovider"]]
    try:
        assert wait_until(lambda: len(answers) > 50, timeout=30)
        for number in range(2, 6):
            _hostile_plugin(tmp_path / "plugin", marker=f"v{number}")
            start = len(server.lines)
            os.kill(pid, signal.SIGHUP)
            server.wait_for(rf"generation {number} serving", start=start, timeout=60)
            assert wait_until(lambda n=number: answers[-1:] == [f"v{n}"], timeout=30)
            plugin_pids.append(server.plugin_pids()["userprovider"])
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    assert failures == []
    assert len(set(plugin_pids)) == 5
    assert wait_until(lambda: not any(pid_alive(p) for p in plugin_pids[:-1]), timeout=30)
    assert _children(pid) == {plugin_pids[-1]}
    assert wait_until(lambda: _fds(pid) <= fds_before, timeout=15), (fds_before, _fds(pid))
    assert server.stop() == 0


# -- a plugin that crashes repeatedly under load ------------------------------------------------


def test_a_plugin_crashing_under_load_never_holds_an_rpc_past_its_deadline(
    make_server: Callable[..., Served],
) -> None:
    """Eight clients mixing crashes and plain calls on two workers: every RPC ends within its
    deadline (plus a generous margin), health goes NOT_SERVING and back to SERVING, and once
    the service is marked failed, RPCs are UNAVAILABLE at once."""
    server = make_server(workers=2)
    watch = server.health.Watch(health_pb2.HealthCheckRequest(service=USER_API), timeout=60)
    seen: list[int] = []

    def follow() -> None:
        with_errors = iter(watch)
        try:
            for reply in with_errors:
                seen.append(reply.status)
        except grpc.RpcError:
            pass

    threading.Thread(target=follow, daemon=True).start()
    assert wait_until(lambda: seen[:1] == [SERVING])
    slow: list[tuple[str, Any, float]] = []
    stop = threading.Event()
    deadline = 3.0

    def client(n: int) -> None:
        while not stop.is_set():
            opaque = "crash" if n % 2 else "demo"
            code, took = _outcome(server, opaque, timeout=deadline)
            if took > deadline + 2:
                slow.append((opaque, code, took))

    def failed() -> bool:
        page = server.metrics()
        return _sample(page, "reva_plugins_service_failures_total", service="userprovider") > 0

    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in clients:
        thread.start()
    try:
        assert wait_until(failed, timeout=25)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    watch.cancel()
    assert slow == []
    assert NOT_SERVING in seen
    assert SERVING in seen[seen.index(NOT_SERVING) :]  # it came back at least once
    for _ in range(20):
        code, took = _outcome(server, "demo", timeout=10)
        assert code == code_pb2.CODE_UNAVAILABLE
        assert took < 5  # at once, not at the call's 10 s deadline (margin for a loaded machine)
    health = health_pb2.HealthCheckRequest(service=USER_API)
    assert server.health.Check(health, timeout=10).status == NOT_SERVING
    assert server.stop() == 0


# -- clients that cancel by the hundreds ---------------------------------------------------------


def test_hundreds_of_cancelled_rpcs_leave_nothing_behind(
    make_server: Callable[..., Served], tmp_path: Path
) -> None:
    """Hundreds of RPCs cancelled mid-call (in the plugin, and waiting for a slot): the plugin
    sees ``$/cancel``, calls in flight go back to 0, the server serves on, and its fds and
    memory do not grow with the rounds."""
    server = make_server(workers=4)
    pid = server.proc.pid
    state = tmp_path / "state"
    assert _get(server, "demo").status.code == OK

    def unanswered() -> set[str]:  # calls that reached the plugin and saw no $/cancel yet
        started = {p.name.removesuffix(".started") for p in state.glob("hang-*.started")}
        return started - {p.name.removesuffix(".cancelled") for p in state.glob("hang-*.cancelled")}

    def round_of(tag: str, count: int) -> None:
        futures = [
            server.users.GetUser.future(
                user_api.GetUserRequest(user_id=uid(f"hang-{tag}-{n}", idp="test")), timeout=60
            )
            for n in range(count)
        ]

        def started() -> int:
            return len(list(state.glob(f"hang-{tag}-*.started")))

        assert wait_until(lambda: started() >= 4, timeout=30), (
            f"{started()} of round {tag} started; {_in_flight(server)} in flight; "
            f"in the plugin without a $/cancel: {sorted(unanswered())}"
        )
        time.sleep(0.1)
        for future in futures:
            future.cancel()
        assert wait_until(lambda: _in_flight(server) == 0, timeout=30)

    round_of("warm", 100)
    fds, rss = _fds(pid), _rss_kib(pid)
    for number in range(4):
        round_of(f"r{number}", 100)

    assert wait_until(lambda: not unanswered(), timeout=15), unanswered()
    assert _get(server, "demo").status.code == OK
    assert _fds(pid) <= fds + 5, (fds, _fds(pid))
    assert _rss_kib(pid) < rss + 30_000, (rss, _rss_kib(pid))
    page = server.metrics()
    rpcs_cancelled = _sample(
        page, "reva_plugins_rpcs_total", api=USER_API, method="GetUser", code="CODE_CANCELLED"
    )
    assert 0 < rpcs_cancelled <= 500  # one cancelled before its handler ran is not counted
    assert server.stop() == 0


# -- floods and junk from the plugin ---------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["flood-err", "flood-out", "junk", "ghost"])
def test_a_flooding_plugin_never_blocks_the_loop(
    make_server: Callable[..., Served], behaviour: str
) -> None:
    """The plugin floods stderr, stdout, its wire with junk or with replies to calls nobody
    made, for 4 s, while clients call it: every RPC is answered and the health Check loop
    always answers within its deadline."""
    server = make_server(workers=4)
    failures: list[Any] = []
    answered = [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            code, _ = _outcome(server, "demo", timeout=10)
            if code == OK:
                answered[0] += 1
            else:
                failures.append(code)

    with _HealthProbe(server) as probe:
        assert _get(server, f"{behaviour}4").status.code == OK
        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(4.5)  # the flood's length: clients and checks run all through it
        # then enough of both to judge by (a loaded machine may fit few in the flood itself)
        enough = wait_until(lambda: probe.checks > 10 and answered[0] > 10, timeout=60)
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    assert enough, (probe.checks, answered[0])
    assert probe.failures == []
    assert probe.worst < 5
    if behaviour in ("flood-err", "flood-out"):  # junk may split a reply the plugin writes
        assert failures == []
    assert server.proc.poll() is None
    assert _get(server, "demo").status.code == OK


@pytest.mark.parametrize(
    "behaviour",
    [
        "flood-err",
        "junk",
        "ghost",
    ],
)
def test_a_flooding_plugin_cannot_flood_the_servers_log(
    make_server: Callable[..., Served], behaviour: str
) -> None:
    """Whatever the plugin floods, the server's own log grows at a bounded rate (stderr is
    rate-limited to ``LOG_RATE`` lines a second after a burst of ``LOG_BURST``)."""
    server = make_server(workers=4)
    assert _get(server, "demo").status.code == OK
    before = len(server.lines)
    assert _get(server, f"{behaviour}3").status.code == OK
    time.sleep(3.5)
    grown = len(server.lines) - before
    assert server.stop() == 0
    assert grown < 1000 + 100 * 4 + 50, grown


# -- the admin API under load -------------------------------------------------------------------


def test_admin_status_and_reload_concurrently_with_load(
    make_server: Callable[..., Served], tmp_path: Path
) -> None:
    """Status and Reload from several threads while clients call on two workers: every admin
    call answers, no client RPC fails, the generations only go up."""
    server = make_server(workers=2)
    failures: list[Any] = []
    admin_errors: list[str] = []
    generations: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            code, _ = _outcome(server, "demo", timeout=30)
            if code != OK:
                failures.append(code)

    def status() -> None:
        while not stop.is_set():
            try:
                got = _admin(server, "Status", timeout=30)
            except grpc.RpcError as exc:
                admin_errors.append(f"Status {exc.code()}")
                continue
            generations.append(int(got["server"]["generation"]))

    def reload() -> None:
        for _ in range(3):
            try:
                _admin(server, "Reload", timeout=60)
            except grpc.RpcError as exc:
                admin_errors.append(f"Reload {exc.code()}")

    threads = [threading.Thread(target=client) for _ in range(8)]
    threads += [threading.Thread(target=status) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        _hostile_plugin(tmp_path / "plugin", marker="v2")
        reloaders = [threading.Thread(target=reload) for _ in range(3)]
        for thread in reloaders:
            thread.start()
        for thread in reloaders:
            thread.join(timeout=120)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert admin_errors == []
    assert failures == []
    assert generations == sorted(generations)
    assert generations[-1] == 2
    assert _get(server, "demo").user.display_name == "v2"
    assert server.stop() == 0


def test_admin_status_answers_while_a_reload_drains_on_one_worker(
    make_server: Callable[..., Served], tmp_path: Path
) -> None:
    """``workers = 1``: a SIGHUP reload drains (up to the grace) a hung RPC on the old plugin;
    an admin Reload asked meanwhile waits for that one (coalesced). A Status asked then must
    still answer at once: it reads a few attributes."""
    server = make_server(workers=1, grace=10, call_timeout=30)
    state = tmp_path / "state"
    hung = threading.Thread(target=_outcome, args=(server, "hang-drain", 12), daemon=True)
    hung.start()
    assert wait_until((state / "hang-drain.started").exists, timeout=30)
    _hostile_plugin(tmp_path / "plugin", marker="v2")
    start = len(server.lines)
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for(r"draining what it replaced", start=start, timeout=60)
    reload = threading.Thread(target=_suppressed_admin, args=(server, "Reload"), daemon=True)
    reload.start()
    time.sleep(0.5)
    try:
        got = _admin(server, "Status", timeout=5)
    finally:
        hung.join(timeout=30)
        reload.join(timeout=60)
        assert server.stop() == 0
    assert got["server"]["generation"] >= 2


def _suppressed_admin(server: Served, method: str) -> None:
    with contextlib.suppress(grpc.RpcError):
        _admin(server, method, timeout=60)
