"""``reva-plugins new``: a ready plugin distribution that passes its own tests and conformance."""

from __future__ import annotations

import keyword
import re
import textwrap
from pathlib import Path

from ._errors import UsageError
from .services import SERVICES

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

[project.entry-points."reva.{service}"]
{entry} = "{module}:{cls}"

[tool.hatch.build.targets.wheel]
packages = ["{module}"]
"""

USERPROVIDER = '''\
"""{dist}: a reva user provider.

It needs nothing from reva-plugins at run time: errors are its own classes, and the core maps
them to its typed exceptions by class name (``NotFound``, ``InvalidArgument``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported for annotations only: a plugin process pays imports at every start
    from typing import Any

#: A tiny demo data set, used when the driver's config has no ``users`` list.
DEMO_USERS: list[dict[str, Any]] = [
    {{
        "id": {{"idp": "https://demo.example.org", "opaque_id": "alice", "type": 1}},
        "username": "alice",
        "mail": "alice@example.org",
        "display_name": "Alice Demo",
        "groups": ["demo"],
        "uid_number": 1001,
        "gid_number": 1000,
    }},
    {{
        "id": {{"idp": "https://demo.example.org", "opaque_id": "bob", "type": 1}},
        "username": "bob",
        "mail": "bob@example.org",
        "display_name": "Bob Demo",
        "groups": ["demo", "admins"],
        "uid_number": 1002,
        "gid_number": 1000,
    }},
]
CLAIMS = {{"mail": "mail", "username": "username", "uid": "uid_number", "gid": "gid_number"}}


class NotFound(Exception):
    """No such user."""


class InvalidArgument(Exception):
    """A claim this provider does not know."""


class {cls}:
    """Reva's ``user.Manager``: look users up by id, claim or query."""

    def __init__(self) -> None:
        self.users: list[dict[str, Any]] = []

    def configure(self, config: dict[str, Any]) -> None:
        """Called once, with the driver's config table, before any other method."""
        self.users = list(config.get("users") or DEMO_USERS)

    def _find(self, user_id: dict[str, Any]) -> dict[str, Any]:
        for user in self.users:
            if user["id"]["opaque_id"] == user_id.get("opaque_id"):
                return user
        raise NotFound(f"user {{user_id.get('opaque_id')!r}} not found")

    @staticmethod
    def _public(user: dict[str, Any], skip_fetching_groups: bool = False) -> dict[str, Any]:
        out = {{k: v for k, v in user.items() if k != "secret"}}
        if skip_fetching_groups:
            out["groups"] = []
        return out

    def get_user(
        self, user_id: dict[str, Any], skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user with this id; raises ``NotFound``."""
        return self._public(self._find(user_id), skip_fetching_groups)

    def get_user_by_claim(
        self, claim: str, value: str, skip_fetching_groups: bool = False
    ) -> dict[str, Any]:
        """The user whose ``claim`` (mail, username, uid, gid) equals ``value``."""
        field = CLAIMS.get(claim)
        if field is None:
            raise InvalidArgument(f"unsupported claim {{claim!r}}")
        for user in self.users:
            if str(user.get(field)) == str(value):
                return self._public(user, skip_fetching_groups)
        raise NotFound(f"no user with {{claim}} {{value!r}}")

    def get_user_groups(self, user_id: dict[str, Any]) -> list[str]:
        """The groups of the user with this id."""
        return list(self._find(user_id).get("groups", []))

    def find_users(self, query: str, skip_fetching_groups: bool = False) -> list[dict[str, Any]]:
        """Users whose username, display name, mail or id contain ``query`` (any case)."""
        needle = query.lower()

        def matches(user: dict[str, Any]) -> bool:
            values = (user["username"], user["display_name"], user["mail"], user["id"]["opaque_id"])
            return any(needle in str(value).lower() for value in values)

        return [self._public(u, skip_fetching_groups) for u in self.users if matches(u)]
'''

AUTHPROVIDER = '''\
"""{dist}: a reva auth provider.

It needs nothing from reva-plugins at run time: ``InvalidCredentials`` is its own class, and the
core maps it to its typed exception by class name.
"""

from __future__ import annotations

import hmac

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported for annotations only: a plugin process pays imports at every start
    from typing import Any

#: A demo account, used when the driver's config has no ``accounts`` table.
DEMO_ACCOUNTS: dict[str, str] = {{"demo": "demo-secret"}}


class InvalidCredentials(Exception):
    """Unknown client id or wrong secret."""


class {cls}:
    """Reva's ``auth.Manager``: check a client id and secret."""

    def __init__(self) -> None:
        self.accounts: dict[str, str] = {{}}

    def configure(self, config: dict[str, Any]) -> None:
        """Called once, with the driver's config table, before any other method."""
        self.accounts = dict(config.get("accounts") or DEMO_ACCOUNTS)

    def authenticate(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """The user and its scopes; raises ``InvalidCredentials``."""
        expected = self.accounts.get(client_id)
        if expected is None or not hmac.compare_digest(expected, client_secret):
            raise InvalidCredentials("invalid client id or secret")
        user = {{
            "id": {{"idp": "https://demo.example.org", "opaque_id": client_id, "type": 1}},
            "username": client_id,
            "mail": f"{{client_id}}@example.org",
            "display_name": client_id.title(),
            "groups": [],
            "uid_number": 1000,
            "gid_number": 1000,
        }}
        return {{"user": user, "scopes": {{"user": {{"role": 1}}}}}}
'''

GENERIC = '''\
"""{dist}: a reva {service} plugin."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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
    assert_conforms(ROOT, "{service}", cache_dir=tmp_path{credentials})
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
    conformance_session(session, service="{service}", kind=kind, installer=installer{credentials})
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
    if service not in SERVICES:
        raise UsageError(f"unknown service {service!r} (known: {', '.join(sorted(SERVICES))})")
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
    cls = "".join(part.title() for part in entry.split("_")) + service.title().replace(
        "provider", "Provider"
    )
    if not cls.isidentifier():  # an entry name starting with a digit
        cls = f"Reva{cls}"
    is_auth = service == "authprovider"
    values = {
        "dist": dist,
        "module": module,
        "entry": entry,
        "cls": cls,
        "service": service,
        "credentials": ', credentials=("demo", "demo-secret")' if is_auth else "",
        "credentials_cli": " --credentials demo:demo-secret" if is_auth else "",
    }
    files = {
        "pyproject.toml": PYPROJECT.format(**values),
        f"{module}/__init__.py": _module_source(service, values),
        "tests/test_conformance.py": TEST.format(**values),
        "noxfile.py": NOXFILE.format(**values).replace(
            ', credentials=("demo", "demo-secret")', ', credentials="demo:demo-secret"'
        ),
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


def _module_source(service: str, values: dict[str, str]) -> str:
    if service == "userprovider":
        return USERPROVIDER.format(**values)
    if service == "authprovider":
        return AUTHPROVIDER.format(**values)
    methods = ""
    for method, sig in SERVICES[service].signatures.items():
        params = ", ".join(["self", *(str(p).split(":")[0] for p in sig.parameters.values())])
        methods += textwrap.dedent(
            f'''
            def {method}({params}) -> Any:
                """{(getattr(SERVICES[service].spec, method).__doc__ or "").strip()}"""
                raise NotImplementedError("{method}")
            '''
        ).replace("\n", "\n    ")
    return GENERIC.format(methods=methods, **values)
