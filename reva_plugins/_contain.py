"""The plugin process's containment that only some plugins need, loaded by path by the
bootstrap when it is needed, never at an ordinary start: resource limits (``memory_mb``,
``cpu_seconds``, ``open_files``), a private network namespace (``network = false``), the
Landlock sandbox's entry, and reaping every descendant when the plugin ends. What every plugin
needs (its own process group, the parent-death signal, the subreaper flag) stays in
``_bootstrap``.

Loaded before the plugin is imported when limits or a sandbox are asked for (so a plugin that
used up its file descriptors or its memory still reaps), else at the end, when there may be
descendants to reap. Standard library only; the core imports ``descendants`` from it.
"""

from __future__ import annotations

import os
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

    from . import _wire as wire

    def _sibling(name: str) -> ModuleType: ...
elif __package__:  # the core imports this module
    from . import _wire as wire
else:  # loaded by path: the bootstrap hands it its loader (``_sibling``) before it runs
    wire = _sibling("_wire")

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def set_limits(limits: dict[str, object]) -> None:
    """``network = false`` (a private network namespace, Linux only) and the rlimits."""
    if limits.get("network") is False:
        if not sys.platform.startswith("linux"):
            raise SystemExit(
                f"reva plugin bootstrap: network = false is not supported here: {sys.platform} "
                "has no network namespaces"
            )
        import ctypes

        _unshare_network(ctypes.CDLL(None, use_errno=True))
    if any(key in limits for key in ("memory_mb", "cpu_seconds", "open_files")):
        _set_rlimits(limits)


def enter_sandbox(policy: wire.SandboxInput) -> str:
    """Apply the core's Landlock policy (after ``no_new_privs``): from here on this process and
    all it starts reach only the paths and ports it names. A policy the kernel refuses fails the
    start when it is required; otherwise the plugin runs unsandboxed and the handshake says so.
    Returns what the handshake says of the sandbox (``wire.SANDBOX_*``)."""
    if __package__:
        from . import _sandbox as sandbox
    else:
        sandbox = _sibling("_sandbox")
    try:
        abi = sandbox.apply(
            policy["read_exec"], policy["read"], policy["write"], policy.get("connect")
        )
    except OSError as exc:
        if policy["required"]:
            raise SystemExit(
                f"reva plugin bootstrap: sandbox = true cannot be had: {exc}"
            ) from None
        return f"{wire.SANDBOX_UNAVAILABLE}: {exc}"
    return wire.SANDBOX_LANDLOCK.format(abi=abi)


#: bytes of stack per thread under ``memory_mb``: address space counts what a stack reserves,
#: and the default (8 MiB, from ``ulimit -s``) would spend a small limit on a few idle threads
LIMITED_THREAD_STACK = 2 * 1024 * 1024


def _set_rlimits(limits: dict[str, object]) -> None:
    import resource

    if isinstance(limits.get("memory_mb"), int):
        threading.stack_size(LIMITED_THREAD_STACK)

    for key, kind, unit in (
        ("memory_mb", resource.RLIMIT_AS, 1024 * 1024),
        ("cpu_seconds", resource.RLIMIT_CPU, 1),
        ("open_files", resource.RLIMIT_NOFILE, 1),
    ):
        value = limits.get(key)
        if not isinstance(value, int):
            continue
        soft = value * unit
        hard = soft + 1 if key == "cpu_seconds" else soft  # then SIGXCPU becomes SIGKILL
        inherited = resource.getrlimit(kind)[1]
        if inherited != resource.RLIM_INFINITY:
            soft, hard = min(soft, inherited), min(hard, inherited)
        resource.setrlimit(kind, (soft, hard))


def _unshare_network(libc: Any) -> None:
    """A private network namespace (only a loopback): as root directly, else inside a new
    user namespace that maps this user onto itself."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNET if uid == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if libc.unshare(flags) != 0:
        import ctypes

        errno = ctypes.get_errno()
        names = "CLONE_NEWNET" if uid == 0 else "CLONE_NEWUSER|CLONE_NEWNET"
        raise SystemExit(
            "reva plugin bootstrap: network = false is not supported here: "
            f"unshare({names}) failed: [Errno {errno}] {os.strerror(errno)}"
        )
    if uid != 0:
        for name, text in (
            ("uid_map", f"{uid} {uid} 1"),
            ("setgroups", "deny"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _loopback_up(libc)


def _loopback_up(libc: Any) -> None:
    """Bring ``lo`` up (SIOCSIFFLAGS), so the plugin can still talk to itself on 127.0.0.1."""
    import ctypes

    sock = libc.socket(2, 2, 0)  # AF_INET, SOCK_DGRAM
    if sock < 0:
        return
    request = ctypes.create_string_buffer(b"lo", 40)  # struct ifreq: name[16], flags
    ctypes.c_short.from_buffer(request, 16).value = 0x1 | 0x8 | 0x40  # UP|LOOPBACK|RUNNING
    libc.ioctl(sock, 0x8914, request)
    libc.close(sock)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; empty elsewhere), parents first. In a
    sandbox, which sees no ``/proc`` but its own entries, only this process's own children: as
    their subreaper it inherits the orphans of those it kills, so repeated rounds reach all."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return _own_children() if pid == os.getpid() else []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _own_children() -> list[int]:
    """This process's children, from ``/proc/self/task/*/children`` (Linux 3.5 and later)."""
    found: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                found += [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def reap_descendants() -> None:
    """Kill every descendant, however it detached: as their subreaper this process inherits
    the orphans of those it kills, so repeat until none is left (bounded)."""
    me = os.getpid()
    for _ in range(100):
        found = descendants(me)
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.005)
