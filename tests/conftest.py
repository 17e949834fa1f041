"""Shared fixtures: a fixed instant and test CAs for two federated trust domains."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from cryptography import x509

import meshtls
from meshtls.testing import CA

#: The instant every certificate test is evaluated at; no test reads the wall clock.
T = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA("example.org", now=T)


@pytest.fixture(scope="session")
def other_ca() -> CA:
    return CA("other.org", now=T)


@pytest.fixture(scope="session")
def bundles(ca: CA, other_ca: CA) -> meshtls.BundleSet:
    """example.org and other.org, federated: each with its own root."""
    return ca.bundle_set(other_ca)


def assert_verifies(
    chain: Sequence[x509.Certificate],
    bundles: meshtls.BundleSet,
    *,
    now: datetime = T,
    policy: meshtls.ValidationPolicy | None = None,
    role: meshtls._svid.Role | None = None,
) -> meshtls.VerifiedPeer:
    """verify_svid accepts `chain` and the verified path starts at its leaf."""
    peer = meshtls.verify_svid(chain, bundles, now=now, policy=policy, role=role)
    assert peer.chain[0] == chain[0]
    return peer


@dataclass(frozen=True)
class World:
    ca: CA
    other: CA
    ed: CA  # an Ed25519 hierarchy, which cryptography's web-PKI verifier refuses
    bundles: meshtls.BundleSet


@pytest.fixture(scope="session")
def world(ca: CA, other_ca: CA) -> World:
    ed = CA("ed.example", now=T, key_type="ed25519")
    return World(ca, other_ca, ed, ca.bundle_set(other_ca, ed))
