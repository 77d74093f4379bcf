"""``python -m benchmarks [--quick] [--out FILE]``: every figure beside a same-run baseline.

Prints one JSON object on stdout (and a short table on stderr). ``--quick`` uses tiny iteration
counts: the smoke test runs it so the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from reva_plugins import Host
from reva_plugins._call import Call
from reva_plugins._drivers import InProcessDriver
from reva_plugins._envmeta import EntryPointInfo
from reva_plugins._plan import InProcessPlan, IsolatedPlan
from reva_plugins._process import LaunchSpec, PluginProcess
from reva_plugins._protocol import encode_request, loads
from reva_plugins._proxy import ServiceProxy
from reva_plugins.services import SERVICES

from . import _ablate, _fleets, _peers, _serve
from ._cpu import all_cpus, core_usage, per_call, pin, process_usage
from ._stats import latencies, median_ms, memory_of, ratio

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_plugins" / "json_users"
USERS = ROOT / "examples" / "users.demo.json"
UID = {"idp": "http://localhost:20080", "opaque_id": "einstein"}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Iteration counts (full run vs ``--quick``)."""

    starts: int
    calls: int
    throughput: int
    builds: int
    plugins: int
    serve: int
    ablation_rounds: int


FULL = Sizes(
    starts=25,
    calls=20_000,
    throughput=40_000,
    builds=3,
    plugins=50,
    serve=4_000,
    ablation_rounds=5,
)
QUICK = Sizes(starts=2, calls=200, throughput=400, builds=1, plugins=3, serve=64, ablation_rounds=1)


def config(driver: str, **plugins: Any) -> dict[str, Any]:
    """The sample wired as the user provider."""
    table = {
        "driver": driver,
        "drivers": {"json": {"users": str(USERS)}},
        "plugin": {"max_concurrency": 16},
    }
    return {"plugins": plugins, "grpc": {"services": {"userprovider": table}}}


@contextlib.contextmanager
def host_for(driver: str, **plugins: Any) -> Iterator[Host]:
    with Host(config(driver, **plugins), base_dir=ROOT) as host:
        yield host


def launch_spec(host: Host) -> LaunchSpec:
    plan = host.planner.plan(host.config.service("userprovider"))
    assert isinstance(plan, IsolatedPlan)
    return plan.launch


# -- figures -----------------------------------------------------------------------------------


def warm_start(spec: LaunchSpec, n: int) -> dict[str, Any]:
    """spawn → handshake → configure → first reply, against ``python -I -c pass``."""

    samples = []
    for _ in range(n):
        process = PluginProcess(spec)
        began = time.perf_counter()
        process.start()
        process.call("get_user", {"user_id": UID})
        samples.append(time.perf_counter() - began)
        process.close()  # not timed: shutting down is not part of a start
    ours = round(sorted(samples)[len(samples) // 2] * 1000, 2)
    floor = _peers.bare_interpreter_start(str(spec.python), n)["p50_us"] / 1000
    return {
        "ours_ms": ours,
        "baseline_python_pass_ms": round(floor, 2),
        "ratio": ratio(ours, floor),
    }


def sandbox_cost(spec: LaunchSpec, starts: int, calls: int) -> dict[str, Any]:
    """What the Landlock sandbox (on by default) adds to a warm start and to a sequential call:
    the same plugin started sandboxed and not, in alternating rounds."""
    if spec.sandbox is None:
        return {"sandbox": spec.sandbox_state}
    bare = dataclasses.replace(spec, sandbox=None)
    starts_ms: dict[str, list[float]] = {"on": [], "off": []}
    calls_us: dict[str, list[float]] = {"on": [], "off": []}
    state = ""
    for _ in range(max(starts, 2)):
        for mode, launch in (("on", spec), ("off", bare)):
            process = PluginProcess(launch)
            began = time.perf_counter()
            process.start()
            process.call("get_user", {"user_id": UID})
            starts_ms[mode].append((time.perf_counter() - began) * 1000)
            if mode == "on":
                state = str(process.handshake.get("sandbox", ""))
            if len(calls_us[mode]) < 3:  # a few processes' call latency is enough
                calls_us[mode].append(latencies(_get_user_of(process), calls)["p50_us"])
            process.close()
    on_ms, off_ms = (statistics.median(starts_ms[m]) for m in ("on", "off"))
    on_us, off_us = (statistics.median(calls_us[m]) for m in ("on", "off"))
    return {
        "sandbox": state,
        "warm_start_ms": round(on_ms, 2),
        "baseline_unsandboxed_start_ms": round(off_ms, 2),
        "added_at_start_ms": round(on_ms - off_ms, 2),
        "call_p50_us": round(on_us, 1),
        "baseline_unsandboxed_call_p50_us": round(off_us, 1),
        "added_per_call_us": round(on_us - off_us, 1),
    }


def _get_user_of(process: PluginProcess) -> Callable[[], object]:
    return lambda: process.call("get_user", {"user_id": UID})


def in_process_pair(spec: LaunchSpec) -> tuple[ServiceProxy, Any]:
    """The sample's user provider loaded into this process twice: behind a ``ServiceProxy``, and
    as the bare driver object (instantiated and configured the same way)."""
    site = next(spec.python.parent.parent.glob("lib/python*/site-packages"))
    sys.path.insert(0, str(site))
    service = SERVICES["userprovider"]
    value = str(spec.entry["value"])
    plan = InProcessPlan(service, EntryPointInfo("json", value, "", ""), {"users": str(USERS)})
    proxy = ServiceProxy(service, InProcessDriver(plan, "in-process"), "in-process")
    proxy.start()
    driver = importlib_metadata.EntryPoint("json", value, service.group).load()()
    driver.configure({"users": str(USERS)})
    return proxy, driver


def in_process_overhead(spec: LaunchSpec, n: int, rounds: int = 15) -> dict[str, Any]:
    """What the proxy adds to an in-process call: ``proxy.get_user(uid)`` against the driver's
    own ``get_user(uid)``, per call, measured in the same run.

    Batches of ``n // rounds`` calls, the two alternating so both see the same machine load;
    each figure is the median of its batches' per-call means (timing one call at a time would
    add the clock's own cost to both)."""
    proxy, driver = in_process_pair(spec)
    assert proxy.get_user(UID) == driver.get_user(UID)
    batch = max(1, n // rounds)
    clock = time.perf_counter

    def per_call(func: Any) -> float:
        began = clock()
        for _ in range(batch):
            func(UID)
        return (clock() - began) / batch

    proxied, direct = [], []
    per_call(proxy.get_user)  # warm-up
    per_call(driver.get_user)
    for _ in range(rounds):
        direct.append(per_call(driver.get_user))
        proxied.append(per_call(proxy.get_user))
    proxy_us = statistics.median(proxied) * 1e6
    direct_us = statistics.median(direct) * 1e6
    return {
        "proxy_us": round(proxy_us, 2),
        "baseline_direct_method_us": round(direct_us, 2),
        "overhead_us": round(proxy_us - direct_us, 2),
        "ratio": ratio(proxy_us, direct_us),
        "calls": batch * rounds,
    }


#: the request line of the benchmark's call: the raw echo baselines round-trip these bytes
REQUEST = encode_request(12345, "get_user", {"user_id": UID})
THREADS = (1, 4, 16, 64)


def call_latency(host: Host, spec: LaunchSpec, n: int, cpus: tuple[int, int]) -> dict[str, Any]:
    """Sequential get_user through Host, and the same call one layer down (the plugin process,
    without the proxy, its hooks and the driver), two (the wire's client, given the
    process's ``call_timeout`` as the process gives it) and three (a minimal client of the loop's kind on the
    plugin's socket), against a featureless JSON-RPC loop: measured in interleaved rounds,
    both processes (every thread) pinned as ``cpus``. Then raw echoes and execnet."""
    users = host.service("userprovider")
    users.get_user(UID)
    pid = users.info().pid
    assert pid is not None
    process = users.driver.supervisor.process  # type: ignore[attr-defined]
    assert process is not None
    call = Call(spec.service, "get_user", {"user_id": UID})
    client = process._client
    python = str(spec.python)
    every = all_cpus()
    with _peers.json_rpc_peer(python, cpus) as loop_once:
        pin(0, {cpus[0]})
        pin(pid, {cpus[1]})
        try:
            figures = _peers.interleaved(
                {
                    "host": lambda: users.get_user(UID),
                    "process": lambda: process.invoke(call),
                    "client": lambda: client.invoke(call, spec.call_timeout),
                    "minimal": _peers.minimal_client(
                        client.sock,
                        lambda call_id: encode_request(call_id, "get_user", {"user_id": UID}),
                        loads,
                    ),
                    "loop": loop_once,
                },
                n,
            )
        finally:
            pin(0, every)
            pin(pid, every)
    ours, loop = figures["host"], figures["loop"]
    raw = _peers.raw_echo(python, n, cpus, payload=REQUEST)
    pin(0, every)
    raw_socket = _peers.raw_echo(python, n, cpus, transport="socketpair", payload=REQUEST)
    pin(0, every)
    execnet = _peers.execnet_latency(python, n, cpus)
    pin(0, every)
    return {
        "ours": ours,
        "ours_process_invoke": figures["process"],
        "ours_client_invoke": figures["client"],
        "baseline_json_rpc_loop": loop,
        "ratio_to_json_rpc_loop": ratio(ours["p50_us"], loop["p50_us"]),
        "ratio_process_to_json_rpc_loop": ratio(figures["process"]["p50_us"], loop["p50_us"]),
        "ratio_client_to_json_rpc_loop": ratio(figures["client"]["p50_us"], loop["p50_us"]),
        "minimal_client_on_our_plugin": figures["minimal"],
        "ratio_minimal_client_to_json_rpc_loop": ratio(
            figures["minimal"]["p50_us"], loop["p50_us"]
        ),
        "baseline_raw_pipe_echo": raw,
        "baseline_raw_socketpair_echo": raw_socket,
        "baseline_execnet": execnet,
        "ratio_to_raw_echo": ratio(ours["p50_us"], raw["p50_us"]),
        "speedup_over_execnet": ratio(execnet["p50_us"], ours["p50_us"]) if execnet else None,
    }


def drive(users: Any, pid: int, threads: int, n: int) -> dict[str, Any]:
    """``threads`` threads calling get_user ``n`` times in all: calls/s, CPU and context
    switches per call of the core and of the plugin."""
    before: list[Any] = []
    calls, elapsed = _ablate.in_threads(
        lambda: users.get_user(UID),
        threads,
        n,
        ready=lambda: before.extend((core_usage(), process_usage(pid))),
    )
    core0, plugin0 = before
    out: dict[str, Any] = {"calls_per_s": round(calls / elapsed)}
    out.update(per_call(core_usage() - core0, process_usage(pid) - plugin0, calls))
    return out


def throughput(host: Host, spec: LaunchSpec, n: int) -> dict[str, Any]:
    """calls/s into one plugin from 1, 4, 16 and 64 threads, unpinned and with the core and the
    plugin on one CPU, each beside execnet (8 threads, one gateway) under the same pinning."""
    users = host.service("userprovider")
    users.get_user(UID)
    pid = users.info().pid
    assert pid is not None
    python = str(spec.python)
    every = all_cpus()
    out: dict[str, Any] = {}
    for name, cpus in (("unpinned", None), ("one_cpu", {0})):
        if cpus is not None:
            pin(0, cpus)
            pin(pid, cpus)
        try:
            rows: dict[str, Any] = {f"{t}_threads": drive(users, pid, t, n) for t in THREADS}
        finally:
            pin(0, every)
            pin(pid, every)
        execnet = _peers.execnet_throughput(python, n, threads=8, cpus=cpus)
        rows["baseline_execnet_8_threads"] = execnet
        rows["ratio_16_threads_to_execnet"] = ratio(
            rows["16_threads"]["calls_per_s"], execnet["calls_per_s"] if execnet else None
        )
        out[name] = rows
    out["baseline_json_lines_pipelined_per_s"] = round(_peers.json_lines_throughput(python, n))
    return out


def memory(host: Host, spec: LaunchSpec) -> dict[str, Any]:
    """Idle RSS/PSS of the plugin process against a bare interpreter."""
    pid = host.service("userprovider").start().pid
    assert pid is not None
    time.sleep(0.2)
    ours = memory_of(pid)
    bare = _peers.idle_interpreter_memory(str(spec.python))
    # the same driver imported and configured in a bare interpreter: what the plugin's own
    # code and imports cost (the sample's ``import json`` is 1.2 MiB), so our share shows
    module, _, attr = str(spec.entry["value"]).partition(":")
    alone = _peers.idle_interpreter_memory(
        str(spec.python),
        f"import {module} as m; m.{attr}().configure({dict(spec.config)!r})",
    )
    return {
        "ours": ours,
        "baseline_bare_interpreter": bare,
        "ratio_rss": ratio(ours["rss_mib"], bare["rss_mib"]),
        "baseline_driver_in_bare_interpreter": alone,
        "ratio_rss_to_driver_alone": ratio(ours["rss_mib"], alone["rss_mib"]),
    }


def provisioning(n: int, wheel: Path) -> dict[str, Any]:
    """Cold builds (folder, wheel) and a cached reload, with uv and pip, against bare tools."""
    uv = _peers.which_uv()
    out: dict[str, Any] = {}
    for installer in ("uv", "pip"):
        if installer == "uv" and uv is None:
            continue
        for kind, target in (("folder", str(SAMPLE)), ("wheel", str(wheel))):
            samples = []
            for _ in range(n):
                with tempfile.TemporaryDirectory() as cache:
                    began = time.perf_counter()
                    with host_for(target, cache_dir=cache, installer=installer) as host:
                        launch_spec(host)
                    samples.append(time.perf_counter() - began)
            out[f"{installer}_{kind}_cold_s"] = round(sorted(samples)[len(samples) // 2], 3)
        with (
            tempfile.TemporaryDirectory() as cache,
            host_for(str(SAMPLE), cache_dir=cache, installer=installer) as host,
        ):
            launch_spec(host)
            reload_ms = median_ms(
                lambda: host.planner.plan(host.config.service("userprovider")), max(3, n * 5)
            )
            out[f"{installer}_cached_reload_ms"] = reload_ms
    python = sys.executable
    if uv is not None:
        for kind, target in (("folder", str(SAMPLE)), ("wheel", str(wheel))):
            bare = sorted(_peers.bare_uv_build(uv, python, target) for _ in range(n))
            out[f"baseline_bare_uv_{kind}_s"] = round(bare[len(bare) // 2], 3)
            out[f"ratio_uv_{kind}"] = ratio(
                out[f"uv_{kind}_cold_s"], out[f"baseline_bare_uv_{kind}_s"]
            )
    bare_pip = _peers.bare_venv_pip_build(python, str(SAMPLE))
    out["baseline_venv_pip_folder_s"] = round(bare_pip, 3)
    out["ratio_pip_folder"] = ratio(out["pip_folder_cold_s"], bare_pip)
    return out


def scale(spec: LaunchSpec, count: int) -> dict[str, Any]:
    """``count`` plugins warm-started at once, and the host's memory with them loaded."""
    processes = [PluginProcess(dataclasses.replace(spec)) for _ in range(count)]

    def start(process: PluginProcess) -> None:
        process.start()
        process.call("get_user", {"user_id": UID})

    began = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(start, processes))
    elapsed = time.perf_counter() - began
    host_mem = memory_of(os.getpid())
    plugins_rss = sum(memory_of(p.pid or 0)["rss_mib"] for p in processes)
    plugins_pss = sum(memory_of(p.pid or 0)["pss_mib"] for p in processes)
    threads = threading.active_count()
    for process in processes:
        process.close(grace=0.5)
    return {
        "plugins": count,
        "warm_start_all_s": round(elapsed, 3),
        "host_rss_mib": host_mem["rss_mib"],
        "plugins_rss_total_mib": round(plugins_rss, 1),
        "plugins_pss_total_mib": round(plugins_pss, 1),
        "host_threads": threads,
    }


def build_wheel(outdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(SAMPLE)],
        check=True,
        capture_output=True,
    )
    return next(outdir.glob("*.whl"))


def run_wire(sizes: Sizes) -> dict[str, Any]:
    """Only the wire's figures (latency and throughput): for working on the wire."""
    results: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REVA_PLUGINS_CACHE_DIR"] = str(Path(tmp) / "cache")
        with host_for(str(SAMPLE)) as host:
            spec = launch_spec(host)
            two = (0, 1) if (os.cpu_count() or 1) > 1 else (0, 0)
            results["latency_one_cpu"] = call_latency(host, spec, sizes.calls, (0, 0))
            results["latency_two_cpus"] = call_latency(host, spec, sizes.calls, two)
            results["throughput"] = throughput(host, spec, sizes.throughput)
    results["ablation"] = ablation(sizes)
    return results


def ablation(sizes: Sizes) -> dict[str, Any]:
    """What each piece of the latency machinery earns (``_ablate``)."""
    return _ablate.measure(sizes.throughput // 5, sizes.serve // 2, sizes.ablation_rounds)


def run(sizes: Sizes) -> dict[str, Any]:
    results: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REVA_PLUGINS_CACHE_DIR"] = str(Path(tmp) / "cache")
        wheel = build_wheel(Path(tmp) / "dist")
        with host_for(str(SAMPLE)) as host:
            spec = launch_spec(host)
            results["warm_start"] = warm_start(spec, sizes.starts)
            results["sandbox"] = sandbox_cost(spec, sizes.starts, sizes.calls)
            two = (0, 1) if (os.cpu_count() or 1) > 1 else (0, 0)
            results["latency_one_cpu"] = call_latency(host, spec, sizes.calls, (0, 0))
            results["latency_two_cpus"] = call_latency(host, spec, sizes.calls, two)
            results["in_process_overhead"] = in_process_overhead(spec, sizes.calls * 10)
            results["metrics_wrapper"] = _serve.metrics_wrapper_cost(
                in_process_pair(spec)[0], UID, sizes.calls * 10
            )
            results["throughput"] = throughput(host, spec, sizes.throughput)
            results["memory"] = memory(host, spec)
            results["scale"] = scale(spec, sizes.plugins)
            results["serve"] = _serve.measure(sizes.serve)
            results["serve_processes"] = _serve.measure_processes(sizes.serve)
        results["ablation"] = ablation(sizes)
        results["provisioning"] = provisioning(sizes.builds, wheel)
        results["bundle_import"] = _fleets.bundle_import(sizes.builds)
    return results


def wire_table(results: dict[str, Any]) -> str:
    """The wire's figures only."""
    lat1, lat2 = results["latency_one_cpu"], results["latency_two_cpus"]
    rows = [
        (
            "call p50, 1 CPU (us)",
            lat1["ours"]["p50_us"],
            lat1["baseline_raw_pipe_echo"]["p50_us"],
            lat1["ratio_to_raw_echo"],
        ),
        (
            "call p50, 2 CPUs (us)",
            lat2["ours"]["p50_us"],
            lat2["baseline_raw_pipe_echo"]["p50_us"],
            lat2["ratio_to_raw_echo"],
        ),
        _loop_row(lat1),
        (
            "    the process's invoke, 1 CPU (us)",
            lat1["ours_process_invoke"]["p50_us"],
            lat1["baseline_json_rpc_loop"]["p50_us"],
            lat1["ratio_process_to_json_rpc_loop"],
        ),
        (
            "    the wire's client, 1 CPU (us)",
            lat1["ours_client_invoke"]["p50_us"],
            lat1["baseline_json_rpc_loop"]["p50_us"],
            lat1["ratio_client_to_json_rpc_loop"],
        ),
        (
            "    a minimal client on our plugin, 1 CPU (us)",
            lat1["minimal_client_on_our_plugin"]["p50_us"],
            lat1["baseline_json_rpc_loop"]["p50_us"],
            lat1["ratio_minimal_client_to_json_rpc_loop"],
        ),
        *_throughput_rows(results["throughput"]),
        *_ablate.rows(results["ablation"]),
    ]
    return _render(rows)


def _call_rows(lat1: dict[str, Any], lat2: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """A call's p50 on one CPU and on two, against the raw pipe echo, then against the loop."""
    rows: list[tuple[str, Any, Any, Any]] = [
        (
            f"call p50, {cpus} (us)",
            lat["ours"]["p50_us"],
            lat["baseline_raw_pipe_echo"]["p50_us"],
            lat["ratio_to_raw_echo"],
        )
        for cpus, lat in (("1 CPU", lat1), ("2 CPUs", lat2))
    ]
    return [*rows, _loop_row(lat1)]


def _loop_row(lat1: dict[str, Any]) -> tuple[str, Any, Any, Any]:
    return (
        "  vs a JSON-RPC loop, 1 CPU (us)",
        lat1["ours"]["p50_us"],
        lat1["baseline_json_rpc_loop"]["p50_us"],
        lat1["ratio_to_json_rpc_loop"],
    )


def _render(rows: list[tuple[str, Any, Any, Any]]) -> str:
    lines = [f"{'figure':<48}{'ours':>12}{'baseline':>12}{'ratio':>8}"]
    lines += [f"{name:<48}{_fmt(a):>12}{_fmt(b):>12}{_fmt(c):>8}" for name, a, b, c in rows]
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    """A short human summary."""
    lat1, lat2 = results["latency_one_cpu"], results["latency_two_cpus"]
    tp, mem, prov, sc = (
        results["throughput"],
        results["memory"],
        results["provisioning"],
        results["scale"],
    )
    ws, inp = results["warm_start"], results["in_process_overhead"]
    sb = results["sandbox"]
    rows = [
        ("warm start (ms)", ws["ours_ms"], ws["baseline_python_pass_ms"], ws["ratio"]),
        (
            f"warm start, {sb.get('sandbox')} vs none (ms)",
            sb.get("warm_start_ms"),
            sb.get("baseline_unsandboxed_start_ms"),
            None,
        ),
        (
            "call p50 sandboxed vs none (us)",
            sb.get("call_p50_us"),
            sb.get("baseline_unsandboxed_call_p50_us"),
            None,
        ),
        (
            "in-process call via proxy vs method (us)",
            inp["proxy_us"],
            inp["baseline_direct_method_us"],
            inp["ratio"],
        ),
        ("in-process proxy overhead (us)", inp["overhead_us"], None, None),
        (
            "call + serve metrics wrapper (us)",
            results["metrics_wrapper"]["with_metrics_us"],
            results["metrics_wrapper"]["baseline_no_hook_us"],
            None,
        ),
        *_call_rows(lat1, lat2),
        *_throughput_rows(tp),
        *_ablate.rows(results["ablation"]),
        (
            "idle RSS (MiB)",
            mem["ours"]["rss_mib"],
            mem["baseline_bare_interpreter"]["rss_mib"],
            mem["ratio_rss"],
        ),
        (
            "  vs the driver alone in a bare interpreter",
            mem["ours"]["rss_mib"],
            mem["baseline_driver_in_bare_interpreter"]["rss_mib"],
            mem["ratio_rss_to_driver_alone"],
        ),
        (
            "cold build, folder, uv (s)",
            prov.get("uv_folder_cold_s"),
            prov.get("baseline_bare_uv_folder_s"),
            prov.get("ratio_uv_folder"),
        ),
        (
            "cold build, wheel, uv (s)",
            prov.get("uv_wheel_cold_s"),
            prov.get("baseline_bare_uv_wheel_s"),
            prov.get("ratio_uv_wheel"),
        ),
        (
            "cold build, folder, pip (s)",
            prov.get("pip_folder_cold_s"),
            prov.get("baseline_venv_pip_folder_s"),
            prov.get("ratio_pip_folder"),
        ),
        (f"{sc['plugins']} plugins warm start (s)", sc["warm_start_all_s"], None, None),
        (f"{sc['plugins']} plugins: host threads", sc["host_threads"], None, None),
        *_serve_rows(results["serve"]),
        *_processes_rows(results.get("serve_processes")),
        _fleets.row(results["bundle_import"]),
    ]
    return _render(rows)


def _throughput_rows(tp: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    rows: list[tuple[str, Any, Any, Any]] = []
    for name in ("unpinned", "one_cpu"):
        part = tp[name]
        execnet = part["baseline_execnet_8_threads"] or {}
        for threads in THREADS:
            row = part[f"{threads}_threads"]
            rows.append(
                (
                    f"{name} {threads} thr: calls/s",
                    row["calls_per_s"],
                    execnet.get("calls_per_s") if threads == 16 else None,
                    part["ratio_16_threads_to_execnet"] if threads == 16 else None,
                )
            )
            rows.append(
                (
                    "  core/plugin us, core/plugin cs",
                    f"{row['core_cpu_us_per_call']}/{row['plugin_cpu_us_per_call']}",
                    f"{row['core_ctx_switches_per_call']}/{row['plugin_ctx_switches_per_call']}",
                    None,
                )
            )
    return rows


def _serve_rows(serve: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """serve as deployed (access log, metrics) vs the bare grpc.aio server, and where its CPU
    per RPC goes (``_budget``: µs per call, beside the bare server's total)."""
    rows: list[tuple[str, Any, Any, Any]] = []
    for clients in _serve.CLIENTS:
        level = serve[f"{clients}_clients"]
        ours, bare = level["ours"], level["baseline_bare_grpcio_dict"]
        rows.append(
            (
                f"serve GetUser, {clients} clients (calls/s)",
                ours["calls_per_s"],
                bare["calls_per_s"],
                level["ratio_throughput"],
            )
        )
        rows.append(
            (f"serve GetUser, {clients} clients p50 (ms)", ours["p50_ms"], bare["p50_ms"], None)
        )
        rows.append(
            (
                "  CPU per call, serve + plugin (us)",
                level["cpu_us_per_call"],
                level["baseline_cpu_us_per_call"],
                level["ratio_cpu"],
            )
        )
        rows.append(
            (
                "  vs bare with a process hop: CPU per call (us)",
                level["cpu_us_per_call"],
                level["hop_cpu_us_per_call"],
                level["ratio_cpu_to_hop"],
            )
        )
        floor = level["reference_bare_grpcio_minimal_python_plugin"]
        rows.append(
            (
                "  floor: bare + a minimal Python JSON-RPC plugin, CPU per call (us)",
                level["floor_cpu_us_per_call"],
                level["baseline_cpu_us_per_call"],
                level["ratio_floor_cpu_to_bare"],
            )
        )
        rows.append(
            (
                "  floor: calls/s",
                floor["calls_per_s"],
                bare["calls_per_s"],
                level["ratio_floor_throughput_to_bare"],
            )
        )
        rows.append(
            (
                "  serve vs the floor: CPU per call (us)",
                level["cpu_us_per_call"],
                level["floor_cpu_us_per_call"],
                level["ratio_cpu_to_floor"],
            )
        )
        rows.append(
            (
                "  lean: no access log, no metrics (calls/s)",
                level["ours_lean"]["calls_per_s"],
                ours["calls_per_s"],
                level["ratio_lean_throughput"],
            )
        )
    budget = serve[f"{_serve.CLIENTS[-1]}_clients"]["budget_us"]
    bare_us = budget["loop_bare_grpc_aio"]
    rows.append((f"serve CPU budget, {_serve.CLIENTS[-1]} clients (us)", None, None, None))
    for name, value in budget.items():
        rows.append(
            (f"  {name}", value, bare_us if name == "total_serve_and_plugin" else None, None)
        )
    return rows


def _processes_rows(found: dict[str, Any] | None) -> list[tuple[str, Any, Any, Any]]:
    """``[grpc] processes = 2`` (ours) against ``= 1`` (the baseline), same run."""
    if not found:
        return []
    one, two = found["1_processes"], found["2_processes"]
    clients = found["clients"]
    return [
        (
            f"serve 2 procs vs 1: CPU/RPC, {clients} clients (us)",
            two["cpu_us_per_call"],
            one["cpu_us_per_call"],
            found["ratio_cpu_per_call"],
        ),
        (
            f"serve 2 procs vs 1: {clients} clients (calls/s)",
            two["calls_per_s"],
            one["calls_per_s"],
            found["ratio_throughput"],
        ),
        (
            "serve 2 procs vs 1: RSS + plugins (MiB)",
            two["rss_mb"],
            one["rss_mb"],
            found["ratio_rss"],
        ),
    ]


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--wire", action="store_true", help="only latency and throughput")
    parser.add_argument(
        "--ablation", action="store_true", help="only what each latency piece earns"
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    results: dict[str, Any]
    if args.ablation:
        results = {"ablation": ablation(sizes)}
    else:
        results = run_wire(sizes) if args.wire else run(sizes)
    results["seconds"] = round(time.perf_counter() - began, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.ablation:
        print(_render(_ablate.rows(results["ablation"])), file=sys.stderr)
    else:
        print((wire_table if args.wire else table)(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
