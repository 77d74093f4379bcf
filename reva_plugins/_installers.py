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
from typing import Literal, Protocol

from . import _auth, _git
from ._environ import build_environment
from ._errors import ConfigError, SourceError
from ._python import Interpreter
from ._subprocess import CommandFailed, run


@dataclass(frozen=True)
class InstallOptions:
    """Where packages come from; part of the env key."""

    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    offline: bool = False
    #: Never ask an index (a bundle's wheels through ``find_links`` only).
    no_index: bool = False

    def key_material(self) -> dict[str, object]:
        """What about these options changes what gets installed (offline and credentials do
        not): also what env metadata records, so it never holds a credential."""
        return {
            "index_url": _auth.without_credentials(self.index_url) if self.index_url else None,
            "find_links": [_auth.without_credentials(link) for link in self.find_links],
        }


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
            ],
            env=_git.git_env(),
        )

    def install(self, venv: Path, args: Sequence[str], options: InstallOptions) -> None:
        """Install into the venv's interpreter."""
        argv = [self.binary, "pip", "install", "--quiet", "--python", str(venv_python(venv))]
        index_argv, env = _index_args(options, "uv", offline_flag="--offline")
        bare_args, git_urls = _without_credentials(args)
        run([*argv, *index_argv, *bare_args], env={**_git.git_env(*git_urls), **env})

    def find_version(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> str:
        """``uv pip compile --no-deps`` of the one requirement."""
        with tempfile.TemporaryDirectory(prefix="reva-req-") as tmp:
            req_file = Path(tmp) / "requirements.in"
            req_file.write_text(requirement + "\n", encoding="utf-8")
            index_argv, env = _index_args(options, "uv", offline_flag="--offline")
            argv = [
                self.binary, "pip", "compile", "--quiet", "--no-deps", "--no-header",
                "--no-annotate", "--python", interpreter.executable, str(req_file), *index_argv,
            ]  # fmt: skip
            out = _run_resolution(argv, requirement, env)
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
            ],
            env=_git.git_env(),
        )

    def install(self, venv: Path, args: Sequence[str], options: InstallOptions) -> None:
        """``python -m pip install`` inside the venv."""
        argv = [str(venv_python(venv)), "-m", "pip", "install", *_PIP_QUIET]
        index_argv, env = _index_args(options, "pip", offline_flag="--no-index")
        bare_args, git_urls = _without_credentials(args)
        run([*argv, *index_argv, *bare_args], env={**_git.git_env(*git_urls), **env})

    def find_version(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> str:
        """A dry-run ``pip install --report`` of the one requirement, with the core's pip."""
        index_argv, env = _index_args(options, "pip", offline_flag="--no-index")
        argv = [
            *_core_pip(), "--python", interpreter.executable, "install",
            "--dry-run", "--no-deps", "--ignore-installed", "--report", "-", *_PIP_QUIET,
            *index_argv, requirement,
        ]  # fmt: skip
        out = _run_resolution(argv, requirement, env)
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


def _index_args(
    options: InstallOptions, installer: Literal["uv", "pip"], *, offline_flag: str
) -> tuple[list[str], dict[str, str]]:
    """The installer's index options: ``(argv, environment)``.

    A URL with credentials goes into the installer's environment variable for that option (the
    same setting as the flag, but not readable by other users through ``ps``); the rest stays on
    the command line. uv ignores ``UV_FIND_LINKS`` once ``--find-links`` is given, so for uv all
    links move together; pip adds ``--find-links`` to ``PIP_FIND_LINKS``, so only the secret
    ones move (joined to what the operator's ``PIP_FIND_LINKS`` already lists).
    """
    argv: list[str] = []
    env: dict[str, str] = {}
    prefix = installer.upper()
    if options.index_url and _has_credentials(options.index_url):
        env[f"{prefix}_INDEX_URL"] = options.index_url
    elif options.index_url:
        argv += ["--index-url", options.index_url]
    secret = [link for link in options.find_links if _has_credentials(link)]
    if installer == "uv" and secret:
        env["UV_FIND_LINKS"] = ",".join(options.find_links)
    else:
        if secret:
            env["PIP_FIND_LINKS"] = " ".join(
                filter(None, [*build_environment().get("PIP_FIND_LINKS", "").split(), *secret])
            )
        for link in options.find_links:
            if link not in secret:
                argv += ["--find-links", link]
    if options.offline:
        argv.append(offline_flag)
    if options.no_index and "--no-index" not in argv:
        argv.append("--no-index")
    return argv, env


def _has_credentials(url: str) -> bool:
    return _auth.without_credentials(url) != url


def _without_credentials(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``args`` with credentials taken out of ``git+`` URLs, and the URLs that had them (whose
    credentials git then gets through its environment)."""
    bare: list[str] = []
    secret: list[str] = []
    for arg in args:
        if arg.startswith("git+") and _has_credentials(arg):
            git = _git.parse(arg)
            bare.append(arg.replace(git.url, git.bare_url, 1))
            secret.append(git.url)
        else:
            bare.append(arg)
    return bare, secret


def _run_resolution(argv: list[str], requirement: str, env: dict[str, str]) -> str:
    try:
        return run(argv, env={**_git.git_env(), **env}, timeout=300)
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
