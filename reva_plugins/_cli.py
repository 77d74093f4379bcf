"""The ``reva-plugins`` command line. Errors map to exit codes here, and only here."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import _config, _defaults
from ._completion import SHELLS, completion_script
from ._conformance import run_conformance
from ._errors import ExitCode, RemoteError, RevaPluginError, UsageError
from ._host import Host
from ._plan import Planner, absolute_spec
from ._present import CheckRow, TickingProgress, check_table, format_report, rows_table
from ._redact import redact
from ._sandbox import make_undumpable
from ._scaffold import scaffold
from ._store import Env, Store, default_cache_dir, dir_size, resolve_cache_dir
from ._version import __version__
from .services import BUILTIN

# Checked when the command runs (after logging is set up), not here: reading the registry loads
# other packages' service types, and a broken one is logged, not fatal.
SERVICE_HELP = (
    f"the service type: {', '.join(BUILTIN)}, or one an installed package registers "
    "(entry point group reva_plugins.services)"
)

PLUGINS_FROM_HELP = (
    "a revad config whose [plugins] table applies to {what} (allowed_sources, index_url, "
    "python …; its relative paths and patterns resolve against its own folder)"
)

log = logging.getLogger("reva_plugins.cli")

#: the parent parsers whose options a command takes
Parents = Sequence[argparse.ArgumentParser]

#: the build progress shown on stderr (the log handler clears its line before each record)
PROGRESS = TickingProgress(sys.stderr)


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


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or isinstance(default, bool)
            or (isinstance(default, int) and action.nargs == 0)
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit 2), like every other mistake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _number(bounds: tuple[float, float], unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number within ``bounds`` (the config's own bounds)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        problem = _config.number_problem(value, bounds, unit)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _text(text: str) -> str:
    """An argparse type: a non-empty argument without control characters."""
    problem = _config.text_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _path(text: str) -> Path:
    """An argparse type: a path (see :func:`_text`)."""
    return Path(_text(text))


def _credentials(text: str) -> tuple[str, str]:
    """An argparse type for ``ID:SECRET`` (the secret is never echoed)."""
    client_id, sep, secret = text.partition(":")
    if not sep or not client_id:
        raise argparse.ArgumentTypeError("must be ID:SECRET (a client id, a colon, the secret)")
    return client_id, secret


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
        PROGRESS.clear_line()
        super().emit(record)


def _setup_logging(verbosity: int) -> None:
    PROGRESS.stream = sys.stderr  # as it is now (tests capture it)
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


def _global_options(*, defaults: bool) -> tuple[_Parser, _Parser, _Parser]:
    """The global options, accepted before and after the command (only the top level sets
    defaults): the env cache's (for commands that use it), the installer's (for commands that
    plan or build envs) and the output's (for every command)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    cache = _Parser(add_help=False)
    cache.add_argument(
        "--cache-dir",
        type=_path,
        default=default(None),
        metavar="DIR",
        help="the env cache (default: $REVA_PLUGINS_CACHE_DIR, else the user cache dir)",
    )
    install = _Parser(add_help=False)
    install.add_argument(
        "--installer",
        choices=_defaults.INSTALLERS,
        default=default(None),
        help="the installer backend (default: [plugins] installer, else auto: uv when present)",
    )
    install.add_argument(
        "--offline",
        action="store_true",
        default=default(None),
        help="never touch the network (use cached envs and downloads only)",
    )
    output = _Parser(add_help=False)
    output.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="more output (tracebacks)"
    )
    output.add_argument("-q", "--quiet", action="count", default=default(0), help="less output")
    return cache, install, output


def _parser() -> _Parser:
    cache, install, output = _global_options(defaults=False)
    building = [cache, install, output]  # commands that plan or build envs
    plain = [output]  # commands for which the env cache means nothing
    parser = _Parser(
        prog="reva-plugins",
        description="Run Reva-style plugin drivers in isolated environments and processes.",
        epilog="exit codes: 0 ok; 1 a plugin, build or remote failure; 2 a usage or config error",
        parents=list(_global_options(defaults=True)),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", parents=building, help="build, start and ping every driver")
    _config_argument(check)
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.set_defaults(handler=cmd_check)

    call = sub.add_parser("call", parents=building, help="call one method of a service")
    _config_argument(call)
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
        type=_number(_defaults.TIMEOUT_BOUNDS, "seconds"),
        help="seconds for this call (default and ceiling: the driver's call_timeout)",
    )
    call.set_defaults(handler=cmd_call, json_errors=True)
    _add_env_commands(sub, building, [cache, output])
    _add_lock_command(sub, building)

    conf = sub.add_parser(
        "conformance", parents=building, help="check a plugin against its service contract"
    )
    conf.add_argument(
        "spec", type=_text, metavar="SPEC", help="a driver spec (folder, wheel, git URL …)"
    )
    conf.add_argument("--service", required=True, type=_text, help=SERVICE_HELP)
    conf.add_argument(
        "--config", type=_path, metavar="FILE", help="TOML file with the driver's config table"
    )
    conf.add_argument(
        "--plugins-from",
        type=_path,
        metavar="CONFIG",
        help=PLUGINS_FROM_HELP.format(what="the spec"),
    )
    conf.add_argument(
        "--credentials",
        type=_credentials,
        metavar="ID:SECRET",
        help="valid credentials, for services whose checks need some (authprovider)",
    )
    conf.add_argument(
        "--python", type=_text, help="interpreter for the plugin's env (a version or path)"
    )
    conf.add_argument("--json", action="store_true", help="print JSON instead of a table")
    conf.set_defaults(handler=cmd_conformance)

    new = sub.add_parser("new", parents=plain, help="scaffold a plugin distribution")
    new.add_argument(
        "path", type=_path, metavar="PATH", help="the folder to create (must not exist or be empty)"
    )
    new.add_argument("--service", required=True, type=_text, help=SERVICE_HELP)
    new.add_argument(
        "--name", type=_text, help="distribution name (default: reva-plugin-<folder name>)"
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


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", type=_path, metavar="CONFIG", help="a revad TOML config ([grpc.services.X])"
    )


def _serve_parsers(sub: Any, building: Parents, plain: Parents) -> None:
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
    _config_argument(serve)
    serve.add_argument(
        "--address", type=_text, metavar="HOST:PORT", help="listen here (default: [grpc] address)"
    )
    serve.add_argument(
        "--pidfile", type=_path, metavar="FILE", help="write the server's pid here (for reload)"
    )
    serve.set_defaults(handler=lazy("cmd_serve"))
    status = sub.add_parser(
        "status", parents=plain, help="the services and counters of a running server"
    )
    status.add_argument(
        "address", type=_text, metavar="ADDRESS", help="its gRPC or [metrics] address"
    )
    status.add_argument(
        "--timeout",
        type=_number(_defaults.TIMEOUT_BOUNDS, "seconds"),
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
        type=_text,
        nargs="?",
        metavar="ADDRESS|PIDFILE",
        help="its gRPC address (waits for the reload), or the file of serve --pidfile",
    )
    reload.add_argument("--pid", type=int, help="the server's process id")
    reload.add_argument(
        "--timeout",
        type=_number(_defaults.TIMEOUT_BOUNDS, "seconds"),
        default=_defaults.RELOAD_TIMEOUT,
        help="seconds to wait for a reload by address",
    )
    _tls_ca_option(reload)
    reload.set_defaults(handler=lazy("cmd_reload"))


def _tls_ca_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-ca",
        type=_path,
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
        progress=PROGRESS,
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


def _add_env_commands(sub: Any, building: Parents, cached: Parents) -> None:
    env = sub.add_parser("env", parents=cached, help="build, list, remove and prune plugin envs")
    env_sub = env.add_subparsers(dest="env_command", required=True, metavar="ENV_COMMAND")

    build = env_sub.add_parser("build", parents=building, help="build envs for configs or specs")
    build.add_argument(
        "targets",
        nargs="+",
        type=_text,
        metavar="CONFIG|SPEC",
        help="a revad config (*.toml: every driver it names) or a driver spec",
    )
    build.add_argument(
        "--python", type=_text, help="interpreter for specs given directly (a version or path)"
    )
    build.add_argument(
        "--plugins-from",
        type=_path,
        metavar="CONFIG",
        help=PLUGINS_FROM_HELP.format(what="specs given directly"),
    )
    build.add_argument("--refresh", action="store_true", help="rebuild even if cached")
    build.set_defaults(handler=cmd_env_build)

    listing = env_sub.add_parser("list", parents=cached, help="list the cached envs")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=cmd_env_list)

    remove = env_sub.add_parser("remove", parents=cached, help="remove envs by key (or prefix)")
    remove.add_argument(
        "keys", nargs="+", type=_text, metavar="KEY", help="an env key or a unique prefix of one"
    )
    remove.set_defaults(handler=cmd_env_remove)

    prune = env_sub.add_parser("prune", parents=cached, help="remove envs not used lately")
    prune.add_argument(
        "--unused-days",
        type=_number(_defaults.UNUSED_DAYS_BOUNDS, "days"),
        default=_defaults.UNUSED_DAYS,
        metavar="N",
        help="remove envs and downloads not used for N days",
    )
    prune.set_defaults(handler=cmd_env_prune)

    export = env_sub.add_parser(
        "export", parents=building, help="bundle every wheel a locked config needs"
    )
    _config_argument(export)
    export.add_argument(
        "-o", "--output", type=_path, required=True, metavar="OUT", help="the bundle to write"
    )
    export.add_argument(
        "--format", choices=("tar", "dir"), default="tar", help="a tar file or a folder"
    )
    export.set_defaults(handler=cmd_env_export)

    imp = env_sub.add_parser(
        "import", parents=building, help="build the envs of a bundle, with no network"
    )
    imp.add_argument(
        "bundle", type=_path, metavar="BUNDLE", help="a bundle of env export (tar or folder)"
    )
    imp.add_argument("--python", type=_text, help="interpreter (default: the lock's version)")
    imp.set_defaults(handler=cmd_env_import)


def _add_lock_command(sub: Any, building: Parents) -> None:
    lock = sub.add_parser(
        "lock",
        parents=building,
        usage="%(prog)s [--check | --upgrade | --upgrade-package DRIVER] [--python X.Y] CONFIG",
        help="pin what a config's drivers resolve to (CONFIG.lock)",
    )
    # Optional for argparse only: `lock --upgrade CONFIG` hands CONFIG to --upgrade (its older
    # form took a driver), and cmd_lock takes it back from there.
    lock.add_argument(
        "config",
        type=_path,
        nargs="?",
        metavar="CONFIG",
        help="a revad TOML config; the lock is written beside it as CONFIG.lock",
    )
    mode = lock.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the lock is stale")
    mode.add_argument(
        "--upgrade",
        nargs="?",
        const="*",
        type=_text,
        metavar="DRIVER",
        help="re-resolve every driver (--upgrade DRIVER CONFIG, the older form, names one)",
    )
    mode.add_argument(
        "--upgrade-package",
        type=_text,
        metavar="DRIVER",
        help="re-resolve only DRIVER (a service or plugin name), keep the others' pins",
    )
    lock.add_argument(
        "--python",
        action="append",
        type=_text,
        metavar="X.Y",
        help="lock for this Python version (repeat for several; default: each driver's own)",
    )
    lock.set_defaults(handler=cmd_lock)


def _lock_target(args: argparse.Namespace) -> tuple[Path, str | None]:
    """CONFIG and what to upgrade (``*``: every driver; a name: one; None: nothing)."""
    upgrade: str | None = args.upgrade_package or args.upgrade
    if args.config is not None:
        return args.config, upgrade
    if args.upgrade not in (None, "*"):  # `lock --upgrade CONFIG`
        return Path(args.upgrade), "*"
    raise UsageError("lock: the following arguments are required: CONFIG")


def cmd_lock(args: argparse.Namespace) -> int:
    """``lock CONFIG``: write CONFIG.lock; ``--check``: exit 1 when it is stale."""
    from . import _fleet  # noqa: PLC0415 - only these commands need it

    path, upgrade = _lock_target(args)
    config = _config.load_file(path).with_overrides(**_overrides(args))
    planner = Planner(config)
    try:
        if args.check:
            problems = _fleet.stale(planner, args.python or ())
            for problem in problems:
                print(f"reva-plugins: stale: {redact(problem)}", file=sys.stderr)
            if problems:
                return ExitCode.FAILURE
            print(f"{path}.lock: up to date")
            return ExitCode.OK
        written, changed = _fleet.lock(planner, upgrade, args.python or ())
    finally:
        planner.close()
    for name in sorted(written.services):
        entry = written.services[name]
        state = "locked" if name in changed else "unchanged"
        print(f"{name}\t{redact(entry.spec)}\t{entry.identity}\t{state}")
    log.info("wrote %s", written.path)
    return ExitCode.OK


def cmd_env_export(args: argparse.Namespace) -> int:
    """``env export CONFIG -o OUT``: a bundle of the lock and every wheel it pins."""
    from . import _fleet  # noqa: PLC0415

    config = _config.load_file(args.config).with_overrides(**_overrides(args))
    planner = Planner(config)
    try:
        count = _fleet.export(planner, args.output, args.format)
    finally:
        planner.close()
    print(f"{args.output}\t{count} wheels")
    return ExitCode.OK


def cmd_env_import(args: argparse.Namespace) -> int:
    """``env import BUNDLE``: build every env the bundle's lock pins, offline."""
    from . import _fleet  # noqa: PLC0415

    config = _config.Config(base_dir=Path.cwd()).with_overrides(**_overrides(args))
    for service, done in _fleet.import_bundle(config, args.bundle.resolve(), args.python):
        state = f"built in {done.seconds:.2f} s" if done.built else "cached"
        print(f"{done.env_key}\t{service}\t{state}")
    return ExitCode.OK


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cache_dir": resolve_cache_dir(args.cache_dir) if args.cache_dir else None,
        "installer": args.installer,
        "offline": args.offline,
    }


def _store(args: argparse.Namespace) -> Store:
    settings = _config.Config(base_dir=Path.cwd()).with_overrides(**_overrides(args)).plugins
    store = Store(settings.cache_dir or default_cache_dir())
    store.ensure()
    return store


def _settings(args: argparse.Namespace) -> _config.LoaderSettings:
    """The loader settings for specs typed on the command line: ``--plugins-from``'s
    ``[plugins]`` table, else the defaults (whose ``allowed_sources`` allows every spec)."""
    if args.plugins_from is None:
        return _config.LoaderSettings()
    return _config.load_file(args.plugins_from).plugins


def cmd_env_build(args: argparse.Namespace) -> int:
    """``env build CONFIG|SPEC…``: build what is missing and print one env key per line.

    A config is planned like ``check`` plans it, under its own ``[plugins]`` table. Specs given
    directly are planned under ``--plugins-from``'s table (``allowed_sources`` included), else
    under the defaults; their relative paths resolve against the working directory.
    """
    settings = _settings(args)
    for target in args.targets:
        path = Path(target)
        if path.suffix == ".toml" and path.is_file():
            config = _config.load_file(path).with_overrides(**_overrides(args))
            services = config.services
        else:
            config = _config.Config(base_dir=Path.cwd(), plugins=settings)
            config = config.with_overrides(**_overrides(args))
            options = _config.PluginOptions(python=args.python)
            services = (_config.ServiceConfig("env", target, options, {}),)
        planner = Planner(config, refresh=args.refresh, progress=PROGRESS)
        for svc in services:
            done = planner.prepare(svc)
            shown = redact(svc.driver)
            if done.env_key is None:
                print(f"{shown}\t(nothing to build: {done.kind})")
                continue
            state = f"built in {done.seconds:.2f} s" if done.built else "cached"
            print(f"{done.env_key}\t{shown}\t{state}")
    return ExitCode.OK


def cmd_env_list(args: argparse.Namespace) -> int:
    """``env list``: every cached env with its source, identity, python, size and health.

    A broken entry (invalid metadata, a file or symlink in ``envs/``) is listed with its reason.
    """
    store = _store(args)
    rows = []
    for entry in store.scan():
        row: dict[str, Any] = {
            "key": _shown(entry.key),
            "kind": "?",
            "source": "?",
            "identity": "",
            "version": "",
            "python": "?",
            "installer": "?",
            "size": dir_size(entry.path),
            "created": "",
            "last_used": _utc(store.last_used(entry)),
            "health": _shown(entry.health() or "ok"),
        }
        if isinstance(entry, Env):
            meta, pins = entry.meta, entry.meta.resolved
            row.update(
                kind=meta.kind,
                source=redact(meta.spec),
                identity=pins.get("commit") or pins.get("sha256") or meta.identity,
                version=pins.get("version", ""),
                python=meta.python.version,
                installer=meta.installer.name,
                created=meta.created,
            )
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return ExitCode.OK
    header = (
        "KEY", "KIND", "SOURCE", "IDENTITY", "PYTHON", "INSTALLER", "SIZE", "LAST USED", "HEALTH"
    )  # fmt: skip
    table = [
        (
            r["key"],
            _shown(r["kind"]),
            _shown(r["source"]),
            _shown(_short_identity(str(r["identity"]))),
            _shown(r["python"]),
            _shown(r["installer"]),
            _human_size(int(r["size"])),
            _local_minute(r["last_used"]),
            r["health"],
        )
        for r in rows
    ]
    print(rows_table(header, table))
    return ExitCode.OK


def _utc(seconds: float) -> str:
    """A time as ISO-8601 UTC, as the env metadata writes ``created``."""
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.isoformat(timespec="seconds")


def _local_minute(iso: str) -> str:
    """An ISO-8601 time as the table shows it: local time, to the minute."""
    return datetime.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def _short_identity(identity: str) -> str:
    """What tells an env's source apart in a table: a requirement whole (``name==1.0``), a
    digest or commit shortened to 12 hex digits (``sha256:``/``tree:`` prefixes dropped)."""
    kind, sep, value = identity.rpartition(":")
    digest = value if sep and kind.isalnum() else identity
    if len(digest) > 12 and all(c in "0123456789abcdef" for c in digest):
        return digest[:12]
    return identity


def _shown(text: str) -> str:
    """``text`` safe for one table cell: control characters and undecodable bytes escaped."""
    return text if text.isprintable() else ascii(text)[1:-1]


def cmd_env_remove(args: argparse.Namespace) -> int:
    """``env remove KEY…``: delete envs (unique key prefixes accepted); refuse one in use."""
    store = _store(args)
    entries = [store.find(key) for key in args.keys]
    for entry in entries:
        store.remove(entry.key)
        print(f"removed {_shown(entry.key)}")
    return ExitCode.OK


def cmd_env_prune(args: argparse.Namespace) -> int:
    """``env prune``: delete envs unused for N days (not those in use), unused downloads as old,
    and leftovers of interrupted builds."""
    pruned = _store(args).prune(args.unused_days)
    for entry in pruned.envs:
        spec = redact(entry.meta.spec) if isinstance(entry, Env) else entry.health()
        print(f"removed {_shown(entry.key)}\t{_shown(spec)}")
    for digest in pruned.downloads:
        print(f"removed download {digest}")
    for built in pruned.built:
        print(f"removed {built}")
    for key in pruned.in_use:
        print(f"reva-plugins: kept env {key}: a running host uses it", file=sys.stderr)
    if not (pruned.envs or pruned.downloads or pruned.built):
        print(f"nothing to prune (nothing unused for {args.unused_days:g} days)")
    return ExitCode.OK


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


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
    plugins = _settings(args)
    if args.python:
        plugins = dataclasses.replace(plugins, python=args.python)
    report = run_conformance(
        absolute_spec(args.spec, Path.cwd()),
        args.service,
        config=config,
        base_dir=base_dir,
        credentials=credentials,
        plugins=plugins,
        **_overrides(args),
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
