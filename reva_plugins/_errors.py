"""The exception tree. Every error the library raises derives from :class:`RevaPluginError`."""

from __future__ import annotations

import enum
from typing import Any, Protocol

from ._wire import APPLICATION_ERROR


class ExitCode(enum.IntEnum):
    """What the CLI exits with; the only home of these numbers."""

    #: everything asked for was done
    OK = 0
    #: a plugin, a build or a remote call failed
    FAILURE = 1
    #: a user mistake: usage, config, source (one line naming the file or key)
    USAGE = 2
    #: interrupted (Ctrl-C), as shells report SIGINT
    INTERRUPTED = 130


class RevaPluginError(Exception):
    """Base of every reva-plugins error.

    ``exit_code`` is what the CLI exits with: :attr:`ExitCode.USAGE` for a user mistake (usage,
    config, source), :attr:`ExitCode.FAILURE` for a failure of a plugin, a build or a remote call.
    """

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.plugin = plugin

    def __str__(self) -> str:
        if self.plugin and not self.message.startswith(self.plugin):
            return f"{self.plugin}: {self.message}"
        return self.message


class ConfigError(RevaPluginError):
    """The configuration file or a value in it is wrong; ``file`` and ``key`` say where."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.key = key


class UsageError(RevaPluginError):
    """The command line is wrong (arguments that are not what the command takes)."""

    exit_code = ExitCode.USAGE


class SourceError(RevaPluginError):
    """A driver spec cannot be classified, resolved or fetched."""

    exit_code = ExitCode.USAGE


class FetchError(SourceError):
    """A remote source failed to arrive: a network or HTTP error, a truncated or over-large
    download, a refused redirect. A remote failure, so exit code 1."""

    exit_code = ExitCode.FAILURE


class EnvBuildError(RevaPluginError):
    """Building a plugin's environment failed; carries the command and the output tail."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        command: list[str] | None = None,
        returncode: int | None = None,
        output_tail: str = "",
    ) -> None:
        if output_tail:
            message = f"{message}\n{output_tail}"
        super().__init__(message, plugin=plugin)
        self.command = command or []
        self.returncode = returncode
        self.output_tail = output_tail

    @property
    def reason(self) -> str:
        """The failed command's own reason, on one line: its error and cause lines (uv's
        ``error:``, pip's ``ERROR:``, git's ``fatal:``), else its last line; empty when
        it said nothing. Not redacted: redact it before showing it."""
        return installer_reason(self.output_tail)

    @classmethod
    def of_command(
        cls, message: str, failed: FailedCommand, *, plugin: str | None = None
    ) -> EnvBuildError:
        """The error for a build step whose command failed: its argv, exit code, output tail."""
        return cls(
            message,
            plugin=plugin,
            command=failed.argv,
            returncode=failed.returncode,
            output_tail=failed.tail,
        )


#: how the installers (and git, build backends) start the lines that say why they failed: uv's
#: "error:", "caused by:", "\u00d7" and "\u2570\u2500\u25b6", pip's "ERROR:", git's "fatal:"
_REASON_MARKS = (
    "error:",
    "cause:",
    "caused by:",
    "hint:",
    "fatal:",
    "\u00d7",
    "\u2570\u2500\u25b6",
)
_MARK_CHARS = "\u00d7\u2570\u2500\u25b6 "
_MARK_WORDS = ("error", "cause", "caused by", "fatal")


def installer_reason(output: str) -> str:
    """What a failed command's ``output`` says about why it failed, on one line: from its first
    error line on (continuation lines included), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    marked = [line.lower().startswith(_REASON_MARKS) for line in lines]
    first = marked.index(True) if True in marked else max(len(lines) - 1, 0)
    reason = ""
    for line, mark in zip(lines[first:], marked[first:], strict=True):
        text = _unmarked(line)
        reason = f"{reason.rstrip(':')}: {text}" if reason and mark else f"{reason} {text}"
    return " ".join(reason.split())


def _unmarked(line: str) -> str:
    line = line.lstrip(_MARK_CHARS)
    word, sep, rest = line.partition(":")
    return rest.strip() if sep and word.lower() in _MARK_WORDS else line


class FailedCommand(Protocol):
    """What a failed command tells (``_subprocess.CommandFailed``)."""

    argv: list[str]
    returncode: int | None

    @property
    def tail(self) -> str:
        """The last lines of its output."""
        ...


class EnvInUse(RevaPluginError):
    """An env cannot be removed now: a running host uses it."""


class ProcessError(RevaPluginError):
    """A plugin process misbehaved; carries its exit code and the tail of its stderr."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        returncode: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        if stderr_tail:
            message = f"{message}\n--- plugin stderr (last lines) ---\n{stderr_tail}"
        super().__init__(message, plugin=plugin)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class HandshakeError(ProcessError):
    """The plugin did not start, or did not complete the handshake in time."""


class PluginCrashed(ProcessError):
    """The plugin process exited while calls were in flight, or is marked failed."""


class ProtocolError(ProcessError):
    """The plugin sent something that is not a valid protocol message."""


class CallTimeout(RevaPluginError):
    """A call did not complete within its deadline; it was cancelled in the plugin."""


class CallCancelled(RevaPluginError):
    """The caller cancelled the call (:meth:`Cancellation.cancel`); it was cancelled in the
    plugin too."""


class RemoteError(RevaPluginError):
    """The plugin raised an exception; ``type`` is its class name, ``traceback`` its text."""

    def __init__(
        self,
        message: str,
        *,
        type: str = "RemoteError",
        plugin: str | None = None,
        code: int = APPLICATION_ERROR,
        traceback: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.type = type
        self.code = code
        self.traceback = traceback
        self.data = data or {}


class NotFound(RemoteError):
    """The requested user, group or resource does not exist."""


class InvalidCredentials(RemoteError):
    """Authentication failed."""


class PermissionDenied(RemoteError):
    """The caller may not do this."""


class InvalidArgument(RemoteError):
    """The call's arguments are wrong."""


REMOTE_ERRORS: dict[str, type[RemoteError]] = {
    cls.__name__: cls for cls in (NotFound, InvalidCredentials, PermissionDenied, InvalidArgument)
}


def remote_error(
    message: str, *, type_name: str, plugin: str | None = None, **kwargs: Any
) -> RemoteError:
    """The typed exception for a remote error's ``data.type`` (``RemoteError`` if unknown)."""
    cls = REMOTE_ERRORS.get(type_name, RemoteError)
    return cls(message, type=type_name, plugin=plugin, **kwargs)
