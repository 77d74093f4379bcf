"""What the server takes from the system before it serves: a free address to listen on, its
pid file, its TLS files (PEM)."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from .. import _defaults
from .._errors import ConfigError, RevaPluginError, UsageError


def listen_error(address: str, source: str, reason: str) -> RevaPluginError:
    """The one-line error of nothing listening on ``address`` (named by ``source``)."""
    message = f"cannot listen on {address}: {reason}"
    if source.startswith("--"):
        return UsageError(f"{source} {address}: cannot listen: {reason}")
    return ConfigError(message, key=source)


def check_free(address: str, source: str) -> None:
    """Raise the one-line error for ``address`` (named by ``source``: a config key or an
    option) when nothing can listen there: taken, not this host's, or not resolvable.

    gRPC reports a failed bind only after logging lines of its own, so the common case is
    checked first with a plain socket (bound the way gRPC binds, then closed). Port 0 always
    binds.
    """
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return
    name = host.strip("[]") or None
    try:
        found = socket.getaddrinfo(
            name, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise listen_error(address, source, f"cannot resolve {host!r}: {exc.strerror}") from None
    problem = ""
    for family, kind, proto, _, sockaddr in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
                return  # gRPC serves if it can bind any of the addresses
            except OSError as exc:
                if not problem or exc.errno == errno.EADDRINUSE:
                    problem = exc.strerror or str(exc)
    raise listen_error(address, source, problem or "no address to bind")


def write_pidfile(path: Path) -> None:
    """Write our pid; never through a symlink (someone else's file) or into a non-file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        raise UsageError(f"--pidfile {path}: cannot write it: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"--pidfile {path}: not a regular file")
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    finally:
        os.close(fd)


def remove_pidfile(path: Path) -> None:
    """Remove the pid file if it is still ours (another server may have taken the name)."""
    try:
        with open(path, "rb") as f:
            ours = f.read(64).strip() == str(os.getpid()).encode("ascii")
        if ours:
            path.unlink()
    except OSError:
        pass


def read_pem(path: Path, what: str = "BEGIN") -> bytes:
    """The PEM file at ``path`` (its text must hold ``-----{what}``); raises ``ValueError``
    with the one-line reason. Never blocks on a FIFO, never reads more than ``MAX_PEM_BYTES``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(_defaults.MAX_PEM_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _defaults.MAX_PEM_BYTES or f"-----{what}".encode() not in data:
        raise ValueError(f"{path} is not a PEM file")
    return data


def read_config_pem(path: Path, key: str, config: Path) -> bytes:
    """:func:`read_pem` for the file a config ``key`` names; ``ConfigError`` if it cannot be."""
    try:
        return read_pem(path)
    except ValueError as exc:
        raise ConfigError(str(exc), file=str(config), key=key) from None
