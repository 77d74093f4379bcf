"""``reva-plugins new``: a ready plugin distribution that passes its own tests and conformance."""

from __future__ import annotations

import inspect
import json
import keyword
import re
import textwrap
from pathlib import Path

from ._errors import UsageError
from .services import ServiceType, get_service

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{dist}"
version = "0.1.0"
description = "A reva {service} plugin"
readme = "README.md"
requires-python = ">=3.10"
dependencies = []

[project.optional-dependencies]
test = ["reva-plugins[uv]", "pytest", "build"]

[project.entry-points."{group}"]
{entry} = "{module}:{cls}"

[tool.hatch.build.targets.wheel]
packages = ["{module}"]
"""

GENERIC = '''\
"""{dist}: a reva {service} plugin (every method a stub to fill in)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
{errors}


class {cls}:
    """A {service} driver."""

    def configure(self, config: dict[str, Any]) -> None:
        """Called once, with the driver's config table, before any other method."""
        self.config = config
{methods}'''

TEST = '''\
"""Runs the reva-plugins conformance suite on this plugin (builds it into a temp cache)."""

from pathlib import Path

from reva_plugins.testing import assert_conforms

ROOT = Path(__file__).resolve().parent.parent


def test_conforms(tmp_path: Path) -> None:
    assert_conforms(ROOT, "{service}", cache_dir=tmp_path / "cache"{credentials})
'''

NOXFILE = '''\
"""Test this plugin on several Pythons, from each source kind, with uv and with pip.

    nox -l                   # the sessions
    nox                      # everything
    nox -s "conformance-3.12(kind='wheel', installer='uv')"

This file needs nothing but nox: the core (reva-plugins) is installed into each session. By
default it comes from the index; point REVA_PLUGINS_CORE at a wheel, a source checkout or any
requirement to test against another (PIP_FIND_LINKS / UV_FIND_LINKS work as usual, too):

    REVA_PLUGINS_CORE=~/src/reva-plugins nox
    REVA_PLUGINS_CORE="reva-plugins[uv]==0.1.0" nox
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
KINDS = {kinds}
INSTALLERS = {installers}


def _core() -> list[str]:
    """What installs the core: $REVA_PLUGINS_CORE (a wheel, a folder, a requirement), else the
    index's reva-plugins; with the uv extra, the installer the conformance sessions use."""
    core = os.environ.get("REVA_PLUGINS_CORE", "").strip() or "reva-plugins"
    path = Path(core).expanduser()
    if path.exists():
        return [f"reva-plugins[uv] @ {{path.resolve().as_uri()}}"]
    return [core if "[" in core else core.replace("reva-plugins", "reva-plugins[uv]", 1)]


def _interpreter_dirs() -> list[str]:
    """Where the wanted Pythons live besides PATH, as the core looks for them: pyenv's versions
    folder (its python3.X shims fail unless PYENV_VERSION names the version) and uv's managed
    Pythons. Only folders holding one of the wanted python3.X are taken."""
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    roots = [
        Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions",
        Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or data / "uv" / "python"),
    ]
    found = []
    for root in roots:
        for version in sorted(root.iterdir()) if root.is_dir() else ():
            if any((version / "bin" / f"python{{wanted}}").exists() for wanted in PYTHONS):
                found.append(str(version / "bin"))
    return found


os.environ["PATH"] = os.pathsep.join([*_interpreter_dirs(), os.environ.get("PATH", "")])


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install(*_core())
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS)
@nox.parametrize("kind", KINDS)
@nox.parametrize("installer", INSTALLERS)
def conformance(session: nox.Session, kind: str, installer: str) -> None:
    session.install(*_core(), "build")
    session.run(
        "python", "-m", "reva_plugins.testing", ".", "--service", "{service}",
        "--kind", kind, "--installer", installer{credentials_args},
    )
'''

README = """\
# {dist}

A reva `{service}` plugin. The core runs it in its own virtual environment and process.

## Use it

```toml
[grpc.services.{service}]
driver = "{dist}==0.1.0"          # from a package index; or a path, a wheel, a git URL

[grpc.services.{service}.drivers.{entry}]
# this driver's own config
```

## Develop it

```sh
python -m pip install -e '.[test]'
pytest                                        # the conformance suite, from this folder
reva-plugins conformance . --service {service}{credentials_cli}
nox                                           # Pythons x source kinds x installers
REVA_PLUGINS_CORE=../reva-plugins nox         # against a core not on your index (or PIP_FIND_LINKS)
```

## Publish it

```sh
python -m build                               # dist/*.whl and dist/*.tar.gz
python -m twine upload dist/*                 # or any index: --repository-url URL
```

Then point a config at `{dist}==0.1.0` (with `[plugins] index_url` for a private index).
"""


#: A distribution name as the core packaging specs define it (PEP 508; case-insensitive).
_DIST_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)


def scaffold(path: Path, service: str, *, name: str | None = None) -> list[Path]:
    """Write a plugin distribution for ``service`` into ``path`` (which must be new or empty).

    Nothing that exists is ever overwritten: every file is created exclusively.
    """
    service_type = get_service(service)
    _check_target(path)
    if name is not None and not _DIST_NAME.match(name):
        raise UsageError(
            f"--name {name!r} is not a valid distribution name (letters, digits and . _ -, "
            "starting and ending with a letter or digit)"
        )
    # PEP 503 normalisation for a given name; a folder name is only a hint, so it is mangled.
    stem = re.sub(r"[^a-z0-9]+", "-", (name or path.resolve().name).lower()).strip("-") or "plugin"
    dist = stem if stem.startswith("reva-plugin") else f"reva-plugin-{stem}"
    module = dist.replace("-", "_")
    entry = re.sub(r"[^a-z0-9_]", "_", stem.removeprefix("reva-plugin-")) or "plugin"
    if keyword.iskeyword(module) or not module.isidentifier():
        raise UsageError(f"{dist!r} does not make a valid module name; pass --name")
    words = [*entry.split("_"), *service.split("_")]
    cls = "".join(part.title() for part in words).replace("provider", "Provider")
    if not cls.isidentifier():  # an entry name starting with a digit
        cls = f"Reva{cls}"
    credentials = service_type.scaffold.credentials if service_type.scaffold else None
    values = {
        "dist": dist,
        "module": module,
        "entry": entry,
        "cls": cls,
        "service": service,
        "group": service_type.group,
        "credentials": f", credentials={credentials!r}" if credentials else "",
        "credentials_cli": f" --credentials {':'.join(credentials)}" if credentials else "",
        "credentials_args": (
            f', "--credentials", {json.dumps(":".join(credentials))}' if credentials else ""
        ),
        # The noxfile imports nothing of the core: the matrix is written into it (the same as
        # reva_plugins.testing's KINDS and INSTALLERS; a test holds the two together).
        "kinds": json.dumps(["folder", "sdist", "wheel", "git"]),
        "installers": json.dumps(["uv", "pip"]),
    }
    files = {
        "pyproject.toml": PYPROJECT.format(**values),
        f"{module}/__init__.py": _module_source(service_type, values),
        "tests/test_conformance.py": TEST.format(**values),
        "noxfile.py": NOXFILE.format(**values),
        "README.md": README.format(**values),
        ".gitignore": "dist/\nbuild/\n.nox/\n__pycache__/\n*.egg-info/\n",
    }
    written = []
    try:
        for rel, text in files.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("x", encoding="utf-8") as f:  # "x": never overwrite
                f.write(text)
            written.append(target)
    except OSError as exc:
        raise UsageError(f"cannot write the plugin into {path}: {exc.strerror or exc}") from None
    return written


def _check_target(path: Path) -> None:
    """Refuse a target that is anything but a new path or an empty folder."""
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link; choose a new folder")
    if not path.exists():
        return
    if not path.is_dir():
        raise UsageError(f"{path} exists and is not a folder; choose a new folder")
    try:
        empty = next(path.iterdir(), None) is None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not empty:
        raise UsageError(f"{path} exists and is not empty; choose a new folder")


def _module_source(service: ServiceType, values: dict[str, str]) -> str:
    if service.scaffold is not None:
        return service.scaffold.module.format(**values)
    errors = "".join(
        f'\n\nclass {name}(Exception):\n    """Raised for {name} (the core maps it by name)."""\n'
        for name in service.errors
    )
    methods = ""
    for method, sig in service.signatures.items():
        bare = [str(p.replace(annotation=inspect.Parameter.empty)) for p in sig.parameters.values()]
        params = ", ".join(["self", *bare])
        methods += textwrap.dedent(
            f'''
            def {method}({params}) -> Any:
                """{service.doc(method).splitlines()[0] if service.doc(method) else method}"""
                raise NotImplementedError("{method}")
            '''
        ).replace("\n", "\n    ")
    return GENERIC.format(methods=methods, errors=errors, **values)
