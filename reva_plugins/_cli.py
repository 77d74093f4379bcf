"""The ``reva-plugins`` command line. Errors map to exit codes here, and only here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _config
from ._errors import RemoteError, RevaPluginError, UsageError
from ._host import CheckResult, Host

log = logging.getLogger("reva_plugins.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose - args.quiet)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except RevaPluginError as exc:
        return _report(args, exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _report(args: argparse.Namespace, exc: RevaPluginError) -> int:
    if args.verbose:
        log.exception("%s failed", args.command)
    if getattr(args, "json_errors", False):
        error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, RemoteError):
            error["type"] = exc.type
        if exc.plugin:
            error["plugin"] = exc.plugin
        print(json.dumps({"error": error}), file=sys.stderr)
    else:
        print(f"reva-plugins: error: {exc}", file=sys.stderr)
    return exc.exit_code


def _setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
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


def _global_options(*, defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command (only the top level sets defaults)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=default(None),
        help="env cache (default: $REVA_PLUGINS_CACHE_DIR or the user cache dir)",
    )
    common.add_argument(
        "--installer", choices=_config.INSTALLERS, default=default(None), help="installer backend"
    )
    common.add_argument(
        "--offline", action="store_true", default=default(None), help="never touch the network"
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="more output (tracebacks)"
    )
    common.add_argument("-q", "--quiet", action="count", default=default(0), help="less output")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="reva-plugins",
        description="Run Reva-style plugin drivers in isolated environments and processes.",
        parents=[_global_options(defaults=True)],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", parents=[common], help="build, start and ping every driver")
    check.add_argument("config", type=Path, metavar="CONFIG")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.set_defaults(handler=cmd_check)

    call = sub.add_parser("call", parents=[common], help="call one method of a service")
    call.add_argument("config", type=Path, metavar="CONFIG")
    call.add_argument("service", metavar="SERVICE")
    call.add_argument("method", metavar="METHOD")
    call.add_argument("params", nargs="?", default="{}", metavar="PARAMS_JSON")
    call.add_argument("--timeout", type=float, help="seconds for this call")
    call.set_defaults(handler=cmd_call, json_errors=True)
    return parser


def _host(args: argparse.Namespace) -> Host:
    config = _config.load_file(args.config)
    return Host(config, cache_dir=args.cache_dir, installer=args.installer, offline=args.offline)


def cmd_check(args: argparse.Namespace) -> int:
    """``check CONFIG``: one row per service; exit 1 if any failed."""
    began = time.perf_counter()
    with _host(args) as host:
        results = host.check()
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=2))
    else:
        _print_table(results)
    failed = [r for r in results if not r.ok]
    for result in failed:
        print(f"reva-plugins: error: {result.service}: {result.status}", file=sys.stderr)
    if not results:
        print(f"reva-plugins: error: {args.config}: no service uses a driver", file=sys.stderr)
        return EXIT_USAGE
    if failed:
        return max(r.exit_code for r in failed)
    log.info("checked %d service(s) in %.2f s", len(results), time.perf_counter() - began)
    return EXIT_OK


def _print_table(results: list[CheckResult]) -> None:
    header = ("SERVICE", "DRIVER", "KIND", "ENV", "STATUS", "START MS")
    rows = [
        (
            r.service,
            r.driver,
            r.kind,
            r.env,
            r.status,
            "-" if r.start_ms is None else f"{r.start_ms:.1f}",
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def cmd_call(args: argparse.Namespace) -> int:
    """``call CONFIG SERVICE METHOD [PARAMS_JSON]``: the JSON result on stdout."""
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise UsageError(f"PARAMS_JSON is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise UsageError(
            "PARAMS_JSON must be a JSON object of keyword arguments, e.g. "
            '\'{"user_id": {"idp": "...", "opaque_id": "..."}}\''
        )
    with _host(args) as host:
        result = host.service(args.service).call(args.method, params, timeout=args.timeout)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return EXIT_OK
