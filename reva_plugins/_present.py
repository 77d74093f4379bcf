"""How the command line shows results: the rows of ``check``, the conformance report, tables,
and the ticking build progress. The core returns data; only this module and the CLI format it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from ._conformance import Report
from ._errors import EnvBuildError, ExitCode, RevaPluginError
from ._host import ServiceCheck
from ._plan import shown_env
from ._redact import redact

#: the widest STATUS cell of the ``check`` table (``--json`` and the error lines carry it whole)
STATUS_WIDTH = 100


def failure(error: RevaPluginError) -> str:
    """One line saying why a service failed, without the plugin label a row already shows: the
    first line of the error, and for a failed build the installer's own reason."""
    first = error.message.partition("\n")[0]
    if error.plugin and first.startswith(f"{error.plugin}: "):
        first = first.removeprefix(f"{error.plugin}: ")
    if isinstance(error, EnvBuildError):
        if error.command and "/" in error.command[0]:  # the installer by name, not its path
            first = first.replace(error.command[0], error.command[0].rsplit("/", 1)[1])
        if error.reason:
            return f"{first}: {error.reason}"
    return first


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class CheckRow:
    """One row of ``reva-plugins check`` (and one object of ``check --json``)."""

    service: str
    driver: str
    kind: str
    env: str
    ok: bool
    status: str
    start_ms: float | None = None
    ping_ms: float | None = None
    built: bool = False
    exit_code: int = ExitCode.OK
    #: ``landlock ABI 7``, ``off``, ``unavailable: why`` (``-`` when the driver did not start)
    sandbox: str = "-"

    @classmethod
    def of(cls, result: ServiceCheck) -> CheckRow:
        """The row for one service's check, every spec and message redacted."""
        env = shown_env(result.kind, result.env_key)
        service, driver, kind = result.service, redact(result.driver), result.kind or "-"
        if result.error is not None:
            status = redact(failure(result.error))
            return cls(
                service,
                driver,
                kind,
                env,
                ok=False,
                status=status,
                exit_code=result.error.exit_code,
            )
        info = result.info
        version = f" {info.distribution} {info.version}".rstrip() if info else ""
        return cls(
            service,
            driver,
            kind,
            env,
            ok=True,
            status=f"ok{version}",
            start_ms=None if result.start_ms is None else round(result.start_ms, 1),
            ping_ms=None if result.ping_ms is None else round(result.ping_ms, 3),
            built=result.built,
            sandbox=info.sandbox if info else "-",
        )


def rows_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def check_table(rows: Sequence[CheckRow]) -> str:
    """The ``check`` table."""
    header = ("SERVICE", "DRIVER", "KIND", "ENV", "STATUS", "START MS", "PING MS", "SANDBOX")
    return rows_table(
        header,
        [
            (
                r.service,
                r.driver,
                r.kind,
                r.env,
                _cell(r.status, STATUS_WIDTH),
                "-" if r.start_ms is None else f"{r.start_ms:.1f}",
                "-" if r.ping_ms is None else f"{r.ping_ms:.2f}",
                _cell(r.sandbox, 40),
            )
            for r in rows
        ],
    )


def format_report(report: Report) -> str:
    """A pass/fail table, one check a line, with the reason for each failure or skip."""
    width = max((len(c.name) for c in report.checks), default=10)
    lines = [f"conformance of {redact(str(report.spec))} as {report.service}:"]
    for check in report.checks:
        reason = f"  {check.reason}" if check.reason else ""
        lines.append(f"  {check.status.upper():<5} {check.name:<{width}}{reason}")
    verdict = "PASSED" if report.ok else f"FAILED ({len(report.failures())} failing)"
    lines.append(verdict)
    return "\n".join(lines)


class TickingProgress:
    """A :class:`~reva_plugins._build.BuildProgress` for a terminal: while an installer runs, a
    ticking elapsed time on one line, cleared before any other output (:meth:`clear_line`)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._stop: threading.Event | None = None
        self._lock = threading.Lock()

    def started(self, label: str) -> None:
        """Start ticking (only on a terminal)."""
        if not self.stream.isatty():
            return
        self._halt()
        stop = self._stop = threading.Event()
        began = time.monotonic()

        def tick() -> None:
            while not stop.wait(0.25):
                with self._lock:
                    if stop.is_set():
                        return
                    self.stream.write(f"\r  building {label} … {time.monotonic() - began:.1f} s")
                    self.stream.flush()

        threading.Thread(target=tick, daemon=True).start()

    def finished(self, label: str, seconds: float, ok: bool) -> None:
        """Stop ticking and clear its line."""
        self._halt()

    def clear_line(self) -> None:
        """Before another line is written: clear the ticker's (it goes on ticking below)."""
        if self._stop is not None:
            with self._lock:
                self.stream.write("\r\033[K")

    def _halt(self) -> None:
        if self._stop is not None:
            with self._lock:
                self._stop.set()
                self._stop = None
                self.stream.write("\r\033[K")
                self.stream.flush()
