"""The scaffold works outside this repository: its noxfile needs nothing but nox, and its sessions
install the core from where the author points (here: a wheel of this checkout, by find-links)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reva_plugins.testing import INSTALLERS, KINDS

from .conftest import ROOT, cli

UV = (sys.executable, "-m", "uv")


def _scaffold(tmp_path: Path, service: str) -> Path:
    plugin = tmp_path / "reva-plugin-demo"
    result = cli("new", str(plugin), "--service", service)
    assert result.returncode == 0, result.stderr
    return plugin


def test_the_noxfile_imports_only_nox_and_the_standard_library(tmp_path: Path) -> None:
    noxfile = _scaffold(tmp_path, "userprovider") / "noxfile.py"
    tree = ast.parse(noxfile.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= {"__future__", "os", "pathlib", "nox"}, imported
    values = {
        target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in ("KINDS", "INSTALLERS")
    }
    assert values == {"KINDS": list(KINDS), "INSTALLERS": list(INSTALLERS)}


@pytest.mark.slow
def test_a_scaffolded_plugin_runs_its_nox_with_a_nox_of_its_own(tmp_path: Path) -> None:
    plugin = _scaffold(tmp_path, "authprovider")
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert len(list(wheels.glob("reva_plugins-*.whl"))) == 1

    noxenv = tmp_path / "nox-alone"
    subprocess.run([*UV, "venv", "-q", str(noxenv)], check=True, timeout=300)
    subprocess.run(
        [*UV, "pip", "install", "-q", "--python", str(noxenv / "bin" / "python"), "nox"],
        check=True,
        timeout=600,
    )
    nox = noxenv / "bin" / "nox"
    lacks = subprocess.run(
        [str(noxenv / "bin" / "python"), "-c", "import reva_plugins"],
        capture_output=True,
        check=False,
    )
    assert lacks.returncode != 0  # the nox install has no reva-plugins

    # As an author's shell would be: no PYENV_VERSION (pyenv's shims then fail), nothing of this
    # checkout's venv on PATH, the core's wheel offered by find-links.
    env = {k: v for k, v in os.environ.items() if k not in ("PYENV_VERSION", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    env["PIP_FIND_LINKS"] = str(wheels)
    listed = subprocess.run(
        [str(nox), "-l"], cwd=plugin, env=env, capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "conformance-3.12(installer='uv', kind='wheel')" in listed.stdout
    assert "ModuleNotFoundError" not in listed.stderr

    sessions = ["tests-3.10", "conformance-3.12(installer='uv', kind='wheel')"]
    ran = subprocess.run(
        [str(nox), "-s", *sessions],
        cwd=plugin,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    out = ran.stdout + ran.stderr
    assert ran.returncode == 0, out[-4000:]
    assert "interpreter" not in out.lower() or "not found" not in out.lower(), out[-2000:]
    assert out.count("success") >= 2
    assert "PASSED" in out
    shutil.rmtree(plugin / ".nox", ignore_errors=True)
