"""Finding Python interpreters: on PATH and in pyenv's versions folder, skipping broken shims."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ._errors import ConfigError
from ._subprocess import CommandFailed, run

_QUERY = (
    "import json, platform, sys; print(json.dumps([platform.python_implementation(), "
    "'.'.join(map(str, sys.version_info[:3])), sys.executable]))"
)
_VERSION_RE = re.compile(r"^(?:c?python)?(\d+(?:\.\d+){0,2})$", re.IGNORECASE)


@dataclass(frozen=True)
class Interpreter:
    """A base interpreter a plugin venv can be made from."""

    executable: str
    implementation: str
    version: str

    @property
    def identity(self) -> str:
        """What the env key uses: implementation, full version and real path."""
        return f"{self.implementation}-{self.version}-{self.executable}"

    @property
    def short_version(self) -> str:
        """``3.12`` for ``3.12.1``."""
        return ".".join(self.version.split(".")[:2])


def current() -> Interpreter:
    """The interpreter the core runs on (its base interpreter when the core is in a venv)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Interpreter(
        executable=os.path.realpath(base),
        implementation=sys.implementation.name.replace("cpython", "CPython"),
        version=".".join(map(str, sys.version_info[:3])),
    )


class InterpreterCache:
    """Query results by real path, size and mtime, so a known interpreter costs no subprocess."""

    def __init__(self, file: Path | None = None) -> None:
        self._file = file
        self._entries: dict[str, list[str]] | None = None

    def _load(self) -> dict[str, list[str]]:
        if self._entries is None:
            self._entries = {}
            if self._file is not None:
                try:
                    self._entries = json.loads(self._file.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    self._entries = {}
        return self._entries

    def query(self, executable: str) -> Interpreter | None:
        """The interpreter at ``executable``, or None if it does not run."""
        real = os.path.realpath(executable)
        try:
            st = os.stat(real)
        except OSError:
            return None
        stamp = f"{real}:{st.st_size}:{st.st_mtime_ns}"
        entries = self._load()
        if stamp not in entries:
            try:
                out = run([executable, "-I", "-c", _QUERY], timeout=30)
                impl, version, _ = json.loads(out.strip().splitlines()[-1])
            except (CommandFailed, ValueError, IndexError):
                return None
            entries[stamp] = [impl, version]
            self._save()
        impl, version = entries[stamp]
        return Interpreter(executable=real, implementation=impl, version=version)

    def _save(self) -> None:
        if self._file is None:
            return
        tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._entries), encoding="utf-8")
            os.replace(tmp, self._file)
        except OSError:
            tmp.unlink(missing_ok=True)


def pyenv_root() -> Path:
    """pyenv's root folder (``$PYENV_ROOT`` or ``~/.pyenv``)."""
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def find(
    request: str | None, cache: InterpreterCache | None = None, *, key: str = "python"
) -> Interpreter:
    """The interpreter for ``request``: None (the core's own), a version (``3.12``) or a path.

    Versions are looked up as ``python3.X`` on PATH and in pyenv's versions folder; a pyenv shim
    that cannot run the version is skipped. A :class:`ConfigError` names ``key`` if nothing fits.
    """
    if request is None:
        return current()
    cache = cache or InterpreterCache()
    if os.sep in request or request.startswith("."):
        found = cache.query(request)
        if found is None:
            raise ConfigError(f"interpreter {request!r} does not exist or does not run", key=key)
        return found
    match = _VERSION_RE.match(request.strip())
    if not match:
        raise ConfigError(
            f"{request!r} is neither a Python version (such as 3.12) nor a path", key=key
        )
    wanted = match.group(1)
    own = current()
    if _version_matches(own.version, wanted):
        return own
    for candidate in _candidates(wanted):
        found = cache.query(candidate)
        if found is not None and _version_matches(found.version, wanted):
            return found
    raise ConfigError(
        f"no Python {wanted} found (looked on PATH and in {pyenv_root() / 'versions'})", key=key
    )


def _version_matches(version: str, wanted: str) -> bool:
    return version.split(".")[: len(wanted.split("."))] == wanted.split(".")


def _candidates(wanted: str) -> list[str]:
    short = ".".join(wanted.split(".")[:2])
    found: list[str] = []
    versions = pyenv_root() / "versions"
    if versions.is_dir():
        dirs = [d for d in versions.iterdir() if _version_matches(d.name, wanted)]
        for d in sorted(dirs, key=lambda d: _sort_key(d.name), reverse=True):
            exe = d / "bin" / f"python{short}"
            if exe.exists():
                found.append(str(exe))
    on_path = shutil.which(f"python{short}")
    if on_path:
        found.append(on_path)
    return found


def _sort_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))
