"""The ``requirement`` kind: a PEP 508 requirement installed from the configured index."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from .._errors import SourceError
from .._redact import redact
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
class RequirementSource(Source):
    """A PEP 508 requirement installed from the configured index; a range is resolved to the
    newest matching version on each load, an exact ``==`` pin is not."""

    KINDS: ClassVar[tuple[Kind, ...]] = ("requirement",)
    REQUIRED_PINS: ClassVar[tuple[str, ...]] = ("version",)
    #: The plugin is a package of the index: a lock pins it by version, with no wheel of its own.
    LOCKS_A_WHEEL: ClassVar[bool] = False

    requirement: Requirement
    kind: str = "requirement"

    @classmethod
    def recognise(cls, spec: str) -> RequirementSource | None:
        """A PEP 508 requirement (with a version specifier; ``name @ URL`` is refused)."""
        try:
            requirement = Requirement(spec)
        except InvalidRequirement:
            return None
        if requirement.url:
            raise SourceError(
                f"driver {redact(spec)!r}: write the URL itself (git+…, https://…) instead of "
                "'name @ URL'"
            )
        return cls(requirement)

    @property
    def spec(self) -> str:
        """The requirement, normalised."""
        return str(self.requirement)

    @property
    def origin(self) -> Origin:
        """The canonical distribution name (no extras, version or markers)."""
        return Origin("name", canonicalize_name(self.requirement.name))

    @property
    def exact_version(self) -> str | None:
        """The version of an ``==``/``===`` pin without wildcards."""
        specs = list(self.requirement.specifier)
        if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
            return specs[0].version
        return None

    def resolve(self, ctx: ResolveContext) -> Resolved:
        """Pin to one version (asking the index for a range)."""
        version = self.exact_version
        if version is None:
            if ctx.offline:
                raise NeedsNetwork(f"{self.spec}: choosing a version needs the package index")
            assert ctx.find_version is not None
            version = ctx.find_version(self.spec)
        extras = f"[{','.join(sorted(self.requirement.extras))}]" if self.requirement.extras else ""
        pinned = f"{canonicalize_name(self.requirement.name)}{extras}=={version}"
        return Resolved(
            self.kind,
            self.spec,
            f"req:{pinned}",
            (pinned,),
            mutable=self.exact_version is None,
            pins={"version": version},
        )

    def drift(self, entry: LockedPins, ctx: ResolveContext) -> str | None:
        """Another distribution, or a specifier the locked version no longer meets."""
        name = canonicalize_name(self.requirement.name)
        version = entry.pins.get("version", "")
        if name != canonicalize_name(entry.plugin) or not self.requirement.specifier.contains(
            version, prereleases=True
        ):
            return (
                f"the lock pins {entry.plugin} {version}, the config now asks for "
                f"{redact(self.spec)}"
            )
        return None

    def pinned(self, entry: LockedPins, ctx: ResolveContext) -> Resolved:
        """The locked version."""
        return locked_resolved(entry, (f"{entry.plugin}=={entry.pins['version']}",))

    def repin(self, entry: LockedPins, ctx: ResolveContext) -> Resolved:
        """The locked version, with the config's extras."""
        requirement = Requirement(str(self.requirement))
        requirement.specifier = SpecifierSet(f"=={entry.pins['version']}")
        at = RequirementSource(requirement)
        return dataclasses.replace(at.resolve(ctx), spec=self.spec, mutable=False)
