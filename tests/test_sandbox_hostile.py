"""A plugin reaches only what it was given (#20): hostile plugins under the default config, as
root (as revad often runs in containers, and as CI runs). Each attempt is refused as the plugin's
own ``PermissionError`` (a typed ``RemoteError`` to the caller); the core, its siblings and the
plugin's own work (its users file, its TMPDIR) are unaffected."""

from __future__ import annotations

import json
import os
import pwd
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reva_plugins import ConfigError, Host, RemoteError, _sandbox
from reva_plugins._drivers import IsolatedDriver

from .conftest import cli
from .factory import make_plugin

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_sandbox.abi() < 1, reason="the kernel has no Landlock"),
]

#: A plugin whose methods try what a hostile plugin would; every method answers what happened.
PROBE = """
import os, subprocess, sys


class Provider:
    def configure(self, config):
        self.config = config

    def get_user(self, user_id, skip_fetching_groups=False):
        return {"id": user_id, "username": "probe", "mail": "p@x", "display_name": "P",
                "groups": [], "uid_number": 1, "gid_number": 1}

    def get_user_by_claim(self, claim, value, skip_fetching_groups=False):
        return self.get_user({})

    def get_user_groups(self, user_id):
        return []

    def find_users(self, query, skip_fetching_groups=False):
        return []

    def read(self, path):
        with open(path, "rb") as f:
            return f.read(200).decode("utf-8", "replace")

    def write(self, path, text="x"):
        with open(path, "w") as f:
            f.write(text)
        return "written"

    def listdir(self, path):
        return sorted(os.listdir(path))

    def kill(self, pid):
        os.kill(pid, 0)
        return "signalled"

    def child_read(self, path):
        done = subprocess.run([sys.executable, "-c", f"print(open({path!r}).read())"],
                              capture_output=True, text=True)
        return [done.returncode, done.stderr.strip().splitlines()[-1:]]

    def tmp(self):
        path = os.path.join(os.environ["TMPDIR"], "scratch.txt")
        with open(path, "w") as f:
            f.write("scratch")
        with open(path) as f:
            return [os.environ["TMPDIR"], f.read()]

    def users(self):
        with open(self.config["users"]) as f:
            return f.read()

    def connect(self, port):
        import socket
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return "connected"

    def whoami(self):
        return [os.getuid(), os.getgid(), os.getgroups()]


class Auth(Provider):
    def authenticate(self, client_id, client_secret):
        return {"user": self.get_user({}), "scopes": {}}
"""


def _probe_plugin(root: Path, name: str) -> Path:
    project = make_plugin(root, name)
    module = name.replace("-", "_")
    (project / module / "__init__.py").write_text(PROBE)
    return project


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Two probe plugins (two envs) beside a secret, with a HOME holding ~/.ssh."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CORE_SECRET_TOKEN", "hunter2")
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "users.json").write_text('{"users": ["einstein"]}')
    (config_dir / "secret.toml").write_text("ldap_password = 'hunter2'")
    one = _probe_plugin(tmp_path / "one", "reva-probe-one")
    two = _probe_plugin(tmp_path / "two", "reva-probe-two")
    cache = tmp_path / "cache"
    config = {
        "plugins": {"cache_dir": str(cache)},
        "grpc": {
            "services": {
                "userprovider": {"driver": str(one), "users": "users.json"},
                "authprovider": {"driver": str(two), "plugin": {"env": {"LDAP_PASSWORD": "s3"}}},
            }
        },
    }
    with Host(config, base_dir=config_dir) as host:
        yield {"host": host, "dir": config_dir, "home": home, "cache": cache}


def _driver(host: Host, service: str) -> IsolatedDriver:
    driver = host.service(service).driver
    assert isinstance(driver, IsolatedDriver)
    return driver


def _probe(host: Host, method: str, service: str = "userprovider", **params: Any) -> Any:
    """Call one of the probe's own methods (not the service's: through its supervisor)."""
    return _driver(host, service).supervisor.call(method, params)


def _refused(host: Host, method: str, **params: Any) -> None:
    with pytest.raises(RemoteError) as info:
        _probe(host, method, **params)
    assert info.value.type == "PermissionError", info.value


def test_a_sandboxed_plugin_keeps_to_what_it_was_given(world: dict[str, Any]) -> None:
    host: Host = world["host"]
    users = host.service("userprovider")
    users.start()
    assert users.info().sandbox == f"landlock ABI {_sandbox.abi()}"
    # its own work: the file its table names, its private TMPDIR
    assert json.loads(_probe(host, "users")) == {"users": ["einstein"]}
    tmpdir, text = _probe(host, "tmp")
    assert text == "scratch"
    # the core's environment and memory, the file beside its config, ~/.ssh, the config folder
    _refused(host, "read", path=f"/proc/{os.getpid()}/environ")
    _refused(host, "read", path=f"/proc/{os.getpid()}/mem")
    _refused(host, "read", path=str(world["dir"] / "secret.toml"))
    _refused(host, "read", path=str(world["home"] / ".ssh" / "id_ed25519"))
    _refused(host, "listdir", path=str(world["dir"]))
    _refused(host, "read", path="/etc/shadow")
    # another plugin's env and process, and the cache's metadata
    sibling = _driver(host, "authprovider")
    host.service("authprovider").start()
    sibling_pid = sibling.info().pid
    assert sibling_pid is not None
    sibling_env = Path(str(sibling.plan.launch.python)).parent.parent
    site = next(sibling_env.glob("lib/python*/site-packages"))
    _refused(host, "read", path=f"/proc/{sibling_pid}/environ")
    _refused(host, "write", path=str(site / "evil.pth"), text="import os; os.system('x')")
    assert not (site / "evil.pth").exists()
    own_env_key = _driver(host, "userprovider").plan.env_key
    assert own_env_key is not None
    _refused(host, "write", path=str(world["cache"] / "envs" / own_env_key / "reva-env.json"))
    # signals to the core and to the sibling
    _refused(host, "kill", pid=os.getpid())
    _refused(host, "kill", pid=sibling_pid)
    # a child it starts is in the sandbox too
    code, last = _probe(host, "child_read", path=str(world["dir"] / "secret.toml"))
    assert code == 1
    assert "PermissionError" in last[0]
    # and after all of it the plugin, its sibling and the core are fine
    assert users.get_user({"idp": "x", "opaque_id": "y"})["username"] == "probe"
    assert host.service("authprovider").info().state == "running"
    assert _driver(host, "userprovider").supervisor.restarts == 0
    # its TMPDIR goes with it
    assert Path(tmpdir).is_dir()
    host.close()
    assert not Path(tmpdir).exists()


def test_sandbox_false_is_off_and_the_same_read_then_works(tmp_path: Path) -> None:
    project = _probe_plugin(tmp_path / "p", "reva-probe-off")
    (tmp_path / "secret.toml").write_text("hunter2")
    config = {
        "plugins": {"cache_dir": str(tmp_path / "cache"), "sandbox": False},
        "grpc": {"services": {"userprovider": {"driver": str(project)}}},
    }
    with Host(config, base_dir=tmp_path) as host:
        users = host.service("userprovider")
        assert _probe(host, "read", path=str(tmp_path / "secret.toml")) == "hunter2"
        assert users.info().sandbox == "off"


def test_read_and_write_paths_open_exactly_what_they_name(tmp_path: Path) -> None:
    project = _probe_plugin(tmp_path / "p", "reva-probe-paths")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "ca.pem").write_text("CERT")
    out = tmp_path / "out"
    out.mkdir()
    config = {
        "plugins": {"cache_dir": str(tmp_path / "cache")},
        "grpc": {
            "services": {
                "userprovider": {
                    "driver": str(project),
                    "plugin": {"read_paths": ["shared"], "write_paths": ["out"]},
                }
            }
        },
    }
    with Host(config, base_dir=tmp_path) as host:
        assert _probe(host, "read", path=str(shared / "ca.pem")) == "CERT"
        _refused(host, "write", path=str(shared / "new"))
        assert _probe(host, "write", path=str(out / "report.txt")) == "written"
        assert (out / "report.txt").read_text() == "x"


def test_a_table_path_that_holds_the_config_is_not_opened(tmp_path: Path) -> None:
    project = _probe_plugin(tmp_path / "p", "reva-probe-dot")
    config_file = tmp_path / "revad.toml"
    config_file.write_text(
        f'[plugins]\ncache_dir = "{tmp_path / "cache"}"\n'
        f'[grpc.services.userprovider]\ndriver = "{project}"\ndata = "."\n'
    )
    with Host.from_file(config_file) as host:
        _refused(host, "read", path=str(config_file))


def test_check_shows_the_sandbox_state_in_the_table_and_json(tmp_path: Path) -> None:
    project = _probe_plugin(tmp_path / "p", "reva-probe-check")
    config = tmp_path / "revad.toml"
    config.write_text(f'[grpc.services.userprovider]\ndriver = "{project}"\n')
    cache = ("--cache-dir", str(tmp_path / "cache"))
    table = cli("check", str(config), *cache)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[-1] == "SANDBOX"
    assert table.stdout.splitlines()[1].endswith(f"landlock ABI {_sandbox.abi()}")
    rows = json.loads(cli("check", str(config), "--json", *cache).stdout)
    assert rows[0]["sandbox"] == f"landlock ABI {_sandbox.abi()}"


def test_without_landlock_auto_warns_once_and_true_fails_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A kernel without Landlock cannot be had here: the probe is made to say so."""
    from reva_plugins import _confinement

    monkeypatch.setattr(_sandbox, "abi", lambda: 0)
    monkeypatch.setattr(_confinement, "_warned", set())
    project = _probe_plugin(tmp_path / "p", "reva-probe-none")
    (tmp_path / "secret.toml").write_text("hunter2")
    services = {"userprovider": {"driver": str(project)}}
    auto = {"plugins": {"cache_dir": str(tmp_path / "cache")}, "grpc": {"services": services}}
    with Host(auto, base_dir=tmp_path) as host:
        users = host.service("userprovider")
        assert users.info().sandbox.startswith("unavailable: the kernel has no Landlock")
        users.start()
    warnings = [r for r in caplog.records if "no Landlock" in r.getMessage()]
    assert len(warnings) == 1
    required = {
        "plugins": {"cache_dir": str(tmp_path / "cache"), "sandbox": True},
        "grpc": {"services": services},
    }
    with Host(required, base_dir=tmp_path) as host, pytest.raises(ConfigError) as info:
        host.service("userprovider").start()
    assert "plugins.sandbox" in str(info.value)
    assert "sandbox = true, but the kernel has no Landlock" in str(info.value)


def test_user_runs_the_plugin_as_that_user_and_its_group_only() -> None:
    python = "/usr/bin/python3"
    if os.geteuid() != 0 or not os.path.exists(python):
        pytest.skip("needs root and a system python3 another user may run")
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory() as shared:  # /tmp: readable by nobody, unlike tmp_path
        root = Path(shared)
        root.chmod(0o755)
        project = _probe_plugin(root / "p", "reva-probe-user")
        config = {
            "plugins": {"cache_dir": str(root / "cache"), "python": python, "user": "nobody"},
            "grpc": {"services": {"userprovider": {"driver": str(project)}}},
        }
        with Host(config, base_dir=root) as host:
            assert _probe(host, "whoami") == [nobody.pw_uid, nobody.pw_gid, []]
            tmpdir, _ = _probe(host, "tmp")
            assert Path(tmpdir).stat().st_uid == nobody.pw_uid
            assert host.service("userprovider").info().sandbox.startswith("landlock ABI")


def test_user_is_refused_clearly_when_it_cannot_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "revad.toml"
    config.write_text('[plugins]\nuser = "no-such-user-here"\n')
    result = cli("check", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"reva-plugins: error: {config}: plugins.user: no such user: 'no-such-user-here'"
    )
    # A core that is not root cannot switch users (this one is: its uid is made to say not).
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    project = _probe_plugin(tmp_path / "p", "reva-probe-notroot")
    services = {"userprovider": {"driver": str(project), "plugin": {"user": "nobody"}}}
    plugins = {"cache_dir": str(tmp_path / "cache")}
    host = Host({"plugins": plugins, "grpc": {"services": services}}, base_dir=tmp_path)
    with host, pytest.raises(ConfigError, match="needs the core to run as root") as info:
        host.service("userprovider").start()
    assert "grpc.services.userprovider.plugin.user" in str(info.value)


def test_connect_limits_the_plugins_outgoing_tcp_to_its_ports(tmp_path: Path) -> None:
    if _sandbox.abi() < 4:
        pytest.skip("Landlock TCP rules need ABI 4")
    project = _probe_plugin(tmp_path / "p", "reva-probe-net")
    with socket.socket() as allowed, socket.socket() as other:
        for server in (allowed, other):
            server.bind(("127.0.0.1", 0))
            server.listen()
        port, refused = (s.getsockname()[1] for s in (allowed, other))
        plugin = {"connect": [f"127.0.0.1:{port}"]}
        services = {"userprovider": {"driver": str(project), "plugin": plugin}}
        config = {"plugins": {"cache_dir": str(tmp_path / "cache")}, "grpc": {"services": services}}
        with Host(config, base_dir=tmp_path) as host:
            assert _probe(host, "connect", port=port) == "connected"
            _refused(host, "connect", port=refused)
