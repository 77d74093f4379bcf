"""Installer backends behind one Protocol: uv when present (fast), virtualenv + pip otherwise."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._errors import ConfigError
from ._python import Interpreter
from ._run import run


@dataclass(frozen=True)
class InstallOptions:
    """Where packages come from; part of the env key."""

    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    offline: bool = False

    def key_material(self) -> dict[str, object]:
        """What about these options changes what gets installed (offline does not)."""
        return {"index_url": self.index_url, "find_links": list(self.find_links)}


class Installer(Protocol):
    """Creates a venv and installs distributions into it."""

    name: str

    def version(self) -> str:
        """The installer's version, for env metadata."""
        ...

    def create(self, venv: Path, interpreter: Interpreter) -> None:
        """Create an empty venv at ``venv`` from ``interpreter``."""
        ...

    def install(self, venv: Path, args: Sequence[str], options: InstallOptions) -> None:
        """Install ``args`` (paths, URLs, requirements) into ``venv``."""
        ...


@functools.cache
def find_uv() -> str | None:
    """The uv binary: from the ``uv`` package if installed, else on PATH."""
    try:
        import uv  # noqa: PLC0415 - optional dependency

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def venv_python(venv: Path) -> Path:
    """A venv's interpreter."""
    return venv / "bin" / "python"


class UvInstaller:
    """``uv venv`` + ``uv pip install``."""

    name = "uv"

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def version(self) -> str:
        """``uv --version``, without the program name."""
        return run([self.binary, "--version"]).strip().removeprefix("uv ").strip()

    def create(self, venv: Path, interpreter: Interpreter) -> None:
        """A relocatable venv (so the temp dir it is built in can be renamed)."""
        run(
            [
                self.binary,
                "venv",
                "--quiet",
                "--no-project",
                "--relocatable",
                "--python",
                interpreter.executable,
                str(venv),
            ]
        )

    def install(self, venv: Path, args: Sequence[str], options: InstallOptions) -> None:
        """Install into the venv's interpreter."""
        argv = [self.binary, "pip", "install", "--quiet", "--python", str(venv_python(venv))]
        if options.index_url:
            argv += ["--index-url", options.index_url]
        for link in options.find_links:
            argv += ["--find-links", link]
        if options.offline:
            argv.append("--offline")
        run([*argv, *args])


class PipInstaller:
    """virtualenv (seeded with pip from its app-data cache) + ``pip install``."""

    name = "pip"

    def __init__(self, app_data: Path) -> None:
        self.app_data = app_data

    def version(self) -> str:
        """The version of pip virtualenv seeds."""
        from importlib.metadata import version  # noqa: PLC0415

        return f"virtualenv {version('virtualenv')}"

    def create(self, venv: Path, interpreter: Interpreter) -> None:
        """A virtualenv with pip only."""
        run(
            [
                sys.executable,
                "-m",
                "virtualenv",
                "--quiet",
                "--no-setuptools",
                "--no-periodic-update",
                "--app-data",
                str(self.app_data),
                "--python",
                interpreter.executable,
                str(venv),
            ]
        )

    def install(self, venv: Path, args: Sequence[str], options: InstallOptions) -> None:
        """``python -m pip install`` inside the venv."""
        argv = [
            str(venv_python(venv)),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ]
        if options.index_url:
            argv += ["--index-url", options.index_url]
        for link in options.find_links:
            argv += ["--find-links", link]
        if options.offline:
            argv.append("--no-index")
        run([*argv, *args])


def select(name: str, *, app_data: Path) -> Installer:
    """The installer for ``name`` (``auto``, ``uv`` or ``pip``)."""
    if name in ("auto", "uv"):
        binary = find_uv()
        if binary:
            return UvInstaller(binary)
        if name == "uv":
            raise ConfigError(
                "installer 'uv' requested but uv is not installed "
                "(pip install 'reva-plugins[uv]', or use installer = 'pip')",
                key="plugins.installer",
            )
    if name in ("auto", "pip"):
        return PipInstaller(app_data)
    raise ConfigError(f"unknown installer {name!r} (auto, uv, pip)", key="plugins.installer")
