"""Landlock: a plugin process reaches only the paths, ports and processes it was given.

The bootstrap loads this file by path (as it loads ``_wire``), so it uses the standard library
only, and only ``_ctypes`` and ``_struct`` of it: the ``ctypes`` package costs more at start than
the whole sandbox. The core imports it to probe the kernel (:func:`abi`) and to name what a
sandboxed plugin may reach (:data:`SYSTEM_READ_EXEC`, :data:`SYSTEM_READ`, :data:`DEVICES`).

A policy is applied once, to the calling process, after ``no_new_privs``; every thread and child
process the plugin starts afterwards stays in it, and nothing can lift it.
"""

from __future__ import annotations

import os

#: The Landlock system calls (one number on every architecture since Linux 5.13).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_DUMPABLE, _PR_GET_DUMPABLE = 4, 3

# Filesystem access rights (ABI 1 has bits 0-12; REFER came with ABI 2, TRUNCATE with 3,
# IOCTL_DEV with 5).
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1_FS = (1 << 13) - 1
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
#: the rights that apply to a file that is not a folder (the kernel refuses the others on one)
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
# TCP (ABI 4) and scoping (ABI 6: abstract unix sockets and signals of other domains).
_BIND_TCP, _CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

#: What any Python program needs to read and run: the system's programs and shared libraries.
SYSTEM_READ_EXEC = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
#: What it needs to read in ``/etc`` (not the rest of it, where revad's own config and secrets
#: live): the loader's cache, time zone, users and groups (names of uids), name resolution,
#: certificates, locale and MIME tables; and the kernel's CPU list (``os.cpu_count``).
SYSTEM_READ = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/hosts",
    "/etc/resolv.conf", "/etc/gai.conf", "/etc/services", "/etc/protocols", "/etc/ssl",
    "/etc/ca-certificates", "/etc/pki", "/etc/locale.alias", "/etc/mime.types",
    "/sys/devices/system/cpu", "/proc/self",
)  # fmt: skip
#: Devices any program may read and write.
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


class SandboxError(OSError):
    """The kernel refused a step of applying the policy (the message says which)."""


#: libc's functions by name, looked up once (a policy makes some forty calls)
_LIBC: dict[str, int] = {}


def _libc_call(name: str, *args: int | bytes | None) -> int:
    import _ctypes  # noqa: PLC0415 - the bootstrap pays for it only when sandboxed

    function = _LIBC.get(name)
    if function is None:
        function = _LIBC[name] = _ctypes.dlsym(_ctypes.dlopen(None, 2), name)  # type: ignore[arg-type]
    result: int = _ctypes.call_function(function, args)
    return result


def abi() -> int:
    """The Landlock ABI version this kernel offers to this process; 0 when it has none (not
    built in, disabled at boot, or the system call filtered)."""
    version = _libc_call("syscall", _CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(version, 0)


def make_undumpable() -> bool:
    """Make this process non-dumpable: processes of the same user (a plugin among them) can no
    longer read its ``/proc/PID/environ`` or ``mem``, nor ptrace it. The core calls it at start;
    the flag does not pass to the programs it runs (``execve`` resets it). True when it holds."""
    _libc_call("prctl", _PR_SET_DUMPABLE, 0, 0, 0, 0)
    return _libc_call("prctl", _PR_GET_DUMPABLE, 0, 0, 0, 0) == 0


def _handled_fs(version: int) -> int:
    rights = _ABI1_FS
    if version >= 2:
        rights |= REFER
    if version >= 3:
        rights |= TRUNCATE
    if version >= 5:
        rights |= IOCTL_DEV
    return rights


def apply(
    read_exec: list[str],
    read: list[str],
    write: list[str],
    connect: list[int] | None = None,
) -> int:
    """Restrict this process (and all it starts) to ``read_exec`` (read and run), ``read``
    (read), ``write`` (read, write, create, remove) and, when ``connect`` is a list, to outgoing
    TCP to those ports only; where the kernel can, signals to and abstract unix sockets of
    processes outside the sandbox are refused too. Paths that do not exist are skipped.

    Returns the ABI applied. Raises :class:`SandboxError` when the kernel has no Landlock or
    refuses a step; the process is then unchanged (``no_new_privs`` aside).
    """
    import _struct  # noqa: PLC0415

    version = abi()
    if version < 1:
        raise SandboxError("the kernel has no Landlock (not built in, or disabled at boot)")
    if connect is not None and version < 4:
        raise SandboxError(f"Landlock ABI {version} has no TCP rules (they came with ABI 4)")
    handled = _handled_fs(version)
    attr = _struct.pack("<Q", handled)
    if version >= 4:
        attr += _struct.pack("<Q", _BIND_TCP | _CONNECT_TCP if connect is not None else 0)
    if version >= 6:
        attr += _struct.pack("<Q", _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    ruleset = _libc_call("syscall", _CREATE_RULESET, attr, len(attr), 0)
    if ruleset < 0:
        raise SandboxError("landlock_create_ruleset failed")
    try:
        reading = READ_FILE | READ_DIR
        for paths, rights in (
            (read_exec, reading | EXECUTE),
            (read, reading),
            (write, handled & ~EXECUTE),
        ):
            for path in paths:
                _allow_path(ruleset, path, rights & handled)
        for port in connect or ():
            rule = _struct.pack("<QQ", _CONNECT_TCP, port)
            if _libc_call("syscall", _ADD_RULE, ruleset, _RULE_NET_PORT, rule, 0) < 0:
                raise SandboxError(f"landlock_add_rule refused TCP port {port}")
        if _libc_call("prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise SandboxError("prctl(PR_SET_NO_NEW_PRIVS) failed")
        if _libc_call("syscall", _RESTRICT_SELF, ruleset, 0) < 0:
            raise SandboxError("landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return version


def _allow_path(ruleset: int, path: str, rights: int) -> None:
    import _struct  # noqa: PLC0415

    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # nothing there to allow (a system path this machine lacks)
    try:
        if not _is_dir(fd):
            rights &= _FILE_RIGHTS
        rule = _struct.pack("<Qi", rights, fd)  # the kernel's struct is packed: 12 bytes
        if _libc_call("syscall", _ADD_RULE, ruleset, _RULE_PATH_BENEATH, rule, 0) < 0:
            raise SandboxError(f"landlock_add_rule refused {path}")
    finally:
        os.close(fd)


def _is_dir(fd: int) -> bool:
    import stat  # noqa: PLC0415

    return stat.S_ISDIR(os.fstat(fd).st_mode)
