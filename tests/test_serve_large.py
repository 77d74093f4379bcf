"""A plugin's large answers do not stall serve (#19.2): long lists become CS3 messages off the
serving loop, and an answer larger than a gRPC client takes is answered and counted as
CODE_RESOURCE_EXHAUSTED, which is what the client sees."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the serve extra is not installed")

from cs3.identity.user.v1beta1 import user_api_pb2 as user_api  # noqa: E402
from cs3.identity.user.v1beta1 import user_api_pb2_grpc as user_api_grpc  # noqa: E402
from cs3.rpc.v1beta1 import code_pb2  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from .factory import make_plugin  # noqa: E402
from .test_serve import USER_API, Served, _sample  # noqa: E402

pytestmark = pytest.mark.slow

MANY = """
class Provider:
    def configure(self, config):
        pass

    def _user(self, n):
        return {"id": {"idp": "test", "opaque_id": f"u{n}", "type": 1}, "username": f"u{n}",
                "mail": f"u{n}@example.org", "display_name": f"User {n}", "groups": [],
                "uid_number": n, "gid_number": 1}

    def get_user(self, user_id, skip_fetching_groups=False):
        return self._user(1)

    def get_user_by_claim(self, claim, value, skip_fetching_groups=False):
        return self._user(1)

    def get_user_groups(self, user_id):
        return []

    def find_users(self, query, skip_fetching_groups=False):
        count = int(query) if query.isdigit() else 1
        return [self._user(n) for n in range(count)]
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    project = make_plugin(tmp_path / "many", "reva-many-users")
    (project / "reva_many_users" / "__init__.py").write_text(MANY)
    config = tmp_path / "many.toml"
    config.write_text(
        '[grpc]\naddress = "127.0.0.1:0"\n[metrics]\naddress = "127.0.0.1:0"\n'
        f'[grpc.services.userprovider]\ndriver = "{project}"\n'
    )
    server = Served(config)
    yield server
    server.stop()


def _find(server: Served, count: int) -> user_api.FindUsersResponse:
    query = user_api.Filter(type=user_api.Filter.TYPE_QUERY, query=str(count))
    big = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", -1)])
    with big:
        stub = user_api_grpc.UserAPIStub(big)
        response: user_api.FindUsersResponse = stub.FindUsers(
            user_api.FindUsersRequest(filters=[query]), timeout=120
        )
        return response


def test_a_huge_answer_does_not_stall_other_rpcs_and_is_counted_as_refused(
    served: Served,
) -> None:
    assert len(_find(served, 10).users) == 10  # the plugin runs
    worst = [0.0]
    stop = threading.Event()

    def check() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            answer = served.health.Check(
                health_pb2.HealthCheckRequest(service=USER_API), timeout=30
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            worst[0] = max(worst[0], time.perf_counter() - began)
            time.sleep(0.005)

    checker = threading.Thread(target=check)
    checker.start()
    try:
        answer = _find(served, 100_000)
    finally:
        stop.set()
        checker.join(30)
    # 100k users are ~10 MiB: more than a gRPC client takes by default
    assert answer.status.code == code_pb2.CODE_RESOURCE_EXHAUSTED
    assert "narrow the query" in answer.status.message
    assert len(answer.users) == 0
    # the health checks were answered all along (each with its own deadline)
    assert worst[0] > 0
    metrics = served.metrics()
    counted = _sample(
        metrics, "reva_plugins_rpcs_total", api=USER_API, method="FindUsers",
        code="CODE_RESOURCE_EXHAUSTED",
    )  # fmt: skip
    assert counted == 1


def test_a_long_list_becomes_cs3_messages_in_a_worker_thread() -> None:
    """The conversion of a long FindUsers answer runs off the event loop (a short one on it)."""
    from reva_plugins.serve import _cs3

    rpc = next(r for r in _cs3.RPCS if r.name == "FindUsers")
    threads: list[bool] = []
    real = _cs3.user_pb

    def user_pb(user: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return real(user)

    async def run(count: int) -> Any:
        async def invoke(method: str, params: dict[str, Any]) -> Any:
            return [
                {"id": {"idp": "t", "opaque_id": f"u{n}"}, "username": f"u{n}"}
                for n in range(count)
            ]

        return await _cs3.convert(rpc, invoke, user_api.FindUsersRequest())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_cs3, "user_pb", user_pb)
        assert len(asyncio.run(run(10)).users) == 10
        assert set(threads) == {True}  # on the loop (the main thread here)
        threads.clear()
        assert len(asyncio.run(run(5000)).users) == 5000
        assert set(threads) == {False}  # in a worker thread
