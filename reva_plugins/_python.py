"""Finding Python interpreters: on PATH and in pyenv's versions folder, skipping broken shims."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ._environ import build_environment
from ._errors import ConfigError
from ._subprocess import CommandFailed, run

_QUERY = (
    "import json, platform, sys; print(json.dumps([platform.python_implementation(), "
    "'.'.join(map(str, sys.version_info[:3])), sys.executable]))"
)
_VERSION_RE = re.compile(r"^(?:c?python)?(\d+(?:\.\d+){0,2})$", re.IGNORECASE)
# What a real interpreter answers the query with: an implementation name, a full version.
_IMPLEMENTATION = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,63}")
_FULL_VERSION = re.compile(r"\d{1,4}\.\d{1,4}\.\d{1,4}")


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
                    data = json.loads(self._file.read_text(encoding="utf-8"))
                except (OSError, ValueError, RecursionError):
                    data = {}
                # A damaged or hand-edited file: keep only entries of the shape we write.
                if isinstance(data, dict):
                    self._entries = {
                        k: v for k, v in data.items() if isinstance(k, str) and _answer(v)
                    }
        return self._entries

    def query(self, executable: str) -> Interpreter | None:
        """The interpreter at ``executable``, or None if it does not run or is no Python."""
        found = self.probe(executable)
        return found if isinstance(found, Interpreter) else None

    def probe(self, executable: str) -> Interpreter | str:
        """The interpreter at ``executable``, or why it is not one.

        The query runs with the build environment (:func:`._environ.build_environment`), never
        the core's own: whatever ``python`` names runs, and must not see the core's secrets.
        """
        real = os.path.realpath(executable)
        try:
            st = os.stat(real)
        except OSError as exc:
            return f"it does not exist ({(exc.strerror or str(exc)).lower()})"
        if not os.path.isfile(real) or not os.access(real, os.X_OK):
            return "it is not an executable file"
        stamp = f"{real}:{st.st_size}:{st.st_mtime_ns}"
        entries = self._load()
        if stamp not in entries:
            try:
                out = run([executable, "-I", "-c", _QUERY], env=build_environment(), timeout=30)
            except CommandFailed as exc:
                status = "did not finish" if exc.returncode is None else f"exited {exc.returncode}"
                return f"it is not a Python interpreter (the interpreter query {status})"
            except OSError as exc:  # not a program the kernel can run (no #! line, wrong arch)
                return f"it is not a Python interpreter ({(exc.strerror or str(exc)).lower()})"
            lines = out.strip().splitlines()
            try:
                answer = json.loads(lines[-1]) if lines else None
            except (ValueError, RecursionError):
                answer = None
            if not (isinstance(answer, list) and len(answer) == 3 and _answer(answer[:2])):
                return "it is not a Python interpreter (it did not answer the interpreter query)"
            entries[stamp] = [answer[0], answer[1]]
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


def uv_python_dir() -> Path:
    """Where uv keeps the Pythons it manages (``$UV_PYTHON_INSTALL_DIR``, else
    ``$XDG_DATA_HOME/uv/python``, else ``~/.local/share/uv/python``)."""
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or data / "uv" / "python")


def find(
    request: str | None, cache: InterpreterCache | None = None, *, key: str = "python"
) -> Interpreter:
    """The interpreter for ``request``: None (the core's own), a version (``3.12``) or a path.

    Versions are looked up as ``python3.X`` in pyenv's versions folder, among uv's managed
    Pythons and on PATH; a pyenv shim that cannot run the version is skipped. A
    :class:`ConfigError` names ``key`` if nothing fits.
    """
    if request is None:
        return current()
    cache = cache or InterpreterCache()
    if os.sep in request or request.startswith("."):
        probed = cache.probe(request)
        if isinstance(probed, str):
            raise ConfigError(f"interpreter {request!r}: {probed}", key=key)
        return probed
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
        f"no Python {wanted} found (looked on PATH, in {pyenv_root() / 'versions'} and in "
        f"{uv_python_dir()})",
        key=key,
    )


def _answer(value: object) -> bool:
    """Whether ``value`` is ``[implementation, full version]`` as a real interpreter says them."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
        and _IMPLEMENTATION.fullmatch(value[0]) is not None
        and _FULL_VERSION.fullmatch(value[1]) is not None
    )


def _version_matches(version: str, wanted: str) -> bool:
    return version.split(".")[: len(wanted.split("."))] == wanted.split(".")


def _candidates(wanted: str) -> list[str]:
    short = ".".join(wanted.split(".")[:2])
    found: list[str] = []
    # pyenv names a version's folder 3.12.1; uv, cpython-3.12.1-linux-x86_64-gnu.
    for root, uv in ((pyenv_root() / "versions", False), (uv_python_dir(), True)):
        if not root.is_dir():
            continue
        dirs = [(_uv_version(d.name) if uv else d.name, d) for d in root.iterdir()]
        dirs = [(v, d) for v, d in dirs if _version_matches(v, wanted)]
        for _, d in sorted(dirs, key=lambda vd: _sort_key(vd[0]), reverse=True):
            exe = d / "bin" / f"python{short}"
            if exe.exists():
                found.append(str(exe))
    on_path = shutil.which(f"python{short}")
    if on_path:
        found.append(on_path)
    return found


def _uv_version(name: str) -> str:
    """The version in the name of a folder of uv's (``cpython-3.12.1-linux-x86_64-gnu``)."""
    parts = name.split("-")
    return parts[1] if len(parts) > 2 else ""


def _sort_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))
