"""Release-ready: the sdist and the wheel build and pass ``twine check``, carry every module and the
single-sourced version; the release workflow runs these same steps."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import reva_plugins

from .conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def test_the_workflow_builds_checks_and_publishes_with_trusted_publishing() -> None:
    text = WORKFLOW.read_text()
    assert "python -m build" in text
    assert "python -m twine check --strict dist/*" in text
    assert "id-token: write" in text
    assert "pypa/gh-action-pypi-publish" in text
    version = re.search(r"sed -n '(.+)' reva_plugins/_version.py", text)
    assert version is not None
    done = subprocess.run(
        ["sed", "-n", version[1], "reva_plugins/_version.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == reva_plugins.__version__


def test_the_changelog_has_a_section_for_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{reva_plugins.__version__}]" in text


@pytest.mark.slow
def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    version = reva_plugins.__version__
    wheel = out / f"reva_plugins-{version}-py3-none-any.whl"
    sdist = out / f"reva_plugins-{version}.tar.gz"
    assert wheel.is_file()
    assert sdist.is_file()
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    modules = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "reva_plugins").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"reva_plugins-{version}.dist-info/METADATA").decode()
        entry_points = whl.read(f"reva_plugins-{version}.dist-info/entry_points.txt").decode()
    assert modules <= names, sorted(modules - names)
    assert "reva_plugins/py.typed" in names
    assert f"\nVersion: {version}\n" in metadata
    assert "reva-plugins = reva_plugins._cli:main" in entry_points
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert modules <= in_sdist, sorted(modules - in_sdist)
