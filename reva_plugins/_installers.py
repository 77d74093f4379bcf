"""Installer backends behind one Protocol: uv when present (fast), virtualenv + pip otherwise."""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._errors import ConfigError, SourceError
from ._python import Interpreter
from ._run import CommandFailed, run


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

    def find_version(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> str:
        """The newest version of ``requirement`` the index offers for ``interpreter``."""
        ...


@functools.cache
def _packaged_uv() -> str | None:
    try:
        import uv  # noqa: PLC0415 - optional dependency

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return None


def find_uv() -> str | None:
    """The uv binary: from the ``uv`` package if installed, else on PATH."""
    return _packaged_uv() or shutil.which("uv")


def venv_python(venv: Path) -> Path:
    """A venv's interpreter."""
    return venv / "bin" / "python"


class UvInstaller:
    """``uv venv`` + ``uv pip install``."""

    name = "uv"

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def version(self) -> str:
        """uv's version: from the ``uv`` package if the binary is its own, else ``uv --version``."""
        if self.binary == _packaged_uv():
            from importlib.metadata import version  # noqa: PLC0415

            return version("uv")
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
        run([*argv, *_index_args(options, offline_flag="--offline"), *args])

    def find_version(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> str:
        """``uv pip compile --no-deps`` of the one requirement."""
        with tempfile.TemporaryDirectory(prefix="reva-req-") as tmp:
            req_file = Path(tmp) / "requirements.in"
            req_file.write_text(requirement + "\n", encoding="utf-8")
            argv = [
                self.binary, "pip", "compile", "--quiet", "--no-deps", "--no-header",
                "--no-annotate", "--python", interpreter.executable, str(req_file),
                *_index_args(options, offline_flag="--offline"),
            ]  # fmt: skip
            out = _run_resolution(argv, requirement)
        return _pinned_version(out, requirement)


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
        argv = [str(venv_python(venv)), "-m", "pip", "install", *_PIP_QUIET]
        run([*argv, *_index_args(options, offline_flag="--no-index"), *args])

    def find_version(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> str:
        """A dry-run ``pip install --report`` of the one requirement, with the core's pip."""
        argv = [
            *_core_pip(), "--python", interpreter.executable, "install",
            "--dry-run", "--no-deps", "--ignore-installed", "--report", "-", *_PIP_QUIET,
            *_index_args(options, offline_flag="--no-index"), requirement,
        ]  # fmt: skip
        out = _run_resolution(argv, requirement)
        try:
            report = json.loads(out[out.index("{") :])
            return str(report["install"][0]["metadata"]["version"])
        except (ValueError, KeyError, IndexError):
            raise SourceError(f"cannot read pip's resolution of {requirement!r}") from None


_PIP_QUIET = ("--quiet", "--disable-pip-version-check", "--no-input")


@functools.cache
def _core_pip() -> tuple[str, ...]:
    """A pip the core can run: its own, or (in a uv-made env without pip) the wheel that
    virtualenv embeds, run straight from the wheel."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("pip") is not None:
        return (sys.executable, "-m", "pip")
    from virtualenv.seed.wheels.embed import get_embed_wheel  # noqa: PLC0415

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheel = get_embed_wheel("pip", version)
    if wheel is None:
        raise SourceError("no pip is available to resolve requirements; install pip or use uv")
    return (sys.executable, str(Path(wheel.path) / "pip"))


def _index_args(options: InstallOptions, *, offline_flag: str) -> list[str]:
    argv: list[str] = []
    if options.index_url:
        argv += ["--index-url", options.index_url]
    for link in options.find_links:
        argv += ["--find-links", link]
    if options.offline:
        argv.append(offline_flag)
    return argv


def _run_resolution(argv: list[str], requirement: str) -> str:
    try:
        return run(argv, timeout=300)
    except CommandFailed as exc:
        raise SourceError(
            f"no version of {requirement!r} found on the package index:\n{exc.tail}"
        ) from None


def _pinned_version(out: str, requirement: str) -> str:
    for line in out.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name and not line.startswith("#"):
            return version.split(";")[0].strip()
    raise SourceError(f"the installer found no version of {requirement!r}")


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
