"""The ``env`` and ``lock`` commands: the env cache (build, list, remove, prune), the lock beside a
config, and bundles (export, import)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Any

from . import _cli_options as opts
from . import _config, _defaults
from ._errors import ExitCode, UsageError
from ._plan import Planner
from ._present import rows_table
from ._redact import redact
from ._store import Env, Store, default_cache_dir, dir_size

log = logging.getLogger("reva_plugins.cli")


def add_env_commands(sub: Any, building: opts.Parents, cached: opts.Parents) -> None:
    env = sub.add_parser("env", parents=cached, help="build, list, remove and prune plugin envs")
    env_sub = env.add_subparsers(dest="env_command", required=True, metavar="ENV_COMMAND")

    build = env_sub.add_parser("build", parents=building, help="build envs for configs or specs")
    build.add_argument(
        "targets",
        nargs="+",
        type=opts.text,
        metavar="CONFIG|SPEC",
        help="a revad config (*.toml: every driver it names) or a driver spec",
    )
    build.add_argument(
        "--python", type=opts.text, help="interpreter for specs given directly (a version or path)"
    )
    opts.plugins_from_argument(build, "specs given directly")
    build.add_argument("--refresh", action="store_true", help="rebuild even if cached")
    build.set_defaults(handler=cmd_env_build)

    listing = env_sub.add_parser("list", parents=cached, help="list the cached envs")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=cmd_env_list)

    remove = env_sub.add_parser("remove", parents=cached, help="remove envs by key (or prefix)")
    remove.add_argument(
        "keys",
        nargs="+",
        type=opts.text,
        metavar="KEY",
        help="an env key or a unique prefix of one",
    )
    remove.set_defaults(handler=cmd_env_remove)

    prune = env_sub.add_parser("prune", parents=cached, help="remove envs not used lately")
    prune.add_argument(
        "--unused-days",
        type=opts.number(_defaults.UNUSED_DAYS_BOUNDS, "days"),
        default=_defaults.UNUSED_DAYS,
        metavar="N",
        help="remove envs and downloads not used for N days",
    )
    prune.set_defaults(handler=cmd_env_prune)

    export = env_sub.add_parser(
        "export", parents=building, help="bundle every wheel a locked config needs"
    )
    opts.config_argument(export)
    export.add_argument(
        "-o", "--output", type=opts.path, required=True, metavar="OUT", help="the bundle to write"
    )
    export.add_argument(
        "--format", choices=("tar", "dir"), default="tar", help="a tar file or a folder"
    )
    export.set_defaults(handler=cmd_env_export)

    imp = env_sub.add_parser(
        "import", parents=building, help="build the envs of a bundle, with no network"
    )
    imp.add_argument(
        "bundle", type=opts.path, metavar="BUNDLE", help="a bundle of env export (tar or folder)"
    )
    imp.add_argument("--python", type=opts.text, help="interpreter (default: the lock's version)")
    imp.set_defaults(handler=cmd_env_import)


def add_lock_command(sub: Any, building: opts.Parents) -> None:
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
        type=opts.path,
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
        type=opts.text,
        metavar="DRIVER",
        help="re-resolve every driver (--upgrade DRIVER CONFIG, the older form, names one)",
    )
    mode.add_argument(
        "--upgrade-package",
        type=opts.text,
        metavar="DRIVER",
        help="re-resolve only DRIVER (a service or plugin name), keep the others' pins",
    )
    lock.add_argument(
        "--python",
        action="append",
        type=opts.text,
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
    config = _config.load_file(path).with_overrides(**opts.overrides(args))
    with contextlib.closing(Planner(config)) as planner:
        if args.check:
            problems = _fleet.stale(planner, args.python or ())
            for problem in problems:
                print(f"reva-plugins: stale: {redact(problem)}", file=sys.stderr)
            if problems:
                return ExitCode.FAILURE
            print(f"{path}.lock: up to date")
            return ExitCode.OK
        written, changed = _fleet.lock(planner, upgrade, args.python or ())
    for name in sorted(written.services):
        entry = written.services[name]
        state = "locked" if name in changed else "unchanged"
        print(f"{name}\t{redact(entry.spec)}\t{entry.identity}\t{state}")
    log.info("wrote %s", written.path)
    return ExitCode.OK


def cmd_env_export(args: argparse.Namespace) -> int:
    """``env export CONFIG -o OUT``: a bundle of the lock and every wheel it pins."""
    from . import _fleet  # noqa: PLC0415

    config = _config.load_file(args.config).with_overrides(**opts.overrides(args))
    with contextlib.closing(Planner(config)) as planner:
        count = _fleet.export(planner, args.output, args.format)
    print(f"{args.output}\t{count} wheels")
    return ExitCode.OK


def cmd_env_import(args: argparse.Namespace) -> int:
    """``env import BUNDLE``: build every env the bundle's lock pins, offline."""
    from . import _fleet  # noqa: PLC0415

    config = _config.Config(base_dir=Path.cwd()).with_overrides(**opts.overrides(args))
    for service, done in _fleet.import_bundle(config, args.bundle.resolve(), args.python):
        state = f"built in {done.seconds:.2f} s" if done.built else "cached"
        print(f"{done.env_key}\t{service}\t{state}")
    return ExitCode.OK


def _store(args: argparse.Namespace) -> Store:
    settings = _config.Config(base_dir=Path.cwd()).with_overrides(**opts.overrides(args)).plugins
    store = Store(settings.cache_dir or default_cache_dir())
    store.ensure()
    return store


def cmd_env_build(args: argparse.Namespace) -> int:
    """``env build CONFIG|SPEC…``: build what is missing and print one env key per line.

    A config is planned like ``check`` plans it, under its own ``[plugins]`` table. Specs given
    directly are planned under ``--plugins-from``'s table (``allowed_sources`` included), else
    under the defaults; their relative paths resolve against the working directory.
    """
    settings = opts.settings(args)
    for target in args.targets:
        path = Path(target)
        if path.suffix == ".toml" and path.is_file():
            config = _config.load_file(path).with_overrides(**opts.overrides(args))
            services = config.services
        else:
            config = _config.Config(base_dir=Path.cwd(), plugins=settings)
            config = config.with_overrides(**opts.overrides(args))
            options = _config.PluginOptions(python=args.python)
            services = (_config.ServiceConfig("env", target, options, {}),)
        planner = Planner(config, refresh=args.refresh, progress=opts.PROGRESS)
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
            "key": shown(entry.key),
            "kind": "?",
            "source": "?",
            "identity": "",
            "version": "",
            "python": "?",
            "installer": "?",
            "size": dir_size(entry.path),
            "created": "",
            "last_used": _utc(store.last_used(entry)),
            "health": shown(entry.health() or "ok"),
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
            shown(r["kind"]),
            shown(r["source"]),
            shown(short_identity(str(r["identity"]))),
            shown(r["python"]),
            shown(r["installer"]),
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


def short_identity(identity: str) -> str:
    """What tells an env's source apart in a table: a requirement whole (``name==1.0``), a
    digest or commit shortened to 12 hex digits (``sha256:``/``tree:`` prefixes dropped)."""
    kind, sep, value = identity.rpartition(":")
    digest = value if sep and kind.isalnum() else identity
    if len(digest) > 12 and all(c in "0123456789abcdef" for c in digest):
        return digest[:12]
    return identity


def shown(text: str) -> str:
    """``text`` safe for one table cell: control characters and undecodable bytes escaped."""
    return text if text.isprintable() else ascii(text)[1:-1]


def cmd_env_remove(args: argparse.Namespace) -> int:
    """``env remove KEY…``: delete envs (unique key prefixes accepted); refuse one in use."""
    store = _store(args)
    entries = [store.find(key) for key in args.keys]
    for entry in entries:
        store.remove(entry.key)
        print(f"removed {shown(entry.key)}")
    return ExitCode.OK


def cmd_env_prune(args: argparse.Namespace) -> int:
    """``env prune``: delete envs unused for N days (not those in use), unused downloads as old,
    and leftovers of interrupted builds."""
    pruned = _store(args).prune(args.unused_days)
    for entry in pruned.envs:
        spec = redact(entry.meta.spec) if isinstance(entry, Env) else entry.health()
        print(f"removed {shown(entry.key)}\t{shown(spec)}")
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
