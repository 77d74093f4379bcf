"""``reva-plugins new``: a ready plugin distribution that passes its own tests and conformance."""

from __future__ import annotations

import inspect
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

    nox                      # everything
    nox -s "conformance-3.12(kind='wheel', installer='uv')"
"""

import nox

from reva_plugins.testing import INSTALLERS, KINDS, conformance_session

nox.options.error_on_missing_interpreters = False


@nox.session(python=["3.10", "3.11", "3.12", "3.13"])
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=["3.10", "3.11", "3.12", "3.13"])
@nox.parametrize("kind", KINDS)
@nox.parametrize("installer", INSTALLERS)
def conformance(session: nox.Session, kind: str, installer: str) -> None:
    session.install("reva-plugins[uv]", "build")
    conformance_session(
        session, service="{service}", kind=kind, installer=installer{credentials_nox}
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
        "credentials_nox": f", credentials={':'.join(credentials)!r}" if credentials else "",
        "credentials_cli": f" --credentials {':'.join(credentials)}" if credentials else "",
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
