"""Finding interpreters where authors keep them: PATH, pyenv's versions folder and uv's
managed Pythons (``reva_plugins/_python.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from reva_plugins import _python
from reva_plugins._errors import ConfigError


def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No pyenv, no uv Pythons and nothing on PATH but an empty folder."""
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "no-uv"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def test_a_uv_managed_python_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _isolated(monkeypatch, tmp_path)
    short = f"{sys.version_info[0]}.{sys.version_info[1]}"
    full = ".".join(map(str, sys.version_info[:3]))
    other = "3.9" if short != "3.9" else "3.8"  # a version the core itself is not
    managed = tmp_path / "no-uv" / f"cpython-{full}-linux-x86_64-gnu" / "bin"
    managed.mkdir(parents=True)
    real = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    (managed / f"python{short}").symlink_to(real)
    found = _python._candidates(short)
    assert found == [str(managed / f"python{short}")]
    with pytest.raises(ConfigError) as info:
        _python.find(other)
    assert str(tmp_path / "no-uv") in str(info.value)
    assert str(tmp_path / "no-pyenv" / "versions") in str(info.value)


def test_folders_that_are_not_pythons_are_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _isolated(monkeypatch, tmp_path)
    for name in (".lock", "cpython", "cpython-x", ".temp-cpython-3.12.1-linux-x86_64-gnu"):
        (tmp_path / "no-uv" / name / "bin").mkdir(parents=True)
    assert _python._candidates("3.12") == []
