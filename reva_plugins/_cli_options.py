"""The command line's building blocks: its parser class, argument types, global options and
what commands share (the settings they plan under, the progress line)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import _config, _defaults
from ._errors import ExitCode
from ._present import TickingProgress
from ._store import resolve_cache_dir
from .services import BUILTIN

# Checked when the command runs (after logging is set up), not here: reading the registry loads
# other packages' service types, and a broken one is logged, not fatal.
SERVICE_HELP = (
    f"the service type: {', '.join(BUILTIN)}, or one an installed package registers "
    "(entry point group reva_plugins.services)"
)


#: the parent parsers whose options a command takes
Parents = Sequence[argparse.ArgumentParser]

#: the build progress shown on stderr (the log handler clears its line before each record)
PROGRESS = TickingProgress(sys.stderr)


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


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit 2), like every other mistake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def number(bounds: tuple[float, float], unit: str) -> Callable[[str], float]:
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


def text(value: str) -> str:
    """An argparse type: a non-empty argument without control characters."""
    problem = _config.text_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def path(value: str) -> Path:
    """An argparse type: a path (see :func:`text`)."""
    return Path(text(value))


def credentials(text: str) -> tuple[str, str]:
    """An argparse type for ``ID:SECRET`` (the secret is never echoed)."""
    client_id, sep, secret = text.partition(":")
    if not sep or not client_id:
        raise argparse.ArgumentTypeError("must be ID:SECRET (a client id, a colon, the secret)")
    return client_id, secret


def global_options(*, defaults: bool) -> tuple[Parser, Parser, Parser]:
    """The global options, accepted before and after the command (only the top level sets
    defaults): the env cache's (for commands that use it), the installer's (for commands that
    plan or build envs) and the output's (for every command)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    cache = Parser(add_help=False)
    cache.add_argument(
        "--cache-dir",
        type=path,
        default=default(None),
        metavar="DIR",
        help="the env cache (default: $REVA_PLUGINS_CACHE_DIR, else the user cache dir)",
    )
    install = Parser(add_help=False)
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
    output = Parser(add_help=False)
    output.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="more output (tracebacks)"
    )
    output.add_argument("-q", "--quiet", action="count", default=default(0), help="less output")
    return cache, install, output


def config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", type=path, metavar="CONFIG", help="a revad TOML config ([grpc.services.X])"
    )


def plugins_from_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--plugins-from",
        type=path,
        metavar="CONFIG",
        help=f"a revad config whose [plugins] table applies to {what} (allowed_sources, "
        "index_url, python …; its relative paths and patterns resolve against its own folder)",
    )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cache_dir": resolve_cache_dir(args.cache_dir) if args.cache_dir else None,
        "installer": args.installer,
        "offline": args.offline,
    }


def settings(args: argparse.Namespace) -> _config.LoaderSettings:
    """The loader settings for specs typed on the command line: ``--plugins-from``'s
    ``[plugins]`` table, else the defaults (whose ``allowed_sources`` allows every spec)."""
    if args.plugins_from is None:
        return _config.LoaderSettings()
    return _config.load_file(args.plugins_from).plugins
