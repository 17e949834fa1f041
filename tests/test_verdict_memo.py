"""The verdict memo of `verify_handshake_chain` (issue 11): a chain seen again skips the
pipeline only while every time-dependent step would pass, with the same bundle set and
policy; P-4 and the role are never remembered, and a chain judged through a search of what
the peer sent is not remembered at all. Each test first makes the memo hold the chain, then
shows that the verdict still changes when it must."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import meshtls
from meshtls import _svid
from meshtls._svid import verify_handshake_chain

from .conftest import T, World
from .test_verify import second_candidate

POLICY = meshtls.ValidationPolicy()
SKEW = POLICY.clock_skew


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def chain_of(world: World, **issue: object) -> list[bytes]:
    issued = world.ca.issue("spiffe://example.org/peer", **issue)  # type: ignore[arg-type]
    return [der(c) for c in (*issued.chain, world.ca.certificate)]


def judge(
    world: World,
    chain: Sequence[bytes],
    *,
    now: object = T,
    bundles: meshtls.BundleSet | None = None,
    policy: meshtls.ValidationPolicy = POLICY,
    role: Literal["client", "server"] = "client",
    revocation: object = None,
    sent_chain: Sequence[bytes] | None = None,
) -> str:
    """The reason `verify_handshake_chain` gives, or "ok"."""
    try:
        verify_handshake_chain(
            chain,
            world.bundles if bundles is None else bundles,
            policy=policy,
            now=now,  # type: ignore[arg-type]
            role=role,
            revocation=revocation,  # type: ignore[arg-type]
            sent=len(sent_chain or ()),
            sent_chain=None if sent_chain is None else lambda: sent_chain,
        )
    except meshtls.VerificationError as exc:
        return exc.reason
    return "ok"


def remembered(chain: Sequence[bytes], role: str = "client") -> bool:
    return _svid._VERDICTS.peek((role, *chain)) is not None


def test_a_chain_seen_again_is_remembered(world: World) -> None:
    chain = chain_of(world, not_before=T - timedelta(minutes=5), ttl=timedelta(minutes=30))
    assert judge(world, chain) == "ok"
    assert remembered(chain)
    assert judge(world, [bytes(bytearray(d)) for d in chain]) == "ok"  # equal bytes, new objects


def test_past_the_window_the_chain_is_expired_again(world: World) -> None:
    chain = chain_of(world, not_before=T - timedelta(minutes=5), ttl=timedelta(minutes=30))
    assert judge(world, chain) == "ok"
    leaf = x509.load_der_x509_certificate(chain[0])
    edge = leaf.not_valid_after_utc + SKEW
    assert judge(world, chain, now=edge) == "ok"
    assert judge(world, chain, now=edge + timedelta(microseconds=1)) == "expired"
    assert judge(world, chain, now=T) == "ok"


def test_before_the_window_the_chain_is_not_yet_valid(world: World) -> None:
    chain = chain_of(world, not_before=T, ttl=timedelta(minutes=30))
    assert judge(world, chain, now=T + timedelta(minutes=1)) == "ok"
    assert judge(world, chain, now=T - SKEW) == "ok"
    assert judge(world, chain, now=T - SKEW - timedelta(microseconds=1)) == "not_yet_valid"


def test_max_age_still_ends_a_remembered_chain(world: World) -> None:
    chain = chain_of(world, not_before=T, ttl=timedelta(minutes=50))
    aged = meshtls.ValidationPolicy(max_age=timedelta(minutes=10))
    assert judge(world, chain, now=T + timedelta(minutes=1), policy=aged) == "ok"
    assert judge(world, chain, now=T + timedelta(minutes=11), policy=aged) == "age_exceeded"


def test_another_policy_is_judged_afresh(world: World) -> None:
    chain = chain_of(world, not_before=T - timedelta(minutes=5), ttl=timedelta(minutes=50))
    assert judge(world, chain) == "ok"
    strict = meshtls.ValidationPolicy(max_ttl=timedelta(minutes=20))
    assert judge(world, chain, policy=strict) == "ttl_exceeded"


def test_another_bundle_set_is_judged_afresh(world: World) -> None:
    """Rotation builds a new bundle set: one without the chain's root refuses it."""
    chain = chain_of(world, not_before=T - timedelta(minutes=5), ttl=timedelta(minutes=30))
    assert judge(world, chain) == "ok"
    without_ours = world.other.bundle_set()
    assert judge(world, chain, bundles=without_ours) == "unknown_trust_domain"
    equal_but_new = world.ca.bundle_set(world.other, world.ed)
    assert judge(world, chain, bundles=equal_but_new) == "ok"


def test_the_role_is_part_of_the_key(world: World) -> None:
    chain = chain_of(
        world,
        not_before=T - timedelta(minutes=5),
        ttl=timedelta(minutes=30),
        eku=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    assert judge(world, chain, role="client") == "ok"
    assert judge(world, chain, role="server") == "extended_key_usage"


def test_revocation_is_read_on_every_handshake(world: World) -> None:
    chain = chain_of(world, not_before=T - timedelta(minutes=5), ttl=timedelta(minutes=30))
    hard = meshtls.ValidationPolicy(revocation="hard-fail")
    assert judge(world, chain, policy=hard, revocation=None) == "revocation_unknown"
    soft = meshtls.ValidationPolicy(revocation="soft-fail")
    assert judge(world, chain, policy=soft) == "ok"
    assert remembered(chain)
    assert judge(world, chain, policy=hard) == "revocation_unknown"


@pytest.mark.parametrize("role", ["client", "server"])
def test_a_refusal_is_never_remembered(world: World, role: str) -> None:
    chain = chain_of(world, not_before=T - timedelta(hours=3), ttl=timedelta(hours=2))
    assert judge(world, chain, role=role) in {"expired", "ttl_exceeded"}  # type: ignore[arg-type]
    assert not remembered(chain, role)


def test_a_chain_passed_only_by_searching_what_was_sent_is_not_remembered(
    world: World,
) -> None:
    """OpenSSL's chain goes through an intermediate that breaks S-3; the twin the peer also
    sent gives a valid path. Remembering that verdict under OpenSSL's chain would accept
    the same bad chain later from a peer that sends no good twin."""
    issued = second_candidate(world)
    leaf, bad, good = issued.chain
    openssl_chain = [der(leaf), der(bad), der(world.ca.certificate)]
    sent_both = [der(leaf), der(bad), der(good)]
    assert judge(world, openssl_chain, sent_chain=sent_both) == "ok"
    assert not remembered(openssl_chain)
    sent_bad_only = [der(leaf), der(bad)]
    assert judge(world, openssl_chain, sent_chain=sent_bad_only) == "bad_signing_certificate"
