"""The layering ``ARCHITECTURE.md`` describes, enforced over ``reva_plugins/``'s source.

Only imports that run count: an import under ``if TYPE_CHECKING:`` (type hints only) is free.
Every module must be placed in a layer, so a new module is placed on purpose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reva_plugins"

#: The modules of the source kinds, one per kind (``_sources/<kind>.py``).
SOURCE_KINDS = ("inprocess", "venv", "folder", "file", "git", "archive", "requirement")

#: Each module's layer; a module imports only modules of its own layer or a lower one.
LAYERS: dict[str, int] = {
    # 0 - leaves: shared by both halves
    **dict.fromkeys(["_errors", "_redact", "_fs", "_environ", "_subprocess", "_wire"], 0),
    **dict.fromkeys(["_version", "_sandbox", "_poll", "_codec"], 0),
    # 1 - the build half, the run half, defaults, service types
    **dict.fromkeys(["_auth", "_urls", "_git", "_python", "_installers", "_sources"], 1),
    **dict.fromkeys([f"_sources.{kind}" for kind in SOURCE_KINDS], 1),
    **dict.fromkeys(["_sources._base", "_sources._digest", "_sources._download"], 1),
    "_sources._policy": 1,
    **dict.fromkeys(["_store", "_envmeta", "_holds"], 1),
    **dict.fromkeys(["_protocol", "_launch", "_bootstrap", "_client", "_process", "_defaults"], 1),
    **dict.fromkeys(["_flood", "_plugin_stderr", "_supervisor", "_call"], 1),
    **dict.fromkeys(["_channel", "_pool", "_contain"], 1),
    **dict.fromkeys(["_linereader", "_pending", "_connection", "_loopcalls"], 1),
    **dict.fromkeys(["services", "services._base", "services.userprovider"], 1),
    **dict.fromkeys(["services.authprovider", "services.groupprovider"], 1),
    # 2 - configuration, host hook specs
    **dict.fromkeys(["_config", "_hooks"], 2),
    # 3 - planning: a service's config to a plan (env build, env inspection, wheel tags)
    **dict.fromkeys(["_plan", "_resolvers", "_build", "_envinfo", "_wheels", "_bundle"], 3),
    **dict.fromkeys(["_lockfile", "_locker", "_confinement"], 3),
    # 4 - the host
    **dict.fromkeys(["_host", "_proxy", "_drivers"], 4),
    # 5 - what runs on a host
    **dict.fromkeys(["_conformance", "_scaffold", "_fleet"], 5),
    # 5 - the CS3 gRPC server (imported only by the serve commands)
    **dict.fromkeys(["serve", "serve._commands", "serve._cs3", "serve._metrics"], 5),
    **dict.fromkeys(["serve._reload", "serve._server", "serve._loop", "serve._files"], 5),
    **dict.fromkeys(["serve._log", "serve._admin"], 5),
    **dict.fromkeys(["serve._workers", "serve._siblings"], 5),
    # 6 - the faces: command line, its presentation, the authors' kit, the public API
    **dict.fromkeys(["_cli", "_present", "testing", "__main__", "reva_plugins"], 6),
    **dict.fromkeys(["_completion", "_cli_options", "_cli_env"], 6),
}

BUILD_HALF = {"_sources", "_git", "_store", "_envmeta", "_holds", "_installers", "_python"}
BUILD_HALF |= {"_auth", "_urls", "_fs"} | {name for name in LAYERS if name.startswith("_sources.")}
RUN_HALF = {"_process", "_plugin_stderr", "_supervisor", "_client", "_flood", "_protocol", "_wire"}
RUN_HALF |= {"_call", "_poll", "_launch", "_bootstrap", "_codec", "_channel", "_pool", "_contain"}
RUN_HALF |= {"_linereader", "_pending", "_connection", "_loopcalls"}
#: the plugin's side: the bootstrap and what it loads by path (nothing else of the core)
PLUGIN_SIDE = {
    "_bootstrap",
    "_wire",
    "_codec",
    "_channel",
    "_pool",
    "_contain",
    "_poll",
    "_sandbox",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "reva_plugins"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(body: list[ast.stmt]) -> list[ast.AST]:
    """Every node that runs, skipping ``if TYPE_CHECKING:`` bodies (not their ``else``)."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports at run time (relative or absolute imports)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "reva_plugins":
        package = []
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in _runtime_nodes(tree.body):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif node.module and node.module.split(".")[0] == "reva_plugins":
                base = []
            else:
                continue
            module = (node.module or "").removeprefix("reva_plugins").lstrip(".")
            prefix = [*base, *filter(None, module.split("."))]
            for alias in node.names:
                candidate = ".".join([*prefix, alias.name])
                found.add(candidate if candidate in LAYERS else ".".join(prefix) or "reva_plugins")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "reva_plugins":
                    found.add(alias.name.removeprefix("reva_plugins.") or "reva_plugins")
    found.discard(name)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
IMPORTS = {name: package_imports(path) for name, path in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(LAYERS)) == []
    assert sorted(set(LAYERS) - set(MODULES)) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_nothing_above_its_layer(name: str) -> None:
    above = {dep for dep in IMPORTS[name] if LAYERS.get(dep, 99) > LAYERS[name]}
    assert above == set(), f"{name} (layer {LAYERS[name]}) imports {sorted(above)}"


def test_the_build_half_and_the_run_half_never_import_each_other() -> None:
    crossing = {
        (name, dep)
        for name in BUILD_HALF | RUN_HALF
        for dep in IMPORTS[name]
        if (name in BUILD_HALF and dep in RUN_HALF) or (name in RUN_HALF and dep in BUILD_HALF)
    }
    assert crossing == set()


def test_the_bootstrap_imports_nothing_of_the_core_but_the_protocol_module() -> None:
    for name in PLUGIN_SIDE:
        assert IMPORTS[name] <= PLUGIN_SIDE, name
    assert IMPORTS["_codec"] == set()  # the core's codec too: it imports nothing of the core
    assert IMPORTS["_poll"] == set()  # the bootstrap loads it by path, beside _wire
    assert IMPORTS["_sandbox"] == set()
    assert IMPORTS["_launch"] == set()


def test_the_protocol_module_imports_nothing_at_run_time() -> None:
    tree = ast.parse(MODULES["_wire"].read_text(encoding="utf-8"))
    imports = [
        node
        for node in _runtime_nodes(tree.body)
        if isinstance(node, ast.Import)
        or (isinstance(node, ast.ImportFrom) and node.module != "__future__")
    ]
    assert imports == []


def test_services_import_no_core_module_but_errors() -> None:
    for name, deps in IMPORTS.items():
        if name == "services" or name.startswith("services."):
            core = {d for d in deps if not (d == "services" or d.startswith("services."))}
            assert core <= {"_errors"}, f"{name} imports {sorted(core)}"


def test_nothing_imports_the_faces() -> None:
    allowed = {
        "_cli": {"__main__"},
        "_present": {"_cli", "_cli_options", "_cli_env", "testing"},
        "_completion": {"_cli"},
        "_cli_options": {"_cli", "_cli_env"},
        "_cli_env": {"_cli"},
        "testing": set(),
        "__main__": set(),
    }
    for face, importers in allowed.items():
        found = {name for name, deps in IMPORTS.items() if face in deps}
        assert found <= importers, f"{sorted(found - importers)} import {face}"


def test_only_the_planning_layer_imports_sources() -> None:
    """Only the planning layer (with the lock and bundle) holds source objects at all."""
    importers = {
        name
        for name, deps in IMPORTS.items()
        if not name.startswith("_sources")
        and any(d == "_sources" or d.startswith("_sources.") for d in deps)
    }
    planning = {"_plan", "_resolvers", "_build", "_envinfo", "_lockfile", "_locker", "_bundle"}
    # The authors' kit asks the kinds for sample specs (strings), holding no source object.
    assert importers <= planning | {"testing"}


def test_a_source_kind_is_one_module() -> None:
    """Outside its own package nobody imports a kind's module: the package exports the kinds,
    and what a kind means is asked of its class."""
    kinds = {f"_sources.{kind}" for kind in SOURCE_KINDS}
    importers = {
        name for name, deps in IMPORTS.items() if deps & kinds and not name.startswith("_sources")
    }
    assert importers == set()
    assert IMPORTS["_sources"] >= kinds  # the checker sees the package's own imports


#: The service modules the package ships; only the registry (``services``) names them.
BUILTIN_SERVICES = {"services.userprovider", "services.authprovider", "services.groupprovider"}


def test_service_knowledge_is_reached_through_the_service_type() -> None:
    """Nothing outside ``services/`` imports a service module by name: conformance, the kit,
    scaffold, host and CLI read what a service knows from its :class:`ServiceType`."""
    importers = {
        name: sorted(deps & BUILTIN_SERVICES)
        for name, deps in IMPORTS.items()
        if not (name == "services" or name.startswith("services.")) and deps & BUILTIN_SERVICES
    }
    assert importers == {}
    assert IMPORTS["services"] >= BUILTIN_SERVICES  # the checker sees such imports


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of every bare string statement (docstrings, attribute docstrings)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def group_prefix_spellings(source: str) -> list[str]:
    """String literals in code (not docs) that spell the ``reva.`` entry-point group prefix."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    prefix = re.compile(r"(?<![\w.])reva\.")
    return [
        f"line {node.lineno}: {node.value[:60]!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docs
        and prefix.search(node.value)
    ]


def test_the_entry_point_group_prefix_has_one_home() -> None:
    """``reva.`` is spelled in ``services._base.GROUP_PREFIX`` only; the rest (``ServiceType.group``,
    the scaffold's pyproject, the env scan) reads it from there."""
    spelled = {
        name: found
        for name, path in MODULES.items()
        if (found := group_prefix_spellings(path.read_text(encoding="utf-8")))
    }
    assert set(spelled) == {"services._base"}
    assert len(spelled["services._base"]) == 1
    assert group_prefix_spellings('T = """[project.entry-points."reva.{service}"]"""\n') != []


def dict_literal_keys(source: str) -> list[set[str]]:
    """The constant keys of every dict literal in ``source``."""
    return [
        {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Dict)
    ]


def test_the_env_metadata_schema_is_written_only_by_its_record() -> None:
    """``EnvMetadata`` (in ``_envmeta``) is the one writer of the metadata file's fields: nothing
    else builds a dict with most of them (``_envinfo`` builds the record itself)."""
    from reva_plugins._envmeta import EnvMetadata

    fields = {f for f in EnvMetadata.__dataclass_fields__ if f != "extra"}
    writers = sorted(
        name
        for name, path in MODULES.items()
        if name != "_envmeta"
        and any(
            len(keys & fields) * 2 >= len(fields)
            for keys in dict_literal_keys(path.read_text(encoding="utf-8"))
        )
    )
    assert writers == []
    assert any(
        len(keys & fields) * 2 >= len(fields)
        for keys in dict_literal_keys(MODULES["_envmeta"].read_text(encoding="utf-8"))
    )


def test_the_checker_sees_imports() -> None:
    """The checker itself: it finds what a module imports (else every rule would pass)."""
    assert IMPORTS["_cli"] >= {"_config", "_host", "_plan", "_present"}
    # the package-mode import, outside TYPE_CHECKING
    assert IMPORTS["_bootstrap"] == PLUGIN_SIDE - {"_bootstrap"}
    assert IMPORTS["_pool"] == {"_wire", "_codec", "_channel"}
    assert "_host" not in IMPORTS["_hooks"]  # only under TYPE_CHECKING
    assert IMPORTS["services.groupprovider"] >= {"services._base"}


def test_architecture_md_names_every_module() -> None:
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [
        name
        for name in LAYERS
        if name != "reva_plugins"
        and f"`{name.removeprefix('services.')}`" not in text
        and not name.startswith(("services", "serve"))
    ]
    assert missing == []
