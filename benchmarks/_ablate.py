"""What each piece of the wire's latency machinery earns: every user-visible path measured with
the piece switched off, between two measurements with everything on, in rounds.

Nothing in the product switches a piece off. On the plugin's side the plugin runs a copy of the
bootstrap with the piece patched out, launched by pointing ``_protocol.BOOTSTRAP_FILE`` at the
copy; on the core's side the piece is patched out of the core's process for the time of a
measurement (this process, or a ``serve`` process started through :func:`serve_main`). The
piece that did not pay (the baton's held sends on one CPU) is gone; ``benchmarks/ABLATION.md``
has the figures.
``python -m benchmarks._ablate PIECE WORKDIR serve CONFIG`` is ``reva-plugins serve CONFIG``
with ``PIECE`` off.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reva_plugins import Host, _connection, _poll, _protocol

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reva_plugins"
SAMPLE = ROOT / "sample_plugins" / "json_users"
USERS = ROOT / "examples" / "users.demo.json"
UID = {"idp": "http://localhost:20080", "opaque_id": "einstein"}

#: The plugin's pieces, each with what switches it off: Python run at the end of one of the
#: bootstrap's files, before the bootstrap starts.
PLUGIN_SIDE: dict[str, tuple[str, str]] = {
    "plugin_poll": ("_poll.py", "Spinner.spin = lambda self: None"),
    "relief_watch": ("_pool.py", "Plugin._wake_watch = lambda self: None"),
    "inline_calls": ("_pool.py", "INLINE_BELOW = -1.0"),
}
#: The core's pieces (see :func:`core_side`), measured on the baseline's plugin.
CORE_SIDE = ("caller_poll", "baton")
#: Nothing off: a second baseline, measured as the pieces are (the harness's own noise and bias).
CONTROL = "control"
PIECES = (*PLUGIN_SIDE, *CORE_SIDE, CONTROL)
#: The files the bootstrap's copy needs beside it (those it loads by path).
BOOTSTRAP_FILES = (
    "_launch.py",
    "_bootstrap.py",
    "_wire.py",
    "_codec.py",
    "_channel.py",
    "_pool.py",
    "_contain.py",
    "_poll.py",
    "_sandbox.py",
)
MAIN_GUARD = 'if __name__ == "__main__":'
FIGURES = (
    "host_1_thread",
    "host_1_thread_two_cpus",
    "host_16_threads",
    "host_16_threads_one_cpu",
    "acall_16_tasks",
    "serve_1_client",
    "serve_16_clients",
)


def bootstrap_copy(piece: str, workdir: Path) -> Path:
    """The launch file of a bootstrap copy with ``piece`` off (everything on for the baseline and
    the control)."""
    folder = workdir / f"bootstrap-{piece}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for name in BOOTSTRAP_FILES:
            shutil.copy(PACKAGE / name, folder / name)
        if piece in PLUGIN_SIDE:
            name, patch = PLUGIN_SIDE[piece]
            path = folder / name
            text = path.read_text(encoding="utf-8")
            assert _patches_something(patch, text), f"{piece}: {patch!r} patches nothing"
            if MAIN_GUARD in text:
                text = text.replace(MAIN_GUARD, f"{patch}\n\n\n{MAIN_GUARD}")
            else:
                text += f"\n{patch}\n"
            path.write_text(text, encoding="utf-8")
    return folder / "_launch.py"


def _patches_something(patch: str, text: str) -> bool:
    """Whether the name ``patch`` assigns is defined in ``text``: a rename must not leave the
    ablation measuring nothing."""
    target = patch.partition(" = ")[0]
    owner, _, attribute = target.rpartition(".")
    if owner:
        return f"class {owner}" in text and f"def {attribute}(" in text
    return f"\n{target} = " in text


def _no_baton_pass(self: _connection.Connection) -> Any:
    """``Connection._pass_baton`` without the baton: every reply wakes its owner at once."""
    ready = self.ready
    while ready:
        slot = ready.popleft()
        if slot.waiting and not slot.signalled and slot.waker is not None:
            slot.signalled = True
            return slot.waker
    return None


@contextlib.contextmanager
def core_side(piece: str) -> Iterator[None]:
    """``piece`` patched out of this process meanwhile (nothing for a plugin-side piece)."""
    spin, pass_baton = _poll.Spinner.spin, _connection.Connection._pass_baton
    if piece == "caller_poll":
        _poll.Spinner.spin = lambda self: None  # type: ignore[method-assign]
    elif piece == "baton":
        _connection.Connection._pass_baton = _no_baton_pass  # type: ignore[method-assign]
    try:
        yield
    finally:
        _poll.Spinner.spin = spin  # type: ignore[method-assign]
        _connection.Connection._pass_baton = pass_baton  # type: ignore[method-assign]


@contextlib.contextmanager
def launching(piece: str, workdir: Path) -> Iterator[None]:
    """Plugins started meanwhile run the bootstrap with ``piece`` off."""
    saved = _protocol.BOOTSTRAP_FILE
    _protocol.BOOTSTRAP_FILE = bootstrap_copy(piece, workdir)
    try:
        yield
    finally:
        _protocol.BOOTSTRAP_FILE = saved


def _config() -> dict[str, Any]:
    table = {
        "driver": str(SAMPLE),
        "drivers": {"json": {"users": str(USERS)}},
        "plugin": {"max_concurrency": 16},
    }
    return {"grpc": {"services": {"userprovider": table}}}


def _threads(users: Any, threads: int, n: int) -> float:
    """calls/s of ``threads`` threads calling get_user ``n`` times in all."""
    calls, elapsed = in_threads(lambda: users.get_user(UID), threads, n)
    return calls / elapsed


def in_threads(
    call: Callable[[], object], threads: int, n: int, ready: Callable[[], object] = lambda: None
) -> tuple[int, float]:
    """``threads`` threads making ``call()`` ``n`` times in all, released at once after
    ``ready()``: how many calls they made, and the seconds from the release to the last."""
    import time

    per = max(1, n // threads)
    start = threading.Barrier(threads + 1)

    def work() -> None:
        start.wait()
        for _ in range(per):
            call()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    ready()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return per * threads, time.perf_counter() - began


@contextlib.contextmanager
def _pinned(pid: int, core: set[int], plugin: set[int]) -> Iterator[None]:
    """This process on the CPUs ``core``, the plugin ``pid`` on ``plugin``, meanwhile."""
    from ._cpu import all_cpus, pin

    pin(0, core)
    pin(pid, plugin if len(all_cpus()) > 1 else core)
    try:
        yield
    finally:
        pin(0, all_cpus())
        pin(pid, all_cpus())


def _acall(users: Any, tasks: int, n: int) -> float:
    """calls/s of ``tasks`` asyncio tasks awaiting ``acall`` ``n`` times in all, on one loop."""
    import time

    per = max(1, n // tasks)
    params = {"user_id": UID}

    async def work() -> None:
        for _ in range(per):
            await users.acall("get_user", params)

    async def main() -> float:
        await users.acall("get_user", params)
        began = time.perf_counter()
        await asyncio.gather(*(work() for _ in range(tasks)))
        return per * tasks / (time.perf_counter() - began)

    return asyncio.run(main())


def _serve_with(piece: str, workdir: Path) -> tuple[subprocess.Popen[str], Callable[[], Any]]:
    from . import _serve

    return _serve._start_serve(
        workdir,
        f"serve-{piece}",
        "off",
        metrics=False,
        command=[sys.executable, "-m", "benchmarks._ablate", piece, str(workdir), "serve"],
    )


def measure(calls: int, serve_calls: int, rounds: int = 3) -> dict[str, Any]:
    """Every figure with each piece off, between two measurements of the baseline (on, off,
    on, off, ...: load from elsewhere on the machine hits a piece and its baseline alike), in
    ``rounds`` rounds; the pieces' order alternates between rounds."""
    from . import _serve

    configs = ("baseline", *PIECES)
    samples: dict[str, dict[str, list[float]]] = {c: {f: [] for f in FIGURES} for c in configs}
    gains: dict[str, dict[str, list[float]]] = {p: {f: [] for f in FIGURES} for p in PIECES}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        hosts: dict[str, Any] = {}
        for config in configs:
            if config in CORE_SIDE:  # the baseline's plugin: only the core differs
                continue
            with launching(config, workdir):
                host = stack.enter_context(Host(_config(), base_dir=ROOT))
                users = host.service("userprovider")
                users.get_user(UID)  # the plugin starts now, from the copy
                hosts[config] = users
        hosts.update(dict.fromkeys(CORE_SIDE, hosts["baseline"]))
        servers = {config: _serve_with(config, workdir) for config in configs}
        try:
            addresses = {
                config: f"127.0.0.1:{_serve._wait_port(proc, port)}"
                for config, (proc, port) in servers.items()
            }

            def one(figure: str, config: str, scale: float = 1.0) -> float:
                users, address = hosts[config], addresses[config]
                n, m = max(16, int(calls * scale)), max(16, int(serve_calls * scale))
                with core_side(config):
                    if figure == "host_1_thread":
                        return _threads(users, 1, n // 2)
                    if figure == "host_1_thread_two_cpus":
                        with _pinned(users.info().pid, {0}, {1}):
                            return _threads(users, 1, n // 2)
                    if figure == "host_16_threads":
                        return _threads(users, 16, n)
                    if figure == "host_16_threads_one_cpu":
                        with _pinned(users.info().pid, {0}, {0}):
                            return _threads(users, 16, n // 2)
                    if figure == "acall_16_tasks":
                        return _acall(users, 16, n)
                if figure == "serve_1_client":
                    return float(_serve._load(address, 1, m // 4)["calls_per_s"])
                return float(_serve._load(address, 16, m)["calls_per_s"])

            for figure in FIGURES:  # warm-up: caches, connections, the first event loop
                for config in configs:
                    one(figure, config, 0.1)
            for number in range(rounds):
                order = PIECES if number % 2 == 0 else tuple(reversed(PIECES))
                for figure in FIGURES:
                    before = one(figure, "baseline")
                    samples["baseline"][figure].append(before)
                    for piece in order:
                        off = one(figure, piece)
                        after = one(figure, "baseline")
                        samples[piece][figure].append(off)
                        samples["baseline"][figure].append(after)
                        gains[piece][figure].append((before + after) / 2 / off)
                        before = after
        finally:
            _serve.stop_all([proc for proc, _ in servers.values()])
    return summarise(samples, gains, rounds)


def summarise(
    samples: dict[str, dict[str, list[float]]],
    gains: dict[str, dict[str, list[float]]],
    rounds: int,
) -> dict[str, Any]:
    """Per figure and configuration: the median calls/s and the spread; per piece, what
    removing it costs: the median over rounds of baseline / piece off (each against the
    baseline measured just before and after it), as a percentage, and its spread."""
    out: dict[str, Any] = {"rounds": rounds, "figures": {}}
    for config, figures in samples.items():
        row: dict[str, Any] = {}
        for figure, values in figures.items():
            entry: dict[str, Any] = {
                "calls_per_s": round(statistics.median(values)),
                "spread": [round(min(values)), round(max(values))],
            }
            if config != "baseline":
                ratios = gains[config][figure]
                entry["baseline_calls_per_s"] = round(
                    statistics.median(samples["baseline"][figure])
                )
                entry["gain_pct"] = round((statistics.median(ratios) - 1) * 100, 1)
                entry["gain_spread_pct"] = [
                    round((min(ratios) - 1) * 100, 1),
                    round((max(ratios) - 1) * 100, 1),
                ]
            row[figure] = entry
        out["figures"][config] = row
    return out


def rows(ablation: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """Table rows: each figure with the piece off, beside the baseline; the ratio is what the
    piece gains (baseline / off, the median of the rounds' paired ratios), with its spread."""
    out: list[tuple[str, Any, Any, Any]] = []
    for piece in PIECES:
        for figure in FIGURES:
            entry = ablation["figures"][piece][figure]
            low, high = entry["gain_spread_pct"]
            out.append(
                (
                    f"{piece} off: {figure} /s [{low:+.0f}..{high:+.0f}%]",
                    entry["calls_per_s"],
                    entry["baseline_calls_per_s"],
                    round(1 + entry["gain_pct"] / 100, 2),
                )
            )
    return out


def serve_main(argv: list[str]) -> int:
    """``PIECE WORKDIR serve ...``: ``reva-plugins serve`` with ``PIECE`` off."""
    piece, workdir, *rest = argv
    from reva_plugins._cli import main

    with launching(piece, Path(workdir)), core_side(piece):
        return main(rest)


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
