"""Service types: one module each, plus one entry in :data:`SERVICES`.

A service type names the entry-point group ``reva.<name>`` and declares its methods as pluggy
hookspecs; their parameters and results are the wire contract.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from . import authprovider, userprovider


@dataclass(frozen=True)
class ServiceType:
    """A kind of service a plugin can provide (Reva's ``user.Manager``, ``auth.Manager`` …)."""

    name: str
    spec: type
    signatures: dict[str, inspect.Signature] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        sigs = {
            name: _without_self(inspect.signature(func))
            for name, func in vars(self.spec).items()
            if callable(func) and not name.startswith("_")
        }
        object.__setattr__(self, "signatures", sigs)

    @property
    def group(self) -> str:
        """The entry-point group plugins of this type declare."""
        return f"reva.{self.name}"

    @property
    def methods(self) -> tuple[str, ...]:
        """The service's method names, in declaration order."""
        return tuple(self.signatures)


def _without_self(sig: inspect.Signature) -> inspect.Signature:
    params = list(sig.parameters.values())[1:]
    return sig.replace(parameters=params)


SERVICES: dict[str, ServiceType] = {
    module.NAME: ServiceType(module.NAME, module.Spec) for module in (userprovider, authprovider)
}
