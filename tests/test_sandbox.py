"""The Landlock sandbox (``reva_plugins/_sandbox.py``), applied to real processes: what a process
under a policy can and cannot reach, its children included."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


def test_the_core_is_not_dumpable_so_a_same_user_process_cannot_read_it() -> None:
    """As an ordinary user (here: nobody), a process cannot read a non-dumpable process's environ
    though both run as that user; the dumpable one beside it stays readable."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.getuid() != 0 or python is None:
        pytest.skip("needs root (to run both processes as nobody) and a system python3")
    script = textwrap.dedent(
        """\
        import importlib.util, os, sys, time
        spec = importlib.util.spec_from_file_location("_sandbox", sys.argv[1])
        sandbox = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sandbox)
        if sys.argv[2] == "undumpable":
            assert sandbox.make_undumpable()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    reader = (
        "import sys\ntry:\n    print(open(sys.argv[1], 'rb').read().count(b'CORE_SECRET'))\n"
        "except OSError as e:\n    print(type(e).__name__)\n"
    )
    seen = {}
    with tempfile.TemporaryDirectory() as shared:  # /tmp: readable by nobody, unlike tmp_path
        folder = Path(shared)
        folder.chmod(0o755)
        (folder / "core.py").write_text(script)
        (folder / "reader.py").write_text(reader)
        shutil.copy(SANDBOX, folder / "_sandbox.py")
        for mode in ("dumpable", "undumpable"):
            core = subprocess.Popen(
                [python, "-I", str(folder / "core.py"), str(folder / "_sandbox.py"), mode],
                stdout=subprocess.PIPE,
                text=True,
                env={"CORE_SECRET_TOKEN": "hunter2", "PATH": "/usr/bin:/bin"},
                user="nobody",
            )
            try:
                assert core.stdout is not None
                assert core.stdout.readline().strip() == "ready"
                read = subprocess.run(
                    [python, "-I", str(folder / "reader.py"), f"/proc/{core.pid}/environ"],
                    capture_output=True,
                    text=True,
                    user="nobody",
                    timeout=30,
                    check=True,
                )
                seen[mode] = read.stdout.strip()
            finally:
                core.kill()
                core.wait()
    assert seen == {"dumpable": "1", "undumpable": "PermissionError"}


def test_the_command_line_makes_the_core_non_dumpable(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from reva_plugins import _cli, _sandbox\n"
        "before = _sandbox._libc_call('prctl', 3, 0, 0, 0, 0)\n"
        "_cli.main(['env', 'list', '--json', '--cache-dir', sys.argv[1]])\n"
        "print(before, _sandbox._libc_call('prctl', 3, 0, 0, 0, 0))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split()[-2:] == ["1", "0"]  # PR_GET_DUMPABLE: dumpable before, not after


def test_a_host_makes_its_process_non_dumpable() -> None:
    code = (
        "from reva_plugins import Host, _sandbox\n"
        "before = _sandbox._libc_call('prctl', 3, 0, 0, 0, 0)\n"
        "Host({}).close()\n"
        "print(before, _sandbox._libc_call('prctl', 3, 0, 0, 0, 0))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["1", "0"]
