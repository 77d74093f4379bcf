"""The host's public surface: hooks (lifecycle and call wrappers), ``ServiceProxy.info()``,
explicit start, per-service locking, and what ``reva_plugins`` exports."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import operator
import sys
import textwrap
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

import reva_plugins
from reva_plugins import (
    CallCancelled,
    Host,
    NotFound,
    PluginCrashed,
    RemoteError,
    RevaPluginError,
    ServiceInfo,
    UsageError,
    hookimpl,
)
from reva_plugins import _errors as errors_module
from reva_plugins._call import Call

from .conftest import pid_alive, wait_until
from .plugin_sources import INPROC_USERS as _INPROC_MODULE
from .plugin_sources import SLOW_AUTH as _SLOW_PLUGIN
from .plugin_sources import SLOW_BACKEND as _SLOW_BACKEND
from .plugin_sources import TRACED_USERS as _TRACED_PLUGIN

FAULT = Path(__file__).parent / "plugins" / "fault"
FAULT_ID = {"idp": "t", "opaque_id": "fault"}


def _fault_config(**plugin: Any) -> dict[str, Any]:
    return {"grpc": {"services": {"userprovider": {"driver": str(FAULT), "plugin": plugin}}}}


class _Recorder:
    """Every host hook, recorded as (name, arguments)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def named(self, name: str) -> list[dict[str, Any]]:
        return [args for event, args in self.events if event == name]

    @hookimpl
    def env_built(self, service: str, env_key: str, seconds: float) -> None:
        self.events.append(("env_built", {"service": service, "key": env_key, "s": seconds}))

    @hookimpl
    def plugin_started(
        self, service: str, pid: int, handshake: dict[str, Any], seconds: float, restarts: int
    ) -> None:
        self.events.append(
            (
                "plugin_started",
                {"service": service, "pid": pid, "s": seconds, "restarts": restarts,
                 "distribution": handshake["distribution"]},
            )
        )  # fmt: skip

    @hookimpl
    def plugin_exited(self, service: str, pid: int, returncode: int | None, expected: bool) -> None:
        self.events.append(("plugin_exited", {"service": service, "pid": pid, "ok": expected}))

    @hookimpl
    def plugin_restarting(self, service: str, restarts: int, delay: float) -> None:
        self.events.append(("plugin_restarting", {"service": service, "restarts": restarts}))

    @hookimpl
    def service_failed(self, service: str, error: RevaPluginError) -> None:
        self.events.append(("service_failed", {"service": service, "error": error}))


class _Metrics:
    """What a Prometheus exporter would do, as a new-style pluggy wrapper."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, float]] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()

    @hookimpl(wrapper=True)
    def service_call(self, service: str, method: str) -> Generator[None, Any, Any]:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        began = time.perf_counter()
        outcome = "ok"
        try:
            return (yield)
        except RevaPluginError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            with self.lock:
                self.in_flight -= 1
                self.calls.append((service, method, outcome, time.perf_counter() - began))


# -- an in-process driver: a real distribution (dist-info with entry points) on sys.path --------


@pytest.fixture
def inproc_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """A host whose user provider is the entry point ``hostapi`` installed in the core."""
    site = tmp_path / "site"
    dist = site / "hostapi_inproc_demo-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hostapi-inproc-demo\nVersion: 1.0\n", encoding="utf-8"
    )
    (dist / "entry_points.txt").write_text(
        "[reva.userprovider]\nhostapi = hostapi_inproc:Provider\n", encoding="utf-8"
    )
    (site / "hostapi_inproc.py").write_text(_INPROC_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "hostapi_inproc", raising=False)
    table = {"driver": "hostapi", "drivers": {"hostapi": {"name": "in-process demo"}}}
    with Host({"grpc": {"services": {"userprovider": table}}}, base_dir=tmp_path) as host:
        yield host


# -- call hooks ----------------------------------------------------------------------------------


def test_a_registered_wrapper_sees_every_call_with_outcome_and_duration(
    inproc_host: Host,
) -> None:
    users = inproc_host.service("userprovider")
    users.get_user({"opaque_id": "demo"})  # before registering: not seen
    metrics = _Metrics()
    inproc_host.register(metrics)
    assert users.get_user({"opaque_id": "demo"})["username"] == "in-process demo"
    with pytest.raises(NotFound):
        users.get_user({"opaque_id": "nobody"})
    assert users.call("find_users", {"query": "x"}, meta={"trace": "1"}) == []
    with pytest.raises(UsageError):
        users.get_user()  # a binding mistake is the caller's: it never reaches the hooks
    assert [(s, m, o) for s, m, o, _ in metrics.calls] == [
        ("userprovider", "get_user", "ok"),
        ("userprovider", "get_user", "NotFound"),
        ("userprovider", "find_users", "ok"),
    ]
    assert all(seconds > 0 for *_, seconds in metrics.calls)
    assert metrics.in_flight == 0
    inproc_host.unregister(metrics)
    users.get_user({"opaque_id": "demo"})
    assert len(metrics.calls) == 3


def test_wrappers_see_calls_in_flight(inproc_host: Host) -> None:
    import hostapi_inproc  # type: ignore[import-not-found]

    metrics = _Metrics()
    inproc_host.register(metrics)
    users = inproc_host.service("userprovider")
    waiting = [threading.Thread(target=users.get_user, args=({"opaque_id": "wait"},))]
    waiting.append(threading.Thread(target=users.get_user, args=({"opaque_id": "wait"},)))
    for thread in waiting:
        thread.start()
    try:
        assert wait_until(lambda: users.info().calls_in_flight == 2)
        assert metrics.in_flight == 2
    finally:
        hostapi_inproc.GATE.set()
        for thread in waiting:
            thread.join(10)
    assert (metrics.in_flight, metrics.peak, users.info().calls_in_flight) == (0, 2, 0)


def test_without_call_hooks_a_call_never_enters_pluggy(inproc_host: Host) -> None:
    """pluggy registers and orders the ``service_call`` implementations; ``CallWrappers`` runs
    them (both ways alike), and a call with none but the host's own skips them."""
    seen: list[str] = []
    undo = inproc_host.hooks.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append(name), lambda *_: None
    )
    try:
        users = inproc_host.service("userprovider")
        inproc_host.register(_Recorder())  # lifecycle hooks only
        users.get_user({"opaque_id": "demo"})
        users.call("get_user", {"user_id": {"opaque_id": "demo"}})
        assert users._wrappers is None
        metrics = _Metrics()
        inproc_host.hooks.register(metrics)  # straight on the plugin manager works too
        assert users._wrappers is not None
        users.get_user({"opaque_id": "demo"})
        assert len(metrics.calls) == 1
        inproc_host.hooks.unregister(metrics)
        assert users._wrappers is None
        users.get_user({"opaque_id": "demo"})
        assert len(metrics.calls) == 1
        assert "service_call" not in seen
    finally:
        undo()


def test_a_plain_hook_implementation_can_answer_instead_of_the_driver(inproc_host: Host) -> None:
    class Double:
        @hookimpl
        def service_call(self, method: str, params: dict[str, Any]) -> Any:
            if method == "get_user" and params["user_id"]["opaque_id"] == "double":
                return {"username": "double"}
            return None

    inproc_host.register(Double())
    users = inproc_host.service("userprovider")
    assert users.get_user({"opaque_id": "double"}) == {"username": "double"}
    assert users.get_user({"opaque_id": "demo"})["username"] == "in-process demo"


def test_acall_keeps_the_callers_context_for_wrappers(inproc_host: Host) -> None:
    span: contextvars.ContextVar[str] = contextvars.ContextVar("span", default="none")
    seen: list[str] = []

    class Tracer:
        @hookimpl(wrapper=True)
        def service_call(self) -> Generator[None, Any, Any]:
            seen.append(span.get())
            return (yield)

    inproc_host.register(Tracer())
    users = inproc_host.service("userprovider")

    async def main() -> Any:
        span.set("request-42")
        return await users.acall("get_user", {"user_id": {"opaque_id": "demo"}})

    assert asyncio.run(main())["username"] == "in-process demo"
    assert seen == ["request-42"]


@pytest.mark.slow
def test_a_tracing_wrapper_can_send_context_to_the_plugin(tmp_path: Path) -> None:
    project = tmp_path / "traced"
    (project / "reva_traced").mkdir(parents=True)
    (project / "reva_traced" / "__init__.py").write_text(_TRACED_PLUGIN, encoding="utf-8")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "reva-traced"\nversion = "1.0"\n\n'
        '[project.entry-points."reva.userprovider"]\ntraced = "reva_traced:Traced"\n',
        encoding="utf-8",
    )

    class Tracer:
        @hookimpl(wrapper=True)
        def service_call(self, meta: dict[str, Any]) -> Generator[None, Any, Any]:
            meta["traceparent"] = "00-trace-span-01"
            return (yield)

    config = {"grpc": {"services": {"userprovider": {"driver": str(project)}}}}
    with Host(config, base_dir=tmp_path) as host:
        users = host.service("userprovider")
        assert users.get_user({"opaque_id": "x"})["display_name"] == ""
        host.register(Tracer())
        assert users.get_user({"opaque_id": "x"})["display_name"] == "00-trace-span-01"
        caller_meta = {"user": "einstein"}
        users.call("get_user", {"user_id": {"opaque_id": "x"}}, meta=caller_meta)
        assert caller_meta == {"user": "einstein"}  # the caller's dict is not changed


# -- info() and explicit start -------------------------------------------------------------------


def test_info_of_an_in_process_driver(inproc_host: Host) -> None:
    users = inproc_host.service("userprovider")
    before = users.info()
    assert isinstance(before, ServiceInfo)
    assert (before.state, before.uptime, before.pid, before.calls_in_flight) == (
        "stopped",
        None,
        None,
        0,
    )
    info = users.start()
    assert users.start().uptime is not None  # idempotent
    assert info.service == "userprovider"
    assert info.kind == "in-process"
    assert info.state == "running"
    assert info.pid is None  # it runs in the core
    assert info.env_key is None
    assert info.python == sys.executable
    assert (info.entry_point, info.distribution, info.version) == (
        "hostapi",
        "hostapi-inproc-demo",
        "1.0",
    )
    assert info.uptime is not None
    assert info.uptime >= 0
    assert (info.restarts, info.calls_in_flight) == (0, 0)
    with pytest.raises(AttributeError):
        info.state = "failed"  # type: ignore[misc]


@pytest.mark.slow
def test_info_and_explicit_start_of_a_plugin_process(tmp_path: Path) -> None:
    recorder = _Recorder()
    with Host(_fault_config(), base_dir=tmp_path) as host:
        host.register(recorder)
        users = host.service("userprovider")
        before = users.info()
        assert (before.state, before.pid, before.uptime) == ("stopped", None, None)
        assert recorder.named("plugin_started") == []  # loading starts nothing
        with_threads: list[ServiceInfo] = []
        threads = [threading.Thread(target=lambda: with_threads.append(users.start()))]
        threads += [threading.Thread(target=lambda: with_threads.append(users.start()))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        info = users.start()
        assert {i.pid for i in with_threads} == {info.pid}
        assert len(recorder.named("plugin_started")) == 1  # idempotent: one process
        assert info.pid is not None
        assert pid_alive(info.pid)
        assert users.get_user(FAULT_ID)["pid"] == info.pid
        assert info.service == "userprovider"
        assert info.kind == "folder"
        assert info.state == "running"
        assert info.env_key
        assert Path(info.python).is_file()
        assert Path(info.python) != Path(sys.executable)
        assert (info.entry_point, info.distribution, info.version) == (
            "fault",
            "reva-fault-plugin",
            "0.1",
        )
        assert info.uptime is not None
        assert info.uptime >= 0
        assert (info.restarts, info.calls_in_flight) == (0, 0)
        started = recorder.named("plugin_started")[0]
        assert started["pid"] == info.pid
        assert started["s"] > 0
        assert started["restarts"] == 0
        assert started["distribution"] == "reva-fault-plugin"

        sleeper = threading.Thread(
            target=users.driver.invoke, args=(Call("userprovider", "sleep", {"seconds": 1}),)
        )
        sleeper.start()
        assert wait_until(lambda: users.info().calls_in_flight == 1)
        sleeper.join(30)
        assert users.info().calls_in_flight == 0
    assert users.info().state == "stopped"
    assert users.info().pid is None
    assert not pid_alive(info.pid) or wait_until(lambda: not pid_alive(info.pid))


@pytest.mark.slow
def test_restart_and_failure_hooks_and_states(tmp_path: Path) -> None:
    from reva_plugins._supervisor import Supervisor

    recorder = _Recorder()
    with Host(_fault_config(), base_dir=tmp_path) as host:
        host.register(recorder)
        users = host.service("userprovider")
        first = users.start().pid
        with pytest.raises(PluginCrashed):
            users.driver.invoke(Call("userprovider", "crash", {"code": 3}))
        assert wait_until(lambda: users.info().state == "restarting")
        assert users.info().pid is None
        second = users.start()
        assert second.pid != first
        assert (second.state, second.restarts) == ("running", 1)
        assert recorder.named("plugin_restarting") == [{"service": "userprovider", "restarts": 1}]
        assert [e["restarts"] for e in recorder.named("plugin_started")] == [0, 1]
        assert {"service": "userprovider", "pid": first, "ok": False} in recorder.named(
            "plugin_exited"
        )
        for _ in range(Supervisor.MAX_CRASHES - 1):
            with pytest.raises(PluginCrashed):
                users.driver.invoke(Call("userprovider", "crash", {"code": 3}))
        assert wait_until(lambda: len(recorder.named("service_failed")) == 1)
        failed = recorder.named("service_failed")[0]
        assert failed["service"] == "userprovider"
        assert isinstance(failed["error"], PluginCrashed)
        assert users.info().state == "failed"
        with pytest.raises(PluginCrashed, match="marked failed"):
            users.start()


@pytest.mark.slow
def test_restart_never_reads_as_failed(tmp_path: Path) -> None:
    with Host(_fault_config(restart="never"), base_dir=tmp_path) as host:
        users = host.service("userprovider")
        with pytest.raises(PluginCrashed):
            users.driver.invoke(Call("userprovider", "crash", {"code": 3}))
        assert wait_until(lambda: users.info().state == "failed")
        with pytest.raises(PluginCrashed, match="restart = 'never'"):
            users.start()


# -- one lock per service ------------------------------------------------------------------------


def _slow_plugin(root: Path) -> tuple[Path, Path, Path]:
    """A folder plugin whose build blocks until ``gate`` exists; ``started`` marks the wait."""
    project, started, gate = root / "slow", root / "build-started", root / "gate"
    (project / "reva_slow_auth").mkdir(parents=True)
    (project / "reva_slow_auth" / "__init__.py").write_text(_SLOW_PLUGIN, encoding="utf-8")
    (project / "slow_backend.py").write_text(
        _SLOW_BACKEND.format(started=str(started), gate=str(gate)), encoding="utf-8"
    )
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["hatchling"]
            build-backend = "slow_backend"
            backend-path = ["."]

            [project]
            name = "reva-slow-auth"
            version = "1.0"

            [project.entry-points."reva.authprovider"]
            slow = "reva_slow_auth:Auth"

            [tool.hatch.build.targets.wheel]
            packages = ["reva_slow_auth"]
            """
        ),
        encoding="utf-8",
    )
    return project, started, gate


@pytest.mark.slow
def test_a_slow_build_blocks_neither_other_services_nor_close(tmp_path: Path) -> None:
    project, started, gate = _slow_plugin(tmp_path)
    config = _fault_config()
    config["grpc"]["services"]["authprovider"] = {"driver": str(project)}
    recorder = _Recorder()
    host = Host(config, base_dir=tmp_path)
    host.register(recorder)
    try:
        users = host.service("userprovider")
        pid = users.start().pid
        assert pid is not None
        outcome: list[BaseException | object] = []

        def load_slow() -> None:
            try:
                outcome.append(host.service("authprovider"))
            except BaseException as exc:
                outcome.append(exc)

        loader = threading.Thread(target=load_slow)
        loader.start()
        assert wait_until(started.exists, timeout=120), "the slow build never started"
        # the build is held at the gate: everything below must not wait for it
        assert users.get_user(FAULT_ID)["username"] == "fault"
        assert host.service("userprovider") is users
        host.close()
        assert wait_until(lambda: not pid_alive(pid))
        assert loader.is_alive()
        assert not gate.exists()
    finally:
        gate.touch()
        host.close()
    loader.join(180)
    assert len(outcome) == 1
    assert isinstance(outcome[0], RevaPluginError)
    assert "closed" in str(outcome[0])
    # the env was built (and said so), but no plugin was started from it after close (the
    # user provider's env may be built here too, where no earlier test on this worker did)
    built = [e for e in recorder.named("env_built") if e["service"] == "authprovider"]
    assert len(built) == 1
    assert built[0]["s"] > 0
    assert [e["service"] for e in recorder.named("plugin_started")] == ["userprovider"]
    with pytest.raises(RevaPluginError, match="closed"):
        host.service("authprovider")


# -- the public surface --------------------------------------------------------------------------


def test_every_public_exception_is_exported() -> None:
    classes = {
        name
        for name, obj in vars(errors_module).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and not name.startswith("_")
    }
    assert classes <= set(reva_plugins.__all__)
    for name in reva_plugins.__all__:
        assert getattr(reva_plugins, name) is not None


def test_every_dependency_declares_the_floor_the_lowest_session_installs() -> None:
    """``nox -s lowest`` installs each dependency at its declared floor and runs these tests
    (the wrapper tests above need pluggy's new-style wrappers), so every dependency needs one."""
    from packaging.requirements import Requirement

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        floors = [spec for spec in requirement.specifier if spec.operator == ">="]
        assert floors, f"{requirement.name} has no lower bound"


# -- service_call implementations around an awaited call (ServiceProxy.acall) -------------------


class _Innermost:
    """Stands where the host's own implementation stands: it answers last."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    @hookimpl(trylast=True)
    def service_call(self, method: str) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer is None:  # the driver answered None: pluggy goes on to the next
            return None
        return {"answer": self.answer, "method": method}


class _Tracer:
    def __init__(self, name: str, log: list[str], *, swallow: bool = False) -> None:
        self.name, self.log, self.swallow = name, log, swallow

    @hookimpl(wrapper=True)
    def service_call(self, method: str) -> Generator[None, Any, Any]:
        self.log.append(f"{self.name} before {method}")
        try:
            result = yield
        except RemoteError as exc:
            self.log.append(f"{self.name} saw {type(exc).__name__}")
            if self.swallow:
                return {"answer": "swallowed"}
            raise
        self.log.append(f"{self.name} after")
        return {**result, self.name: True}


class _OldStyle:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(hookwrapper=True, tryfirst=True)
    def service_call(self) -> Generator[None, Any, None]:
        self.log.append("old before")
        outcome = yield
        self.log.append(f"old saw {outcome.exception is None}")


class _Answers:
    @hookimpl
    def service_call(self, method: str) -> Any:
        return {"answer": "cached"} if method == "cached" else None


def _three_ways(
    plugins: list[object], answer: Any, method: str = "m"
) -> tuple[tuple[Any, list[str]], tuple[Any, list[str]], tuple[Any, list[str]]]:
    """What pluggy itself makes of a call, and what ``CallWrappers`` makes of one in a thread
    and of an awaited one, with the same implementations: (result or error, log) each."""
    from reva_plugins._hooks import CallWrappers, HostSpec

    outcomes = []
    for way in ("pluggy", "run", "arun"):
        log: list[str] = []
        pm = pluggy.PluginManager("reva")
        pm.add_hookspecs(HostSpec)
        innermost = _Innermost(answer)
        pm.register(innermost)
        for make in plugins:
            pm.register(make(log))  # type: ignore[operator]
        kwargs: dict[str, Any] = {
            "service": "userprovider", "method": method, "params": {}, "meta": {},
            "timeout": None, "proxy": None, "cancellation": None,
        }  # fmt: skip

        async def inner() -> Any:
            return innermost.service_call(method)

        wrappers = CallWrappers(pm.hook.service_call, functools.partial(operator.is_, innermost))
        try:
            if way == "arun":
                result = asyncio.run(
                    wrappers.arun(kwargs, inner, lambda: CallCancelled("cancelled", plugin="p"))
                )
            elif way == "run":
                result = wrappers.run(kwargs, lambda: innermost.service_call(method))
            else:
                result = pm.hook.service_call(**kwargs)
        except BaseException as exc:  # the test compares what was raised
            result = (type(exc), str(exc))
        outcomes.append((result, log))
    return outcomes[0], outcomes[1], outcomes[2]


@pytest.mark.parametrize(
    ("plugins", "answer", "method"),
    [
        ([lambda log: _Tracer("a", log), lambda log: _Tracer("b", log)], 1, "m"),
        ([lambda log: _Tracer("a", log), _OldStyle], 2, "m"),
        ([lambda log: _Tracer("a", log)], RemoteError("no", type="NotFound"), "m"),
        (
            [lambda log: _Tracer("a", log, swallow=True), lambda log: _Tracer("b", log)],
            RemoteError("no", type="NotFound"),
            "m",
        ),
        ([lambda log: _Tracer("a", log), lambda log: _Answers()], 3, "cached"),
        ([_OldStyle, lambda log: _Answers()], 4, "m"),
    ],
)
def test_wrappers_around_an_awaited_call_do_what_they_do_around_a_plain_one(
    plugins: list[object], answer: Any, method: str
) -> None:
    plain, wrapped, awaited = _three_ways(plugins, answer, method)
    assert wrapped == plain
    assert awaited == plain


def test_a_cancelled_task_reaches_the_wrappers_as_call_cancelled() -> None:
    from reva_plugins._hooks import CallWrappers, HostSpec

    seen: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def service_call(self) -> Generator[None, Any, Any]:
            try:
                return (yield)
            except CallCancelled:
                seen.append("cancelled")
                raise

    pm = pluggy.PluginManager("reva")
    pm.add_hookspecs(HostSpec)
    pm.register(Wrapper())

    async def main() -> None:
        async def inner() -> Any:
            await asyncio.sleep(30)

        wrappers = CallWrappers(pm.hook.service_call, lambda plugin: False)
        task = asyncio.ensure_future(
            wrappers.arun({}, inner, lambda: CallCancelled("cancelled", plugin="p"))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["cancelled"]


class _Fallback:
    """An operator's default answer: a plain trylast implementation, registered after the
    host's own (which pluggy so runs first)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(trylast=True)
    def service_call(self) -> Any:
        self.log.append("fallback ran")
        return {"answer": "fallback"}


class _Forcing:
    @hookimpl(hookwrapper=True)
    def service_call(self) -> Generator[None, Any, None]:
        outcome = yield
        outcome.force_exception(ValueError("forced"))


class _CatchesForced:
    @hookimpl(wrapper=True, tryfirst=True)
    def service_call(self) -> Generator[None, Any, Any]:
        try:
            return (yield)
        except ValueError as exc:
            return f"new saw {exc}"


_KW_ONLY_ERROR = "_KeywordOnly.service_call() missing 1 required keyword-only argument: 'method'"


class _YieldsTwice:
    @hookimpl(wrapper=True)
    def service_call(self) -> Generator[None, Any, Any]:
        yield
        return (yield)


class _NeverYields:
    @hookimpl(wrapper=True)
    def service_call(self) -> Generator[None, Any, Any]:
        if False:  # a generator that ends before its yield
            yield
        return "never"


class _KeywordOnly:
    @hookimpl(wrapper=True)
    def service_call(self, *, method: str) -> Generator[None, Any, Any]:
        return (yield)


@pytest.mark.parametrize(
    ("plugins", "answer", "expected"),
    [
        # after the driver: runs only if the driver answered None
        ([_Fallback], "from the plugin", ({"answer": "from the plugin", "method": "m"}, [])),
        ([_Fallback], None, ({"answer": "fallback"}, ["fallback ran"])),
        ([lambda log: _Forcing(), lambda log: _CatchesForced()], 1, ("new saw forced", [])),
        # a wrapper must yield exactly once: pluggy's errors, every way
        ([lambda log: _YieldsTwice()], 3, ((RuntimeError, "has second yield"), [])),
        ([lambda log: _NeverYields()], 3, ((RuntimeError, "did not yield"), [])),
        # pluggy passes arguments by position: a keyword-only one is an error, both ways
        (
            [lambda log: _KeywordOnly()],
            2,
            ((TypeError, _KW_ONLY_ERROR), []),
        ),
    ],
)
def test_implementations_around_the_driver_run_in_pluggys_order_both_ways(
    plugins: list[object], answer: Any, expected: tuple[Any, list[str]]
) -> None:
    plain, wrapped, awaited = _three_ways(plugins, answer)
    if isinstance(expected[0], tuple) and expected[0][0] is RuntimeError:
        # pluggy's message names the wrapper's code: its file and line
        (kind, message), log = plain
        assert (kind, message.endswith(expected[0][1]), log) == (RuntimeError, True, expected[1])
    else:
        assert plain == expected
    assert wrapped == plain
    assert awaited == plain
