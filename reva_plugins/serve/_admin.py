"""The server's own API, ``reva_plugins.admin.v1.AdminAPI`` on the gRPC port: ``Status`` (what
runs, and the metrics text) and ``Reload``, answered to this host's loopback peers only; in a
worker process of ``[grpc] processes``, for its siblings too. Also what a worker answers on its
control socket (``_siblings``)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import ipaddress
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, json_format, struct_pb2
from prometheus_client import generate_latest

from .. import _defaults
from .._redact import redact
from . import _cs3
from ._metrics import merged
from ._siblings import Op, ask_all

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["ADMIN_API", "AdminAPI", "describe_admin_api", "is_local_peer"]

log = logging.getLogger("reva_plugins.serve")
#: The server's own API (Status, Reload), on the gRPC port, answered to loopback peers only.
ADMIN_API = "reva_plugins.admin.v1.AdminAPI"


def describe_admin_api() -> None:
    """Describe the admin API in the default pool, so reflection (``grpcurl``) knows it."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(ADMIN_API)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto(
        name="reva_plugins/admin/v1/admin.proto",
        package="reva_plugins.admin.v1",
        syntax="proto3",
        dependency=[empty_pb2.DESCRIPTOR.name, struct_pb2.DESCRIPTOR.name],
    )
    service = file.service.add(name="AdminAPI")
    for name in ("Status", "Reload"):
        service.method.add(
            name=name, input_type=".google.protobuf.Empty", output_type=".google.protobuf.Struct"
        )
    pool.AddSerializedFile(file.SerializeToString())


def is_local_peer(peer: str) -> bool:
    """True if a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:%5B::1%5D:5000``,
    ``unix:…``) is this host's loopback or a Unix socket."""
    kind, _, rest = peer.partition(":")
    if kind in ("unix", "unix-abstract"):
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = urllib.parse.unquote(rest).rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


class AdminAPI:
    """The admin API of one :class:`Server`, and the answers it gives (it keeps no state of its
    own: the server's reloader, metrics and worker role are what it reports)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def handler(self) -> grpc.GenericRpcHandler:
        """The gRPC handler of ``Status`` and ``Reload``."""
        admin = {
            name: grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=empty_pb2.Empty.FromString,
                response_serializer=struct_pb2.Struct.SerializeToString,
            )
            for name, method in (("Status", self._status), ("Reload", self._reload))
        }
        return grpc.method_handlers_generic_handler(ADMIN_API, admin)

    def _allowed(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> bool:
        peer = context.peer()
        if is_local_peer(peer):
            return True
        log.warning("admin %s refused to %s: answered on loopback only", method, redact(peer))
        context.set_code(grpc.StatusCode.PERMISSION_DENIED)
        context.set_details(f"{ADMIN_API} answers on this host's loopback only")
        return False

    async def _status(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if not self._allowed(context, "Status"):
            return struct_pb2.Struct()
        if self.server.worker is not None:  # its siblings are asked: in a thread of its own
            return _struct(await _in_thread(self.status))
        # on the loop: it reads what runs and renders the counters, nothing that waits, and so
        # answers while the worker threads are all busy (a reload draining, slow starts)
        return _struct(self.status())

    async def _reload(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if not self._allowed(context, "Reload"):
            return struct_pb2.Struct()
        log.info("admin: reload requested by %s", context.peer())
        if self.server.worker is not None:
            return _struct(await _in_thread(self.reload_all))
        outcome = await self.server.loop.in_admin_thread(self.server.reload)
        return _struct(dataclasses.asdict(outcome))

    def reload_all(self) -> dict[str, Any]:
        """Reload every worker process (this one and its siblings, at once); one outcome
        naming each: ``failed`` if one failed, else ``swapped`` if one swapped."""
        role = self.server.worker
        assert role is not None
        answers = ask_all(
            role.folder,
            role.count,
            "reload",
            timeout=_defaults.RELOAD_TIMEOUT,
            local=(role.index, lambda: dataclasses.asdict(self.server.reload())),
        )
        results = {a.get("result", "failed") for a in answers.values()}
        result = next((r for r in ("failed", "swapped") if r in results), "unchanged")
        lines = [
            f"worker {index}: {a.get('message') or a.get('error', '')}"
            for index, a in answers.items()
        ]
        return {
            "result": result,
            "message": "\n".join(lines),
            "generation": answers[role.index].get("generation", 0),
            "workers": {str(index): a for index, a in answers.items()},
        }

    def answer(self, op: Op) -> dict[str, Any]:
        """What this worker process tells a sibling or the parent (its control socket)."""
        if op == "reload":
            return dataclasses.asdict(self.server.reload())
        if op == "metrics":
            return {"metrics": generate_latest(self.server.metrics.registry).decode("utf-8")}
        return self.local_status()

    def status(self) -> dict[str, Any]:
        """What runs now: the server, each service's backend, and the metrics text; of every
        worker process (``workers``, by index) when there are several."""
        local = self.local_status()
        role = self.server.worker
        if role is None:
            return local
        answers = ask_all(role.folder, role.count, "status", local=(role.index, lambda: local))
        workers: dict[str, Any] = {}
        for index, answer in answers.items():
            if "error" in answer:
                workers[str(index)] = {"state": "down", "error": answer["error"]}
                continue
            server = answer.get("server", {})
            workers[str(index)] = {
                "state": "serving",
                "pid": server.get("pid"),
                "generation": server.get("generation"),
                "uptime_s": server.get("uptime_s"),
                "restarts": server.get("restarts", 0),
                "services": answer.get("services", {}),
            }
        pages = [str(a.get("metrics", "")) for a in answers.values() if "error" not in a]
        local["server"].pop("restarts", None)
        local["server"].update(pid=role.parent, worker_pid=os.getpid(), processes=role.count)
        local["workers"] = workers
        local["metrics"] = merged(pages).decode("utf-8")
        return local

    def local_status(self) -> dict[str, Any]:
        """What runs in this process: the server, each service's backend, the metrics text."""
        srv = self.server
        gen = srv.reloader.current
        services: dict[str, Any] = {}
        for name, backend in (gen.backends if gen is not None else {}).items():
            info = backend.proxy.info()
            services[name] = {
                "api": _cs3.APIS[name],
                "kind": info.kind,
                "state": info.state,
                "pid": info.pid,
                "version": info.version,
                "env_key": info.env_key,
                "restarts": info.restarts,
                "calls_in_flight": backend.in_flight,
                "uptime_s": None if info.uptime is None else round(info.uptime, 3),
                "generation": backend.number,
            }
        server = {
            "version": _version(),
            "pid": os.getpid(),
            "address": f"{srv.address.rpartition(':')[0]}:{srv.port}",
            "generation": gen.number if gen is not None else 0,
            "uptime_s": round(time.time() - srv._started_at, 3),
        }
        if srv.worker is not None:  # how often the parent restarted this worker's slot
            server["restarts"] = srv.worker.restarts
        return {
            "server": server,
            "services": services,
            "metrics": generate_latest(srv.metrics.registry).decode("utf-8"),
        }


async def _in_thread(func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``func()`` in a thread of its own, awaited: never one of the loop's worker threads, which
    RPCs may all hold."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()

    def run() -> None:
        try:
            result = func()
        except BaseException as exc:  # noqa: BLE001 (handed to the awaiting RPC)
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name="admin-all", daemon=True).start()
    return await done


def _settle(
    done: asyncio.Future[dict[str, Any]], result: dict[str, Any] | None, error: BaseException | None
) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        assert result is not None
        done.set_result(result)


def _version() -> str:
    try:
        return importlib.metadata.version("reva-plugins")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _json_shaped(value: Any) -> Any:
    """``value`` with tuples as lists: protobuf before 5 takes only lists for a ``ListValue``."""
    if isinstance(value, dict):
        return {key: _json_shaped(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_shaped(item) for item in value]
    return value


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    json_format.ParseDict(_json_shaped(data), out)
    return out
