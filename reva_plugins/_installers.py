"""Installer backends behind one Protocol: uv when present (fast), virtualenv + pip otherwise."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
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

#: Every plugin wheel is built with this ``SOURCE_DATE_EPOCH``: backends that honour it
#: (setuptools, hatchling, flit, poetry-core, pdm) then write the same bytes from the same files
#: whatever their mtimes, so a wheel a lock pins can be rebuilt on a fresh checkout and checked
#: against the lock's sha256. It is hatchling's own default (2020-02-02), so hatchling wheels
#: locked before it was set are still the ones it builds.
SOURCE_DATE_EPOCH = "1580601600"


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

    @classmethod
    def only_from(cls, folder: Path) -> InstallOptions:
        """Install from the wheels in ``folder`` and nothing else: no index, no network."""
        return cls(find_links=(str(folder),), offline=True, no_index=True)

    def with_links(self, *folders: Path) -> InstallOptions:
        """These options with ``folders`` searched first."""
        return dataclasses.replace(self, find_links=(*map(str, folders), *self.find_links))


@dataclass(frozen=True)
class Pin:
    """One distribution at an exact version, with the hashes any of its files may have (what a
    lock holds per package). Names, versions and hashes are checked before one is made."""

    name: str
    version: str
    hashes: tuple[str, ...]

    def requirement_line(self) -> str:
        """The line of a ``--require-hashes`` requirements file."""
        return f"{self.name}=={self.version} " + " ".join(f"--hash={h}" for h in self.hashes)


class Installer(Protocol):
    """Creates venvs and installs into them; resolves, builds and downloads for locks and
    bundles. Every uv and pip command line is made behind this Protocol.

    Failures of the installer itself raise :class:`CommandFailed` (the caller knows which
    plugin it was for); an answer that cannot be read raises :class:`SourceError`.
    """

    @property
    def name(self) -> str:
        """``uv`` or ``pip`` (env metadata records it)."""
        ...

    def version(self) -> str:
        """The installer's version, for env metadata."""
        ...

    def create(self, venv: Path, interpreter: Interpreter) -> None:
        """Create an empty venv at ``venv`` from ``interpreter``."""
        ...

    def install(
        self, venv: Path, args: Sequence[str], options: InstallOptions, *, deps: bool = True
    ) -> None:
        """Install ``args`` (paths, URLs, requirements) into ``venv`` (without their
        dependencies when ``deps`` is False)."""
        ...

    def install_pinned(self, venv: Path, pins: Sequence[Pin], options: InstallOptions) -> None:
        """Install exactly ``pins`` into ``venv``: no dependencies, and every file checked
        against the pin's hashes (a file with another hash is refused)."""
        ...

    def find_version(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> str:
        """The newest version of ``requirement`` the index offers for ``interpreter``."""
        ...

    def resolve_pinned(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> list[Pin]:
        """Every distribution installing ``requirement`` (a requirement or a wheel's path) on
        ``interpreter`` installs, each at an exact version with its hashes."""
        ...

    def build_wheel(
        self, source: str, out: Path, interpreter: Interpreter, options: InstallOptions
    ) -> None:
        """Build ``source`` (a folder, an sdist or a git URL pinned to a commit) to one wheel
        in ``out``, with :data:`SOURCE_DATE_EPOCH` so a rebuild gives the same bytes."""
        ...

    def download(
        self, pins: Sequence[Pin], dest: Path, python: str, options: InstallOptions
    ) -> None:
        """Download a wheel of each of ``pins`` for Python ``python`` (``3.12``) into ``dest``,
        each checked against the pin's hashes; a pin with no such wheel fails."""
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


class _Installing:
    """What uv and pip share: an install command, pinned installs and downloads."""

    name: Literal["uv", "pip"]

    def _install_argv(self, venv: Path) -> list[str]:
        raise NotImplementedError

    def install(
        self, venv: Path, args: Sequence[str], options: InstallOptions, *, deps: bool = True
    ) -> None:
        """Install into the venv's interpreter (``uv pip install``, else the venv's own pip)."""
        argv = self._install_argv(venv)
        if not deps:
            argv.append("--no-deps")
        index_argv, env = _index_args(options, self.name)
        bare_args, git_urls = _without_credentials(args)
        run([*argv, *index_argv, *bare_args], env={**_git.git_env(*git_urls), **env})

    def install_pinned(self, venv: Path, pins: Sequence[Pin], options: InstallOptions) -> None:
        """``install --no-deps --require-hashes -r`` of the pins."""
        if not pins:
            return
        # Beside the venv, in the store's build folder (removed with it).
        req = venv.parent / "pinned-requirements.txt"
        req.write_text("".join(p.requirement_line() + "\n" for p in pins), encoding="utf-8")
        self.install(venv, ["--require-hashes", "-r", str(req)], options, deps=False)

    def download(
        self, pins: Sequence[Pin], dest: Path, python: str, options: InstallOptions
    ) -> None:
        """``pip download --only-binary=:all: --require-hashes`` with the core's pip (uv has no
        download command)."""
        if not pins:
            return
        with tempfile.TemporaryDirectory(prefix="reva-export-") as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text("".join(p.requirement_line() + "\n" for p in pins), encoding="utf-8")
            index_argv, env = _index_args(options, "pip")
            run(
                [*_core_pip(), "download", *_PIP_QUIET, "--no-deps", "--require-hashes",
                 "--only-binary=:all:", "--python-version", python, "--dest", str(dest),
                 *index_argv, "-r", str(req)],
                env={**_git.git_env(), **env}, timeout=600,
            )  # fmt: skip


class UvInstaller(_Installing):
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

    def _install_argv(self, venv: Path) -> list[str]:
        return [self.binary, "pip", "install", "--quiet", "--python", str(venv_python(venv))]

    def resolve_pinned(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> list[Pin]:
        """``uv pip compile --generate-hashes``: every file the index offers is hashed."""
        with tempfile.TemporaryDirectory(prefix="reva-lock-") as tmp:
            req = Path(tmp) / "requirements.in"
            req.write_text(requirement + "\n", encoding="utf-8")
            index_argv, env = _index_args(options, "uv")
            out = run(
                [self.binary, "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
                 "--no-annotate", "--python", interpreter.executable, *index_argv, str(req)],
                env={**_git.git_env(), **env}, timeout=600,
            )  # fmt: skip
        return parse_compiled(out)

    def build_wheel(
        self, source: str, out: Path, interpreter: Interpreter, options: InstallOptions
    ) -> None:
        """``uv build --wheel``; a git URL (which uv cannot build) with pip."""
        if source.startswith("git+"):
            _pip_wheel(source, out, options)
            return
        index_argv, env = _index_args(options, "uv")
        run(
            [self.binary, "build", "--quiet", "--wheel", "--python", interpreter.executable,
             "--out-dir", str(out), *index_argv, source],
            env={**_git.git_env(), **env, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}, timeout=600,
        )  # fmt: skip

    def find_version(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> str:
        """``uv pip compile --no-deps`` of the one requirement."""
        with tempfile.TemporaryDirectory(prefix="reva-req-") as tmp:
            req_file = Path(tmp) / "requirements.in"
            req_file.write_text(requirement + "\n", encoding="utf-8")
            index_argv, env = _index_args(options, "uv")
            argv = [
                self.binary, "pip", "compile", "--quiet", "--no-deps", "--no-header",
                "--no-annotate", "--python", interpreter.executable, str(req_file), *index_argv,
            ]  # fmt: skip
            out = _run_resolution(argv, requirement, env)
        return _pinned_version(out, requirement)


class PipInstaller(_Installing):
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

    def _install_argv(self, venv: Path) -> list[str]:
        return [str(venv_python(venv)), "-m", "pip", "install", *_PIP_QUIET]

    def resolve_pinned(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> list[Pin]:
        """A dry-run ``pip install --report`` with the core's pip: the hash of the file pip
        chose for each distribution."""
        index_argv, env = _index_args(options, "pip")
        out = run(
            [*_core_pip(), "--python", interpreter.executable, "install", "--dry-run",
             "--ignore-installed", "--report", "-", *_PIP_QUIET, *index_argv, requirement],
            env={**_git.git_env(), **env}, timeout=600,
        )  # fmt: skip
        return parse_report(out)

    def build_wheel(
        self, source: str, out: Path, interpreter: Interpreter, options: InstallOptions
    ) -> None:
        """``pip wheel --no-deps`` with the core's pip."""
        _pip_wheel(source, out, options)

    def find_version(
        self, requirement: str, interpreter: Interpreter, options: InstallOptions
    ) -> str:
        """A dry-run ``pip install --report`` of the one requirement, with the core's pip."""
        index_argv, env = _index_args(options, "pip")
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


def _pip_wheel(source: str, out: Path, options: InstallOptions) -> None:
    index_argv, env = _index_args(options, "pip")
    bare, git_urls = _without_credentials([source])
    run(
        [*_core_pip(), "wheel", "--no-deps", *_PIP_QUIET, "--wheel-dir", str(out), *index_argv,
         *bare],
        env={**_git.git_env(*git_urls), **env, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
        timeout=600,
    )  # fmt: skip


def parse_compiled(text: str) -> list[Pin]:
    """The pinned, hashed lines of ``uv pip compile --generate-hashes`` output."""
    joined = re.sub(r"\\\s*\n\s*", " ", text)
    out = []
    for raw in joined.splitlines():
        line = "" if raw.lstrip().startswith("#") else raw.strip()
        if not line or " @ " in line or "==" not in line.split()[0]:
            continue
        head, *rest = line.split()
        name, _, version = head.partition("==")
        hashes = tuple(t.removeprefix("--hash=") for t in rest if t.startswith("--hash="))
        out.append(Pin(name, version.split(";")[0], hashes))
    return out


def parse_report(text: str) -> list[Pin]:
    """The index distributions of a ``pip install --dry-run --report -`` (direct ones left out)."""
    try:
        report = json.loads(text[text.index("{") :])
        out = []
        for item in report["install"]:
            info = item.get("download_info", {})
            hashes = info.get("archive_info", {}).get("hashes", {})
            if item.get("is_direct") or "sha256" not in hashes:
                continue
            meta = item["metadata"]
            out.append(Pin(meta["name"], meta["version"], (f"sha256:{hashes['sha256']}",)))
        return out
    except (ValueError, KeyError, TypeError):
        raise SourceError("cannot read pip's dependency report") from None


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
    options: InstallOptions, installer: Literal["uv", "pip"]
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
        argv.append("--offline" if installer == "uv" else "--no-index")
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


def for_locking(*, app_data: Path) -> Installer:
    """The installer that resolves locks and builds their wheels, whatever the builds use: uv
    when installed (its hashes cover every file the index offers), else pip (the hash of the
    file it chose), so a lock does not depend on ``--installer``."""
    return select("auto", app_data=app_data)


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
