"""nox sessions: tests over every available Python, and lint.

Pythons are looked up in pyenv's versions folder too: pyenv's ``python3.X`` shims fail unless
``PYENV_VERSION`` names the version, so it is set here from what is installed.
"""

from __future__ import annotations

import os
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


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict."""
    session.install("-e", ".[test]")
    session.run("ruff", "check", ".")
    session.run("mypy")
