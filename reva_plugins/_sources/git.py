"""The ``git`` kind: a pip-style VCS URL, pinned to a commit."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .. import _git
from ._base import (
    Kind,
    LockedPins,
    NeedsNetwork,
    Origin,
    ResolveContext,
    Resolved,
    Source,
    locked_resolved,
)


@dataclass(frozen=True)
class GitSource(Source):
    """A pip-style VCS URL; a branch or tag is re-resolved on each load, a commit never."""

    KINDS: ClassVar[tuple[Kind, ...]] = ("git",)
    REQUIRED_PINS: ClassVar[tuple[str, ...]] = ("commit",)

    git: _git.GitURL
    kind: str = "git"

    @property
    def spec(self) -> str:
        """The URL without credentials."""
        return self.git.display()

    @property
    def origin(self) -> Origin:
        """``git+`` and the normalised repository URL (no credentials, ref or fragment)."""
        return Origin("url", self.git.origin())

    @classmethod
    def recognise(cls, spec: str) -> GitSource | None:
        """A pip-style VCS URL (``git+https://…``, ``git+ssh://…``, a GitHub web URL …)."""
        return cls(_git.parse(spec)) if _git.is_git_spec(spec) else None

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """``git ls-remote`` the ref (unless it is a full commit) and pin the install to it."""
        if ctx.offline and not self.git.pinned:
            raise NeedsNetwork(f"{self.spec}: resolving {self.git.ref or 'HEAD'} needs the network")
        commit = _git.resolve(self.git)
        return Resolved(
            self.kind,
            self.spec,
            f"git:{self.git.bare_url}@{commit}#{self.git.subdirectory or ''}",
            (self.git.with_commit(commit),),
            mutable=not self.git.pinned,
            pins={"commit": commit},
            wheel_from="build",
        )

    def drift(self, entry: LockedPins, ctx: ResolveContext) -> str | None:
        """Another repository or subdirectory, or another commit pinned in the config (a branch
        or tag is not re-resolved)."""
        commit = entry.pins.get("commit", "")
        locked = _git.parse(entry.spec)
        same = (locked.bare_url, locked.subdirectory) == (self.git.bare_url, self.git.subdirectory)
        if not same or (self.git.pinned and self.git.ref != commit):
            return (
                f"the lock pins {entry.spec} at {commit[:12]}, the config now asks for {self.spec}"
            )
        return None

    def pinned(self, entry: LockedPins, ctx: ResolveContext) -> Resolved:
        """The locked commit."""
        return locked_resolved(entry, (self.git.with_commit(entry.pins["commit"]),))

    def repin(self, entry: LockedPins, ctx: ResolveContext) -> Resolved:
        """The locked commit, resolved again."""
        at = GitSource(dataclasses.replace(self.git, ref=entry.pins["commit"]))
        return dataclasses.replace(at.resolve(ctx), spec=self.spec, mutable=False)

    @classmethod
    def sample(cls, kind: str, folder: Path, workdir: Path) -> str:
        """A spec of this kind for the package folder ``folder`` (the plugin authors' kit): a
        ``git+file://`` URL of a fresh commit of it in ``workdir/repo``."""
        repo = workdir / "repo"
        subprocess.run(
            ["git", "clone", "-q", "--no-hardlinks", str(folder), str(repo)],
            check=False,
            capture_output=True,
        )
        if not (repo / ".git").exists():
            shutil.copytree(
                folder, repo, ignore=shutil.ignore_patterns(".git", "dist", "build", ".nox")
            )
            _run_git(repo, "init", "-q")
        _run_git(repo, "add", "-A")
        _run_git(
            repo,
            "-c",
            "user.name=reva",
            "-c",
            "user.email=reva@localhost",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "conformance",
        )
        commit = _run_git(repo, "rev-parse", "HEAD")
        return f"git+file://{repo}@{commit}"


def _run_git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    )
    return result.stdout.strip()
