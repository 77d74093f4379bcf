"""The Landlock sandbox (``reva_plugins/_sandbox.py``), applied to real processes: what a process
under a policy can and cannot reach, its children included."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reva_plugins import _sandbox

SANDBOX = Path(_sandbox.__file__)

pytestmark = pytest.mark.skipif(_sandbox.abi() < 1, reason="the kernel has no Landlock")

#: A probe that loads the sandbox by path (as the bootstrap does), applies the policy it is
#: given as JSON, then tries each action and prints what happened to each.
PROBE = textwrap.dedent(
    """\
    import importlib.util, json, os, socket, subprocess, sys
    spec = importlib.util.spec_from_file_location("_sandbox", sys.argv[1])
    sandbox = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sandbox)
    policy = json.loads(sys.argv[2])
    read_exec = [sys.base_prefix, sys.prefix, *sandbox.SYSTEM_READ_EXEC]
    abi = sandbox.apply(read_exec, [*sandbox.SYSTEM_READ, *policy["read"]],
                        [*sandbox.DEVICES, *policy["write"]], policy.get("connect"))
    def connect(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return "connected"
    actions = {
        "read": lambda p: open(p).read(),
        "write": lambda p: open(p, "w").write("x"),
        "list": lambda p: sorted(os.listdir(p)),
        "kill": lambda p: os.kill(int(p), 0),
        "connect": lambda p: connect(int(p)),
        "child_read": lambda p: subprocess.run(
            [sys.executable, "-c", f"print(open({p!r}).read())"], capture_output=True,
            text=True).returncode,
    }
    out = {"abi": abi}
    for name, (action, arg) in policy["try"].items():
        try:
            out[name] = ["ok", actions[action](arg)]
        except OSError as exc:
            out[name] = ["denied", type(exc).__name__]
    print(json.dumps(out))
    """
)


def run_probe(tmp_path: Path, policy: dict[str, object]) -> dict[str, object]:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, "-I", str(probe), str(SANDBOX), json.dumps(policy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_abi_names_what_the_kernel_offers() -> None:
    assert _sandbox.abi() >= 1


def test_a_sandboxed_process_reaches_only_what_it_was_given(tmp_path: Path) -> None:
    mine = tmp_path / "users.json"
    mine.write_text('{"users": []}')
    secret = tmp_path / "secret.toml"  # beside the allowed file, not named
    secret.write_text("password = 'hunter2'")
    work = tmp_path / "work"
    work.mkdir()
    other = tmp_path / "other-env" / "site-packages"
    other.mkdir(parents=True)
    result = run_probe(
        tmp_path,
        {
            "read": [str(mine)],
            "write": [str(work)],
            "try": {
                "own file": ["read", str(mine)],
                "secret beside it": ["read", str(secret)],
                "own work dir": ["write", str(work / "out.txt")],
                "another env": ["write", str(other / "evil.pth")],
                "list the parent folder": ["list", str(tmp_path)],
                "the core's environ": ["read", f"/proc/{os.getpid()}/environ"],
                "its own status": ["read", "/proc/self/status"],
                "signal the core": ["kill", str(os.getpid())],
                "etc shadow": ["read", "/etc/shadow"],
                "a child reading the secret": ["child_read", str(secret)],
                "a child reading its file": ["child_read", str(mine)],
            },
        },
    )
    assert result.pop("abi") == _sandbox.abi()
    assert result["own file"] == ["ok", '{"users": []}']
    assert result["own work dir"] == ["ok", 1]
    status = result["its own status"]
    assert isinstance(status, list)
    assert status[0] == "ok"
    assert str(status[1]).startswith("Name:")
    assert result["a child reading its file"] == ["ok", 0]
    assert result["a child reading the secret"] == ["ok", 1]  # the child failed: denied too
    for denied in (
        "secret beside it",
        "another env",
        "list the parent folder",
        "the core's environ",
        "signal the core",
        "etc shadow",
    ):
        assert result[denied] == ["denied", "PermissionError"], (denied, result[denied])
    assert not (other / "evil.pth").exists()


def test_connect_limits_outgoing_tcp_to_the_ports_given(tmp_path: Path) -> None:
    if _sandbox.abi() < 4:
        pytest.skip("Landlock TCP rules need ABI 4")
    with socket.socket() as allowed, socket.socket() as refused:
        for server in (allowed, refused):
            server.bind(("127.0.0.1", 0))
            server.listen()
        ports = [s.getsockname()[1] for s in (allowed, refused)]
        result = run_probe(
            tmp_path,
            {
                "read": [],
                "write": [],
                "connect": [ports[0]],
                "try": {"allowed": ["connect", ports[0]], "refused": ["connect", ports[1]]},
            },
        )
    assert result["allowed"] == ["ok", "connected"]
    assert result["refused"] == ["denied", "PermissionError"]


def test_a_refused_step_leaves_a_clear_error_and_no_sandbox(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text(
        textwrap.dedent(
            """\
            import importlib.util, sys
            spec = importlib.util.spec_from_file_location("_sandbox", sys.argv[1])
            sandbox = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sandbox)
            try:
                sandbox.apply([], [], [], connect=[99999999999])
            except sandbox.SandboxError as exc:
                print("refused:", exc)
            print(open(sys.argv[2]).read())
            """
        )
    )
    secret = tmp_path / "secret"
    secret.write_text("still readable")
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(SANDBOX), str(secret)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "refused: landlock_add_rule refused TCP port 99999999999",
        "still readable",
    ]
