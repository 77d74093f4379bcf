"""Where a served GetUser's CPU goes: each piece of serve's per-RPC path measured on its own.

A ``Server`` runs in this process on the JSON sample, as a user deploys it (the access log at
``info`` into a file, ``[metrics]`` on), and its RPC handler (the very function grpc.aio calls)
is driven on its loop with a stand-in for grpc's context. Each piece is the CPU
(``time.process_time``: every thread of this process) of a batch of calls divided by the calls,
the median of alternating rounds:

- ``mapping``: the request's fields to the plugin's params and the plugin's dict into the
  response (``_cs3.fill_user``), without the checks;
- ``validation``: the request's checks (``_cs3._user_id``) and the answer's size;
- ``access_log``: one line, on the loop and in the writer thread (waited for);
- ``metrics``: the RPC counted and the ``service_call`` wrapper (``CallWrappers``) around a call;
- ``proxy``: ``ServiceProxy.acall``'s binding and ``Call`` around a driver that answers at once;
- ``wire``: the core side of the awaited plugin call (``driver.ainvoke``: encode, send, the
  loop woken by the reply, decode), and the plugin process's CPU for it (``/proc``; the
  budget's ``plugin`` is the plugin's CPU per call measured under the load itself);
- ``servicer``: the handler's CPU with a driver that answers at once, less the pieces above
  (its own Python: the slot, the backend's count, the deadline, the status);
- ``wake``: the handler's CPU with its plugin, less the same with the instant driver and less
  the wire: what the sends cost more when RPCs come at the handler's pace rather than a tight
  loop's (the plugin polls for its next request for 50 µs only, then sleeps, and a send to a
  sleeping process wakes it: kernel work, tens of µs on a VM).

The serve process's measured CPU per call less these and less the bare grpc.aio server's CPU
per call (the same grpc.aio machinery) is what grpc.aio costs more for an RPC that waits for
something (its task suspended and woken), what concurrency adds to the pieces measured one
call at a time, and what no piece above covers: ``loop_extra``. Beside it,
``reference_hop_minus_bare``: what the bare server costs more (or less: its RPCs wait, so more
of them share each trip through the loop) when each RPC first makes a round trip to an echo
process.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROUNDS = 5


class _Context:
    """What the handler asks of grpc.aio's context."""

    def time_remaining(self) -> float:
        return 30.0  # the benchmark's clients set a 30 s deadline

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


def _per_call(batch: int, work: Callable[[], None]) -> float:
    began = time.process_time()
    work()
    return (time.process_time() - began) / batch * 1e6


def _median_rounds(pieces: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each piece ``rounds`` times, alternating their order; the median of each, in µs."""
    samples: dict[str, list[float]] = {name: [] for name in pieces}
    for number in range(rounds):
        names = list(pieces) if number % 2 == 0 else list(reversed(pieces))
        for name in names:
            samples[name].append(pieces[name]())
    return {name: round(statistics.median(values), 1) for name, values in samples.items()}


def _plugin_cpu(pid: int) -> float:
    from benchmarks._serve import _cpu_seconds

    return _cpu_seconds(pid)


def measure(config_text: str, calls: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """The pieces of one served GetUser, µs of CPU each (see the module's docstring)."""
    from cs3.identity.user.v1beta1 import resources_pb2 as res
    from cs3.identity.user.v1beta1 import user_api_pb2 as api

    from reva_plugins import _config
    from reva_plugins._call import Call
    from reva_plugins._proxy import ServiceProxy
    from reva_plugins.serve import _cs3, _log
    from reva_plugins.serve._server import Server

    batch = max(50, calls // rounds)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "budget.toml"
        config.write_text(config_text, encoding="utf-8")
        root = logging.getLogger("reva_plugins")
        saved = (list(root.handlers), root.level, root.propagate)
        root.handlers[:] = [logging.NullHandler()]
        root.propagate = False  # as the command line has it
        root.setLevel(logging.INFO)
        settings = _config.LogSettings(output=Path(tmp) / "serve.log")
        undo = _log.configure(settings, 0, str(config))
        server = Server(config)
        server.start()
        try:
            return _pieces(server, batch, rounds, api, res, _cs3, _log, Call, ServiceProxy)
        finally:
            server.stop(grace=1)
            undo()
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
            root.propagate = saved[2]


def _pieces(
    server: Any,
    batch: int,
    rounds: int,
    api: Any,
    res: Any,
    _cs3: Any,
    _log: Any,
    call_type: Any,
    proxy_type: Any,
) -> dict[str, Any]:
    rpc = next(r for r in _cs3.RPCS if r.name == "GetUser")
    handle = server._handler(rpc)
    context = _Context()
    request = api.GetUserRequest(
        user_id=res.UserId(idp="http://localhost:20080", opaque_id="einstein")
    )
    gen = server.reloader.current
    backend = gen.backends["userprovider"]
    proxy = backend.proxy
    pid = proxy.info().pid
    params = {"user_id": _cs3._user_id(request.user_id), "skip_fetching_groups": False}
    user = proxy.get_user(params["user_id"])
    answer = api.GetUserResponse()
    answer.status.code = 1
    _cs3.fill_user(answer.user, user)
    run = server.loop.run

    def on_loop(step: Callable[[], Awaitable[Any]]) -> Callable[[], None]:
        async def many() -> None:
            for _ in range(batch):
                await step()

        return lambda: run(many())

    plugin_us: list[float] = []

    class Instant:
        """A driver that answers at once (what the proxy and the wrappers cost around it)."""

        async def ainvoke(self, call: Any) -> Any:
            return user

    def handler() -> float:
        """The handler as grpc.aio calls it, without its access log (measured apart)."""
        level, server._access_level = server._access_level, None
        try:
            before = _plugin_cpu(pid)
            spent = _per_call(batch, on_loop(lambda: handle(request, context)))
            plugin_us.append((_plugin_cpu(pid) - before) / batch * 1e6)
        finally:
            server._access_level = level
        return spent

    def handler_instant() -> float:
        """The same with a driver that answers at once: serve's own Python, no plugin."""
        level, server._access_level = server._access_level, None
        driver, proxy.driver = proxy.driver, Instant()
        try:
            return _per_call(batch, on_loop(lambda: handle(request, context)))
        finally:
            proxy.driver = driver
            server._access_level = level

    def wire() -> float:
        def call() -> Awaitable[Any]:
            made = call_type("userprovider", "get_user", dict(params), 30.0)
            awaitable: Awaitable[Any] = proxy.driver.ainvoke(made)
            return awaitable

        return _per_call(batch, on_loop(call))

    wrapped = proxy_type(proxy.service, Instant(), "budget", wrappers=proxy._wrappers)
    plain = proxy_type(proxy.service, Instant(), "budget")
    instant = Instant()

    def metrics() -> float:
        count = server.metrics.rpc_answered

        def work() -> None:
            for _ in range(batch):
                count(rpc.api, rpc.name, "CODE_OK")

        counted = _per_call(batch, work)
        with_wrappers = _per_call(
            batch, on_loop(lambda: wrapped.acall("get_user", params, timeout=30.0))
        )
        without = _per_call(batch, on_loop(lambda: plain.acall("get_user", params, timeout=30.0)))
        return counted + with_wrappers - without

    def proxy_piece() -> float:
        with_proxy = _per_call(
            batch, on_loop(lambda: plain.acall("get_user", params, timeout=30.0))
        )
        alone = _per_call(batch, on_loop(lambda: instant.ainvoke(None)))
        return with_proxy - alone

    def validation() -> float:
        check = _cs3._user_id

        def work() -> None:
            for _ in range(batch):
                check(request.user_id)
                answer.ByteSize()

        return _per_call(batch, work)

    def mapping() -> float:
        fill = _cs3.fill_user
        response_type = api.GetUserResponse

        def work() -> None:
            for _ in range(batch):
                uid = request.user_id
                {  # noqa: B018 (the params dict, as _cs3 builds it)
                    "user_id": {"idp": uid.idp, "opaque_id": uid.opaque_id},
                    "skip_fetching_groups": request.skip_fetching_user_groups,
                }
                response = response_type()
                response.status.code = 1
                fill(response.user, user)

        return _per_call(batch, work)

    records = _log._direct.queue if _log._direct is not None else None

    def access_log() -> float:
        def work() -> None:
            for _ in range(batch):
                server._log_access(gen, rpc, "CODE_OK", 0.000512, context)
            while records is not None and records.items:
                time.sleep(0.001)
            time.sleep(3 * _log.BATCH_PAUSE)  # the last batch written

        return _per_call(batch, work)

    pieces = (handler, handler_instant, wire, metrics, proxy_piece, validation, mapping)
    for piece in (*pieces, access_log):
        piece()  # warm-up
    plugin_us.clear()
    measured = _median_rounds(
        {
            "handler": handler,
            "handler_instant": handler_instant,
            "wire": wire,
            "metrics": metrics,
            "proxy": proxy_piece,
            "validation": validation,
            "mapping": mapping,
            "access_log": access_log,
        },
        rounds,
    )
    own = ("mapping", "validation", "metrics", "proxy")
    measured["servicer"] = round(measured["handler_instant"] - sum(measured[p] for p in own), 1)
    # the handler with its plugin, less its own Python and the wire as a tight loop drives it:
    # what waking a plugin that went to sleep between two RPCs costs (the plugin polls for
    # its next request for a while only, and a send to a sleeping process wakes it)
    measured["wake"] = round(
        measured["handler"] - measured["handler_instant"] - measured["wire"], 1
    )
    measured["plugin"] = round(statistics.median(plugin_us), 1)
    measured["calls"] = batch * rounds
    return measured


def rows(
    budget: dict[str, Any], plugin_us: float, serve_us: float, bare_us: float, hop_us: float
) -> dict[str, float]:
    """The budget of one served GetUser beside the serve process's measured CPU per call
    (``serve_us``: serve and its plugin, of which ``plugin_us`` the plugin's, all at one level
    of concurrency), the bare server's (``bare_us``) and the bare server's with a process hop
    (``hop_us``: what one round trip to another process costs at least)."""
    pieces = (
        "mapping",
        "validation",
        "access_log",
        "metrics",
        "proxy",
        "servicer",
        "wire",
        "wake",
    )
    out = {"loop_bare_grpc_aio": round(bare_us, 1)}
    out.update({name: budget[name] for name in pieces})
    out["plugin"] = round(plugin_us, 1)
    out["plugin_one_call_at_a_time"] = budget["plugin"]
    spent = sum(budget[name] for name in pieces) + plugin_us
    out["loop_extra"] = round(serve_us - bare_us - spent, 1)
    out["total_serve_and_plugin"] = round(serve_us, 1)
    out["reference_hop_minus_bare"] = round(hop_us - bare_us, 1)
    return out
