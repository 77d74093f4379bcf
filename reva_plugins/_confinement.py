"""What a plugin process may reach, planned from its service's config: the Landlock policy its
bootstrap applies to itself (``_sandbox``) and the user it runs as.

Sandboxed, a plugin reads and runs its own env, the Python it runs on and the system's programs
and libraries; reads the few system files a Python program needs (``_sandbox.SYSTEM_READ``, not
the rest of ``/etc``) and the core's package folder (the bootstrap's own files); reads and
writes the paths its driver table names, ``read_paths``/``write_paths``, its private ``TMPDIR``
and a few devices. Nothing else: not the files beside the config, not the cache beyond its env,
not other plugins' envs, not other processes' ``/proc`` entries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import _protocol, _sandbox
from ._config import LoaderSettings, ServiceConfig
from ._errors import ConfigError

log = logging.getLogger("reva_plugins.sandbox")

#: the reason a sandbox of "auto" is not applied where the kernel has no Landlock
NO_LANDLOCK = "the kernel has no Landlock (not built in, or disabled at boot)"

_warned: set[str] = set()


def plan_sandbox(
    svc: ServiceConfig,
    settings: LoaderSettings,
    *,
    python: Path,
    driver_config: Mapping[str, Any],
    base_dir: Path,
    keep_out: tuple[Path, ...],
    file: str,
) -> tuple[_protocol.SandboxPolicy | None, str]:
    """The policy for ``svc``'s plugin (None: no sandbox) and, without one, what its state is
    (``off`` or ``unavailable: why``). ``keep_out`` (the config file, the cache) is never granted
    through a path the driver table names."""
    own = svc.plugin.sandbox
    mode = settings.sandbox if own is None else own
    key = "plugins.sandbox" if own is None else f"{svc.key}.plugin.sandbox"
    if mode is False:
        return None, _protocol.SANDBOX_OFF
    abi = _sandbox.abi()
    if abi < 1:
        if mode is True:
            raise ConfigError(f"sandbox = true, but {NO_LANDLOCK}", file=file, key=key)
        if NO_LANDLOCK not in _warned:
            _warned.add(NO_LANDLOCK)
            log.warning('%s: plugins run unsandboxed (sandbox = "auto")', NO_LANDLOCK)
        return None, f"{_protocol.SANDBOX_UNAVAILABLE}: {NO_LANDLOCK}"
    ports = svc.plugin.connect_ports
    if ports is not None and abi < 4:
        raise ConfigError(
            f"connect needs Landlock's TCP rules (ABI 4); this kernel has ABI {abi}",
            file=file,
            key=f"{svc.key}.plugin.connect",
        )
    env = python.parent.parent
    policy = _protocol.SandboxPolicy(
        read_exec=_unique(
            [env, *_python_homes(env, python), *map(Path, _sandbox.SYSTEM_READ_EXEC)]
        ),
        read=_unique(
            [
                *map(Path, _sandbox.SYSTEM_READ),
                Path(_protocol.BOOTSTRAP_FILE).parent,
                *svc.plugin.read_paths,
            ]
        ),
        write=_unique(
            [
                *map(Path, _sandbox.DEVICES),
                *table_paths(driver_config, base_dir, keep_out),
                *svc.plugin.write_paths,
            ]
        ),
        connect=ports,
        required=mode is True,
    )
    return policy, ""


def run_as(svc: ServiceConfig, settings: LoaderSettings, *, file: str) -> str | None:
    """The user ``svc``'s plugin runs as (None: the core's own); only a root core can switch."""
    user = svc.plugin.user or settings.user
    if user is not None and os.geteuid() != 0:
        key = f"{svc.key}.plugin.user" if svc.plugin.user else "plugins.user"
        raise ConfigError(
            f"user = {user!r} needs the core to run as root (it runs as uid {os.geteuid()})",
            file=file,
            key=key,
        )
    return user


def table_paths(
    config: Mapping[str, Any], base_dir: Path, keep_out: tuple[Path, ...] = ()
) -> list[Path]:
    """The existing files and folders the string values of a driver table name (relative to
    the config's folder), but never the file system's root nor a folder holding one of
    ``keep_out`` (the config file, the cache): a ``data = "."`` must not open the config."""
    found = []
    for value in _strings(config):
        if not value or "\n" in value or len(value) > 4096:
            continue
        try:
            path = (base_dir / Path(value).expanduser()).resolve()
            exists = path.exists()
        except (OSError, RuntimeError, ValueError):
            continue
        if not exists or path == Path(path.anchor):
            continue
        if any(out == path or path in out.parents for out in keep_out):
            log.warning(
                "%s is not opened to the plugin: it holds the config or the cache (name the "
                "files it needs in read_paths or write_paths)",
                path,
            )
            continue
        found.append(path)
    return found


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:  # iterative: driver tables are user input
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _python_homes(env: Path, python: Path) -> list[Path]:
    """Where the interpreter of the venv ``env`` lives: its base prefix (``pyvenv.cfg``'s
    ``base-prefix``, else the parent of its ``home``) and the real interpreter's prefix."""
    homes = [Path(os.path.realpath(python)).parent.parent]
    try:
        lines = (env / "pyvenv.cfg").read_text(encoding="utf-8").splitlines()
    except OSError:
        return homes
    for line in lines:
        name, sep, value = line.partition("=")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        if name == "base-prefix":
            homes.append(Path(value))
        elif name == "home":
            homes.append(Path(value).parent)
    return [Path(os.path.realpath(home)) for home in homes]


def _unique(paths: list[Path]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(path) for path in paths))
