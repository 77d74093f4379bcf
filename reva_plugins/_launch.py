"""The file the core runs in a plugin's venv: ``<python> -I _launch.py '<json>'``.

It runs the bootstrap (``_bootstrap.py`` beside it) from its bytecode cache, as ``__main__``:
a script is compiled from source at every start, which for the bootstrap costs ~3 MiB of the
plugin's memory for good and milliseconds of every start. The cache is ``__pycache__`` beside
it, written by the first start of each Python version where the folder is writable (else the
bootstrap is compiled as before). Nothing imported: this file itself is compiled every time.
"""

# This script's loader is a SourceFileLoader: its type reads (and writes) the bytecode cache.
_path = __file__.rpartition("/")[0] + "/_bootstrap.py"
_code = type(__loader__)("__main__", _path).get_code("__main__")  # type: ignore[name-defined]
__file__ = _path  # the bootstrap finds _wire.py beside itself
exec(_code)  # noqa: S102 - our own bootstrap, run as if it were the script
