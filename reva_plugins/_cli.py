"""The ``reva-plugins`` command line. Errors map to exit codes here, and only here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _cli_options as opts
from . import _config, _defaults
from ._cli_env import add_env_commands, add_lock_command
from ._completion import SHELLS, completion_script
from ._conformance import run_conformance
from ._errors import ExitCode, RemoteError, RevaPluginError, UsageError
from ._host import Host
from ._plan import absolute_spec
from ._present import CheckRow, check_table, format_report
from ._redact import redact
from ._sandbox import make_undumpable
from ._scaffold import scaffold
from ._version import __version__

log = logging.getLogger("reva_plugins.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose - args.quiet)
    make_undumpable()  # before any secret is read: plugins cannot read the core's memory
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except RevaPluginError as exc:
        return _report(args, exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # the last resort: user mistakes never get here
        # Every user mistake is a RevaPluginError raised where it is detected; anything else is
        # a bug in the core. It stays visible as one: named "internal error", exit 1, and the
        # traceback with -v (never for a mistake the user can fix, and never a secret unredacted).
        if args.verbose:
            log.exception("%s failed", args.command)
        first = (str(exc).splitlines() or [""])[0]
        message = (
            f"internal error: {type(exc).__name__}: {redact(first)} "
            "(a bug in reva-plugins; run with -v for the traceback)"
        )
        if getattr(args, "json_errors", False):
            error = {"type": "InternalError", "message": message}
            print(json.dumps({"error": error}), file=sys.stderr)
        else:
            print(f"reva-plugins: {message}", file=sys.stderr)
        return ExitCode.FAILURE


def _report(args: argparse.Namespace, exc: RevaPluginError) -> int:
    if args.verbose:
        log.exception("%s failed", args.command)
    if getattr(args, "json_errors", False):
        error: dict[str, Any] = {"type": type(exc).__name__, "message": redact(str(exc))}
        if isinstance(exc, RemoteError):
            error["type"] = exc.type
        if exc.plugin:
            error["plugin"] = redact(exc.plugin)
        print(json.dumps({"error": error}), file=sys.stderr)
    else:
        print(f"reva-plugins: error: {redact(str(exc))}", file=sys.stderr)
    return exc.exit_code


class _LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines on stderr, with URL credentials redacted, below the build progress line."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def format(self, record: logging.LogRecord) -> str:
        """Every log line (tracebacks of ``-v`` included) with URL credentials redacted."""
        return redact(super().format(record))

    def emit(self, record: logging.LogRecord) -> None:
        opts.PROGRESS.clear_line()
        super().emit(record)


def _setup_logging(verbosity: int) -> None:
    opts.PROGRESS.stream = sys.stderr  # as it is now (tests capture it)
    handler = _LogHandler()
    handler.setFormatter(logging.Formatter("reva-plugins: %(message)s"))
    root = logging.getLogger("reva_plugins")
    root.handlers[:] = [handler]
    root.propagate = False
    if verbosity > 0:
        root.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(relativeCreated)7.0f %(name)s: %(message)s"))
    elif verbosity < 0:
        root.setLevel(logging.ERROR)
    else:
        root.setLevel(logging.INFO)
        logging.getLogger("reva_plugins.plugin").setLevel(logging.WARNING)
        logging.getLogger("reva_plugins.process").setLevel(logging.WARNING)


def _parser() -> opts.Parser:
    cache, install, output = opts.global_options(defaults=False)
    building = [cache, install, output]  # commands that plan or build envs
    plain = [output]  # commands for which the env cache means nothing
    parser = opts.Parser(
        prog="reva-plugins",
        description="Run Reva-style plugin drivers in isolated environments and processes.",
        epilog="exit codes: 0 ok; 1 a plugin, build or remote failure; 2 a usage or config error",
        parents=list(opts.global_options(defaults=True)),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", parents=building, help="build, start and ping every driver")
    opts.config_argument(check)
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.set_defaults(handler=cmd_check)

    call = sub.add_parser("call", parents=building, help="call one method of a service")
    opts.config_argument(call)
    call.add_argument("service", metavar="SERVICE", help="the service, as in [grpc.services.X]")
    call.add_argument("method", metavar="METHOD", help="the method, e.g. get_user or authenticate")
    call.add_argument(
        "params",
        nargs="?",
        default="{}",
        metavar="PARAMS_JSON",
        help="the keyword arguments as a JSON object, e.g. "
        '\'{"user_id": {"idp": "...", "opaque_id": "..."}}\'',
    )
    call.add_argument(
        "--timeout",
        type=opts.number(_defaults.TIMEOUT_BOUNDS, "seconds"),
        help="seconds for this call (default and ceiling: the driver's call_timeout)",
    )
    call.set_defaults(handler=cmd_call, json_errors=True)
    add_env_commands(sub, building, [cache, output])
    add_lock_command(sub, building)

    conf = sub.add_parser(
        "conformance", parents=building, help="check a plugin against its service contract"
    )
    conf.add_argument(
        "spec", type=opts.text, metavar="SPEC", help="a driver spec (folder, wheel, git URL …)"
    )
    conf.add_argument("--service", required=True, type=opts.text, help=opts.SERVICE_HELP)
    conf.add_argument(
        "--config", type=opts.path, metavar="FILE", help="TOML file with the driver's config table"
    )
    opts.plugins_from_argument(conf, "the spec")
    conf.add_argument(
        "--credentials",
        type=opts.credentials,
        metavar="ID:SECRET",
        help="valid credentials, for services whose checks need some (authprovider)",
    )
    conf.add_argument(
        "--python", type=opts.text, help="interpreter for the plugin's env (a version or path)"
    )
    conf.add_argument("--json", action="store_true", help="print JSON instead of a table")
    conf.set_defaults(handler=cmd_conformance)

    new = sub.add_parser("new", parents=plain, help="scaffold a plugin distribution")
    new.add_argument(
        "path",
        type=opts.path,
        metavar="PATH",
        help="the folder to create (must not exist or be empty)",
    )
    new.add_argument("--service", required=True, type=opts.text, help=opts.SERVICE_HELP)
    new.add_argument(
        "--name", type=opts.text, help="distribution name (default: reva-plugin-<folder name>)"
    )
    new.set_defaults(handler=cmd_new)
    _serve_parsers(sub, building, plain)

    completion = sub.add_parser("completion", parents=plain, help="print a shell completion script")
    completion.add_argument(
        "shell",
        choices=SHELLS,
        metavar="SHELL",
        help=f"the shell: {', '.join(SHELLS)} (e.g. source <(reva-plugins completion bash))",
    )
    completion.set_defaults(handler=cmd_completion)
    return parser


def _serve_parsers(sub: Any, building: opts.Parents, plain: opts.Parents) -> None:
    """``serve``, ``status`` and ``reload``; their code (and grpc) is imported only when run."""

    def lazy(name: str) -> Callable[[argparse.Namespace], int]:
        def handler(args: argparse.Namespace) -> int:
            from .serve import _commands  # noqa: PLC0415 (grpc only for these commands)

            command: Callable[[argparse.Namespace], int] = getattr(_commands, name)
            return command(args)

        return handler

    serve = sub.add_parser(
        "serve", parents=building, help="serve the config's services over CS3 gRPC (SIGHUP reloads)"
    )
    opts.config_argument(serve)
    serve.add_argument(
        "--address",
        type=opts.text,
        metavar="HOST:PORT",
        help="listen here (default: [grpc] address)",
    )
    serve.add_argument(
        "--pidfile", type=opts.path, metavar="FILE", help="write the server's pid here (for reload)"
    )
    serve.set_defaults(handler=lazy("cmd_serve"))
    status = sub.add_parser(
        "status", parents=plain, help="the services and counters of a running server"
    )
    status.add_argument(
        "address", type=opts.text, metavar="ADDRESS", help="its gRPC or [metrics] address"
    )
    status.add_argument(
        "--timeout",
        type=opts.number(_defaults.TIMEOUT_BOUNDS, "seconds"),
        default=_defaults.STATUS_TIMEOUT,
        help="seconds to wait for the answer",
    )
    status.add_argument(
        "--json", action="store_true", help="print one JSON object (keys sorted) instead of a table"
    )
    _tls_ca_option(status)
    status.set_defaults(handler=lazy("cmd_status"))
    reload = sub.add_parser("reload", parents=plain, help="make a running server reload")
    reload.add_argument(
        "pidfile",
        type=opts.text,
        nargs="?",
        metavar="ADDRESS|PIDFILE",
        help="its gRPC address (waits for the reload), or the file of serve --pidfile",
    )
    reload.add_argument("--pid", type=int, help="the server's process id")
    reload.add_argument(
        "--timeout",
        type=opts.number(_defaults.TIMEOUT_BOUNDS, "seconds"),
        default=_defaults.RELOAD_TIMEOUT,
        help="seconds to wait for a reload by address",
    )
    _tls_ca_option(reload)
    reload.set_defaults(handler=lazy("cmd_reload"))


def _tls_ca_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-ca",
        type=opts.path,
        metavar="PEM",
        help="the gRPC port is TLS: trust this CA (or self-signed) certificate",
    )


def _host(args: argparse.Namespace) -> Host:
    config = _config.load_file(args.config)
    return Host(
        config,
        cache_dir=args.cache_dir,
        installer=args.installer,
        offline=args.offline,
        progress=opts.PROGRESS,
    )


def cmd_check(args: argparse.Namespace) -> int:
    """``check CONFIG``: one row per service; exit 1 if any failed."""
    began = time.perf_counter()
    with _host(args) as host:
        rows = [CheckRow.of(result) for result in host.check()]
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=2))
    else:
        print(check_table(rows))
    failed = [r for r in rows if not r.ok]
    for row in failed:
        print(f"reva-plugins: error: {row.service}: {row.status}", file=sys.stderr)
    if not rows:
        print(f"reva-plugins: error: {args.config}: no service uses a driver", file=sys.stderr)
        return ExitCode.USAGE
    if failed:
        return max(r.exit_code for r in failed)
    log.info("checked %d service(s) in %.2f s", len(rows), time.perf_counter() - began)
    return ExitCode.OK


def cmd_call(args: argparse.Namespace) -> int:
    """``call CONFIG SERVICE METHOD [PARAMS_JSON]``: the JSON result on stdout."""
    params = _params(args.params)
    if not isinstance(params, dict):
        raise UsageError(
            "PARAMS_JSON must be a JSON object of keyword arguments, e.g. "
            '\'{"user_id": {"idp": "...", "opaque_id": "..."}}\''
        )
    with _host(args) as host:
        result = host.service(args.service).call(args.method, params, timeout=args.timeout)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return ExitCode.OK


def _params(text: str) -> Any:
    """PARAMS_JSON decoded; what the plugin wire refuses (NaN, Infinity, deep nesting) too."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON number")

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):
            refuse(number)
        return value

    try:
        params = json.loads(text, parse_constant=refuse, parse_float=finite)
    except RecursionError:
        params = None
        deep = True
    except ValueError as exc:
        raise UsageError(f"PARAMS_JSON is not valid JSON: {exc}") from None
    else:
        deep = _config.nesting_exceeds(params)
    if deep:
        raise UsageError(f"PARAMS_JSON nests deeper than {_defaults.MAX_NESTING} levels")
    return params


def cmd_conformance(args: argparse.Namespace) -> int:
    """``conformance SPEC --service S``: a pass/fail table; exit 0 if every check passes.

    The plugin runs in the folder of ``--config`` (the driver's table), under the ``[plugins]``
    table of ``--plugins-from`` (else the defaults), as ``env build SPEC`` plans a spec.
    """
    config: dict[str, Any] = {}
    base_dir = Path.cwd()
    if args.config:
        config = _config.load_driver_table(args.config)
        base_dir = args.config.resolve().parent
    credentials: tuple[str, str] | None = args.credentials
    plugins = opts.settings(args)
    if args.python:
        plugins = dataclasses.replace(plugins, python=args.python)
    report = run_conformance(
        absolute_spec(args.spec, Path.cwd()),
        args.service,
        config=config,
        base_dir=base_dir,
        credentials=credentials,
        plugins=plugins,
        **opts.overrides(args),
    )
    if args.json:
        print(json.dumps({"ok": report.ok, "checks": [vars(c) for c in report.checks]}, indent=2))
    else:
        print(format_report(report))
    return ExitCode.OK if report.ok else ExitCode.FAILURE


def cmd_new(args: argparse.Namespace) -> int:
    """``new PATH --service S``: write a ready plugin distribution."""
    written = scaffold(args.path, args.service, name=args.name)
    for path in written:
        print(path)
    folder = shlex.quote(str(args.path))
    print(
        f"created a plugin for {args.service} in {folder}; next: cd {folder} && nox",
        file=sys.stderr,
    )
    return ExitCode.OK


def cmd_completion(args: argparse.Namespace) -> int:
    """``completion bash|zsh|fish``: a completion script for the shell, on stdout."""
    print(completion_script(_parser(), args.shell), end="")
    return ExitCode.OK
