"""The shared verdict table's format: what a case is, and how the harness runs one.

A case mints what a peer presents. It returns an `IssuedCertificate` (verified against the
world's bundles) or a `Presented` (with the bundles it needs, e.g. a trust domain of its
own). The tables (`tests/test_verify.py`'s own, `tests/cases_limbo.py`'s) are lists of
`Rejected` and `Accepted` rows; `test_verify.TABLES` joins them, and every row runs through
`verify_svid` (test_verify) and a real handshake in both roles (test_handshake_verdicts).
A module of its own, so that a table can import the format without importing the harness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import meshtls
from meshtls.testing import IssuedCertificate

from .conftest import World


@dataclass(frozen=True)
class Presented:
    """What a peer presents, and the bundles the verifier holds when not the world's."""

    issued: IssuedCertificate
    bundles: meshtls.BundleSet | None = None


Case = Callable[[World], IssuedCertificate | Presented]
Rejected = tuple[str, Case, str]  # (id, case, the reason both paths must give)
Accepted = tuple[str, Case]


def presented(world: World, case: Case) -> tuple[IssuedCertificate, meshtls.BundleSet]:
    """Run a table case: the certificates to present and the bundles to verify against."""
    made = case(world)
    if isinstance(made, Presented):
        return made.issued, made.bundles if made.bundles is not None else world.bundles
    return made, world.bundles


def once(case: Case) -> Case:
    """A case made once per world: for keys that are slow to generate (RSA, DSA)."""
    made: dict[int, tuple[World, IssuedCertificate | Presented]] = {}

    def cached(world: World) -> IssuedCertificate | Presented:
        found = made.get(id(world))
        if found is None or found[0] is not world:
            found = made[id(world)] = (world, case(world))
        return found[1]

    return cached
