"""Build real plugin projects, wheels, sdists and git repositories for tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from .plugin_sources import PLUGIN_MODULE


def make_plugin(
    root: Path,
    name: str = "reva-test-plugin",
    *,
    version: str = "1.0",
    marker: str = "v1",
    dependencies: tuple[str, ...] = (),
    marker_body: str = "        return MARKER",
    entry_points: dict[str, str] | None = None,
) -> Path:
    """A hatchling plugin project at ``root`` whose user ``demo`` has ``display_name`` = marker."""
    module = name.replace("-", "_")
    eps = entry_points or {"reva.userprovider": "demo", "reva.authprovider": "demo"}
    tables = "".join(
        f'\n[project.entry-points."{group}"]\n{ep} = "{module}:{"Auth" if "auth" in group else "Provider"}"\n'
        for group, ep in eps.items()
    )
    deps = ", ".join(f'"{d}"' for d in dependencies)
    (root / module).mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{name}"
            version = "{version}"
            requires-python = ">=3.8"
            dependencies = [{deps}]
            """
        )
        + tables,
        encoding="utf-8",
    )
    (root / module / "__init__.py").write_text(
        PLUGIN_MODULE.format(marker=marker, marker_body=marker_body), encoding="utf-8"
    )
    return root


def make_library(root: Path, name: str, version: str) -> Path:
    """A tiny library whose module has ``VERSION``."""
    module = name.replace("-", "_")
    (root / module).mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n',
        encoding="utf-8",
    )
    (root / module / "__init__.py").write_text(f"VERSION = {version!r}\n", encoding="utf-8")
    return root


def build_dists(project: Path, outdir: Path, *, sdist: bool = True) -> dict[str, Path]:
    """Build a wheel (and an sdist) of ``project`` into ``outdir`` with pypa/build."""
    outdir.mkdir(parents=True, exist_ok=True)
    kinds = ["--wheel", "--sdist"] if sdist else ["--wheel"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            *kinds,
            "--outdir",
            str(outdir),
            str(project),
        ],
        check=True,
        capture_output=True,
    )
    return {
        kind: max(outdir.glob(pattern), key=lambda p: p.stat().st_mtime)
        for kind, pattern in (("wheel", "*.whl"), ("sdist", "*.tar.gz"))
        if kind == "wheel" or sdist
    }


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; return stdout."""
    result = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def make_repo(root: Path, subdir: str = "plugins/demo", marker: str = "v1") -> Path:
    """A git repository with a plugin in ``subdir``, committed on ``main`` and tagged ``v1``."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    make_plugin(root / subdir, marker=marker)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    git(root, "tag", "v1")
    return root


def commit_marker(repo: Path, subdir: str, marker: str) -> str:
    """Change the plugin's marker, commit it, and return the new commit."""
    make_plugin(repo / subdir, marker=marker)
    git(repo, "commit", "-q", "-am", f"marker {marker}")
    return git(repo, "rev-parse", "HEAD")
