"""nox sessions: tests over every available Python, and lint.

Pythons are looked up in pyenv's versions folder too: pyenv's ``python3.X`` shims fail unless
``PYENV_VERSION`` names the version, so it is set here from what is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint"]
nox.options.error_on_missing_interpreters = False

WANTED = ("3.10", "3.11", "3.12", "3.13")


def _pyenv_versions() -> list[str]:
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    if not versions.is_dir():
        return []
    return sorted(
        (
            d.name
            for d in versions.iterdir()
            if d.name.count(".") == 2 and d.name[:4].rstrip(".") in WANTED
        ),
        key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()),
    )


if "PYENV_VERSION" not in os.environ and _pyenv_versions():
    os.environ["PYENV_VERSION"] = ":".join(_pyenv_versions())


@nox.session(python=list(WANTED))
def tests(session: nox.Session) -> None:
    """The test suite on one Python."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


# The floors in pyproject.toml are proven here: each direct dependency at its lowest declared
# version, on the oldest Python (where tomli is a dependency) and on 3.11. The fast tier covers
# the pure functions (packaging's parsers, the config reader); these, what the floors are about:
# hooks, the host, env builds, the CLI, and the serve extra (grpcio, health, reflection,
# protobuf, cs3apis, prometheus-client).
LOWEST_TESTS = (
    "tests/test_host.py",
    "tests/test_host_api.py",
    "tests/test_cli.py",
    "tests/test_serve.py",
)


def _core_floors(python: str) -> list[str]:
    """``name==floor`` for each core dependency that applies on ``python``.

    A test tool may want more than a core floor (hatchling wants tomli>=1.2.2): the session
    puts the core's floor back afterwards, so what is proven is the floor pyproject.toml declares.
    """
    if sys.version_info >= (3, 11):
        import tomllib  # noqa: PLC0415
    else:  # pragma: no cover - nox itself on 3.10
        import tomli as tomllib  # noqa: PLC0415
    from packaging.requirements import Requirement  # noqa: PLC0415 - nox's own dependency

    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = []
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"python_version": python}):
            continue
        floors = [s.version for s in req.specifier if s.operator == ">="]
        if floors:
            pins.append(f"{req.name}=={floors[0]}")
    return pins


@nox.session(python=["3.10", "3.11"], venv_backend="uv")
def lowest(session: nox.Session) -> None:
    """The tests with every dependency at the lowest version pyproject.toml declares.

    nox -s lowest                      # the fast tier, then the host, CLI and serve tests
    nox -s lowest -- tests/            # everything
    """
    session.install("--resolution", "lowest-direct", "-e", ".[test]")  # uv pip install
    # With their own dependencies: a test tool may have pulled a newer one that no longer needs
    # what the floor does (twine wants packaging>=24, which dropped pyparsing; 21.3 needs it).
    session.install(*_core_floors(str(session.python)))
    pytest = ("pytest", "-p", "no:cacheprovider")
    if session.posargs:
        session.run(*pytest, *session.posargs)
        return
    session.run(*pytest, "-m", "not slow")
    session.run(*pytest, "-m", "slow", *LOWEST_TESTS)


# name: (folder in sample_plugins/, service, credentials); each folder has a conformance.toml.
SAMPLES = {
    "json_users": ("json_users", "userprovider", None),
    "json_auth": ("json_users", "authprovider", "einstein:relativity"),
    "json_groups": ("json_users", "groupprovider", None),
    "sqlite_users": ("sqlite_users", "userprovider", None),
    "logging_users": ("logging_users", "userprovider", None),
    "hashed_auth": ("hashed_auth", "authprovider", "einstein:relativity"),
}
KINDS = ("folder", "sdist", "wheel", "git")
INSTALLERS = ("uv", "pip")
MATRIX = [(sample, kind, inst) for sample in SAMPLES for kind in KINDS for inst in INSTALLERS]


@nox.session(python=list(WANTED))
@nox.parametrize(
    ("sample", "kind", "installer"), MATRIX, ids=[f"{s}-{k}-{i}" for s, k, i in MATRIX]
)
def plugins(session: nox.Session, sample: str, kind: str, installer: str) -> None:
    """The conformance suite on one sample, from one source kind, with one installer.

    nox -s plugins                                  # the whole matrix
    nox -s plugins -k "json_users and git and uv"   # a slice
    """
    from reva_plugins.testing import conformance_session  # noqa: PLC0415 - needs the core installed

    session.install("-e", ".[uv]", "build", "hatchling")
    name, service, credentials = SAMPLES[sample]
    folder = Path("sample_plugins") / name
    conformance_session(
        session,
        service=service,
        path=folder,
        kind=kind,
        installer=installer,
        credentials=credentials,
        config=folder / "conformance.toml",
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict."""
    session.install("-e", ".[test]")
    session.run("ruff", "check", ".")
    session.run("mypy")
