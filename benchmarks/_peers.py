"""Baselines measured in the same run: raw pipe echo, stdlib JSON lines, execnet, bare builds."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._stats import latencies

ECHO_CHILD = """
import os, sys
mode = sys.argv[1]
if mode == "raw":
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        os.write(1, data)
else:
    import json
    out = os.fdopen(1, "wb", buffering=0)
    for line in os.fdopen(0, "rb"):
        msg = json.loads(line)
        out.write((json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": msg["params"]}) + "\\n").encode())
"""


def _pin(pid: int, cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {cpu})


def _echo_child(python: str, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [python, "-I", "-c", ECHO_CHILD, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def raw_echo(
    python: str,
    n: int,
    cpus: tuple[int | None, int | None],
    *,
    transport: str = "pipe",
    payload: bytes = b"ping\n",
) -> dict[str, float]:
    """``payload`` (a call's request line) round-tripped by a second Python process that echoes
    whatever it reads, through a pipe or a socketpair (the transport the core uses)."""
    import socket

    closers = []
    if transport == "pipe":
        child = _echo_child(python, "raw")
        assert child.stdin is not None and child.stdout is not None
        w, r = child.stdin.fileno(), child.stdout.fileno()
    else:
        ours, theirs = socket.socketpair()
        child = subprocess.Popen(
            [python, "-I", "-c", ECHO_CHILD, "raw"], stdin=theirs.fileno(), stdout=theirs.fileno()
        )
        theirs.close()
        closers.append(ours)
        w = r = ours.fileno()
    _pin(0, cpus[0])
    _pin(child.pid, cpus[1])

    size = len(payload)

    def once() -> None:
        os.write(w, payload)
        got = len(os.read(r, 65536))
        while got < size:
            got += len(os.read(r, 65536))

    try:
        return latencies(once, n)
    finally:
        for sock in closers:
            sock.close()
        child.kill()
        child.wait()


@contextlib.contextmanager
def json_rpc_peer(python: str, cpus: tuple[int | None, int | None]) -> Iterator[Callable[[], None]]:
    """A featureless two-process JSON-RPC loop: each request line (``json`` both sides) over a
    socketpair answered by a child that replies with its params as the result; yields one
    round trip."""
    import itertools
    import json
    import socket

    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [python, "-I", "-c", ECHO_CHILD, "json"], stdin=theirs.fileno(), stdout=theirs.fileno()
    )
    theirs.close()
    _pin(0, cpus[0])
    _pin(child.pid, cpus[1])
    reader = ours.makefile("rb")
    ids = itertools.count()
    params = {"user_id": {"idp": "http://localhost:20080", "opaque_id": "einstein"}}

    def once() -> None:
        request = {"jsonrpc": "2.0", "id": next(ids), "method": "get_user", "params": params}
        ours.sendall((json.dumps(request) + "\n").encode())
        json.loads(reader.readline())

    try:
        yield once
    finally:
        reader.close()
        ours.close()
        child.kill()
        child.wait()


def json_rpc_loop(python: str, n: int, cpus: tuple[int | None, int | None]) -> dict[str, float]:
    """:func:`json_rpc_peer`'s round trip, ``n`` times."""
    with json_rpc_peer(python, cpus) as once:
        return latencies(once, n)


def minimal_client(
    sock: Any, encode: Callable[[int], bytes], loads: Callable[[bytes], Any]
) -> Callable[[], None]:
    """A round trip the loop's way on a plugin's own socket (while its client is idle): a request
    encoded, written, read back to its newline, decoded; no ids kept, no deadline, no lock."""
    import itertools

    ids = itertools.count(1 << 40)  # never one of the client's
    buf = bytearray(65536)
    view = memoryview(buf)

    def recv(at: int) -> int:
        while True:
            try:
                return int(sock.recv_into(view[at:]))
            except BlockingIOError:  # the socket's read timeout (the client's tick)
                continue

    def once() -> None:
        sock.sendall(encode(next(ids)))
        got = recv(0)
        while buf[got - 1] != 10:
            got += recv(got)
        loads(bytes(view[:got]))

    return once


def interleaved(
    funcs: dict[str, Callable[[], object]], n: int, rounds: int = 10
) -> dict[str, dict[str, float]]:
    """p50/p99 (and mean) of ``n`` sequential calls of each function, in microseconds, measured
    in ``rounds`` rounds that alternate their order: what one round measures of each lies
    milliseconds apart, so a machine that other work slows down slows all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    names = list(funcs)
    per = max(1, n // rounds)
    clock = time.perf_counter
    for func in funcs.values():
        for _ in range(min(50, n)):
            func()
    for turn in range(rounds):
        for name in names if turn % 2 else reversed(names):
            func, out = funcs[name], samples[name]
            for _ in range(per):
                began = clock()
                func()
                out.append(clock() - began)
    result = {}
    for name, values in samples.items():
        values.sort()
        result[name] = {
            "p50_us": round(values[len(values) // 2] * 1e6, 1),
            "p99_us": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1e6, 1),
            "mean_us": round(sum(values) / len(values) * 1e6, 1),
            "n": len(values),
        }
    return result


def json_lines_throughput(python: str, n: int) -> float:
    """Pipelined stdlib JSON lines: one writer thread, one reader, calls/s."""
    child = _echo_child(python, "json")
    assert child.stdin is not None and child.stdout is not None
    import json

    stdin, stdout = child.stdin, child.stdout

    def writer() -> None:
        for i in range(n):
            stdin.write(
                (
                    json.dumps({"jsonrpc": "2.0", "id": i, "method": "echo", "params": {"i": i}})
                    + "\n"
                ).encode()
            )
        stdin.flush()

    began = time.perf_counter()
    thread = threading.Thread(target=writer)
    thread.start()
    for _ in range(n):
        json.loads(stdout.readline())
    elapsed = time.perf_counter() - began
    thread.join()
    child.kill()
    child.wait()
    return n / elapsed


def _execnet_gateway(python: str) -> Any:
    import execnet

    return execnet.makegateway(f"popen//python={python}")


def execnet_latency(
    python: str, n: int, cpus: tuple[int | None, int | None]
) -> dict[str, float] | None:
    """execnet's channel round trip (a peer that runs code in another interpreter)."""
    try:
        gw = _execnet_gateway(python)
    except ImportError:
        return None
    try:
        channel = gw.remote_exec("while 1:\n    channel.send(channel.receive())")
        pid = gw.remote_exec("import os; channel.send(os.getpid())").receive()
        _pin(0, cpus[0])
        _pin(pid, cpus[1])

        def once() -> None:
            channel.send({"user_id": {"idp": "x", "opaque_id": "einstein"}})
            channel.receive()

        return latencies(once, n)
    finally:
        gw.exit()


def execnet_throughput(
    python: str, n: int, threads: int = 8, cpus: set[int] | None = None
) -> dict[str, float] | None:
    """execnet with ``threads`` threads, each on its own channel of one gateway: calls/s and
    CPU per call (both processes pinned to ``cpus`` if given)."""
    from ._cpu import all_cpus, core_usage, per_call, pin, process_usage

    try:
        gw = _execnet_gateway(python)
    except ImportError:
        return None
    try:
        channels = [
            gw.remote_exec("while 1:\n    channel.send(channel.receive())") for _ in range(threads)
        ]
        pid = gw.remote_exec("import os; channel.send(os.getpid())").receive()
        if cpus is not None:
            pin(0, cpus)
            pin(pid, cpus)
        per = max(1, n // threads)

        def work(channel: Any) -> None:
            for i in range(per):
                channel.send(i)
                channel.receive()

        workers = [threading.Thread(target=work, args=(c,)) for c in channels]
        core0, plugin0 = core_usage(), process_usage(pid)
        began = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        elapsed = time.perf_counter() - began
        calls = per * threads
        out: dict[str, float] = {"calls_per_s": round(calls / elapsed)}
        out.update(per_call(core_usage() - core0, process_usage(pid) - plugin0, calls))
        return out
    finally:
        if cpus is not None:
            pin(0, all_cpus())
        gw.exit()


def bare_uv_build(uv: str, python: str, target: str) -> float:
    """``uv venv && uv pip install TARGET`` into a temp dir; seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        began = time.perf_counter()
        subprocess.run([uv, "venv", "-q", "--python", python, str(venv)], check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), target],
            check=True,
        )
        return time.perf_counter() - began


def bare_venv_pip_build(python: str, target: str) -> float:
    """``python -m venv && pip install TARGET`` into a temp dir; seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        began = time.perf_counter()
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                target,
            ],
            check=True,
        )
        return time.perf_counter() - began


def bare_interpreter_start(python: str, n: int) -> dict[str, float]:
    """``python -I -c pass``: the floor of any plugin start."""
    return latencies(lambda: subprocess.run([python, "-I", "-c", "pass"], check=True), n)


def idle_interpreter_memory(python: str, setup: str = "") -> dict[str, float]:
    """RSS/PSS of a bare interpreter doing nothing (after running ``setup``)."""
    from ._stats import memory_of

    child = subprocess.Popen(
        [python, "-I", "-c", f"{setup}\nimport sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        time.sleep(0.3)
        return memory_of(child.pid)
    finally:
        child.kill()
        child.wait()


def which_uv() -> str | None:
    """The uv binary, if any."""
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def python_for(venv_python: Path) -> str:
    """The venv's interpreter as a string (execnet and subprocess want one)."""
    return str(venv_python) if venv_python.exists() else sys.executable
