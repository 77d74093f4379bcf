"""``reva-plugins serve``: a real server process on 127.0.0.1, called with the CS3 stubs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the serve extra is not installed")

from cs3.auth.provider.v1beta1 import provider_api_pb2 as auth_api  # noqa: E402
from cs3.auth.provider.v1beta1 import provider_api_pb2_grpc as auth_grpc  # noqa: E402
from cs3.identity.group.v1beta1 import group_api_pb2 as group_api  # noqa: E402
from cs3.identity.group.v1beta1 import group_api_pb2_grpc as group_grpc  # noqa: E402
from cs3.identity.group.v1beta1 import resources_pb2 as group_res  # noqa: E402
from cs3.identity.user.v1beta1 import resources_pb2 as user_res  # noqa: E402
from cs3.identity.user.v1beta1 import user_api_pb2 as user_api  # noqa: E402
from cs3.identity.user.v1beta1 import user_api_pb2_grpc as user_grpc  # noqa: E402
from cs3.rpc.v1beta1 import code_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402

from reva_plugins import RevaPluginError, hookimpl  # noqa: E402
from reva_plugins.serve import Server  # noqa: E402

from .conftest import EXAMPLES, ROOT, SAMPLES, cli, pid_alive, wait_until  # noqa: E402
from .factory import make_plugin  # noqa: E402
from .plugin_sources import CHAOS_PLUGIN  # noqa: E402

pytestmark = pytest.mark.slow  # real servers, venvs and processes

IDP = "http://localhost:20080"
EINSTEIN = "4c510ada-c86b-4815-8820-42cdf82c3d51"
MARIE = "f7fbf8c8-139b-4376-b307-cf0a8c2d0d9c"
USER_API = "cs3.identity.user.v1beta1.UserAPI"
AUTH_API = "cs3.auth.provider.v1beta1.ProviderAPI"
GROUP_API = "cs3.identity.group.v1beta1.GroupAPI"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SAMPLES_CONFIG = f"""
[grpc]
address = "127.0.0.1:0"
shutdown_grace = 10
workers = 8

[metrics]
address = "127.0.0.1:0"

[grpc.services.userprovider]
driver = "{SAMPLES / "json_users"}"
[grpc.services.userprovider.drivers.json]
users = "{EXAMPLES / "users.demo.json"}"

[grpc.services.authprovider]
driver = "{SAMPLES / "json_users"}"
[grpc.services.authprovider.drivers.json]
users = "{EXAMPLES / "users.demo.json"}"

[grpc.services.groupprovider]
driver = "{SAMPLES / "json_users"}"
[grpc.services.groupprovider.drivers.json]
groups = "{EXAMPLES / "groups.demo.json"}"
"""


class Served:
    """A ``reva-plugins serve`` process; its stderr is collected line by line."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.pidfile = config.with_suffix(".pid")
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reva_plugins",
                "serve",
                str(config),
                "--pidfile",
                str(self.pidfile),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.wait_for(r"serving .* on \S+:(\d+) ").group(1))
        self.address = f"127.0.0.1:{self.port}"
        metrics = [re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", line) for line in self.lines]
        found = [m for m in metrics if m]
        self.metrics_port = int(found[0].group(1)) if found else None
        self.channel = grpc.insecure_channel(self.address)
        self.users = user_grpc.UserAPIStub(self.channel)
        self.auth = auth_grpc.ProviderAPIStub(self.channel)
        self.groups = group_grpc.GroupAPIStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120.0, start: int = 0) -> re.Match[str]:
        """The first stderr line (from index ``start``) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                match = re.search(pattern, line)
                if match:
                    return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(
                    f"serve exited {self.proc.returncode}:\n" + "\n".join(self.lines)
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def text(self) -> str:
        return "\n".join(self.lines)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode("utf-8"))

    def plugin_pids(self) -> dict[str, int]:
        found = _samples(self.metrics(), "reva_plugins_plugin_rss_bytes")
        return {labels["service"]: int(labels["pid"]) for labels, _ in found}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            self.channel.close()
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.channel.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config = tmp_path_factory.mktemp("serve") / "revad.toml"
    config.write_text(SAMPLES_CONFIG, encoding="utf-8")
    server = Served(config)
    try:
        yield server
    finally:
        server.kill()


def uid(opaque: str, idp: str = IDP) -> user_res.UserId:
    return user_res.UserId(idp=idp, opaque_id=opaque)


def gid(opaque: str) -> group_res.GroupId:
    return group_res.GroupId(idp=IDP, opaque_id=opaque)


def query(text: str) -> user_api.Filter:
    return user_api.Filter(type=user_api.Filter.TYPE_QUERY, query=text)


OK = code_pb2.CODE_OK


# -- every method of every service ------------------------------------------------------------


def test_user_api(served: Served) -> None:
    got = served.users.GetUser(user_api.GetUserRequest(user_id=uid(EINSTEIN)))
    assert got.status.code == OK
    user = got.user
    assert (user.username, user.mail, user.display_name) == (
        "einstein",
        "einstein@example.org",
        "Albert Einstein",
    )
    assert (user.id.idp, user.id.opaque_id, user.id.type) == (
        IDP,
        EINSTEIN,
        user_res.USER_TYPE_PRIMARY,
    )
    assert (user.uid_number, user.gid_number) == (123, 987)
    assert list(user.groups) == ["sailing-lovers", "violin-haters", "physics-lovers"]

    skipped = served.users.GetUser(
        user_api.GetUserRequest(user_id=uid(EINSTEIN), skip_fetching_user_groups=True)
    )
    assert skipped.status.code == OK
    assert list(skipped.user.groups) == []

    for claim, value in (("mail", "marie@example.org"), ("username", "marie"), ("uid", "456")):
        by_claim = served.users.GetUserByClaim(
            user_api.GetUserByClaimRequest(claim=claim, value=value)
        )
        assert by_claim.status.code == OK, claim
        assert by_claim.user.id.opaque_id == MARIE

    groups = served.users.GetUserGroups(user_api.GetUserGroupsRequest(user_id=uid(MARIE)))
    assert groups.status.code == OK
    assert list(groups.groups) == ["radium-lovers", "polonium-lovers", "physics-lovers"]

    everyone = served.users.FindUsers(user_api.FindUsersRequest())
    assert [u.username for u in everyone.users] == ["einstein", "marie", "richard"]  # sorted
    found = served.users.FindUsers(user_api.FindUsersRequest(filters=[query("ar")]))
    assert [u.username for u in found.users] == ["marie", "richard"]
    both = served.users.FindUsers(user_api.FindUsersRequest(filters=[query("ar"), query("curie")]))
    assert [u.username for u in both.users] == ["marie"]
    by_type = user_api.Filter(type=user_api.Filter.TYPE_USERTYPE, usertype=user_res.USER_TYPE_GUEST)
    assert (
        list(
            served.users.FindUsers(user_api.FindUsersRequest(filters=[query("ar"), by_type])).users
        )
        == []
    )
    primary = user_api.Filter(
        type=user_api.Filter.TYPE_USERTYPE, usertype=user_res.USER_TYPE_PRIMARY
    )
    assert len(served.users.FindUsers(user_api.FindUsersRequest(filters=[primary])).users) == 3


def test_auth_api(served: Served) -> None:
    reply = served.auth.Authenticate(
        auth_api.AuthenticateRequest(client_id="einstein", client_secret="relativity")
    )
    assert reply.status.code == OK
    assert reply.user.username == "einstein"
    assert reply.user.id.opaque_id == EINSTEIN
    scope = reply.token_scope["user"]
    assert (scope.resource.decoder, scope.resource.value, scope.role) == ("json", b"*", 1)


def test_group_api(served: Served) -> None:
    group = served.groups.GetGroup(group_api.GetGroupRequest(group_id=gid("physics-lovers")))
    assert group.status.code == OK
    assert (group.group.group_name, group.group.gid_number, group.group.display_name) == (
        "physics-lovers",
        3456,
        "Physics Lovers",
    )
    assert {m.opaque_id for m in group.group.members} >= {EINSTEIN, MARIE}
    claim = served.groups.GetGroupByClaim(
        group_api.GetGroupByClaimRequest(claim="group_name", value="violin-haters")
    )
    assert claim.status.code == OK
    assert claim.group.gid_number == 2345
    members = served.groups.GetMembers(group_api.GetMembersRequest(group_id=gid("sailing-lovers")))
    assert members.status.code == OK
    assert [m.opaque_id for m in members.members] == [EINSTEIN]
    assert members.members[0].type == user_res.USER_TYPE_PRIMARY
    has = served.groups.HasMember(
        group_api.HasMemberRequest(group_id=gid("sailing-lovers"), user_id=uid(EINSTEIN))
    )
    assert has.status.code == OK
    assert has.ok is True
    hasnt = served.groups.HasMember(
        group_api.HasMemberRequest(group_id=gid("sailing-lovers"), user_id=uid(MARIE))
    )
    assert hasnt.status.code == OK
    assert hasnt.ok is False
    found = served.groups.FindGroups(
        group_api.FindGroupsRequest(
            filters=[group_api.Filter(type=group_api.Filter.TYPE_QUERY, query="lovers")]
        )
    )
    names = [g.group_name for g in found.groups]
    assert names == sorted(names)
    assert "physics-lovers" in names
    assert "violin-haters" not in names


def test_errors_have_revas_status_codes(served: Served) -> None:
    """As Reva's own services: NotFound where they check it, a wrong password is
    PERMISSION_DENIED, and the rest INTERNAL; no message carries the client's secret."""
    cases: list[tuple[Any, int, str]] = [
        (
            served.users.GetUser(user_api.GetUserRequest(user_id=uid("nobody"))),
            code_pb2.CODE_NOT_FOUND,
            "user not found",
        ),
        (
            served.users.GetUserByClaim(user_api.GetUserByClaimRequest(claim="mail", value="x@y")),
            code_pb2.CODE_NOT_FOUND,
            "user not found",
        ),
        (
            served.users.GetUserGroups(user_api.GetUserGroupsRequest(user_id=uid("nobody"))),
            code_pb2.CODE_INTERNAL,
            "error getting user groups",
        ),
        (
            served.users.GetUserByClaim(
                user_api.GetUserByClaimRequest(claim="shoe-size", value="42")
            ),
            code_pb2.CODE_INTERNAL,
            "error getting user by claim",
        ),
        (
            served.groups.GetGroup(group_api.GetGroupRequest(group_id=gid("nope"))),
            code_pb2.CODE_NOT_FOUND,
            "group not found",
        ),
        (
            served.groups.GetMembers(group_api.GetMembersRequest(group_id=gid("nope"))),
            code_pb2.CODE_INTERNAL,
            "error getting group members",
        ),
    ]
    for reply, code, message in cases:
        assert (reply.status.code, reply.status.message) == (code, message)
    secret = "s3cret-canary-" + "x" * 8
    for client in ("einstein", "nobody"):
        reply = served.auth.Authenticate(
            auth_api.AuthenticateRequest(client_id=client, client_secret=secret)
        )
        assert reply.status.code == code_pb2.CODE_PERMISSION_DENIED
        assert reply.status.message == "wrong password"
        assert not reply.HasField("user")
    time.sleep(0.2)  # let the access log lines arrive before reading them
    assert secret not in served.text()


def test_hostile_requests(served: Served) -> None:
    """Oversized fields, an empty or odd UserId, too many filters, a request too big to read and
    bytes that are no message at all: each is a clear status, and the server keeps serving."""
    long = "x" * 5000
    for reply, where in (
        (served.users.GetUser(user_api.GetUserRequest(user_id=uid(long))), "user_id.opaque_id"),
        (
            served.users.GetUserByClaim(user_api.GetUserByClaimRequest(claim="mail", value=long)),
            "value",
        ),
        (
            served.auth.Authenticate(
                auth_api.AuthenticateRequest(client_id=long, client_secret="x")
            ),
            "client_id",
        ),
        (served.users.GetUser(user_api.GetUserRequest()), "user_id.opaque_id is empty"),
        (
            served.groups.HasMember(group_api.HasMemberRequest(group_id=gid("x"))),
            "user_id.opaque_id is empty",
        ),
        (served.users.FindUsers(user_api.FindUsersRequest(filters=[query("a")] * 17)), "filters"),
    ):
        assert reply.status.code == code_pb2.CODE_INVALID_ARGUMENT, where
        assert where in reply.status.message
        assert long not in reply.status.message
    odd = user_res.UserId(idp=IDP, opaque_id=EINSTEIN, type=999)  # not a UserType
    assert served.users.GetUser(user_api.GetUserRequest(user_id=odd)).status.code == OK
    odd_text = served.users.GetUser(user_api.GetUserRequest(user_id=uid("\x00\u202e\ud7ff")))
    assert odd_text.status.code == code_pb2.CODE_NOT_FOUND

    with pytest.raises(grpc.RpcError) as too_big:
        served.users.GetUserByClaim(
            user_api.GetUserByClaimRequest(claim="mail", value="y" * (2 << 20))
        )
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    raw = served.channel.unary_unary(f"/{USER_API}/GetUser")
    with pytest.raises(grpc.RpcError) as garbage:
        raw(b"\xff\xff\xff\xff not protobuf", timeout=10)
    assert garbage.value.code() != grpc.StatusCode.OK
    with pytest.raises(grpc.RpcError) as unknown:
        served.channel.unary_unary(f"/{USER_API}/DeleteUser")(b"", timeout=10)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert served.users.GetUser(user_api.GetUserRequest(user_id=uid(EINSTEIN))).status.code == OK


def test_health_and_reflection(served: Served) -> None:
    for name in ("", USER_API, AUTH_API, GROUP_API):
        reply = served.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == SERVING, name
    with pytest.raises(grpc.RpcError) as unknown:
        served.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {USER_API, AUTH_API, GROUP_API, "grpc.health.v1.Health"} <= names


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in a Prometheus text page: (labels, value) each."""
    out = []
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


def _sample(text: str, name: str, **labels: str) -> float:
    return sum(value for have, value in _samples(text, name) if have == labels)


def test_metrics_count_the_calls_made(served: Served) -> None:
    """Plugin calls per plugin method and outcome (the host's call hook), and CS3 RPCs per status
    code (the server's view), each checked against the calls made."""
    before = served.metrics()
    for _ in range(7):
        served.users.GetUser(user_api.GetUserRequest(user_id=uid(EINSTEIN)))
    for _ in range(3):
        served.users.GetUser(user_api.GetUserRequest(user_id=uid("nobody")))
    served.users.GetUser(user_api.GetUserRequest(user_id=uid("")))  # refused before the plugin
    served.auth.Authenticate(
        auth_api.AuthenticateRequest(client_id="marie", client_secret="radioactivity")
    )
    served.auth.Authenticate(auth_api.AuthenticateRequest(client_id="marie", client_secret="no"))
    after = served.metrics()

    def delta(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    calls = "reva_plugins_calls_total"
    user, auth = {"service": "userprovider"}, {"service": "authprovider"}
    assert delta(calls, **user, method="get_user", outcome="ok") == 7
    assert delta(calls, **user, method="get_user", outcome="NotFound") == 3
    assert delta(calls, **auth, method="authenticate", outcome="ok") == 1
    assert delta(calls, **auth, method="authenticate", outcome="InvalidCredentials") == 1
    assert (
        sum(v for labels, v in _samples(after, calls) if labels["service"] == "userprovider")
        - (sum(v for labels, v in _samples(before, calls) if labels["service"] == "userprovider"))
        == 10
    )
    assert delta("reva_plugins_call_seconds_count", **user, method="get_user") == 10
    assert _sample(after, "reva_plugins_calls_in_flight", **user) == 0

    rpcs = "reva_plugins_rpcs_total"
    assert delta(rpcs, api=USER_API, method="GetUser", code="CODE_OK") == 7
    assert delta(rpcs, api=USER_API, method="GetUser", code="CODE_NOT_FOUND") == 3
    assert delta(rpcs, api=USER_API, method="GetUser", code="CODE_INVALID_ARGUMENT") == 1
    assert delta(rpcs, api=AUTH_API, method="Authenticate", code="CODE_OK") == 1
    assert delta(rpcs, api=AUTH_API, method="Authenticate", code="CODE_PERMISSION_DENIED") == 1

    for service in ("userprovider", "authprovider", "groupprovider"):
        assert _sample(after, "reva_plugins_plugin_starts_total", service=service) >= 1
        assert _sample(after, "reva_plugins_plugin_start_seconds_count", service=service) >= 1
    pids = served.plugin_pids()
    assert set(pids) == {"userprovider", "authprovider", "groupprovider"}
    assert all(pid_alive(pid) for pid in pids.values())
    assert "# HELP reva_plugins_env_build_seconds " in after  # observed only when one is built

    status = cli("status", f"127.0.0.1:{served.metrics_port}")
    assert status.returncode == 0, status.stderr
    rows = dict(row.rsplit(None, 1) for row in status.stdout.splitlines())
    ok_calls = "reva_plugins_calls_total{method=get_user,outcome=ok,service=userprovider}"
    assert int(rows[ok_calls]) >= 7
    ok_rpcs = f"reva_plugins_rpcs_total{{api={USER_API},code=CODE_OK,method=GetUser}}"
    assert int(rows[ok_rpcs]) >= 7


class _OperatorsHooks:
    """An operator's own call wrapper and lifecycle hook, written as docs/serve.md shows."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, object]] = []
        self.started: list[tuple[str, int]] = []

    @hookimpl(wrapper=True)
    def service_call(
        self, service: str, method: str, params: dict[str, Any], proxy: object
    ) -> Iterator[None]:
        if params["user_id"]["opaque_id"] == "boom":
            raise RuntimeError("a bug in the operator's hook")
        outcome = "ok"
        try:
            return (yield)
        except RevaPluginError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.calls.append((service, method, outcome, proxy))

    @hookimpl
    def plugin_started(self, service: str, pid: int) -> None:
        self.started.append((service, pid))


def test_an_operators_own_hooks_see_the_calls_of_every_generation(
    tmp_path: Path, fresh_cache: Path
) -> None:
    """``Server(config, hooks=[...])`` registers them on the first host and on each reload's; a
    hook that raises is a CS3 INTERNAL status (its text is not sent), counted, and harmless."""
    first_users, second_users = tmp_path / "a.json", tmp_path / "b.json"
    shutil.copy(EXAMPLES / "users.demo.json", first_users)
    shutil.copy(EXAMPLES / "users.demo.json", second_users)
    template = f"""
[grpc]
address = "127.0.0.1:0"
[metrics]
address = "127.0.0.1:0"
[grpc.services.userprovider]
driver = "{SAMPLES / "json_users"}"
[grpc.services.userprovider.drivers.json]
users = "{{users}}"
"""
    config = tmp_path / "revad.toml"
    config.write_text(template.format(users=first_users), encoding="utf-8")
    hooks = _OperatorsHooks()
    server = Server(config, hooks=[hooks])
    try:
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = user_grpc.UserAPIStub(channel)

            def get(opaque: str) -> Any:
                return stub.GetUser(user_api.GetUserRequest(user_id=uid(opaque)), timeout=30)

            assert get(EINSTEIN).status.code == OK
            assert get("nobody").status.code == code_pb2.CODE_NOT_FOUND
            boom = get("boom")
            assert boom.status.code == code_pb2.CODE_INTERNAL
            assert "bug" not in boom.status.message
            assert server.reloader.current is not None
            first = server.reloader.current.proxies["userprovider"]
            assert hooks.calls == [
                ("userprovider", "get_user", "ok", first),
                ("userprovider", "get_user", "NotFound", first),
            ]
            config.write_text(template.format(users=second_users), encoding="utf-8")
            assert server.reload().result == "swapped"
            second = server.reloader.current.proxies["userprovider"]
            assert second is not first
            assert get(EINSTEIN).status.code == OK
            assert hooks.calls[-1] == ("userprovider", "get_user", "ok", second)
        assert [service for service, _ in hooks.started] == ["userprovider", "userprovider"]
        assert len({pid for _, pid in hooks.started}) == 2

        def value(name: str, **labels: str) -> float | None:
            return server.metrics.registry.get_sample_value(name, labels)

        calls = "reva_plugins_calls_total"
        user = {"service": "userprovider", "method": "get_user"}
        assert value(calls, **user, outcome="ok") == 2
        assert value(calls, **user, outcome="NotFound") == 1
        assert value(calls, **user, outcome="RuntimeError") == 1
        # built once in the fresh cache; the reload reused it
        assert value("reva_plugins_env_build_seconds_count", service="userprovider") == 1
        assert value("reva_plugins_plugin_start_seconds_count", service="userprovider") == 2
    finally:
        server.stop(grace=5)


def test_access_log_has_one_line_per_rpc(served: Served) -> None:
    start = len(served.lines)
    served.groups.GetGroup(group_api.GetGroupRequest(group_id=gid("violin-haters")))
    line = served.wait_for(
        r"service=cs3\.identity\.group\.v1beta1\.GroupAPI method=GetGroup .*", start=start
    ).group(0)
    fields = dict(item.split("=", 1) for item in line.split())
    assert fields["status"] == "CODE_OK"
    assert float(fields["duration_ms"]) > 0
    assert int(fields["plugin_pid"]) == served.plugin_pids()["groupprovider"]


# -- configs ------------------------------------------------------------------------------------

REVA_PLUGIN_TOML = """\
[shared]
gatewaysvc = "localhost:19000"
plugin = true

[grpc]
address = "127.0.0.1:0"

[grpc.services.gateway]
userprovidersvc = "localhost:19000"

[grpc.services.userprovider]
driver = "{driver}"

[grpc.services.userprovider.drivers.json]
users = "users.demo.json"
"""


def test_revas_own_plugin_example_is_served_unchanged(tmp_path: Path) -> None:
    """Reva's examples/plugin/plugin.toml (its driver pointed at our JSON sample): the gateway
    table is skipped with one info line; the user provider serves."""
    shutil.copy(EXAMPLES / "users.demo.json", tmp_path / "users.demo.json")
    config = tmp_path / "plugin.toml"
    config.write_text(REVA_PLUGIN_TOML.format(driver=SAMPLES / "json_users"), encoding="utf-8")
    server = Served(config)
    try:
        reply = server.users.GetUser(user_api.GetUserRequest(user_id=uid("einstein", idp="")))
        assert reply.status.code == OK
        assert reply.user.id.opaque_id == EINSTEIN
        gateway = [line for line in server.lines if "gateway" in line]
        assert len(gateway) == 1
        assert "skipped" in gateway[0]
        auth = server.health.Check(health_pb2.HealthCheckRequest(service=AUTH_API), timeout=10)
        assert auth.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ('[grpc]\naddress = "localhost"', "grpc.address", "HOST:PORT"),
        ('[grpc]\naddress = "127.0.0.1:70000"', "grpc.address", "HOST:PORT"),
        ('[grpc]\naddress = ""', "grpc.address", "empty"),
        ("[grpc]\nworkers = 0", "grpc.workers", "from 1 to 1024"),
        ("[grpc]\nworkers = true", "grpc.workers", "must be int"),
        ("[grpc]\nshutdown_grace = nan", "grpc.shutdown_grace", "finite"),
        ("[grpc]\nshutdown_grace = -1", "grpc.shutdown_grace", "finite"),
        ("[grpc]\nshutdown_grace = 1e308", "grpc.shutdown_grace", "finite"),
        ('[grpc]\ntls_cert = "cert.pem"', "grpc.tls_cert", "go together"),
        ('[grpc]\naccess_log = "loud"', "grpc.access_log", "one of"),
        ('[metrics]\naddress = "127.0.0.1:9100"\nport = 1', "metrics.port", "unknown key"),
        ('[metrics]\naddress = "127.0.0.1:x"', "metrics.address", "HOST:PORT"),
        ("metrics = 3", "metrics", "must be a table"),
    ],
)
def test_hostile_serve_settings(tmp_path: Path, table: str, key: str, message: str) -> None:
    config = tmp_path / "revad.toml"
    config.write_text(table + '\n[grpc.services.userprovider]\ndriver = "json"\n', encoding="utf-8")
    result = cli("serve", str(config))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert key in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_hostile_command_lines(tmp_path: Path) -> None:
    config = tmp_path / "revad.toml"
    config.write_text('[grpc.services.userprovider]\ndriver = "json"\n', encoding="utf-8")
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    gone = exited.pid  # a pid that no longer runs
    for args, code, text in (
        (["serve", str(config), "--address", "nowhere"], 2, "HOST:PORT"),
        (["serve", str(config), "--address", "1.2.3.4:99999"], 2, "HOST:PORT"),
        (["reload"], 2, "PIDFILE or --pid"),
        (["reload", "--pid", "0"], 2, "not a server's pid"),
        (["reload", "--pid", "-1"], 2, "not a server's pid"),
        (["reload", "--pid", "99999999999999999999999"], 2, "not a server's pid"),
        (["reload", str(config)], 2, "not a pid file"),
        (["reload", str(tmp_path / "missing.pid")], 2, "cannot read"),
        (["reload", "--pid", str(gone)], 1, "no process"),
        (["status", "127.0.0.1:1"], 1, "nothing listens there"),
        (["status", "http://127.0.0.1:1"], 2, "not a URL"),
        (["status", "127.0.0.1:1/metrics"], 2, "not a URL"),
        (["status", "not an address"], 2, "HOST:PORT"),
        (["reload", "--pid", str(gone), "--tls-ca", "ca.pem"], 2, "for reload ADDRESS"),
        (["status", "127.0.0.1:1", "--tls-ca", str(config)], 2, "not a PEM file"),
    ):
        result = cli(*args)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_without_the_extra_serve_says_what_to_install(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "grpc.py").write_text("raise ImportError('no grpc here')\n", encoding="utf-8")
    config = write_config('[grpc.services.userprovider]\ndriver = "json"\n')
    result = cli("serve", str(config), env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 2
    assert "pip install 'reva-plugins[serve]'" in result.stderr
    assert "Traceback" not in result.stderr
    check = cli("--help", env={"PYTHONPATH": str(blocker)})  # the core never imports grpc
    assert check.returncode == 0


# -- plugins that crash, hang and change -------------------------------------------------------


#: The chaos plugin's call_timeout: a call the client gives longer is still cut at this.
CALL_TIMEOUT = 4


def _chaos_config(
    tmp_path: Path,
    plugin: Path,
    grace: float = 10,
    extra: str = "",
    address: str = "127.0.0.1:0",
) -> Path:
    """The chaos plugin as the user provider, with ``extra`` TOML at the end."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    config = tmp_path / "chaos.toml"
    config.write_text(
        f"""
[grpc]
address = "{address}"
shutdown_grace = {grace}
workers = 16

[metrics]
address = "127.0.0.1:0"

[grpc.services.userprovider]
driver = "{plugin}"

[grpc.services.userprovider.plugin]
max_concurrency = 16
call_timeout = {CALL_TIMEOUT}

[grpc.services.userprovider.drivers.demo]
dir = "{state}"
{extra}""",
        encoding="utf-8",
    )
    return config


def _chaos_plugin(root: Path, marker: str = "v1") -> Path:
    make_plugin(root, name="reva-chaos-plugin", entry_points={"reva.userprovider": "demo"})
    (root / "reva_chaos_plugin" / "__init__.py").write_text(
        CHAOS_PLUGIN.format(marker=marker), encoding="utf-8"
    )
    return root


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    tmp = tmp_path_factory.mktemp("chaos")
    plugin = _chaos_plugin(tmp / "plugin")
    server = Served(_chaos_config(tmp, plugin))
    try:
        yield server, tmp / "state"
    finally:
        server.kill()


def _get(server: Served, opaque: str, timeout: float = 30) -> Any:
    return server.users.GetUser(
        user_api.GetUserRequest(user_id=uid(opaque, idp="test")), timeout=timeout
    )


def test_a_crashing_plugin_is_unavailable_then_restarts_with_health_following(
    chaos: tuple[Served, Path],
) -> None:
    server, _ = chaos
    assert _get(server, "demo").status.code == OK
    pid = server.plugin_pids()["userprovider"]
    watch = server.health.Watch(health_pb2.HealthCheckRequest(service=USER_API), timeout=60)
    seen: list[int] = []

    def follow() -> None:
        for reply in watch:
            seen.append(reply.status)
            if seen[-2:] == [NOT_SERVING, SERVING]:
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert wait_until(lambda: seen == [SERVING])
    crashed = _get(server, "crash")
    assert crashed.status.code == code_pb2.CODE_UNAVAILABLE
    assert crashed.status.message == "userprovider plugin unavailable"
    follower.join(timeout=60)
    watch.cancel()
    assert seen[-2:] == [NOT_SERVING, SERVING]
    assert _get(server, "demo").status.code == OK
    assert wait_until(lambda: server.plugin_pids().get("userprovider", pid) != pid)
    assert not pid_alive(pid)
    page = server.metrics()
    assert _sample(page, "reva_plugins_plugin_restarts_total", service="userprovider") >= 1
    crashed_calls = _sample(
        page, "reva_plugins_calls_total", service="userprovider", method="get_user",
        outcome="PluginCrashed",
    )  # fmt: skip
    assert crashed_calls >= 1


def test_plugin_errors_and_bad_results_name_no_secret(chaos: tuple[Served, Path]) -> None:
    server, _ = chaos
    leaky = _get(server, "leaky")
    assert (leaky.status.code, leaky.status.message) == (
        code_pb2.CODE_INTERNAL,
        "error getting user",
    )
    bad = _get(server, "bad")
    assert bad.status.code == code_pb2.CODE_INTERNAL
    assert bad.status.message == "userprovider plugin returned a malformed result"
    assert "hunter2" not in leaky.status.message


def test_a_hung_plugin_call_is_cancelled_at_the_deadline(chaos: tuple[Served, Path]) -> None:
    server, state = chaos
    # the plugin runs first (an earlier test may have crashed it): a deadline that passed
    # while it started would end the call before it ever reached the plugin
    assert _get(server, "demo").status.code == OK
    future = server.users.GetUser.future(
        user_api.GetUserRequest(user_id=uid("hang", idp="test")), timeout=1.5
    )
    if future.exception() is not None:
        assert future.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:  # the server's own timer for the call (set to the same deadline) fired first, and a
        # client slowed down by a loaded machine took its answer before its deadline's timer
        status = future.result().status
        assert (status.code, status.message) == (
            code_pb2.CODE_INTERNAL,
            "userprovider plugin timed out",
        )
    assert (state / "hang.started").exists()
    assert wait_until((state / "hang.cancelled").exists, timeout=30)  # $/cancel arrived
    assert _get(server, "demo").status.code == OK
    assert wait_until(
        lambda: (
            _sample(server.metrics(), "reva_plugins_calls_in_flight", service="userprovider") == 0
        )
    )
    timed_out = _sample(
        server.metrics(), "reva_plugins_calls_total", service="userprovider", method="get_user",
        outcome="CallTimeout",
    )  # fmt: skip
    assert timed_out >= 1


def test_workers_bound_the_rpcs_served_at_once_and_one_that_waits_too_long_is_counted(
    tmp_path: Path,
) -> None:
    """``workers = 1``: while one RPC hangs in its plugin, the next waits for the slot; if its
    deadline passes while it waits, the client gets DEADLINE_EXCEEDED and the server counts
    it, and the plugin never saw it. Once the slot is free, RPCs are served again."""
    plugin = _chaos_plugin(tmp_path / "plugin")
    config = _chaos_config(tmp_path, plugin)
    config.write_text(config.read_text().replace("workers = 16", "workers = 1"))
    server = Served(config)
    state = tmp_path / "state"
    try:
        hung = threading.Thread(
            target=_suppressed, args=(lambda: _get(server, "hang-slot", timeout=4),), daemon=True
        )
        hung.start()
        assert wait_until((state / "hang-slot.started").exists, timeout=30)
        with pytest.raises(grpc.RpcError) as late:
            _get(server, "demo", timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        hung.join(timeout=30)
        assert _get(server, "demo").status.code == OK
        text = server.metrics()
        expired = _sample(
            text, "reva_plugins_rpcs_total", api=USER_API, method="GetUser", code="CODE_INTERNAL"
        )  # fmt: skip
        assert expired == 2  # timed out (as Reva's): the hung call, and the one that waited
        calls = "reva_plugins_calls_total"
        demo_calls = _sample(text, calls, service="userprovider", method="get_user", outcome="ok")
        assert demo_calls == 1  # the waiting RPC never reached the plugin
    finally:
        server.kill()


def _suppressed(func: Callable[[], object]) -> None:
    with contextlib.suppress(grpc.RpcError):
        func()


def test_sigterm_lets_calls_in_flight_finish_and_leaves_no_plugin(tmp_path: Path) -> None:
    plugin = _chaos_plugin(tmp_path / "plugin")
    server = Served(_chaos_config(tmp_path, plugin))
    state = tmp_path / "state"
    pid = server.plugin_pids()["userprovider"]
    results: list[Any] = []

    def slow(n: int) -> None:
        try:
            results.append(_get(server, f"slow{n}").status.code)
        except grpc.RpcError as exc:
            results.append(exc.code())

    threads = [threading.Thread(target=slow, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(list(state.glob("slow*"))) == 6, timeout=60)
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert results == [OK] * 6
    assert server.proc.wait(timeout=60) == 0
    server.stop()
    assert "SIGTERM received" in server.text()
    assert wait_until(lambda: not pid_alive(pid))
    assert not server.pidfile.exists()


def test_sighup_reload_under_load_has_zero_failed_calls(tmp_path: Path) -> None:
    """Clients keep calling while the plugin's source changes and the server reloads: no call
    fails, the new version answers afterwards, and the old process is gone."""
    plugin = _chaos_plugin(tmp_path / "plugin", marker="v1")
    server = Served(_chaos_config(tmp_path, plugin))
    old_pid = server.plugin_pids()["userprovider"]
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        for _ in range(100_000):  # bounded; stops on the event long before
            if stop.is_set():
                return
            try:
                reply = _get(server, "demo", timeout=30)
            except grpc.RpcError as exc:
                failures.append(str(exc.code()))
                continue
            if reply.status.code != OK:
                failures.append(reply.status.message)
            else:
                answers.append(reply.user.display_name)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        assert wait_until(lambda: len(answers) > 20, timeout=60)
        _chaos_plugin(tmp_path / "plugin", marker="v2")
        start = len(server.lines)
        reload = cli("reload", str(server.pidfile))
        assert reload.returncode == 0, reload.stderr
        server.wait_for(r"generation 2 serving", start=start)
        assert wait_until(lambda: answers[-1:] == ["v2"], timeout=60)
        seen = len(answers)
        assert wait_until(lambda: len(answers) > seen + 20, timeout=60)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    assert failures == []
    assert set(answers) == {"v1", "v2"}
    first_v2 = answers.index("v2")
    assert "v1" not in answers[first_v2 + 20 :]  # in-flight v1 calls may end just after the swap
    assert wait_until(lambda: not pid_alive(old_pid))

    # A broken version keeps the current one serving.
    (tmp_path / "plugin" / "pyproject.toml").write_text("this is not toml [", encoding="utf-8")
    start = len(server.lines)
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_for(r"reload failed; still serving the previous version", start=start)
    assert _get(server, "demo").user.display_name == "v2"
    assert _sample(server.metrics(), "reva_plugins_reloads_total", result="failed") == 1
    assert server.stop() == 0


def test_reload_with_nothing_changed_swaps_nothing(chaos: tuple[Served, Path]) -> None:
    """A SIGHUP with nothing changed plans every service again but starts no plugin: the same
    processes keep serving."""
    server, _ = chaos
    assert _get(server, "demo").status.code == OK
    pids, starts = server.plugin_pids(), _starts(server)
    start = len(server.lines)
    assert cli("reload", "--pid", str(server.proc.pid)).returncode == 0
    server.wait_for(r"reload: configuration and drivers unchanged", start=start)
    assert _get(server, "demo").status.code == OK
    assert server.plugin_pids() == pids
    assert _starts(server) == starts


# -- TLS ----------------------------------------------------------------------------------------


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
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
    config = tmp_path / "tls.toml"
    config.write_text(
        SAMPLES_CONFIG.replace(
            "workers = 8", 'workers = 8\ntls_cert = "cert.pem"\ntls_key = "key.pem"'
        ),
        encoding="utf-8",
    )
    server = Served(config)
    try:
        assert "(TLS)" in server.text()
        creds = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "cert.pem").read_bytes())
        with grpc.secure_channel(server.address, creds) as channel:
            reply = auth_grpc.ProviderAPIStub(channel).Authenticate(
                auth_api.AuthenticateRequest(client_id="richard", client_secret="superfluidity"),
                timeout=30,
            )
        assert reply.status.code == OK
        assert reply.user.username == "richard"
        with pytest.raises(grpc.RpcError):  # plaintext to a TLS port
            server.users.GetUser(user_api.GetUserRequest(user_id=uid(EINSTEIN)), timeout=5)
        # the admin API is on the same port: status and reload by address speak TLS too
        ca = str(tmp_path / "cert.pem")
        status = cli("status", server.address, "--tls-ca", ca)
        assert status.returncode == 0, status.stderr
        assert "service authprovider" in status.stdout
        reload = cli("reload", server.address, "--tls-ca", ca)
        assert reload.returncode == 0, reload.stderr
        plain = cli("status", server.address, "--timeout", "5")
        assert plain.returncode == 1
        assert plain.stderr.count("\n") == 1, plain.stderr
        assert "--tls-ca" in plain.stderr
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        (tmp_path / "not.pem").write_text("hello", encoding="utf-8")
        for bad, why in (
            (fifo, "not a regular file"),
            (tmp_path / "not.pem", "not a PEM file"),
            (tmp_path / "key.pem", "not a PEM file"),  # a key is no certificate
            (tmp_path / "missing.pem", "cannot read"),
        ):
            refused = cli("status", server.address, "--tls-ca", str(bad))
            assert refused.returncode == 2, (bad, refused.stderr)
            assert why in refused.stderr
            assert refused.stderr.count("\n") == 1, refused.stderr
            assert "PRIVATE KEY" not in refused.stderr
    finally:
        assert server.stop() == 0


def test_tls_files_that_are_not_pem_are_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate", encoding="utf-8")
    (tmp_path / "key.pem").mkdir()
    config = tmp_path / "tls.toml"
    config.write_text(
        SAMPLES_CONFIG.replace(
            "workers = 8", 'workers = 8\ntls_cert = "cert.pem"\ntls_key = "key.pem"'
        ),
        encoding="utf-8",
    )
    result = cli("serve", str(config))
    assert result.returncode == 2, result.stderr
    assert "grpc.tls_cert" in result.stderr
    assert "not a PEM file" in result.stderr
    assert "Traceback" not in result.stderr


def test_revads_own_grpc_keys_are_left_alone() -> None:
    """revad's [grpc] keys serve does not read (network, interceptors …) are no error."""
    from reva_plugins import _config

    config = _config.parse(
        {
            "grpc": {
                "network": "tcp",
                "address": "0.0.0.0:19000",
                "shutdown_deadline": 10,
                "enable_reflection": True,
                "interceptors": {"auth": {"token_manager": "jwt"}},
            }
        },
        base_dir=ROOT,
    )
    assert config.serve.address == "0.0.0.0:19000"
    assert config.serve.tls_cert is None
    assert config.serve.shutdown_grace == 30


def test_hostile_pidfile_and_busy_ports(tmp_path: Path) -> None:
    """A pid file that is a folder or a symlink (to someone else's file), and ports already
    taken: each a one-line error (exit 2), the symlink's target untouched, no plugin left."""
    import socket

    config = tmp_path / "revad.toml"
    config.write_text(SAMPLES_CONFIG, encoding="utf-8")
    (tmp_path / "dir.pid").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    (tmp_path / "link.pid").symlink_to(victim)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        grpc_busy = tmp_path / "grpc-busy.toml"
        grpc_busy.write_text(
            SAMPLES_CONFIG.replace(
                'address = "127.0.0.1:0"\nshutdown', f'address = "127.0.0.1:{port}"\nshutdown'
            ),
            encoding="utf-8",
        )
        metrics_busy = tmp_path / "metrics-busy.toml"
        metrics_busy.write_text(
            SAMPLES_CONFIG.replace(
                '[metrics]\naddress = "127.0.0.1:0"', f'[metrics]\naddress = "127.0.0.1:{port}"'
            ),
            encoding="utf-8",
        )
        for args, text in (
            (["serve", str(config), "--pidfile", str(tmp_path / "dir.pid")], "--pidfile"),
            (["serve", str(config), "--pidfile", str(tmp_path / "link.pid")], "--pidfile"),
            (["serve", str(grpc_busy)], "grpc.address"),
            (["serve", str(metrics_busy)], "metrics.address"),
        ):
            result = cli(*args)
            assert result.returncode == 2, (args, result.stderr)
            errors = [line for line in result.stderr.splitlines() if "error" in line]
            assert len(errors) == 1, result.stderr
            assert text in errors[0]
            assert "Traceback" not in result.stderr
    assert victim.read_text(encoding="utf-8") == "precious"


def test_a_config_with_nothing_to_serve_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[grpc.services.gateway]\nuserprovidersvc = "localhost:19000"\n', encoding="utf-8"
    )
    result = cli("serve", str(config))
    assert result.returncode == 2, result.stderr
    assert "no service to serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reload_that_drops_a_service(tmp_path: Path) -> None:
    """The new config has no authprovider: after the swap its API is UNAVAILABLE and unknown to
    health, while the user provider keeps serving."""
    config = tmp_path / "revad.toml"
    config.write_text(SAMPLES_CONFIG, encoding="utf-8")
    server = Served(config)
    try:
        ok = server.auth.Authenticate(
            auth_api.AuthenticateRequest(client_id="marie", client_secret="radioactivity")
        )
        assert ok.status.code == OK
        auth_pid = server.plugin_pids()["authprovider"]
        config.write_text(
            SAMPLES_CONFIG.split("[grpc.services.authprovider]", maxsplit=1)[0], encoding="utf-8"
        )
        start = len(server.lines)
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_for(r"generation 2 serving", start=start)
        gone = server.auth.Authenticate(
            auth_api.AuthenticateRequest(client_id="marie", client_secret="radioactivity")
        )
        assert (gone.status.code, gone.status.message) == (
            code_pb2.CODE_UNAVAILABLE,
            "authprovider is no longer served",
        )
        health = server.health.Check(health_pb2.HealthCheckRequest(service=AUTH_API), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        assert (
            server.users.GetUser(user_api.GetUserRequest(user_id=uid(EINSTEIN))).status.code == OK
        )
        assert wait_until(lambda: not pid_alive(auth_pid))
        assert "authprovider" not in server.plugin_pids()
    finally:
        assert server.stop() == 0


# -- deadlines and cancellation ------------------------------------------------------------------


def test_a_client_deadline_longer_than_call_timeout_is_cut_at_call_timeout(
    chaos: tuple[Served, Path],
) -> None:
    """The effective timeout is min(the client's deadline, call_timeout): a 20 s deadline does
    not let a call run past the operator's call_timeout."""
    server, _ = chaos
    began = time.monotonic()
    reply = _get(server, f"nap{CALL_TIMEOUT + 4}", timeout=20)
    took = time.monotonic() - began
    assert (reply.status.code, reply.status.message) == (
        code_pb2.CODE_INTERNAL,
        "userprovider plugin timed out",
    )
    assert took < CALL_TIMEOUT + 2.5, took


def test_a_cancelled_rpc_cancels_the_plugin_call(chaos: tuple[Served, Path]) -> None:
    """A client that cancels (no deadline involved) makes the server send ``$/cancel`` at once,
    not when call_timeout ends the call."""
    server, state = chaos

    def cancelled() -> float:
        return sum(
            _sample(server.metrics(), name, **labels)
            for name, labels in (
                ("reva_plugins_rpcs_total", {"api": USER_API, "method": "GetUser",
                                             "code": "CODE_CANCELLED"}),
                ("reva_plugins_calls_total", {"service": "userprovider", "method": "get_user",
                                              "outcome": "CallCancelled"}),
            )
        )  # fmt: skip

    before = cancelled()
    future = server.users.GetUser.future(
        user_api.GetUserRequest(user_id=uid("hang-cancel", idp="test")), timeout=60
    )
    assert wait_until((state / "hang-cancel.started").exists, timeout=30)
    cancelled_at = time.time()
    assert future.cancel()
    mark = state / "hang-cancel.cancelled"
    # the plugin creates the file, then writes the time: wait for the time
    assert wait_until(lambda: mark.exists() and mark.read_text(encoding="utf-8"),
                      timeout=CALL_TIMEOUT + 5)  # fmt: skip
    arrived = float(mark.read_text(encoding="utf-8"))
    assert arrived - cancelled_at < CALL_TIMEOUT / 2, arrived - cancelled_at
    assert _get(server, "demo").status.code == OK
    # counted by the server (the RPC) and by the call wrapper (the plugin call) alike
    assert wait_until(lambda: cancelled() == before + 2)


def test_a_call_cancelled_by_its_client_is_no_server_fault() -> None:
    """The client went away: the answer nobody reads says CANCELLED, not INTERNAL (which the
    server logs at error level and counts as a failure)."""
    from reva_plugins import CallCancelled
    from reva_plugins.serve import _cs3

    for rpc in _cs3.RPCS:
        code, message = _cs3.error_status(rpc, CallCancelled("get_user was cancelled", plugin="p"))
        assert code == code_pb2.CODE_CANCELLED, rpc.name
        assert "cancelled" in message


# -- reload: only what changed or failed -----------------------------------------------------------


def _starts(server: Served, service: str = "userprovider") -> float:
    return _sample(server.metrics(), "reva_plugins_plugin_starts_total", service=service)


def test_reload_brings_back_a_failed_service(tmp_path: Path) -> None:
    """Five crashes in a minute mark the service failed; a reload with the config unchanged
    restarts it (before, "unchanged; nothing to swap" left it failed until a restart)."""
    plugin = _chaos_plugin(tmp_path / "plugin")
    server = Served(_chaos_config(tmp_path, plugin))
    try:

        def failed() -> bool:
            page = server.metrics()
            return _sample(page, "reva_plugins_service_failures_total", service="userprovider") > 0

        for _ in range(20):  # five crashes suffice; restarts back off, so a few more calls
            assert _get(server, "crash").status.code == code_pb2.CODE_UNAVAILABLE
            if failed():
                break
        assert failed()
        dead = _get(server, "demo")
        assert (dead.status.code, dead.status.message) == (
            code_pb2.CODE_UNAVAILABLE,
            "userprovider plugin unavailable",
        )
        health = health_pb2.HealthCheckRequest(service=USER_API)
        assert server.health.Check(health, timeout=10).status == NOT_SERVING
        start = len(server.lines)
        assert cli("reload", str(server.pidfile)).returncode == 0
        server.wait_for(r"generation 2 serving .*restarted: userprovider", start=start)
        assert _get(server, "demo").status.code == OK
        assert server.health.Check(health, timeout=10).status == SERVING
    finally:
        assert server.stop() == 0


def test_a_reload_restarts_only_the_changed_service(tmp_path: Path) -> None:
    """The user provider's source changes, the auth provider's does not: a reload (through the
    admin API, which answers with what it did) restarts the one and leaves the other's process
    serving untouched."""
    plugin = _chaos_plugin(tmp_path / "plugin", marker="v1")
    auth = f"""
[grpc.services.authprovider]
driver = "{SAMPLES / "json_users"}"
[grpc.services.authprovider.drivers.json]
users = "{EXAMPLES / "users.demo.json"}"
"""
    server = Served(_chaos_config(tmp_path, plugin, extra=auth))
    try:
        pids = server.plugin_pids()
        auth_starts = _starts(server, "authprovider")
        assert _get(server, "demo").user.display_name == "v1"
        _chaos_plugin(tmp_path / "plugin", marker="v2")
        reload = cli("reload", server.address)
        assert reload.returncode == 0, reload.stderr
        assert "generation 2 serving" in reload.stderr
        assert "restarted: userprovider; kept: authprovider" in reload.stderr
        assert _get(server, "demo").user.display_name == "v2"
        now = server.plugin_pids()
        assert now["authprovider"] == pids["authprovider"]
        assert now["userprovider"] != pids["userprovider"]
        assert _starts(server, "authprovider") == auth_starts
        assert wait_until(lambda: not pid_alive(pids["userprovider"]))
        ok = server.auth.Authenticate(
            auth_api.AuthenticateRequest(client_id="marie", client_secret="radioactivity")
        )
        assert ok.status.code == OK
    finally:
        assert server.stop() == 0


def test_a_backend_refuses_rpcs_once_retired_and_drains_those_it_counted(
    tmp_path: Path,
) -> None:
    """The swap's protocol on a real backend: an RPC counted in before the retirement keeps the
    plugin up until it ends; one arriving after is refused (and goes to the successor)."""
    from reva_plugins.serve._reload import HostOptions, plan_backend

    config = tmp_path / "revad.toml"
    config.write_text(SAMPLES_CONFIG, encoding="utf-8")
    from reva_plugins import _config

    backend = plan_backend(_config.load_file(config), HostOptions(), "userprovider", 1, _no_hooks)
    try:
        backend.start()
        assert backend.enter()  # an RPC in flight
        backend.retire()
        assert not backend.enter()  # too late: it must take the current generation's
        assert not backend.drain(time.monotonic() + 0.2)  # the first is still counted
        user = backend.proxy.call("get_user", {"user_id": {"idp": IDP, "opaque_id": EINSTEIN}})
        assert user["username"] == "einstein"  # still served: the host is not closed
        backend.leave()
        assert backend.drain(time.monotonic() + 5)
    finally:
        backend.close()
    assert backend.proxy.info().state == "stopped"


def _no_hooks(host: object, service: str) -> None:
    return None


# -- status and the admin API --------------------------------------------------------------------


def test_status_reads_a_running_server_by_either_address(served: Served) -> None:
    assert served.users.GetUser(user_api.GetUserRequest(user_id=uid(EINSTEIN))).status.code == OK
    by_grpc = cli("status", served.address)
    assert by_grpc.returncode == 0, by_grpc.stderr
    rows = by_grpc.stdout.splitlines()
    pid = served.plugin_pids()["userprovider"]
    assert any(r.startswith("service userprovider") and f"pid={pid}" in r for r in rows), rows
    assert any(r.startswith("server ") and f"pid={served.proc.pid}" in r for r in rows), rows
    ok_rpcs = f"reva_plugins_rpcs_total{{api={USER_API},code=CODE_OK,method=GetUser}}"
    assert any(r.startswith(ok_rpcs) for r in rows), rows
    by_metrics = cli("status", f"127.0.0.1:{served.metrics_port}")
    assert by_metrics.returncode == 0, by_metrics.stderr
    assert any(r.startswith(ok_rpcs) for r in by_metrics.stdout.splitlines())
    assert "Traceback" not in by_grpc.stderr + by_metrics.stderr


def test_the_admin_api_is_in_reflection_and_answers_loopback_only(tmp_path: Path) -> None:
    import socket

    from google.protobuf import empty_pb2, struct_pb2

    from reva_plugins.serve._admin import ADMIN_API, is_local_peer

    assert is_local_peer("ipv4:127.0.0.1:5000")
    assert is_local_peer("ipv6:%5B::1%5D:5000")
    assert is_local_peer("ipv6:[::ffff:127.0.0.1]:5000")
    assert is_local_peer("unix:/run/serve.sock")
    assert not is_local_peer("ipv4:10.1.2.3:5000")
    assert not is_local_peer("ipv6:%5B2001:db8::1%5D:5000")
    assert not is_local_peer("garbage")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            outside = probe.getsockname()[0]
        except OSError:
            outside = "127.0.0.1"
    plugin = _chaos_plugin(tmp_path / "plugin")
    server = Served(_chaos_config(tmp_path, plugin, address="0.0.0.0:0"))
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        assert ADMIN_API in {s.name for r in replies for s in r.list_services_response.service}
        if outside.startswith("127."):
            pytest.skip("this host has no address but loopback")
        with grpc.insecure_channel(f"{outside}:{server.port}") as channel:
            reload = channel.unary_unary(
                f"/{ADMIN_API}/Reload",
                request_serializer=empty_pb2.Empty.SerializeToString,
                response_deserializer=struct_pb2.Struct.FromString,
            )
            with pytest.raises(grpc.RpcError) as refused:
                reload(empty_pb2.Empty(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "reload: reading" not in server.text()
        assert _get(server, "demo").status.code == OK  # the CS3 API answers everyone
    finally:
        assert server.stop() == 0


def test_reload_never_signals_a_process_that_is_not_a_server(tmp_path: Path) -> None:
    """A stale pid file (or a wrong --pid) names some other process: SIGHUP would kill it.
    reload checks the process is a ``reva-plugins serve`` and signals nothing otherwise."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = tmp_path / "stale.pid"
        stale.write_text(f"{bystander.pid}\n", encoding="ascii")
        for args in (["reload", str(stale)], ["reload", "--pid", str(bystander.pid)]):
            result = cli(*args)
            assert result.returncode == 1, result.stderr
            assert "is not a reva-plugins server" in result.stderr
            assert "nothing was signalled" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        time.sleep(0.3)
        assert bystander.poll() is None  # alive: it was never sent SIGHUP
    finally:
        bystander.kill()
        bystander.wait(timeout=30)


# -- binding -------------------------------------------------------------------------------------


def test_a_busy_port_fails_at_once_in_one_line_before_any_plugin_starts(tmp_path: Path) -> None:
    """The port is checked before envs are built and plugins started; the one line names where
    the address came from (the config key, or --address); exit 2."""
    import socket

    plugin = _chaos_plugin(tmp_path / "plugin")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        from_config = _chaos_config(tmp_path, plugin, address=f"127.0.0.1:{port}")
        result = cli("serve", str(from_config))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "grpc.address" in lines[0]
        assert f"127.0.0.1:{port}" in lines[0]
        other = _chaos_config(tmp_path, plugin)
        result = cli("serve", str(other), "--address", f"127.0.0.1:{port}")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"reva-plugins: error: --address 127.0.0.1:{port}"), lines
        assert "grpc.address" not in lines[0]
    assert not list((tmp_path / "state").glob("started-*"))  # no plugin was started
