"""The ``serve``, ``status`` and ``reload`` commands (the CLI imports this module lazily)."""

from __future__ import annotations

import argparse
import errno
import http.client
import importlib
import importlib.util
import json
import math
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .. import _config, _fs
from .._errors import ExitCode, RevaPluginError, UsageError
from .._plugin_stderr import escape

#: What the ``serve`` extra installs, by the module each command imports.
EXTRA_MODULES = ("grpc", "cs3", "grpc_health", "grpc_reflection", "prometheus_client")
INSTALL_HINT = "pip install 'reva-plugins[serve]'"
#: The largest pid Linux hands out (``pid_max`` is at most 2**22).
MAX_PID = 1 << 22
#: The largest metrics page read by ``status``.
MAX_METRICS_BYTES = 8 << 20


def require_extra(*, load: bool = True) -> None:
    """A :class:`UsageError` saying what to install when the ``serve`` extra is missing
    (``load=False``: only look for its modules, loading none; the parent of worker processes
    never loads grpc, ~20 MiB it would hold for nothing).

    Before grpc loads: its core's own log goes to stderr at ERROR and above only (unless the
    operator set ``GRPC_VERBOSITY``), so a refused connection is our one line, not grpc's
    INFO lines around it (grpcio 1.65 prints them for a client's failed connect)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in EXTRA_MODULES:
        try:
            if load:
                importlib.import_module(name)
            elif importlib.util.find_spec(name) is None:
                raise ImportError(name)
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
    """Serve until SIGTERM/SIGINT: one process, or (``[grpc] processes``) a parent of worker
    processes; a process the parent started is one of those workers."""
    from ._siblings import WorkerRole  # noqa: PLC0415 (stdlib only)

    role = WorkerRole.from_environ()
    if role is not None:
        role.take_stderr()
    config = _config.load_file(args.config)
    count = 1 if role is not None else config.serve.process_count()
    require_extra(load=count == 1)
    from ._log import configure  # noqa: PLC0415 (after the extra is checked)
    from ._reload import HostOptions  # noqa: PLC0415

    address = None if args.address is None else _address(args.address, "--address")
    options = HostOptions(
        cache_dir=args.cache_dir, installer=args.installer, offline=args.offline or None
    )
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    if count > 1:
        from ._workers import Parent  # noqa: PLC0415

        parent = Parent(
            config,
            Path(args.config),
            count,
            address=address,
            options=options,
            pidfile=args.pidfile,
            argv=_worker_argv(args, verbosity),
        )
        undo = configure(config.log, verbosity, str(args.config))
        try:
            return parent.run()
        finally:
            undo()
    from ._server import Server  # noqa: PLC0415

    server = Server(
        args.config, address=address, options=options, pidfile=args.pidfile, worker=role
    )
    undo = configure(server.config.log, verbosity, str(args.config))
    try:
        if role is not None:
            from ._workers import die_with_parent, tag_log  # noqa: PLC0415

            tag_log(role.index)
            die_with_parent(role.parent)
        server.run()
    finally:
        undo()
    return ExitCode.OK


def _worker_argv(args: argparse.Namespace, verbosity: int) -> list[str]:
    """The command line of a worker process (``--address`` is added by the parent)."""
    argv = [sys.executable, "-m", "reva_plugins", "serve", str(Path(args.config).resolve())]
    if args.cache_dir is not None:
        argv += ["--cache-dir", str(Path(args.cache_dir).resolve())]
    if args.installer is not None:
        argv += ["--installer", str(args.installer)]
    if args.offline:
        argv.append("--offline")
    argv += ["-v"] * max(verbosity, 0) + ["-q"] * max(-verbosity, 0)
    return argv


def _client_address(text: str, what: str) -> str:
    """``text`` as an address to connect to: ``HOST:PORT`` (a URL is a usage mistake), a
    wildcard or empty host meaning this host's loopback."""
    if "://" in text or "/" in text:
        raise UsageError(
            f"{what} {_config._printable(text[:80])!r} must be HOST:PORT (the server's gRPC "
            "or [metrics] address), not a URL"
        )
    _address(text, what)
    host, _, port = text.rpartition(":")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)  # noqa: S104
    return f"{host}:{port}"


def _metric_rows(text: str) -> list[tuple[str, str]]:
    """The reva-plugins samples of a Prometheus page, as (name{labels}, value) rows."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    rows: list[tuple[str, str]] = []
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("reva_plugins_"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            # label values are the server's words (any text): escaped, they reach a terminal
            labels = ",".join(f"{k}={escape(v)}" for k, v in sorted(sample.labels.items()))
            number = sample.value  # NaN and ±Inf are valid samples: shown as nan and inf
            integral = math.isfinite(number) and number == int(number)
            value = str(int(number)) if integral else f"{number:g}"
            rows.append((f"{sample.name}{{{labels}}}" if labels else sample.name, value))
    return rows


def _read_metrics(address: str, timeout: float) -> tuple[str | None, str]:
    """The metrics page at ``address``, or None and why not (it may be a gRPC port)."""
    url = f"http://{address}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body: bytes = reply.read(MAX_METRICS_BYTES + 1)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, ConnectionRefusedError):
            raise RevaPluginError(
                f"cannot read status from {address}: nothing listens there (connection refused)"
            ) from None
        if isinstance(reason, http.client.BadStatusLine):  # its text: the bytes that came
            return None, f"no metrics at {url}: the answer is not HTTP/1"
        # the server's own words (an HTTP reason phrase): escaped, they reach a terminal
        return None, f"no metrics at {url}: {type(reason).__name__}: {escape(str(reason))}"
    if len(body) > MAX_METRICS_BYTES:
        return None, f"{url} sent more than {MAX_METRICS_BYTES >> 20} MiB: not metrics"
    try:
        return body.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, f"{url} did not send Prometheus metrics"


def _trusted(path: Path | None) -> tuple[Path, bytes] | None:
    """``--tls-ca`` and the PEM certificate(s) it holds (read before anything connects)."""
    if path is None:
        return None
    from ._files import read_pem  # noqa: PLC0415 (the serve extra)

    try:
        return path, read_pem(path, "BEGIN CERTIFICATE-----")
    except ValueError as exc:
        raise UsageError(f"--tls-ca: {exc}") from None


def admin_call(
    address: str, method: str, timeout: float, tls_ca: tuple[Path, bytes] | None = None
) -> dict[str, Any]:
    """Call the admin API's ``method`` (``Status``, ``Reload``) on a server's gRPC address,
    over TLS if ``tls_ca`` (the ``--tls-ca`` path and the certificates it holds) is given."""
    import grpc  # noqa: PLC0415 (the serve extra)
    from google.protobuf import empty_pb2, json_format, struct_pb2  # noqa: PLC0415

    from ._server import ADMIN_API  # noqa: PLC0415

    if tls_ca is None:
        channel = grpc.insecure_channel(address)
        other = "if its port is TLS, pass --tls-ca"
    else:
        path, certificates = tls_ca
        creds = grpc.ssl_channel_credentials(root_certificates=certificates)
        channel = grpc.secure_channel(address, creds)
        other = f"is its port TLS, with a certificate --tls-ca {path} trusts for that host?"
    with channel:
        stub = channel.unary_unary(
            f"/{ADMIN_API}/{method}",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        try:
            reply = stub(empty_pb2.Empty(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
            # the server's own words: escaped, they reach a terminal
            first = escape(details.splitlines()[0][:200]) if details else str(code)
            if code == grpc.StatusCode.UNIMPLEMENTED:
                problem = f"{address} is a gRPC server without the reva-plugins admin API"
            elif code == grpc.StatusCode.PERMISSION_DENIED:
                problem = f"{address}: {first}"
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                problem = f"{address}: no answer within {timeout:g} s ({other})"
            else:
                problem = f"no reva-plugins gRPC server at {address}: {first} ({other})"
            raise RevaPluginError(problem) from None
    out: dict[str, Any] = json_format.MessageToDict(reply)
    return out


def _show(value: object) -> str:
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return "-" if value is None else str(value)


def _metric_value(text: str) -> int | float | str:
    number = float(text)
    if not math.isfinite(number):  # JSON has no NaN nor Infinity: the sample as text
        return text
    return int(number) if number.is_integer() else number


def cmd_status(args: argparse.Namespace) -> int:
    """Print the counters of a running server, from its ``[metrics] address`` or its gRPC
    address (the admin API's Status, which also says what runs each service): a table, or with
    ``--json`` one JSON object; services, fields and metrics in sorted order either way."""
    require_extra()
    address = _client_address(args.address, "ADDRESS")
    trusted = _trusted(args.tls_ca)
    report: dict[str, Any] = {}
    text, not_metrics = _read_metrics(address, args.timeout)
    if text is None:
        try:
            status = admin_call(address, "Status", args.timeout, trusted)
        except RevaPluginError as not_grpc:
            raise RevaPluginError(f"cannot read status: {not_metrics}; {not_grpc}") from None
        text = str(status.get("metrics", ""))
        server = status.get("server", {})
        services = status.get("services", {})
        report["server"] = {key: server[key] for key in sorted(server)}
        report["services"] = _sorted_services(services)
        workers = status.get("workers")
        if isinstance(workers, dict):  # [grpc] processes > 1: each worker process
            report["workers"] = {
                index: {
                    key: _sorted_services(info[key]) if key == "services" else info[key]
                    for key in sorted(info)
                }
                for index, info in sorted(workers.items(), key=lambda item: int(item[0]))
            }
    try:
        rows = sorted(_metric_rows(text))
    except ValueError as exc:
        raise RevaPluginError(f"{address} did not send Prometheus metrics: {exc}") from None
    if not rows and not report:
        raise RevaPluginError(f"{address} has no reva-plugins metrics")
    if args.json:
        report["metrics"] = {name: _metric_value(value) for name, value in rows}
        print(json.dumps(report, indent=2))
        return ExitCode.OK
    lines: list[str] = []
    if report:
        lines.append("server  " + " ".join(f"{k}={_show(v)}" for k, v in report["server"].items()))
        width = max((len(name) for name in report["services"]), default=0)
        for name, info in report["services"].items():
            fields = " ".join(f"{k}={_show(v)}" for k, v in info.items())
            lines.append(f"service {name:<{width}}  {fields}")
        for index, info in report.get("workers", {}).items():
            fields = " ".join(f"{k}={_show(v)}" for k, v in info.items() if k != "services")
            lines.append(f"worker  {index}  {fields}")
            for name, svc in info.get("services", {}).items():
                fields = " ".join(f"{k}={_show(v)}" for k, v in svc.items())
                lines.append(f"worker  {index}  service {name:<{width}}  {fields}")
    width = max((len(name) for name, _ in rows), default=0)
    for line in lines:
        print(line)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return ExitCode.OK


def _sorted_services(services: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {key: services[name][key] for key in sorted(services[name])}
        for name in sorted(services)
    }


#: Python's options that take a value (``python -X dev -m reva_plugins serve``).
_PYTHON_VALUE_OPTIONS = ("-X", "-W", "-c", "--check-hash-based-pycs")
_SCRIPT_NAMES = ("reva-plugins", "reva_plugins")


def is_server_cmdline(argv: list[str]) -> bool:
    """True if ``argv`` is a ``reva-plugins serve`` command line: the console script (run
    itself, or by its interpreter as the shebang does) or ``python -m reva_plugins``; never a
    command whose later arguments merely name it (``bash -c CMD reva-plugins serve``)."""
    if not argv:
        return False
    if os.path.basename(argv[0]) in _SCRIPT_NAMES:
        return "serve" in argv[1:]
    if not os.path.basename(argv[0]).startswith("python"):
        return False
    index = 1
    while index < len(argv) and argv[index].startswith("-") and argv[index] != "-m":
        if argv[index] == "-c":
            return False  # python -c CODE: whatever it runs, it is not our module
        index += 2 if argv[index] in _PYTHON_VALUE_OPTIONS else 1
    rest = argv[index:]
    if rest[:2] == ["-m", "reva_plugins"]:
        return "serve" in rest[2:]
    return bool(rest) and os.path.basename(rest[0]) in _SCRIPT_NAMES and "serve" in rest[1:]


def is_server_pid(pid: int) -> bool:
    """True if process ``pid`` runs and is a ``reva-plugins serve``."""
    try:
        argv = _cmdline(pid)
    except RevaPluginError:
        return False
    return argv is not None and is_server_cmdline(argv)


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(1 << 16)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RevaPluginError(
            f"cannot check that process {pid} is a reva-plugins server: {exc.strerror}; "
            "nothing was signalled"
        ) from None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _signal_server(pid: int) -> None:
    """SIGHUP to ``pid`` once it is known to be a ``reva-plugins serve`` process (SIGHUP's
    default action would kill anything else). Through a pidfd where the kernel has them, so
    the process checked is the process signalled even if the pid is reused meanwhile."""
    pidfd: int | None = None
    opener = getattr(os, "pidfd_open", None)
    try:
        if opener is not None:
            try:
                pidfd = opener(pid)
            except ProcessLookupError:
                raise RevaPluginError(f"no process {pid} (is the server running?)") from None
            except OSError:
                pidfd = None  # no pidfds here: the check and the signal are a moment apart
        argv = _cmdline(pid)
        if argv is None:
            raise RevaPluginError(f"no process {pid} (is the server running?)")
        if not is_server_cmdline(argv):
            raise RevaPluginError(
                f"process {pid} is not a reva-plugins server (a stale pid file?); "
                "nothing was signalled"
            )
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGHUP)
            else:
                os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise RevaPluginError(f"no process {pid} (is the server running?)") from None
        except PermissionError:
            raise RevaPluginError(f"not allowed to signal process {pid}") from None
    finally:
        if pidfd is not None:
            os.close(pidfd)


def cmd_reload(args: argparse.Namespace) -> int:
    """Make a running server reload: through its admin API (``reload ADDRESS``: waits for the
    reload and says what it did), or by SIGHUP to a verified pid (``PIDFILE``, ``--pid``)."""
    if (args.pid is None) == (args.pidfile is None):
        raise UsageError("give ADDRESS (the server's gRPC address), PIDFILE or --pid N")
    if args.pidfile is not None:
        text = str(args.pidfile)  # as typed: a Path would make http://x read http:/x
        looks_remote = "://" in text or _config.address_problem(text) is None
        if not os.path.lexists(text) and looks_remote:
            require_extra()
            address = _client_address(text, "ADDRESS")
            outcome = admin_call(address, "Reload", args.timeout, _trusted(args.tls_ca))
            print(str(outcome.get("message", "")), file=sys.stderr)
            return ExitCode.FAILURE if outcome.get("result") == "failed" else ExitCode.OK
        pid = _read_pidfile(text)
    else:
        pid = args.pid
    if args.tls_ca is not None:
        raise UsageError("--tls-ca is for reload ADDRESS (a signal needs no TLS)")
    if not 2 <= pid <= MAX_PID:  # 0, 1 and negatives would signal a process group or init
        raise UsageError(f"pid {pid} is not a server's pid")
    _signal_server(pid)
    print(
        f"reload requested from process {pid} (SIGHUP; its log says what it did)", file=sys.stderr
    )
    return ExitCode.OK


def _read_pidfile(path: str) -> int:
    try:
        raw = _fs.read_regular(path, 64)
    except _fs.NotRegular:
        raise UsageError(f"{path}: not a pid file (not a regular file)") from None
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise UsageError(f"{path}: not a pid file (expected a process id)") from None
        raise UsageError(f"{path}: cannot read the pid file: {exc.strerror}") from None
    text = raw.decode("ascii", "replace").strip()
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"{path}: not a pid file (expected a process id)")
    return int(text)
