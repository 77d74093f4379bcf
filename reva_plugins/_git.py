"""Git: parse pip-style VCS URLs and resolve refs to commits without prompting or odd transports."""

from __future__ import annotations

import re
import tempfile
import urllib.parse
from dataclasses import dataclass

from . import _auth
from ._environ import build_environment
from ._errors import FetchError, SourceError
from ._redact import redact
from ._subprocess import CommandFailed, run
from ._urls import check_url, origin

SCHEMES = ("git+https", "git+ssh", "git+file", "git+http")
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{4,39}$")
_GITHUB = re.compile(
    r"^https://github\.com/(?P<org>[^/]+)/(?P<repo>[^/#?]+?)(?:\.git)?"
    r"(?:/tree/(?P<ref>[^/]+)(?:/(?P<subdir>.+?))?)?/?$"
)


# git never prompts for credentials and speaks only the transports we allow.
GIT_SAFETY = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ALLOW_PROTOCOL": "file:https:http:ssh",
    "GIT_ASKPASS": "",
    "SSH_ASKPASS": "",
    "GCM_INTERACTIVE": "never",
}


def git_env(*urls: str) -> dict[str, str]:
    """The build environment plus git's safety settings, and the credentials of ``urls`` as git
    configuration in the environment (so they are never on a command line)."""
    return build_environment(extra={**GIT_SAFETY, **_auth.git_auth_env(urls)})


@dataclass(frozen=True)
class GitURL:
    """``git+<url>[@ref][#subdirectory=…]`` split into its parts."""

    url: str
    ref: str | None = None
    subdirectory: str | None = None

    @property
    def pinned(self) -> bool:
        """A full commit hash: never re-resolved, never asks the remote."""
        return bool(self.ref and _FULL_SHA.match(self.ref))

    def with_commit(self, commit: str) -> str:
        """The pip-style URL pinned to ``commit``."""
        text = f"git+{self.url}@{commit}"
        if self.subdirectory:
            text += f"#subdirectory={urllib.parse.quote(self.subdirectory)}"
        return text

    @property
    def bare_url(self) -> str:
        """The repository URL without credentials: what git is given and the env is keyed on."""
        return _auth.without_credentials(self.url)

    def origin(self) -> str:
        """What ``allowed_sources`` matches: ``git+`` and the repository URL normalised (see
        :func:`._urls.origin`), without credentials, ``@ref`` or fragment."""
        return f"git+{origin(self.url)}"

    def display(self) -> str:
        """The spec with any credentials redacted."""
        text = f"git+{redact(self.url)}"
        if self.ref:
            text += f"@{self.ref}"
        if self.subdirectory:
            text += f"#subdirectory={self.subdirectory}"
        return text


# The one redaction helper, under its old name.
strip_credentials = redact


def is_git_spec(spec: str) -> bool:
    """True for ``git+…`` URLs and plain GitHub repository URLs."""
    return spec.startswith("git+") or bool(_GITHUB.match(spec))


def parse(spec: str) -> GitURL:
    """Parse a pip-style VCS URL (or a GitHub web URL) into a :class:`GitURL`.

    Both forms go through the same checks: the URL may not be ambiguous (see
    :func:`._urls.check_url`) and the subdirectory must stay inside the repository.
    """
    github = _GITHUB.match(spec)
    if github and not spec.startswith("git+"):
        check_url(spec)
        return GitURL(
            f"https://github.com/{github['org']}/{github['repo']}.git",
            github["ref"],
            check_subdirectory(github["subdir"], spec),
        )
    scheme = spec.split("://", 1)[0]
    if scheme not in SCHEMES:
        raise SourceError(
            f"unsupported VCS scheme in {redact(spec)!r}: use one of "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    url, _, fragment = spec[len("git+") :].partition("#")
    subdirectory = None
    for item in filter(None, fragment.split("&")):
        name, _, value = item.partition("=")
        if name == "subdirectory" and value:
            subdirectory = value
        elif name not in ("egg", "sha256"):
            raise SourceError(f"unknown fragment {item!r} in {redact(spec)!r}")
    split = check_url(url)
    path, at, ref = split.path.rpartition("@")
    if at:
        url = urllib.parse.urlunsplit(split._replace(path=path))
    else:
        ref = ""
    return GitURL(url, ref or None, check_subdirectory(subdirectory, spec))


def check_subdirectory(subdirectory: str | None, spec: str) -> str | None:
    """The subdirectory of a git spec (``#subdirectory=`` or a GitHub ``/tree/REF/SUBDIR``),
    percent-decoded as pip reads it; it must name a folder inside the repository."""
    if subdirectory is None:
        return None
    try:
        decoded = urllib.parse.unquote(subdirectory, errors="strict").strip("/")
    except UnicodeDecodeError:
        raise SourceError(f"subdirectory in {redact(spec)!r} is not UTF-8") from None
    parts = decoded.split("/")
    if not decoded or "\\" in decoded or any(p in ("", ".", "..") for p in parts):
        raise SourceError(
            f"subdirectory {decoded!r} in {redact(spec)!r} must be a relative path inside the "
            "repository (no '.', '..', empty parts or backslashes)"
        )
    if any(not c.isprintable() for c in decoded):
        raise SourceError(f"subdirectory {decoded!r} in {redact(spec)!r} has a control character")
    return decoded


def resolve(git: GitURL) -> str:
    """The commit ``git.ref`` (or HEAD) points at, asking the remote with ``git ls-remote``."""
    if git.pinned:
        assert git.ref is not None
        return git.ref
    ref = git.ref or "HEAD"
    try:
        out = run(
            ["git", "ls-remote", "--", git.bare_url, ref, f"{ref}^{{}}"],
            env=git_env(git.url),
            timeout=120,
        )
    except CommandFailed as exc:
        # Could not reach a source: a remote failure (exit 1), as for an archive URL.
        raise FetchError(f"cannot reach {strip_credentials(git.url)}: {exc.tail or exc}") from None
    refs: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        refs[name.strip()] = sha.strip()
    for name in (f"{ref}^{{}}", f"refs/tags/{ref}^{{}}"):
        if name in refs:
            return refs[name]
    for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
        if name in refs:
            return refs[name]
    if _SHORT_SHA.match(ref):
        return _expand_short_sha(git, ref)
    raise SourceError(f"ref {ref!r} does not exist in {strip_credentials(git.url)}")


def _expand_short_sha(git: GitURL, short: str) -> str:
    """A short commit hash needs the history: fetch it (no blobs) into a temp repo."""
    with tempfile.TemporaryDirectory(prefix="reva-git-") as tmp:
        try:
            run(["git", "init", "-q", "--bare", tmp], env=git_env())
            run(
                [
                    "git",
                    "-C",
                    tmp,
                    "fetch",
                    "-q",
                    "--filter=blob:none",
                    "--",
                    git.bare_url,
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                env=git_env(git.url),
                timeout=300,
            )
            out = run(
                ["git", "-C", tmp, "rev-parse", "--verify", "-q", f"{short}^{{commit}}"],
                env=git_env(),
            )
        except CommandFailed:
            raise SourceError(
                f"ref {short!r} does not exist in {strip_credentials(git.url)}"
            ) from None
    return out.strip()
