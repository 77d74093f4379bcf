"""Fast unit tests of the pure functions: spec classification, env metadata validation,
argument binding, config parsing edge cases, and how the CLI presents results."""

from __future__ import annotations

import inspect
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reva_plugins import SERVICES, ConfigError, SourceError, UsageError, _wire
from reva_plugins._config import parse
from reva_plugins._drivers import ServiceInfo
from reva_plugins._envinfo import env_metadata
from reva_plugins._envmeta import EnvMetadata, MetadataError
from reva_plugins._errors import EnvBuildError, ExitCode, InvalidArgument, RemoteError
from reva_plugins._host import ServiceCheck
from reva_plugins._installers import InstallOptions
from reva_plugins._plan import (
    NO_ENV,
    PREBUILT_ENV,
    InProcessPlan,
    absolute_spec,
    check_fits,
    classify_driver,
    shown_env,
)
from reva_plugins._present import CheckRow, TickingProgress
from reva_plugins._protocol import error_to_exception
from reva_plugins._proxy import _Binder
from reva_plugins._python import Interpreter
from reva_plugins._sources import (
    LOCKED_KINDS,
    ArchiveURL,
    InProcess,
    NeedsNetwork,
    PrebuiltVenv,
    ResolveContext,
    Resolved,
    lock_entry_problem,
)
from reva_plugins._store import env_health
from reva_plugins.testing import result_problems

# -- spec classification ------------------------------------------------------------------------


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "plugins" / "demo").mkdir(parents=True)
    (tmp_path / "plugins" / "demo" / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "demo-1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "dist" / "demo-1.0.tar.gz").write_bytes(b"")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_bytes(b"")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("json", "in-process"),
        ("reva-plugin-json>=1.0", "requirement"),
        ("./plugins/demo", "folder"),
        ("plugins/demo", "folder"),
        ("./dist/demo-1.0-py3-none-any.whl", "wheel"),
        ("./dist/demo-1.0.tar.gz", "sdist"),
        ("./venv", "venv"),
        ("git+https://example.org/demo.git@v1", "git"),
        ("https://example.org/demo-1.0-py3-none-any.whl", "wheel-url"),
    ],
)
def test_specs_classify_by_kind(tmp_path: Path, spec: str, kind: str) -> None:
    assert classify_driver(spec, base_dir=_tree(tmp_path)).kind == kind


@pytest.mark.parametrize(
    "spec",
    ["", " ", "a\x00b", "plugins/../demo", "name @ https://example.org/x.whl", "what is this?"],
)
def test_ambiguous_or_empty_specs_are_refused(tmp_path: Path, spec: str) -> None:
    with pytest.raises(SourceError):
        classify_driver(spec, base_dir=_tree(tmp_path))


def test_allowed_sources_applies_at_classification(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    allowed = (f"{base}/plugins/*",)
    assert classify_driver("./plugins/demo", base_dir=base, allowed=allowed).kind == "folder"
    with pytest.raises(SourceError, match="not allowed"):
        classify_driver("git+https://example.org/demo.git@v1", base_dir=base, allowed=allowed)
    with pytest.raises(SourceError, match="not allowed"):
        classify_driver("./dist/demo-1.0.tar.gz", base_dir=base, allowed=allowed)


def test_absolute_spec_resolves_paths_only(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    assert absolute_spec("./plugins/demo", base) == str(base / "plugins" / "demo")
    assert absolute_spec("json", base) == "json"
    assert absolute_spec("reva-plugin-json>=1", base) == "reva-plugin-json>=1"


@pytest.mark.parametrize(
    ("spec", "wheel", "archive"),
    [
        ("./dist/demo-1.0-py3-none-any.whl", "demo-1.0-py3-none-any.whl", False),
        ("./dist/demo-1.0.tar.gz", None, False),
        ("./plugins/demo", None, False),
        ("git+https://example.org/demo.git@v1", None, False),
        ("https://example.org/d/demo-1.0-py3-none-any.whl", "demo-1.0-py3-none-any.whl", True),
        ("https://example.org/d/demo-1.0.tar.gz", None, True),
        ("reva-plugin-demo==1.0", None, False),
    ],
)
def test_a_kind_tells_the_builder_what_it_means(
    tmp_path: Path, spec: str, wheel: str | None, archive: bool
) -> None:
    """The wheel to tag-check, and whether a locked env fetches the plugin late (an archive
    a lock pins without fetching it: offline, that fetch is refused as needing the network)."""
    source = classify_driver(spec, base_dir=_tree(tmp_path))
    assert not isinstance(source, (InProcess, PrebuiltVenv))
    assert source.wheel_file == wheel
    entry = _Pins(source.kind, source.spec, "sha256:" + "0" * 64, "demo", {"sha256": "0" * 64})
    ctx = ResolveContext(offline=True, downloads=tmp_path / "downloads")
    if archive:
        with pytest.raises(NeedsNetwork):
            source.fetch_late(entry, ctx)
    else:
        assert source.fetch_late(entry, ctx) is None


@pytest.mark.parametrize(
    "spec",
    [
        "./plugins/demo",
        "./dist/demo-1.0-py3-none-any.whl",
        "./dist/demo-1.0.tar.gz",
        "reva-plugin-demo[x]==1.0",
        "file:///ARCHIVE",
    ],
)
def test_what_a_kind_resolves_to_is_a_lock_entry_of_that_kind(tmp_path: Path, spec: str) -> None:
    """A kind's pins, its wheel and the lock's validation of an entry of it agree: resolving
    gives every pin the kind requires, and pinning it (``repin``) again gives the same."""
    base = _tree(tmp_path)
    spec = spec.replace("/ARCHIVE", str(base / "dist" / "demo-1.0-py3-none-any.whl"))
    source = classify_driver(spec, base_dir=base)
    assert not isinstance(source, (InProcess, PrebuiltVenv))
    ctx = ResolveContext(downloads=tmp_path / "downloads")
    resolved = source.resolve(ctx)
    assert resolved.kind in LOCKED_KINDS
    wheel = "" if resolved.wheel_from == "index" else "demo-1.0-py3-none-any.whl"
    assert lock_entry_problem(resolved.kind, resolved.pins, wheel) is None
    assert (
        lock_entry_problem(resolved.kind, resolved.pins, "x.whl" if not wheel else "") is not None
    )
    entry = _Pins(
        resolved.kind, resolved.spec, resolved.identity, "reva-plugin-demo", resolved.pins
    )
    assert source.drift(entry, ctx) is None
    again = source.repin(entry, ctx)
    assert (again.identity, dict(again.pins), again.mutable) == (
        resolved.identity,
        dict(resolved.pins),
        False,
    )


@dataclass(frozen=True)
class _Pins:
    kind: str
    spec: str
    identity: str
    plugin: str
    pins: Mapping[str, str]


def test_a_wheel_url_that_cannot_fit_is_refused_before_it_is_fetched() -> None:
    """The tags are read from the file name the source names: nothing is downloaded (the
    host does not exist), and a wheel that fits passes."""
    python = Interpreter("/usr/bin/python3", "CPython", "3.12.1")
    unfit = ArchiveURL("https://nowhere.invalid/demo-1.0-cp27-cp27mu-linux_x86_64.whl")
    with pytest.raises(SourceError, match=r"does not fit Python 3\.12\.1"):
        check_fits(unfit, python)
    check_fits(ArchiveURL("https://nowhere.invalid/demo-1.0-py3-none-any.whl"), python)


# -- env metadata -------------------------------------------------------------------------------

KEY = "0123456789abcdef01234567"


def _metadata(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "key": KEY,
        "spec": "./plugins/demo",
        "kind": "folder",
        "identity": "tree:abc",
        "mutable": True,
        "resolved": {"version": "1.0"},
        "python": {"implementation": "CPython", "version": "3.12.1", "executable": "/py"},
        "installer": {"name": "uv", "version": "0.6"},
        "options": {"index_url": None},
        "protocol": [1],
        "distributions": [{"name": "demo", "version": "1.0", "direct_url": {"url": "file:///x"}}],
        "entry_points": {
            "reva.userprovider": {
                "demo": {"name": "demo", "value": "demo:P", "distribution": "demo", "version": "1"}
            }
        },
        "created": "2026-01-01T00:00:00.000001+00:00",
        "future_field": {"kept": True},
    }
    meta.update(changes)
    return meta


def test_metadata_round_trips_and_keeps_unknown_fields() -> None:
    meta = EnvMetadata.from_json(_metadata())
    assert meta.to_json() == _metadata()
    assert meta.entry_points["reva.userprovider"]["demo"].value == "demo:P"
    assert meta.python.version == "3.12.1"


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"key": "not-a-key"}, "not an env key"),
        ({"kind": 3}, "kind"),
        ({"mutable": "yes"}, "mutable"),
        ({"protocol": [1, True]}, "protocol"),
        ({"python": {"version": "3.12"}}, "python."),
        ({"resolved": {"version": 1}}, "resolved"),
        ({"distributions": [{"name": "x"}]}, "distributions[0].version"),
        ({"entry_points": {"reva.userprovider": []}}, "entry_points.reva.userprovider"),
        ({"entry_points": {"g": {"n": {"name": "n"}}}}, "entry_points.g.n."),
    ],
)
def test_metadata_of_the_wrong_shape_names_the_field(changes: dict[str, Any], names: str) -> None:
    with pytest.raises(MetadataError, match=names.replace(".", r"\.").replace("[", r"\[")):
        EnvMetadata.from_json(_metadata(**changes))


@pytest.mark.parametrize("data", [None, [], "x", 1])
def test_metadata_that_is_not_an_object_is_refused(data: object) -> None:
    with pytest.raises(MetadataError):
        EnvMetadata.from_json(data)


def _fake_venv(root: Path) -> Path:
    """A venv's site-packages holding one distribution with an entry point and a PEP 610 record."""
    info = root / "lib" / "python3.12" / "site-packages" / "demo-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[reva.userprovider]\ndemo = demo:Provider\n")
    (info / "direct_url.json").write_text('{"url": "file:///x", "archive_info": {}}')
    return root


def test_a_built_envs_metadata_is_the_record_itself(tmp_path: Path) -> None:
    """``_envinfo`` builds the :class:`EnvMetadata` record (no schema of its own): what it
    returns is what the store writes and reads back."""
    resolved = Resolved("wheel", "./demo.whl", "sha256:ab", ("./demo.whl",), pins={"sha256": "ab"})
    python = Interpreter("/py", "CPython", "3.12.1")
    meta = env_metadata(_fake_venv(tmp_path), KEY, resolved, python, "uv", "0.6", InstallOptions())
    assert isinstance(meta, EnvMetadata)
    assert EnvMetadata.from_json(meta.to_json()) == meta
    assert (meta.key, meta.kind, meta.identity, meta.python.version) == (
        KEY, "wheel", "sha256:ab", "3.12.1"
    )  # fmt: skip
    assert [(d.name, d.version) for d in meta.distributions] == [("demo", "1.0")]
    assert meta.entry_points["reva.userprovider"]["demo"].value == "demo:Provider"
    assert meta.resolved == {"sha256": "ab"}


# -- argument binding ---------------------------------------------------------------------------


def _sample(user_id: Any, skip_fetching_groups: bool = False, mode: str = "x") -> None:
    """A service method's shape: one required argument, then defaults."""


def _all_required(a: Any, b: Any) -> None:
    """No defaults."""


def _all_defaulted(a: Any = 1, b: Any = "two") -> None:
    """Every argument may be left out."""


def _none() -> None:
    """No parameters at all."""


SIGNATURES = [inspect.signature(f) for f in (_sample, _all_required, _all_defaulted, _none)]
VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=3))
NAMES = st.sampled_from(["user_id", "skip_fetching_groups", "mode", "a", "b", "other"])


@settings(max_examples=300, deadline=None)
@given(
    which=st.integers(0, len(SIGNATURES) - 1),
    args=st.lists(VALUES, max_size=4).map(tuple),
    kwargs=st.dictionaries(NAMES, VALUES, max_size=3),
)
def test_the_binder_agrees_with_signature_bind(
    which: int, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    sig = SIGNATURES[which]
    binder = _Binder("svc.method", sig, "svc (demo)")
    try:
        expected = sig.bind(*args, **kwargs)
    except TypeError:
        with pytest.raises(UsageError, match=r"^svc \(demo\): svc\.method\(\) "):
            binder.bind(args, kwargs)
        return
    expected.apply_defaults()
    bound = binder.bind(args, kwargs)
    assert bound == dict(expected.arguments)
    bound["mutated"] = True  # each call's params are its own: the defaults stay as they are
    assert binder.bind(args, kwargs) == dict(expected.arguments)


def test_binder_errors_are_usage_errors_that_name_the_argument() -> None:
    binder = _Binder("userprovider.get_user", inspect.signature(_sample), "userprovider (x)")
    with pytest.raises(UsageError, match="missing the argument 'user_id'"):
        binder.bind((), {})
    with pytest.raises(UsageError, match="unexpected argument 'nope'"):
        binder.bind((1,), {"nope": 2})
    with pytest.raises(UsageError, match="multiple values for 'user_id'"):
        binder.bind((1,), {"user_id": 2})
    with pytest.raises(UsageError, match="takes 3 arguments, 4 given"):
        binder.bind((1, 2, 3, 4), {})


# -- config parsing edge cases ------------------------------------------------------------------


def _service(**plugin: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"driver": "json", "plugin": plugin}
    return {"grpc": {"services": {"userprovider": table}}}


@pytest.mark.parametrize(
    "plugin",
    [
        {"max_concurrency": True},
        {"max_concurrency": 1.5},
        {"max_concurrency": 0},
        {"start_timeout": 0},
        {"call_timeout": float("nan")},
        {"call_timeout": "30"},
        {"restart": "always"},
        {"restart": ["on-failure"]},
    ],
)
def test_plugin_options_of_the_wrong_type_or_range_are_config_errors(
    tmp_path: Path, plugin: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match=next(iter(plugin))):
        parse(_service(**plugin), base_dir=tmp_path)


def test_plugin_options_override_the_plugins_table(tmp_path: Path) -> None:
    config = parse(
        {**_service(call_timeout=5, restart="never"), "plugins": {"call_timeout": 9}},
        base_dir=tmp_path,
    )
    opts = config.service("userprovider").plugin
    assert (opts.call_timeout, opts.restart) == (5, "never")
    assert config.plugins.call_timeout == 9


# -- presentation ------------------------------------------------------------------------------


def _info() -> ServiceInfo:
    return ServiceInfo(
        "userprovider", "folder", "running", 42, KEY, "/py", "demo", "demo-dist", "1.0",
        0.5, 0, 0,
    )  # fmt: skip


def _check(**changes: Any) -> ServiceCheck:
    fields: dict[str, Any] = {
        "service": "userprovider",
        "driver": "git+https://user:token@example.org/p.git@v1",
        "kind": "git",
        "env_key": KEY,
        "built": True,
        "info": _info(),
        "start_ms": 12.345,
        "ping_ms": 0.12345,
        "error": None,
    }
    fields.update(changes)
    return ServiceCheck(**fields)


def test_a_check_row_redacts_the_driver_and_rounds_the_times() -> None:
    row = CheckRow.of(_check())
    assert row.driver == "git+https://***@example.org/p.git@v1"
    assert (row.ok, row.status, row.env, row.start_ms, row.ping_ms) == (
        True,
        "ok demo-dist 1.0",
        KEY,
        12.3,
        0.123,
    )
    assert row.exit_code == ExitCode.OK


def test_a_failed_check_row_shows_the_first_line_redacted_and_the_errors_exit_code() -> None:
    error = EnvBuildError("fetching https://u:secret@example.org/x failed\ndetails", plugin=None)
    row = CheckRow.of(_check(error=error, info=None, start_ms=None, ping_ms=None))
    assert row.status == "fetching https://***@example.org/x failed"
    assert (row.ok, row.exit_code) == (False, ExitCode.FAILURE)
    unplanned = CheckRow.of(_check(kind=None, env_key=None, error=SourceError("bad spec")))
    assert (unplanned.kind, unplanned.env, unplanned.exit_code) == ("-", "-", ExitCode.USAGE)


@pytest.mark.parametrize(
    ("kind", "env_key", "shown"),
    [("in-process", None, "-"), ("venv", None, "(prebuilt)"), ("folder", KEY, KEY)],
)
def test_the_env_column(kind: str, env_key: str | None, shown: str) -> None:
    assert CheckRow.of(_check(kind=kind, env_key=env_key)).env == shown


def test_the_env_column_is_chosen_by_planning(tmp_path: Path) -> None:
    """The kinds plans carry (``InProcessPlan.kind``, a prebuilt venv's source kind) are the
    ones :func:`shown_env` knows: a renamed kind cannot silently change the column."""
    venv = classify_driver("./venv", base_dir=_tree(tmp_path))
    assert isinstance(venv, PrebuiltVenv)
    assert shown_env(InProcessPlan.kind, None) == NO_ENV
    assert shown_env(venv.kind, None) == PREBUILT_ENV
    assert shown_env(None, None) == NO_ENV
    assert shown_env(venv.kind, KEY) == KEY


def test_the_kit_checks_results_through_the_service_type() -> None:
    bad = {"secret": "x"}
    assert result_problems("userprovider", "get_user", bad) == SERVICES[
        "userprovider"
    ].validate_result("get_user", bad)
    assert result_problems("userprovider", "get_user", bad) != []
    assert result_problems("groupprovider", "get_members", []) == []
    with pytest.raises(UsageError, match="unknown service"):
        result_problems("nosuch", "get", None)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_ticker_stays_silent_off_a_terminal_and_clears_its_line_on_one() -> None:
    quiet = io.StringIO()
    ticker = TickingProgress(quiet)
    ticker.started("userprovider (x)")
    ticker.clear_line()
    ticker.finished("userprovider (x)", 1.0, ok=True)
    assert quiet.getvalue() == ""
    terminal = _Terminal()
    ticker = TickingProgress(terminal)
    ticker.started("userprovider (x)")
    ticker.finished("userprovider (x)", 0.0, ok=False)
    assert terminal.getvalue().endswith("\r\033[K")


# -- the protocol reference agrees with the code --------------------------------------------------

PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _doc_row(code: int) -> str:
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    return next(line for line in text.splitlines() if line.startswith(f"| {code} |"))


@pytest.mark.parametrize(
    ("code", "raised", "type_name"),
    [
        (_wire.PARSE_ERROR, RemoteError, "ParseError"),
        (_wire.INVALID_REQUEST, RemoteError, "InvalidRequest"),
        (_wire.METHOD_NOT_FOUND, RemoteError, "MethodNotFound"),
        (_wire.INVALID_PARAMS, InvalidArgument, "InvalidArgument"),
        (_wire.INTERNAL_ERROR, RemoteError, "InternalError"),
    ],
)
def test_the_protocol_docs_error_table_says_what_the_core_raises(
    code: int, raised: type[RemoteError], type_name: str
) -> None:
    exc = error_to_exception({"code": code, "message": "m"}, plugin="p")
    assert (type(exc), exc.type, exc.code) == (raised, type_name, code)
    row = _doc_row(code)
    shown = f"`{raised.__name__}`" + (f" (type `{type_name}`)" if raised is RemoteError else "")
    assert row.endswith(f"| {shown} |"), row


def test_the_protocol_docs_name_every_wire_definition() -> None:
    """Each public name of ``_wire`` is in the reference's table of names, with its value."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    table = text[text.index("## Where the names are defined") :]
    names = [
        name
        for name, value in vars(_wire).items()
        if not name.startswith("_")
        and name not in ("TYPE_CHECKING", "TypedDict", "annotations")
        and (name.isupper() or isinstance(value, type))
    ]
    assert len(names) > 20
    missing = [name for name in names if f"`{name}`" not in table]
    assert missing == []
    for name in ("PARSE_ERROR", "INVALID_REQUEST", "APPLICATION_ERROR", "DEFAULT_MAX_LINE"):
        assert str(getattr(_wire, name)) in table


# -- the env health check -------------------------------------------------------------------------


def test_env_health_names_what_is_broken(tmp_path: Path) -> None:
    """What a health check on load finds wrong in an env, each in words (the env is rebuilt)."""
    env = tmp_path / "env"
    assert env_health(env, "3.12") == f"interpreter {env / 'bin' / 'python'} is missing"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_bytes(b"")
    assert env_health(env, "3.12") == "pyvenv.cfg is missing"
    (env / "pyvenv.cfg").write_text(f"home = {tmp_path}\nversion_info = 3.11.9\n")
    assert env_health(env, "3.12") == ("pyvenv.cfg says Python 3.11.9, the env was built for 3.12")
    assert env_health(env, "3.11") is None
    (env / "pyvenv.cfg").write_text(f"home = {tmp_path / 'gone'}\nversion_info = 3.11.9\n")
    assert env_health(env, "3.11") == f"the base interpreter folder {tmp_path / 'gone'} is gone"
