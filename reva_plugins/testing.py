"""Helpers for testing plugins: the conformance suite for pytest, and a nox session helper.

In a plugin's own tests::

    from reva_plugins.testing import assert_conforms

    def test_conforms(tmp_path):
        assert_conforms(".", "userprovider", cache_dir=tmp_path / "cache")

In a plugin's ``noxfile.py`` (a matrix of source kinds and installers on several Pythons)::

    import nox
    from reva_plugins.testing import KINDS, INSTALLERS, conformance_session

    @nox.session(python=["3.10", "3.11", "3.12", "3.13"])
    @nox.parametrize("kind", KINDS)
    @nox.parametrize("installer", INSTALLERS)
    def conformance(session, kind, installer):
        session.install("reva-plugins[uv]", "build")
        conformance_session(session, service="userprovider", kind=kind, installer=installer)

A noxfile that must not import the core (the scaffold's) runs the same inside the session::

    session.run("python", "-m", "reva_plugins.testing", ".", "--service", "userprovider",
                "--kind", kind, "--installer", installer)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._conformance import Check, Report, run_conformance
from ._present import format_report
from ._sources import SAMPLE_KINDS, sample_spec
from .services import get_service

__all__ = [
    "INSTALLERS",
    "KINDS",
    "Check",
    "Report",
    "assert_conforms",
    "conformance_session",
    "format_report",
    "prepare_source",
    "result_problems",
    "run_conformance",
]

KINDS = SAMPLE_KINDS
INSTALLERS = ("uv", "pip")


def assert_conforms(
    spec: str | Path,
    service: str,
    *,
    config: Mapping[str, Any] | None = None,
    credentials: tuple[str, str] | None = None,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> Report:
    """Run the conformance suite on ``spec``; raise ``AssertionError`` with the table if it fails.

    Give ``cache_dir`` (e.g. pytest's ``tmp_path``) so tests never touch the user's cache.
    """
    report = run_conformance(
        str(spec), service, config=config, credentials=credentials, cache_dir=cache_dir, **options
    )
    if not report.ok:
        raise AssertionError(format_report(report))
    return report


def result_problems(service: str, method: str, value: object) -> list[str]:
    """What is wrong with ``value`` as a result of ``method`` of ``service`` (empty when nothing
    is): the service type's own validation, the one the conformance suite applies. In a
    plugin's unit tests, without starting it::

        assert result_problems("userprovider", "get_user", provider.get_user(uid)) == []
    """
    return get_service(service).validate_result(method, value)


def prepare_source(path: str | Path, kind: str, workdir: str | Path) -> str:
    """A driver spec of ``kind`` for the package folder at ``path``: the folder itself, an
    sdist or wheel built with pypa/build, or a ``git+file://`` URL of a fresh commit."""
    return sample_spec(kind, Path(path).resolve(), Path(workdir))


def conformance_session(
    session: Any,
    *,
    service: str,
    path: str | Path = ".",
    kind: str = "folder",
    installer: str = "uv",
    credentials: str | None = None,
    config: str | Path | None = None,
) -> None:
    """Inside a nox session: turn ``path`` into a source of ``kind`` and run
    ``reva-plugins conformance`` on it with ``installer``, in a throw-away cache."""
    with tempfile.TemporaryDirectory(prefix="reva-conformance-") as tmp:
        spec = prepare_source(path, kind, tmp)
        args = ["reva-plugins", "--cache-dir", str(Path(tmp) / "cache"), "--installer", installer]
        args += ["conformance", spec, "--service", service]
        if credentials:
            args += ["--credentials", credentials]
        if config:
            args += ["--config", str(config)]
        session.run(*args)


class _Here:
    """``conformance_session``'s session, for ``python -m reva_plugins.testing``: runs the
    command in this interpreter's environment (the session's venv)."""

    def run(self, *args: str) -> None:
        command = [sys.executable, "-m", "reva_plugins", *args[1:]]  # args[0]: reva-plugins
        code = subprocess.run(command, check=False).returncode
        if code:
            raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    """``python -m reva_plugins.testing [PATH] --service S [--kind K] [--installer I]``: what
    :func:`conformance_session` runs, from inside a session that has the core installed."""
    import argparse  # noqa: PLC0415 - only this entry point needs it

    parser = argparse.ArgumentParser(
        prog="python -m reva_plugins.testing",
        description="Run the conformance suite on a plugin folder, built as one source kind.",
    )
    parser.add_argument("path", nargs="?", default=".", help="the plugin's folder")
    parser.add_argument("--service", required=True, help="the service type it implements")
    parser.add_argument("--kind", choices=KINDS, default="folder", help="the source kind")
    parser.add_argument("--installer", choices=INSTALLERS, default="uv", help="the installer")
    parser.add_argument("--credentials", metavar="ID:SECRET", help="valid credentials")
    parser.add_argument("--config", metavar="FILE", help="TOML file with the driver's table")
    args = parser.parse_args(argv)
    conformance_session(
        _Here(),
        service=args.service,
        path=args.path,
        kind=args.kind,
        installer=args.installer,
        credentials=args.credentials,
        config=args.config,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
