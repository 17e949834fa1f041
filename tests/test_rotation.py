"""The rotation room: each update judged in order, bundles on their own merit (B-4, B-7).

`Rotation` is driven directly here with `Identity` values, a fresh metrics registry and a
fixed clock: no source, no sockets. The node-level tests (test_node_workload.py,
test_node_hostile_files.py) drive the same code through real sources.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Final

import pytest
from prometheus_client import CollectorRegistry

import meshtls
from meshtls import BundleSet, Identity, X509Bundle, _ossl
from meshtls._logs import record_fields
from meshtls._metrics import NodeMetrics
from meshtls._policy import ValidationPolicy
from meshtls._rotation import Rotation
from meshtls.testing import CA

from .hostile_identity import NO_EXPIRY

NOW: Final = datetime(2030, 1, 1, tzinfo=UTC)
NODE: Final = "spiffe://example.org/node"
TD: Final = meshtls.TrustDomain.parse("example.org")


class World:
    """Two roots of example.org, a rotation on a fresh registry, and its first identity."""

    def __init__(self) -> None:
        self.root1 = CA("example.org", now=NOW)
        self.root2 = CA("example.org", now=NOW, label="root 2")
        self.both = self.bundles(self.root1, self.root2)
        self.registry = CollectorRegistry()
        metrics = NodeMetrics(self.registry, clock=lambda: NOW)
        self.rotation = Rotation(policy=ValidationPolicy(), metrics=metrics, clock=lambda: NOW)
        self.first = Identity(self.root1.issue(NODE).svid(), self.both)
        self.rotation.begin(self.first)

    @staticmethod
    def bundles(*roots: CA, sequence: int | None = None) -> BundleSet:
        authorities = tuple(root.certificate for root in roots)
        return BundleSet({TD: X509Bundle(TD, authorities, sequence=sequence)})

    def failures(self, reason: str) -> float | None:
        name = "meshtls_certificate_validation_failures_total"
        return self.registry.get_sample_value(name, {"reason": reason})

    def rotations(self) -> float | None:
        return self.registry.get_sample_value("meshtls_certificate_rotations_total")


def test_B_7_bundles_apply_even_when_the_svid_beside_them_is_refused() -> None:
    world = World()
    too_long = world.root1.issue(NODE, ttl=timedelta(hours=2)).svid()  # P-1: over max_ttl
    only_root1 = world.bundles(world.root1)

    assert world.rotation.apply(Identity(too_long, only_root1))

    active = world.rotation.identity()
    assert active.svid is world.first.svid  # the SVID was refused: the old one stays
    assert active.bundles is only_root1  # ... beside the new bundles: root 2 is gone
    assert world.failures("ttl_exceeded") == 1
    assert world.rotations() == 1
    assert _ossl.store_size(active.contexts().client) == 1  # gone from OpenSSL's store too


def test_a_good_update_swaps_both_and_builds_the_contexts_before() -> None:
    world = World()
    new = Identity(world.root1.issue(NODE).svid(), world.bundles(world.root1))
    assert world.rotation.apply(new)
    assert world.rotation.identity() is new
    assert new._built  # built by the rotation, before any handshake asked
    assert world.rotations() == 1


def test_an_update_with_nothing_new_swaps_nothing() -> None:
    world = World()
    same = Identity(world.first.svid, world.bundles(world.root1, world.root2))
    assert not world.rotation.apply(same)
    assert world.rotation.identity() is world.first
    assert world.rotations() == 0


def test_B_4_a_bundle_rollback_is_refused_and_the_svid_still_rotates() -> None:
    world = World()
    seq5 = world.bundles(world.root1, sequence=5)
    world.rotation.apply(Identity(world.first.svid, seq5))
    renewed = world.root1.issue(NODE).svid()

    world.rotation.apply(Identity(renewed, world.bundles(world.root1, world.root2, sequence=4)))

    active = world.rotation.identity()
    assert active.svid is renewed
    assert active.bundles is seq5  # root 2 does not come back through a rollback
    assert world.failures("malformed_certificate") == 1


def test_the_same_refused_svid_is_logged_and_counted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    too_long = world.root1.issue(NODE, ttl=timedelta(hours=2)).svid()
    with caplog.at_level(logging.WARNING, logger="meshtls"):
        for _ in range(3):  # a source that publishes the same state again
            world.rotation.apply(Identity(too_long, world.both))
    assert world.failures("ttl_exceeded") == 1
    assert [r.getMessage() for r in caplog.records] == ["identity update rejected"]
    assert record_fields(caplog.records[0])["reason"] == "ttl_exceeded"
    assert world.rotation.identity() is world.first


def test_an_svid_with_no_expiry_is_refused_without_stopping_rotation() -> None:
    world = World()
    forever = world.root1.issue(NODE, not_after=NO_EXPIRY).svid()
    assert not world.rotation.apply(Identity(forever, world.both))
    assert world.rotation.identity() is world.first
    refused = sum(world.failures(r) or 0 for r in ("ttl_exceeded", "malformed_certificate"))
    assert refused == 1
    # and the next good update is applied
    good = Identity(world.root1.issue(NODE).svid(), world.both)
    assert world.rotation.apply(good)
    assert world.rotation.identity() is good


def test_our_svid_that_no_longer_chains_stays_and_is_counted() -> None:
    world = World()
    only_root2 = world.bundles(world.root2)  # our SVID is from root 1
    assert world.rotation.apply(Identity(world.first.svid, only_root2))
    assert world.rotation.identity().bundles is only_root2  # B-7: the bundle change stands
    assert world.rotation.identity().svid is world.first.svid  # there is no other to present
    assert world.failures("untrusted_chain") == 1


@pytest.mark.parametrize("key_type", ["rsa-1024", "ec-p192"])
def test_a_weak_svid_is_refused_and_the_new_bundles_still_apply(key_type: str) -> None:
    """Refused by the verifier or by the TLS library: either way the old SVID stays."""
    world = World()
    weak = world.root1.issue(NODE, key_type=key_type).svid()  # type: ignore[arg-type]
    only_root1 = world.bundles(world.root1)
    assert world.rotation.apply(Identity(weak, only_root1))
    active = world.rotation.identity()
    assert active.svid is world.first.svid
    assert active.bundles is only_root1
    assert world.rotations() == 1


def test_begin_refuses_a_first_svid_over_max_ttl() -> None:
    world = World()
    registry = CollectorRegistry()
    rotation = Rotation(
        policy=ValidationPolicy(),
        metrics=NodeMetrics(registry, clock=lambda: NOW),
        clock=lambda: NOW,
    )
    too_long = world.root1.issue(NODE, ttl=timedelta(hours=2)).svid()
    with pytest.raises(meshtls.VerificationError, match="ttl_exceeded"):
        rotation.begin(Identity(too_long, world.both))
    with pytest.raises(meshtls.MeshError, match="no identity"):
        rotation.identity()
