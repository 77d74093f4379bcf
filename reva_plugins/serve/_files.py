"""What the server takes from the system before it serves: a free address to listen on, its
pid file, its TLS files (PEM)."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

from .. import _defaults, _fs
from .._errors import ConfigError, RevaPluginError, UsageError

#: The most a pid file holds (a pid and a newline; anything longer is not one).
MAX_PIDFILE_BYTES = 64


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


def _pid_in(data: bytes) -> int | None:
    """The pid a pid file's content holds, or None if it holds none."""
    text = data.decode("ascii", "replace").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else None


def check_pidfile(path: Path, is_server: Callable[[int], bool]) -> None:
    """Refuse to take over ``path`` unless it is missing or a pid file of no live server: the
    pid file is truncated now and deleted at stop, so a file holding anything else (notes, the
    config itself) would be lost."""
    try:
        pid = _pid_in(_fs.read_regular(path, MAX_PIDFILE_BYTES, follow=False))
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            return  # a symlink, a folder, a FIFO: write_pidfile's own open refuses it
        pid = None  # too long for a pid
    if pid is None:
        raise UsageError(
            f"--pidfile {path}: the file exists and holds no pid (not a pid file); "
            "refusing to overwrite it"
        )
    if pid != os.getpid() and is_server(pid):
        raise UsageError(f"--pidfile {path}: reva-plugins server {pid} is running with it")


def write_pidfile(path: Path, is_server: Callable[[int], bool] = lambda pid: False) -> None:
    """Write our pid; never through a symlink (someone else's file), into a non-file, over a
    file that is no pid file, or over the pid file of a server still running (``is_server``)."""
    check_pidfile(path, is_server)
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
        if _pid_in(_fs.read_regular(path, MAX_PIDFILE_BYTES, follow=False)) == os.getpid():
            path.unlink()
    except OSError:
        pass


def read_pem(path: Path, what: str = "BEGIN") -> bytes:
    """The PEM file at ``path`` (its text must hold ``-----{what}``); raises ``ValueError``
    with the one-line reason. Never blocks on a FIFO, never reads more than ``MAX_PEM_BYTES``."""
    try:
        data = _fs.read_regular(path, _defaults.MAX_PEM_BYTES)
    except _fs.NotRegular:
        raise ValueError(f"{path} is not a regular file") from None
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ValueError(f"{path} is not a PEM file") from None
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if f"-----{what}".encode() not in data:
        raise ValueError(f"{path} is not a PEM file")
    return data


def read_config_pem(path: Path, key: str, config: Path) -> bytes:
    """:func:`read_pem` for the file a config ``key`` names; ``ConfigError`` if it cannot be."""
    try:
        return read_pem(path)
    except ValueError as exc:
        raise ConfigError(str(exc), file=str(config), key=key) from None


def _no_password() -> bytes:
    # never OpenSSL's prompt on the terminal: an encrypted key fails to load instead
    return b""


def check_key_pair(cert: Path, key: Path, config: Path) -> None:
    """A ``ConfigError`` naming what is wrong with ``grpc.tls_cert``/``grpc.tls_key`` (swapped,
    not matching, encrypted, not a certificate or a key at all), so the one line says so and
    not that the port is taken (grpc reports any of them as a failed bind)."""
    cert_pem = read_config_pem(cert, "grpc.tls_cert", config)
    key_pem = read_config_pem(key, "grpc.tls_key", config)
    if b"PRIVATE KEY-----" in cert_pem and b"CERTIFICATE-----" in key_pem:
        raise ConfigError(
            f"{cert} holds a private key and tls_key {key} a certificate: are they swapped?",
            file=str(config),
            key="grpc.tls_cert",
        )
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise ConfigError(f"{cert} holds no certificate", file=str(config), key="grpc.tls_cert")
    if b"PRIVATE KEY-----" not in key_pem:
        raise ConfigError(f"{key} holds no private key", file=str(config), key="grpc.tls_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        reason = str(getattr(exc, "reason", "") or exc)
        if "MISMATCH" in reason.upper():
            problem = f"the key {key} does not match the certificate {cert}"
        elif "ENCRYPTED" in key_pem.decode("ascii", "replace").upper() or "BAD_DECRYPT" in reason:
            problem = f"{key} is encrypted (serve takes an unencrypted key)"
        else:
            problem = f"{cert} and {key} are no usable certificate and key ({reason})"
        raise ConfigError(problem, file=str(config), key="grpc.tls_key") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {cert} or {key}: {exc.strerror}", file=str(config), key="grpc.tls_key"
        ) from None
