"""GetUser through ``reva-plugins serve`` vs a bare grpcio server answering from a dict.

``serve`` runs twice: as a user deploys it (the default access log, ``[metrics]`` on: the
figures compared with the baseline) and lean (no access log, no metrics endpoint, so no
metrics ``service_call`` wrapper), in the same run. Where the deployed server's CPU per RPC
goes is measured piece by piece (``_budget``) and set beside the totals. The baseline has
serve's flavour: ``grpc.aio``, with as many RPCs served at once as
serve's ``workers``. The bare server of the thread-pool flavour (``grpc.server``, as many
threads) is measured beside them for reference, and so are two bare servers that ask another
process on each RPC: an echo (the hop alone) and a minimal Python JSON-RPC plugin answering
from a dict (the floor: what any server that asks a Python plugin process pays, with none of
serve's features). Each server runs in its own process; the clients run in the benchmark
process, 1, 4 and 16 threads on one channel.
``python -m benchmarks._serve bare PORT_FILE WORKERS aio|threads|aio-hop|aio-plugin`` is a
baseline server.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

from reva_plugins import _defaults

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_plugins" / "json_users"
USERS = ROOT / "examples" / "users.demo.json"
IDP = "http://localhost:20080"
WORKERS = 16
CLIENTS = (1, 4, 16)
#: The access log a user gets (``[grpc] access_log``'s default).
ACCESS_LOG = _defaults.ACCESS_LOG
#: Rounds per level of concurrency (odd: the median is one of them).
ROUNDS = 3


def _user_dict() -> dict[str, Any]:
    import json

    users = json.loads(USERS.read_text(encoding="utf-8"))
    return {u["username"]: u for u in users}


#: The other end of the bare server's process hop: echoes what it reads, as fast as it can.
ECHO = "import os\nwhile data := os.read(0, 65536):\n    os.write(1, data)\n"
#: The least a Python plugin does: a JSON-RPC request per line in, the user from a dict, a
#: JSON-RPC reply per line out (no framework, no pool, no checks; a batch of lines at a time).
MINIMAL_PLUGIN = """
import json, os, sys
users = {u["username"]: u for u in json.load(open(sys.argv[1], encoding="utf-8"))}
rest = b""
while data := os.read(0, 65536):
    *lines, rest = (rest + data).split(b"\\n")
    out = []
    for line in lines:
        request = json.loads(line)
        user = users.get(request["params"]["user_id"])
        out.append(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": user}))
    os.write(1, ("\\n".join(out) + "\\n").encode())
"""


def bare_server(port_file: Path, workers: int, flavour: str = "aio") -> None:
    """The baseline: GetUser answered from an in-memory dict, nothing else; ``flavour`` is
    ``aio`` (at most ``workers`` at once), ``threads`` (a pool of ``workers``), ``aio-hop``
    (``aio``, each RPC first sending the user id to an echo process and awaiting it back on the
    loop: the least any server pays that asks another process, as serve asks its plugin) or
    ``aio-plugin`` (``aio``, each RPC a JSON-RPC call to a minimal Python plugin process that
    answers from a dict: the least a server pays that asks a Python plugin, as serve does)."""
    import grpc
    from cs3.identity.user.v1beta1 import resources_pb2 as res
    from cs3.identity.user.v1beta1 import user_api_pb2 as api
    from cs3.rpc.v1beta1 import code_pb2, status_pb2

    users = _user_dict()

    def answer(key: str) -> Any:
        return build(users.get(key))

    def build(user: dict[str, Any] | None) -> Any:
        if user is None:
            return api.GetUserResponse(status=status_pb2.Status(code=code_pb2.CODE_NOT_FOUND))
        pb = res.User(
            id=res.UserId(**user["id"]),
            username=user["username"],
            mail=user["mail"],
            display_name=user["display_name"],
            groups=user["groups"],
            uid_number=user["uid_number"],
            gid_number=user["gid_number"],
        )
        return api.GetUserResponse(status=status_pb2.Status(code=code_pb2.CODE_OK), user=pb)

    def get_user(request: Any, context: Any) -> Any:
        return answer(request.user_id.opaque_id)

    if flavour == "aio":
        aio_server(port_file, workers, get_user)
        return
    if flavour == "aio-hop":
        aio_server(port_file, workers, answer, hop="echo")
        return
    if flavour == "aio-plugin":
        aio_server(port_file, workers, build, hop="plugin")
        return
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        handlers=[_get_user_handler(get_user)],
        options=[("grpc.max_receive_message_length", 1 << 20), ("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port), encoding="ascii")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


def _get_user_handler(get_user: Any) -> Any:
    """``get_user`` as the UserAPI's GetUser (a function or a coroutine function)."""
    import grpc
    from cs3.identity.user.v1beta1 import user_api_pb2 as api

    return grpc.method_handlers_generic_handler(
        "cs3.identity.user.v1beta1.UserAPI",
        {
            "GetUser": grpc.unary_unary_rpc_method_handler(
                get_user,
                request_deserializer=api.GetUserRequest.FromString,
                response_serializer=api.GetUserResponse.SerializeToString,
            )
        },
    )


def aio_server(port_file: Path, workers: int, get_user: Any, *, hop: str | None = None) -> None:
    """``get_user`` served by ``grpc.aio``, ``workers`` at once (as serve limits them); with
    ``hop="echo"``, ``get_user`` is given the user id once an echo process has sent it back;
    with ``hop="plugin"``, the user's dict (or None) a minimal JSON-RPC plugin answered."""
    import asyncio
    import collections
    import json
    import socket

    import grpc

    async def main() -> None:
        slots = asyncio.Semaphore(workers)
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        program = [ECHO] if hop == "echo" else [MINIMAL_PLUGIN, str(USERS)]
        other = (
            subprocess.Popen(
                [sys.executable, "-c", *program], stdin=theirs.fileno(), stdout=theirs.fileno()
            )
            if hop
            else None
        )
        theirs.close()
        os.set_blocking(ours.fileno(), False)
        waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        calls: dict[int, asyncio.Future[Any]] = {}
        ids = iter(range(1 << 62))
        buffer = bytearray()

        def readable() -> None:
            buffer.extend(ours.recv(1 << 16))
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                if hop == "echo":
                    waiting.popleft().set_result(line)
                else:
                    reply = json.loads(line)
                    calls.pop(reply["id"]).set_result(reply["result"])

        loop.add_reader(ours.fileno(), readable)

        async def handle(request: Any, context: Any) -> Any:
            async with slots:
                if not hop:
                    return get_user(request, context)
                if hop == "echo":
                    back: asyncio.Future[bytes] = loop.create_future()
                    waiting.append(back)
                    ours.send(request.user_id.opaque_id.encode() + b"\n")
                    return get_user((await back).decode())
                number = next(ids)
                calls[number] = answered = loop.create_future()
                params = {"user_id": request.user_id.opaque_id}
                line = {"jsonrpc": "2.0", "id": number, "method": "get_user", "params": params}
                ours.send(json.dumps(line).encode() + b"\n")
                return get_user(await answered)

        server = grpc.aio.server(
            handlers=[_get_user_handler(handle)],
            options=[("grpc.max_receive_message_length", 1 << 20), ("grpc.so_reuseport", 0)],
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(str(port), encoding="ascii")
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1)
        loop.remove_reader(ours.fileno())
        ours.close()
        if other is not None:
            other.wait()

    asyncio.run(main())


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    """SIGTERM to each of ``procs`` at once, then wait for each (a minute, then SIGKILL)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_port(proc: subprocess.Popen[str], find: Any, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port = find()
        if port:
            return int(port)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def _user_api() -> tuple[Any, Any]:
    """A GetUser request for a user the sample knows, and the UserAPI stub class."""
    from cs3.identity.user.v1beta1 import resources_pb2 as res
    from cs3.identity.user.v1beta1 import user_api_pb2 as api
    from cs3.identity.user.v1beta1 import user_api_pb2_grpc as stubs

    request = api.GetUserRequest(user_id=res.UserId(idp=IDP, opaque_id="einstein"))
    return request, stubs.UserAPIStub


def _clients(stubs_: list[Any], request: Any, calls: int) -> tuple[list[float], float]:
    """``calls`` GetUser in all, from a thread per stub: the latencies, sorted, and the
    seconds they all took."""
    per_thread = max(1, calls // len(stubs_))
    samples: list[list[float]] = [[] for _ in stubs_]

    def client(index: int) -> None:
        clock = time.perf_counter
        out, stub = samples[index], stubs_[index]
        for _ in range(per_thread):
            began = clock()
            reply = stub.GetUser(request, timeout=30)
            out.append(clock() - began)
            assert reply.status.code == 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(stubs_))]
    # The clients' collector off while they run (as timeit does): a full collection of this
    # process's heap, grown by the figures before, stalls every client thread for ~100 ms and
    # showed as a p99 of ~110 ms for whichever server it happened to land on.
    gc.collect()
    gc.disable()
    try:
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
    finally:
        gc.enable()
    return sorted(s for batch in samples for s in batch), elapsed


def _load(address: str, clients: int, calls: int) -> dict[str, float]:
    """``calls`` GetUser in total from ``clients`` threads on one channel: calls/s, p50, p99."""
    import grpc

    request, stub_class = _user_api()
    with grpc.insecure_channel(address) as channel:
        stub = stub_class(channel)
        for _ in range(50):  # warm up: connection, plugin, caches
            assert stub.GetUser(request, timeout=30).status.code == 1
        flat, elapsed = _clients([stub] * clients, request, calls)
    return {
        "calls_per_s": round(len(flat) / elapsed, 1),
        "p50_ms": round(flat[len(flat) // 2] * 1000, 3),
        "p99_ms": round(flat[min(len(flat) - 1, int(len(flat) * 0.99))] * 1000, 3),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children (the plugins), from ``/proc``."""
    return _own_cpu_seconds([pid, *_children(pid)])


def metrics_wrapper_cost(
    plain: Any, uid: dict[str, str], n: int, rounds: int = 15
) -> dict[str, Any]:
    """What the metrics ``service_call`` wrapper adds to one call, isolated: the same in-process
    driver behind a proxy without call hooks (the baseline: no pluggy at all) and behind one whose
    host has the server's metrics hooks registered. Alternating batches; medians per call."""
    from reva_plugins import Host
    from reva_plugins._proxy import ServiceProxy
    from reva_plugins.serve._metrics import Metrics

    host = Host({})
    host.register(Metrics().hooks())
    metered = ServiceProxy(plain.service, plain.driver, "metered", wrappers=host._wrappers)
    assert metered.get_user(uid) == plain.get_user(uid)
    batch = max(1, n // rounds)
    clock = time.perf_counter

    def per_call(func: Any) -> float:
        began = clock()
        for _ in range(batch):
            func(uid)
        return (clock() - began) / batch

    per_call(plain.get_user)  # warm-up
    per_call(metered.get_user)
    bare, wrapped = [], []
    for _ in range(rounds):
        bare.append(per_call(plain.get_user))
        wrapped.append(per_call(metered.get_user))
    bare_us = statistics.median(bare) * 1e6
    wrapped_us = statistics.median(wrapped) * 1e6
    host.close()
    return {
        "with_metrics_us": round(wrapped_us, 2),
        "baseline_no_hook_us": round(bare_us, 2),
        "added_us": round(wrapped_us - bare_us, 2),
        "calls": batch * rounds,
    }


def config_text(access_log: str, metrics: bool) -> str:
    """A serve config on the JSON sample (``[metrics]`` on a free port if ``metrics``)."""
    metrics_table = '[metrics]\naddress = "127.0.0.1:0"\n' if metrics else ""
    return f"""
[grpc]
address = "127.0.0.1:0"
workers = {WORKERS}
access_log = "{access_log}"

{metrics_table}
[grpc.services.userprovider]
driver = "{SAMPLE}"
[grpc.services.userprovider.plugin]
max_concurrency = 16
[grpc.services.userprovider.drivers.json]
users = "{USERS}"
"""


def _start_serve(
    tmpdir: Path,
    name: str,
    access_log: str,
    metrics: bool,
    command: list[str] | None = None,
) -> tuple[Any, Any]:
    """A ``reva-plugins serve`` process on the JSON sample; returns it and its port finder.
    ``command``: what runs ``serve CONFIG`` instead of ``python -m reva_plugins``."""
    config = tmpdir / f"{name}.toml"
    config.write_text(config_text(access_log, metrics), encoding="utf-8")
    return _launch(config, r"serving .* on 127\.0\.0\.1:(\d+) ", command)


def _launch(config: Path, ready: str, command: list[str] | None = None) -> tuple[Any, Any]:
    """``serve CONFIG`` started (by ``command``, else ``python -m reva_plugins serve``); returns
    it and its port finder (group 1 of ``ready`` in a line of its stderr, once there)."""
    lines: list[str] = []
    serve = subprocess.Popen(
        [*(command or [sys.executable, "-m", "reva_plugins", "serve"]), str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    reader = threading.Thread(target=lambda: lines.extend(serve.stderr or []), daemon=True)
    reader.start()

    def port() -> str | None:
        found = [re.search(ready, line) for line in lines]
        return next((m.group(1) for m in found if m), None)

    return serve, port


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (serve's plugins)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _own_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of exactly ``pids``, from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _measured(pid: int, address: str, clients: int, calls: int) -> dict[str, float]:
    plugins = _children(pid)
    cpu, plugin_cpu = _cpu_seconds(pid), _own_cpu_seconds(plugins)
    out = _load(address, clients, calls)
    served = calls + 50  # and the warm-up
    out["server_cpu_us_per_call"] = round((_cpu_seconds(pid) - cpu) / served * 1e6, 1)
    if plugins:
        spent = _own_cpu_seconds(plugins) - plugin_cpu
        out["plugin_cpu_us_per_call"] = round(spent / served * 1e6, 1)
    out["calls"] = calls
    return out


def measure(calls: int) -> dict[str, Any]:
    """Each level of concurrency: ``serve`` as deployed (the default access log, ``[metrics]``
    on), ``serve`` lean (neither), the bare grpcio baseline and, for reference, the bare server
    in threads and with a process hop; ratios of throughput and of CPU per call (serve and its
    plugin), p50 differences, and the budget of the deployed server's CPU per call."""
    from benchmarks import _budget

    results: dict[str, Any] = {"workers": WORKERS, "calls_per_level": calls}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        port_file, threads_port_file = tmpdir / "port", tmpdir / "threads-port"
        hop_port_file, floor_port_file = tmpdir / "hop-port", tmpdir / "floor-port"
        bare, threads, hop, floor = (
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks._serve", "bare", str(f), str(WORKERS), flavour],
                cwd=ROOT,
                text=True,
            )
            for f, flavour in (
                (port_file, "aio"),
                (threads_port_file, "threads"),
                (hop_port_file, "aio-hop"),
                (floor_port_file, "aio-plugin"),
            )
        )
        serve, serve_port = _start_serve(tmpdir, "deployed", ACCESS_LOG, metrics=True)
        lean, lean_port = _start_serve(tmpdir, "lean", "off", metrics=False)
        try:
            bare_port = _wait_port(bare, lambda: port_file.exists() and port_file.read_text())
            threads_port = _wait_port(
                threads, lambda: threads_port_file.exists() and threads_port_file.read_text()
            )
            hop_port = _wait_port(hop, lambda: hop_port_file.exists() and hop_port_file.read_text())
            floor_port = _wait_port(
                floor, lambda: floor_port_file.exists() and floor_port_file.read_text()
            )
            ours_port = _wait_port(serve, serve_port)
            lean_at = _wait_port(lean, lean_port)
            servers = {
                "bare": (bare.pid, f"127.0.0.1:{bare_port}"),
                "hop": (hop.pid, f"127.0.0.1:{hop_port}"),
                "floor": (floor.pid, f"127.0.0.1:{floor_port}"),
                "ours": (serve.pid, f"127.0.0.1:{ours_port}"),
                "lean": (lean.pid, f"127.0.0.1:{lean_at}"),
                "threads": (threads.pid, f"127.0.0.1:{threads_port}"),
            }
            for clients in CLIENTS:
                # Rounds in alternating order, so a burst of load from elsewhere on the machine
                # hits each server alike; each figure is the round with the median throughput.
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
                for number in range(ROUNDS):
                    order = list(servers) if number % 2 == 0 else list(reversed(servers))
                    for name in order:
                        runs[name].append(_measured(*servers[name], clients, calls // ROUNDS))
                base, ours, no_extras, pool, hopping, least = (
                    sorted(runs[name], key=lambda r: r["calls_per_s"])[ROUNDS // 2]
                    for name in ("bare", "ours", "lean", "threads", "hop", "floor")
                )
                # CPU per call: the median over the rounds (each round's own, not the one with
                # the median throughput: CPU is what the ratio is about)
                cpu = {
                    name: statistics.median(r["server_cpu_us_per_call"] for r in runs[name])
                    for name in servers
                }
                plugin = statistics.median(r.get("plugin_cpu_us_per_call", 0) for r in runs["ours"])
                results[f"{clients}_clients"] = {
                    "ours": ours,
                    "ours_lean": no_extras,
                    "baseline_bare_grpcio_dict": base,
                    "reference_bare_grpcio_thread_pool": pool,
                    "reference_bare_grpcio_process_hop": hopping,
                    "reference_bare_grpcio_minimal_python_plugin": least,
                    "ratio_throughput_to_thread_pool": round(
                        ours["calls_per_s"] / pool["calls_per_s"], 2
                    ),
                    "ratio_throughput": round(ours["calls_per_s"] / base["calls_per_s"], 2),
                    "p50_added_ms": round(ours["p50_ms"] - base["p50_ms"], 3),
                    "cpu_us_per_call": round(cpu["ours"], 1),
                    "baseline_cpu_us_per_call": round(cpu["bare"], 1),
                    "ratio_cpu": round(cpu["ours"] / cpu["bare"], 2),
                    "plugin_cpu_us_per_call": round(plugin, 1),
                    "lean_cpu_us_per_call": round(cpu["lean"], 1),
                    "hop_cpu_us_per_call": round(cpu["hop"], 1),
                    "ratio_cpu_to_hop": round(cpu["ours"] / cpu["hop"], 2),
                    "ratio_throughput_to_hop": round(
                        ours["calls_per_s"] / hopping["calls_per_s"], 2
                    ),
                    "floor_cpu_us_per_call": round(cpu["floor"], 1),
                    "ratio_floor_cpu_to_bare": round(cpu["floor"] / cpu["bare"], 2),
                    "ratio_floor_throughput_to_bare": round(
                        least["calls_per_s"] / base["calls_per_s"], 2
                    ),
                    "floor_p50_added_ms": round(least["p50_ms"] - base["p50_ms"], 3),
                    "ratio_cpu_to_floor": round(cpu["ours"] / cpu["floor"], 2),
                    "ratio_lean_throughput": round(
                        no_extras["calls_per_s"] / ours["calls_per_s"], 2
                    ),
                }
            pieces = _budget.measure(config_text(ACCESS_LOG, metrics=True), calls)
            results["budget_pieces_us"] = pieces
            for clients in CLIENTS:
                level = results[f"{clients}_clients"]
                level["budget_us"] = _budget.rows(
                    pieces,
                    level["plugin_cpu_us_per_call"],
                    level["cpu_us_per_call"],
                    level["baseline_cpu_us_per_call"],
                    level["hop_cpu_us_per_call"],
                )
        finally:
            stop_all([bare, threads, hop, floor, serve, lean])
    return results


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a parent's workers and their plugins)."""
    found, todo = [], [pid]
    while todo:
        each = todo.pop()
        found.append(each)
        todo += _children(each)
    return found


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and everything below it, from ``/proc``."""
    return _own_cpu_seconds(_tree(pid))


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and everything below it, MiB."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for each in _tree(pid):
        try:
            total += int(Path(f"/proc/{each}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return round(total / (1 << 20), 1)


def _load_spread(address: str, clients: int, calls: int) -> dict[str, float]:
    """``calls`` GetUser from ``clients`` threads, each on a channel (a connection) of its own:
    ``SO_REUSEPORT`` spreads connections over the worker processes, not calls."""
    import grpc

    request, stub_class = _user_api()
    channels = [
        grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(clients)
    ]
    try:
        stubs_ = [stub_class(channel) for channel in channels]
        for stub in stubs_:  # warm up: every connection made, every worker's plugin started
            for _ in range(10):
                assert stub.GetUser(request, timeout=30).status.code == 1
        flat, elapsed = _clients(stubs_, request, calls)
    finally:
        for channel in channels:
            channel.close()
    return {
        "calls_per_s": round(len(flat) / elapsed, 1),
        "p50_ms": round(flat[len(flat) // 2] * 1000, 3),
        "calls": len(flat),
    }


def _start_processes(tmpdir: Path, processes: int) -> tuple[Any, Any]:
    """``serve`` as a user runs it (access log on, ``[metrics]`` on) with ``[grpc] processes``;
    returns it and its port finder (the port once every worker serves)."""
    config = tmpdir / f"processes-{processes}.toml"
    config.write_text(
        f"""
[grpc]
address = "127.0.0.1:0"
workers = {WORKERS}
processes = {processes}

[metrics]
address = "127.0.0.1:0"

[grpc.services.userprovider]
driver = "{SAMPLE}"
[grpc.services.userprovider.plugin]
max_concurrency = 16
[grpc.services.userprovider.drivers.json]
users = "{USERS}"
""",
        encoding="utf-8",
    )
    ready = (
        r"serving .* on 127\.0\.0\.1:(\d+) "
        if processes == 1
        else r"worker processes serving on 127\.0\.0\.1:(\d+) "
    )
    return _launch(config, ready)


#: Rounds of each server for the processes comparison: paired (1 then 2, 2 then 1 …), so the
#: ratio of each pair is measured under the same load from elsewhere on the machine.
PROCESS_ROUNDS = 5


def measure_processes(calls: int, clients: int = 16) -> dict[str, Any]:
    """``[grpc] processes = 1`` against ``= 2``, in the same run, rounds alternating: CPU per
    RPC of the whole tree (parent, workers, plugins), throughput at ``clients`` clients (each
    on its own connection), and the resident memory of the tree once warm. The ratios are the
    medians of each pair's ratio."""
    counts = (1, 2)
    rounds = PROCESS_ROUNDS
    results: dict[str, Any] = {"clients": clients, "calls_per_round": calls // rounds}
    with tempfile.TemporaryDirectory() as tmp:
        started = {n: _start_processes(Path(tmp), n) for n in counts}
        try:
            servers = {
                n: (proc.pid, f"127.0.0.1:{_wait_port(proc, port)}")
                for n, (proc, port) in started.items()
            }
            runs: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
            for number in range(rounds):
                for n in counts if number % 2 == 0 else tuple(reversed(counts)):
                    pid, address = servers[n]
                    cpu = _tree_cpu_seconds(pid)
                    out = _load_spread(address, clients, calls // rounds)
                    warmup = clients * 10
                    spent = _tree_cpu_seconds(pid) - cpu
                    out["cpu_us_per_call"] = round(spent / (out["calls"] + warmup) * 1e6, 1)
                    runs[n].append(out)
            for n in counts:
                pid, _ = servers[n]
                by_rate = sorted(runs[n], key=lambda r: r["calls_per_s"])
                results[f"{n}_processes"] = {
                    "calls_per_s": by_rate[rounds // 2]["calls_per_s"],
                    "p50_ms": by_rate[rounds // 2]["p50_ms"],
                    "cpu_us_per_call_rounds": [r["cpu_us_per_call"] for r in runs[n]],
                    "cpu_us_per_call": statistics.median(r["cpu_us_per_call"] for r in runs[n]),
                    "rss_mb": _tree_rss_mb(pid),
                    "processes_in_tree": len(_tree(pid)),
                }
        finally:
            stop_all([proc for proc, _ in started.values()])
    one, two = results["1_processes"], results["2_processes"]
    pairs = list(zip(runs[1], runs[2], strict=True))
    results["ratio_cpu_per_call"] = round(
        statistics.median(b["cpu_us_per_call"] / a["cpu_us_per_call"] for a, b in pairs), 2
    )
    results["ratio_throughput"] = round(
        statistics.median(b["calls_per_s"] / a["calls_per_s"] for a, b in pairs), 2
    )
    results["ratio_rss"] = round(two["rss_mb"] / one["rss_mb"], 2)
    return results


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "bare":
        os.environ.pop("GRPC_VERBOSITY", None)
        bare_server(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        import json

        if sys.argv[1:2] == ["processes"]:
            calls = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
            print(json.dumps(measure_processes(calls), indent=2))
        else:
            calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
            print(json.dumps(measure(calls), indent=2))
