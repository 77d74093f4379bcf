"""The ``serve``, ``status`` and ``reload`` commands (the CLI imports this module lazily)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .. import _config
from .._errors import RevaPluginError, UsageError

#: What the ``serve`` extra installs, by the module each command imports.
EXTRA_MODULES = ("grpc", "cs3", "grpc_health", "grpc_reflection", "prometheus_client")
INSTALL_HINT = "pip install 'reva-plugins[serve]'"
#: The largest pid Linux hands out (``pid_max`` is at most 2**22).
MAX_PID = 1 << 22
#: The largest metrics page read by ``status``.
MAX_METRICS_BYTES = 8 << 20


def require_extra() -> None:
    """A :class:`UsageError` saying what to install when the ``serve`` extra is missing."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(
                f"serving needs the serve extra (module {name!r} is missing): {INSTALL_HINT}"
            ) from None


def _address(text: str, what: str) -> str:
    problem = _config.address_problem(text) or _config.text_problem(text)
    if problem:
        raise UsageError(f"{what} {_config._printable(text[:80])!r} {problem}")
    return text


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT."""
    require_extra()
    from ._reload import HostOptions  # noqa: PLC0415 (after the extra is checked)
    from ._server import Server  # noqa: PLC0415

    address = None if args.address is None else _address(args.address, "--address")
    options = HostOptions(
        cache_dir=args.cache_dir, installer=args.installer, offline=args.offline or None
    )
    server = Server(args.config, address=address, options=options, pidfile=args.pidfile)
    server.run()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the counters of a running server, read from its ``[metrics] address``."""
    require_extra()
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    address = _address(args.address, "ADDRESS")
    host, _, port = address.rpartition(":")
    url = f"http://{host or '127.0.0.1'}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as reply:
            body = reply.read(MAX_METRICS_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RevaPluginError(f"cannot read metrics from {url}: {reason}") from None
    if len(body) > MAX_METRICS_BYTES:
        raise RevaPluginError(f"{url} sent more than {MAX_METRICS_BYTES >> 20} MiB: not metrics")
    try:
        families = list(text_string_to_metric_families(body.decode("utf-8")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RevaPluginError(f"{url} did not send Prometheus metrics: {exc}") from None
    rows: list[tuple[str, str]] = []
    for family in families:
        if not family.name.startswith("reva_plugins_"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            value = (
                f"{sample.value:g}" if sample.value != int(sample.value) else str(int(sample.value))
            )
            rows.append((f"{sample.name}{{{labels}}}" if labels else sample.name, value))
    if not rows:
        raise RevaPluginError(f"{url} has no reva-plugins metrics")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP to a running server: by ``--pid`` or by the pid file ``serve --pidfile`` wrote."""
    if (args.pid is None) == (args.pidfile is None):
        raise UsageError("give either PIDFILE or --pid N")
    pid = args.pid if args.pid is not None else _read_pidfile(args.pidfile)
    if not 2 <= pid <= MAX_PID:  # 0, 1 and negatives would signal a process group or init
        raise UsageError(f"pid {pid} is not a server's pid")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise RevaPluginError(f"no process {pid} (is the server running?)") from None
    except PermissionError:
        raise RevaPluginError(f"not allowed to signal process {pid}") from None
    print(f"reload requested from process {pid}", file=sys.stderr)
    return 0


def _read_pidfile(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            raw = f.read(64)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the pid file: {exc.strerror}") from None
    text = raw.decode("ascii", "replace").strip()
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"{path}: not a pid file (expected a process id)")
    return int(text)
