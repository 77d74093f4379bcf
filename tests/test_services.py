"""Service types: the registry, a service type defined outside the package, groupprovider, and
the JSON sample's users files of every vintage."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reva_plugins import SERVICES, Host, NotFound, register_service
from reva_plugins._config import load_driver_table
from reva_plugins._errors import UsageError
from reva_plugins._scaffold import scaffold
from reva_plugins.services import ServiceType, _registered
from reva_plugins.testing import prepare_source, run_conformance

from .conftest import EXAMPLES, ROOT, SAMPLES, WriteConfig, cli
from .factory import git
from .plugin_sources import BROKEN_GROUPS, QUOTA_PLUGIN

pytestmark = pytest.mark.slow

JSON_SAMPLE = SAMPLES / "json_users"
OLD_USERS = ROOT / "tests" / "data" / "users.opaque-map.json"

# A host application's own service type, in its own package: nothing in reva_plugins knows it.
HOSTAPP = '''
"""A host application's quota service type."""

from reva_plugins import NotFound
from reva_plugins.services import CheckFailed, ScaffoldTemplate, ServiceType


class QuotaSpec:
    """The methods of a quota provider."""

    def get_quota(self, user_id: dict, resource: str = "home") -> dict:
        """The user's quota on ``resource``: {"resource", "used", "total"}; raises NotFound."""

    def list_resources(self) -> list:
        """The resources quotas exist for."""


def problems(method, value):
    if method == "get_quota":
        if not isinstance(value, dict):
            return ["get_quota() must return an object"]
        return [f"get_quota().{k} must be an int" for k in ("used", "total")
                if not isinstance(value.get(k), int)]
    return []


def checks(ctx):
    def known():
        for resource in ctx.proxy.list_resources():
            found = ctx.proxy.get_quota({"idp": "x", "opaque_id": "einstein"}, resource)
            if ctx.problems("get_quota", found):
                raise CheckFailed("; ".join(ctx.problems("get_quota", found)))
            assert found["used"] <= found["total"], "used exceeds total"

    def unknown():
        try:
            ctx.proxy.get_quota({"idp": "x", "opaque_id": "nobody"})
        except NotFound:
            return
        raise CheckFailed("an unknown user has a quota")

    yield "quotas are well formed", known
    yield "unknown users raise NotFound", unknown


class InProcessQuota:
    """A driver the host application ships itself, run in the core's process."""

    def get_quota(self, user_id, resource="home"):
        return {"resource": resource, "used": 0, "total": 1}

    def list_resources(self):
        return ["home"]


SERVICE = ServiceType(
    "quotaprovider",
    QuotaSpec,
    validate_result=problems,
    conformance_checks=checks,
    scaffold=ScaffoldTemplate(module=\'\'\'"""{dist}: scaffolded quota provider (hostapp template)."""

class NotFound(Exception):
    pass


class {cls}:
    def configure(self, config):
        self.quotas = config.get("quotas") or {{"einstein": {{"used": 1, "total": 2}}}}

    def get_quota(self, user_id, resource="home"):
        if user_id.get("opaque_id") not in self.quotas:
            raise NotFound(user_id.get("opaque_id"))
        return {{"resource": resource, **self.quotas[user_id["opaque_id"]]}}

    def list_resources(self):
        return ["home"]
\'\'\'),
)
'''


EINSTEIN = {"idp": "http://localhost:20080", "opaque_id": "4c510ada-c86b-4815-8820-42cdf82c3d51"}


def _quota_plugin(root: Path) -> Path:
    """A plugin distribution declaring an entry point in ``reva.quotaprovider``."""
    (root / "reva_plugin_quota").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "reva-plugin-quota"\nversion = "1.0"\n\n'
        '[project.entry-points."reva.quotaprovider"]\nquota = "reva_plugin_quota:Quota"\n',
        encoding="utf-8",
    )
    (root / "reva_plugin_quota" / "__init__.py").write_text(QUOTA_PLUGIN, encoding="utf-8")
    return root


def _host_app(site: Path, extra_entry_points: str = "") -> Path:
    """``hostapp`` on a path entry with a ``*.dist-info``: real importlib.metadata discovery."""
    (site / "hostapp").mkdir(parents=True)
    (site / "hostapp" / "__init__.py").write_text(HOSTAPP, encoding="utf-8")
    info = site / "hostapp-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hostapp\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[reva.quotaprovider]\nbuiltin = hostapp:InProcessQuota\n\n"
        f"[reva_plugins.services]\nquotaprovider = hostapp\n{extra_entry_points}",
        encoding="utf-8",
    )
    return site


@pytest.fixture
def quota_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceType]:
    """The host app's service type registered through the Python API (and unregistered after)."""
    site = _host_app(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    import hostapp  # type: ignore[import-not-found]

    service: ServiceType = register_service(hostapp.SERVICE)
    yield service
    _registered.pop("quotaprovider", None)
    sys.modules.pop("hostapp", None)


# -- the registry --------------------------------------------------------------------------------


def test_builtin_service_types_are_read_only_and_complete() -> None:
    assert list(SERVICES)[:3] == ["userprovider", "authprovider", "groupprovider"]
    assert SERVICES["groupprovider"].group == "reva.groupprovider"
    assert SERVICES["groupprovider"].methods == (
        "get_group",
        "get_group_by_claim",
        "get_members",
        "has_member",
        "find_groups",
    )
    with pytest.raises(TypeError):
        SERVICES["x"] = SERVICES["userprovider"]  # type: ignore[index]
    with pytest.raises(UsageError, match="built-in"):
        register_service(ServiceType("userprovider", SERVICES["userprovider"].spec))


def test_builtin_result_validation() -> None:
    groups, users = SERVICES["groupprovider"], SERVICES["userprovider"]
    assert groups.validate_result("has_member", "yes") == [
        "has_member() must return a bool, got str"
    ]
    assert groups.validate_result("get_members", [{"idp": "i", "opaque_id": 7}]) == [
        "get_members()[0].opaque_id must be a string, got 7"
    ]
    group = json.loads((EXAMPLES / "groups.demo.json").read_text())[0]
    assert groups.validate_result("get_group", group) == []
    assert groups.validate_result("find_groups", [group | {"gid_number": "1"}]) == [
        "find_groups()[0]: gid_number must be int, got str"
    ]
    assert users.validate_result("get_user", {"secret": "x"})[0] == (
        "get_user(): returns a secret (secret)"
    )
    assert SERVICES["authprovider"].validate_result("authenticate", {}) == [
        "authenticate must return {'user': User, 'scopes': {...}}"
    ]


def test_a_service_type_is_validated_when_defined() -> None:
    class Empty:
        """No methods."""

    class Spec:
        def ping(self) -> None:
            """Answer."""

    with pytest.raises(ValueError, match="lower case"):
        ServiceType("Bad-Name", Spec)
    with pytest.raises(ValueError, match="no methods"):
        ServiceType("empty", Empty)
    with pytest.raises(ValueError, match="unknown error names"):
        ServiceType("pinger", Spec, errors=("Oops",))
    with pytest.raises(UsageError, match="takes a ServiceType"):
        register_service(Spec)  # type: ignore[arg-type]


def test_a_service_without_a_scaffold_template_gets_stubs(tmp_path: Path) -> None:
    class Spec:
        def lookup(self, key: str, default: str = "") -> str:  # type: ignore[empty-body]
            """The value for ``key``."""

    service = register_service(ServiceType("kvprovider", Spec, errors=("NotFound",)))
    try:
        written = scaffold(tmp_path / "kv", "kvprovider")
    finally:
        _registered.pop(service.name)
    module = next(p for p in written if p.name == "__init__.py").read_text()
    compile(module, "kv", "exec")
    assert "def lookup(self, key, default='')" in module
    assert "class NotFound(Exception)" in module
    assert (
        '[project.entry-points."reva.kvprovider"]'
        in (tmp_path / "kv" / "pyproject.toml").read_text()
    )


# -- a service type defined outside the package: the Python API ---------------------------------


def test_registered_service_type_works_end_to_end(
    quota_service: ServiceType, tmp_path: Path, write_config: WriteConfig
) -> None:
    plugin = _quota_plugin(tmp_path / "quota")
    assert "quotaprovider" in SERVICES
    config = {
        "plugins": {"cache_dir": str(tmp_path / "cache")},
        "grpc": {"services": {"quotaprovider": {"driver": str(plugin)}}},
    }
    with Host(config, base_dir=tmp_path) as host:
        quota = host.service("quotaprovider")
        assert quota.get_quota(EINSTEIN | {"opaque_id": "einstein"}, "projects") == {
            "resource": "projects",
            "used": 10,
            "total": 100,
        }
        with pytest.raises(NotFound):
            quota.call("get_quota", {"user_id": {"opaque_id": "nobody"}})
        assert host.check()[0].ok
    report = run_conformance(str(plugin), "quotaprovider", cache_dir=tmp_path / "cache")
    assert [(c.name, c.status) for c in report.checks] == [
        ("starts and accepts its config", "pass"),
        ("handshake lists every method", "pass"),
        ("quotas are well formed", "pass"),
        ("unknown users raise NotFound", "pass"),
    ]
    bad = run_conformance(
        str(plugin),
        "quotaprovider",
        config={"quotas": {"einstein": {"used": 5, "total": "lots"}}},
        cache_dir=tmp_path / "cache",
    )
    assert {c.name: c.reason for c in bad.failures()} == {
        "quotas are well formed": "get_quota().total must be an int"
    }
    written = scaffold(tmp_path / "scaffolded", "quotaprovider")
    assert "hostapp template" in written[1].read_text()
    assert run_conformance(
        str(tmp_path / "scaffolded"), "quotaprovider", cache_dir=tmp_path / "cache"
    ).ok


# -- a service type defined outside the package: the entry point --------------------------------


def test_service_type_from_an_entry_point_works_in_every_command(
    tmp_path: Path, fresh_cache: Path, write_config: WriteConfig
) -> None:
    site = _host_app(tmp_path / "site", "broken = hostapp_not_installed:SERVICE\n")
    env = {"PYTHONPATH": str(site)}
    plugin = _quota_plugin(tmp_path / "quota")
    config = write_config(f'[grpc.services.quotaprovider]\ndriver = "{plugin}"\n')

    checked = cli("check", str(config), "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)[0]["service"] == "quotaprovider"
    # the broken entry point is logged once and skipped; it does not stop the core
    warnings = [line for line in checked.stderr.splitlines() if "hostapp_not_installed" in line]
    assert len(warnings) == 1, checked.stderr
    assert "broken" in warnings[0]
    assert "skipped" in warnings[0]

    called = cli(
        "call",
        str(config),
        "quotaprovider",
        "get_quota",
        '{"user_id": {"opaque_id": "einstein"}}',
        env=env,
    )
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["total"] == 100
    in_core = write_config('[grpc.services.quotaprovider]\ndriver = "builtin"\n', "in.toml")
    called = cli("call", str(in_core), "quotaprovider", "list_resources", env=env)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == ["home"]

    built = cli("env", "build", str(config), env=env)
    assert built.returncode == 0, built.stderr
    assert built.stdout.split("\t")[2].strip() == "cached"

    conformance = cli("conformance", str(plugin), "--service", "quotaprovider", "--json", env=env)
    assert conformance.returncode == 0, conformance.stdout + conformance.stderr
    names = [c["name"] for c in json.loads(conformance.stdout)["checks"]]
    assert "quotas are well formed" in names

    new = cli("new", str(tmp_path / "new-quota"), "--service", "quotaprovider", env=env)
    assert new.returncode == 0, new.stderr
    module = tmp_path / "new-quota" / "reva_plugin_new_quota" / "__init__.py"
    assert "class NewQuotaQuotaProvider" in module.read_text()

    # naming the broken service: one clear line, exit 2
    broken = write_config(f'[grpc.services.broken]\ndriver = "{plugin}"\n', "broken.toml")
    result = cli("check", str(broken), env=env)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "grpc.services.broken: service 'broken' is unavailable" in last
    assert "ModuleNotFoundError" in last
    assert "Traceback" not in result.stderr

    # without the host application the service type is unknown
    unknown = cli("conformance", str(plugin), "--service", "quotaprovider")
    assert unknown.returncode == 2
    assert "unknown service 'quotaprovider'" in unknown.stderr


# -- groupprovider -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "wheel", "git"])
def test_json_group_provider_conforms_from_every_kind(kind: str, tmp_path: Path) -> None:
    spec = prepare_source(JSON_SAMPLE, kind, tmp_path / kind)
    report = run_conformance(
        spec,
        "groupprovider",
        config=load_driver_table(JSON_SAMPLE / "conformance.toml"),
        base_dir=JSON_SAMPLE,
    )
    assert report.ok, [(c.name, c.reason) for c in report.failures()]
    assert [c.status for c in report.checks] == ["pass"] * 9


def test_demo_groups_agree_with_the_demo_users() -> None:
    users = json.loads((EXAMPLES / "users.demo.json").read_text())
    groups = json.loads((EXAMPLES / "groups.demo.json").read_text())
    for group in groups:
        members = {m["opaque_id"] for m in group["members"]}
        expected = {u["id"]["opaque_id"] for u in users if group["group_name"] in u["groups"]}
        assert members == expected, group["group_name"]
    assert {g["group_name"] for g in groups} == {g for u in users for g in u["groups"]}


def test_json_group_provider_answers_through_the_example_config(fresh_cache: Path) -> None:
    with Host.from_file(EXAMPLES / "revad.toml") as host:
        groups = host.service("groupprovider")
        physics = groups.get_group_by_claim("group_name", "physics-lovers")
        assert len(physics["members"]) == 3
        assert groups.has_member(physics["id"], EINSTEIN)
        marie = {"opaque_id": "f7fbf8c8-139b-4376-b307-cf0a8c2d0d9c"}
        assert groups.has_member({"opaque_id": "radium-lovers"}, marie)
        assert not groups.has_member({"opaque_id": "violin-haters"}, marie)
        assert [g["group_name"] for g in groups.find_groups("RADIUM")] == ["radium-lovers"]
        assert groups.get_group(physics["id"], skip_fetching_members=True)["members"] == []
        with pytest.raises(NotFound):
            groups.get_members({"idp": "x", "opaque_id": "nope"})


def test_a_broken_group_provider_fails_with_precise_reasons(tmp_path: Path) -> None:
    project = tmp_path / "broken"
    (project / "reva_broken_groups").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "reva-broken-groups"\nversion = "1.0"\n\n'
        '[project.entry-points."reva.groupprovider"]\nbroken = "reva_broken_groups:Groups"\n'
    )
    (project / "reva_broken_groups" / "__init__.py").write_text(BROKEN_GROUPS)
    report = run_conformance(str(project), "groupprovider", cache_dir=tmp_path / "cache")
    reasons = {c.name: c.reason for c in report.failures()}
    assert "get_members of an unknown group returned" in reasons["unknown ids raise NotFound"]
    assert (
        "get_members('g') = [] but get_group says"
        in reasons["get_members and has_member agree with get_group"]
    )
    assert "still returns members" in reasons["skip_fetching_members returns no members"]


def test_scaffolded_group_provider_passes_its_own_tests_and_conformance(tmp_path: Path) -> None:
    import subprocess

    result = cli("new", str(tmp_path / "ldap"), "--service", "groupprovider")
    assert result.returncode == 0, result.stderr
    plugin = tmp_path / "ldap"
    assert '"reva.groupprovider"' in (plugin / "pyproject.toml").read_text()
    own_tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=plugin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert own_tests.returncode == 0, own_tests.stdout + own_tests.stderr
    git(plugin, "init", "-q")
    git(plugin, "add", "-A")
    git(plugin, "commit", "-q", "-m", "scaffold")
    url = f"git+file://{plugin}@{git(plugin, 'rev-parse', 'HEAD')}"
    from_git = cli("conformance", url, "--service", "groupprovider", "--json")
    assert from_git.returncode == 0, from_git.stdout + from_git.stderr
    assert {c["status"] for c in json.loads(from_git.stdout)["checks"]} == {"pass"}


# -- the JSON sample reads users files of every vintage -----------------------------------------


@pytest.mark.parametrize(
    "users", [EXAMPLES / "users.demo.json", OLD_USERS], ids=["numbers", "opaque"]
)
def test_json_sample_answers_uid_and_gid_claims_for_every_vintage(
    users: Path, tmp_path: Path
) -> None:
    raw = {u["username"]: u for u in json.loads(users.read_text())}
    config = {
        "plugins": {"cache_dir": str(tmp_path / "cache")},
        "grpc": {
            "services": {
                "userprovider": {
                    "driver": str(JSON_SAMPLE),
                    "drivers": {"json": {"users": str(users)}},
                }
            }
        },
    }
    with Host(config, base_dir=tmp_path) as host:
        provider = host.service("userprovider")
        einstein = provider.get_user_by_claim("uid", "123")
        assert einstein["username"] == "einstein"
        assert (einstein["uid_number"], einstein["gid_number"]) == (123, 987)
        assert einstein.get("opaque") == raw["einstein"].get("opaque")  # unchanged, if any
        assert provider.get_user_by_claim("uid", "456")["username"] == "marie"
        assert provider.get_user_by_claim("gid", "987")["username"] == "einstein"
        with pytest.raises(NotFound):
            provider.get_user_by_claim("uid", "999")
    report = run_conformance(str(JSON_SAMPLE), "userprovider", config={"users": str(users)})
    assert report.ok, [(c.name, c.reason) for c in report.failures()]


def test_the_old_vintage_file_has_the_shape_of_revas_example() -> None:
    einstein = json.loads(OLD_USERS.read_text())[0]
    assert "uid_number" not in einstein
    assert "gid_number" not in einstein
    assert einstein["opaque"]["map"]["uid"] == {
        "_comment": "decodes to 123",
        "decoder": "plain",
        "value": "MTIz",
    }
