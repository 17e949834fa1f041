"""`meshtls._revocation`: the status cache every handshake reads (P-4), on injected time.

CRLs are real, signed by the test CA and judged by `judge_crl`; OCSP answers are stored
as the prefetcher stores them once `meshtls._ocsp` has verified them.
"""

from __future__ import annotations

from datetime import timedelta

from meshtls._crl import judge_crl
from meshtls._revocation import (
    CertRef,
    RevocationCache,
    RevocationTarget,
    chain_status,
    chain_targets,
    issuer_key_digest,
)
from meshtls.testing import CA

from .test_crl import SKEW, T, make_crl

HOUR = timedelta(hours=1)


def test_P_4_a_chain_names_every_certificate_but_the_root_by_issuer_key_and_serial() -> None:
    ca = CA("example.org", now=T)
    inter = ca.intermediate()
    leaf = inter.issue("spiffe://example.org/web")
    chain = (leaf.leaf, inter.certificate, ca.certificate)
    targets = chain_targets(chain)
    assert [t.certificate for t in targets] == [leaf.leaf, inter.certificate]
    assert targets[0].ref == CertRef(issuer_key_digest(inter.certificate), leaf.leaf.serial_number)
    assert targets[1].issuer is ca.certificate


def test_P_4_an_ocsp_answer_lives_the_shorter_of_its_ttl_and_its_next_update() -> None:
    ca = CA("example.org", now=T)
    leaf = ca.issue("spiffe://example.org/web")
    target = RevocationTarget.of(leaf.leaf, ca.certificate)
    cache = RevocationCache(ocsp_ttl=HOUR)
    cache.store_ocsp(
        target.ref, "good", this_update=T, next_update=T + 2 * HOUR, now=T, origin="http://o"
    )
    assert cache.lookup(target.ref, T + HOUR - timedelta(seconds=1)) is not None
    assert cache.lookup(target.ref, T + HOUR) is None  # the TTL ended it
    cache.store_ocsp(
        target.ref, "good", this_update=T, next_update=T + timedelta(minutes=10), now=T, origin="o"
    )
    assert cache.lookup(target.ref, T + timedelta(minutes=10)) is None  # nextUpdate ended it
    assert len(cache) == 0  # a lookup that finds an ended entry drops it


def test_P_4_a_crl_answers_for_every_serial_of_its_issuer_and_revoked_wins() -> None:
    ca = CA("example.org", now=T)
    good = ca.issue("spiffe://example.org/good")
    bad = ca.issue("spiffe://example.org/bad")
    judged = judge_crl(make_crl(ca, [bad.leaf.serial_number]), ca.certificate, now=T, skew=SKEW)
    cache = RevocationCache(crl_ttl=6 * HOUR)
    cache.store_crl(issuer_key_digest(ca.certificate), judged, now=T, origin="file:crl.pem")
    good_ref = RevocationTarget.of(good.leaf, ca.certificate).ref
    bad_ref = RevocationTarget.of(bad.leaf, ca.certificate).ref
    assert (record := cache.lookup(good_ref, T)) is not None
    assert record.status == "good"
    # an OCSP "good" for the revoked serial does not undo the CRL
    cache.store_ocsp(bad_ref, "good", this_update=T, next_update=None, now=T, origin="o")
    revoked = cache.lookup(bad_ref, T)
    assert revoked is not None
    assert (revoked.status, revoked.source) == ("revoked", "crl")
    assert revoked.revoked_at == T
    # the CRL's nextUpdate (T + 1h, from make_crl) is shorter than the 6 h TTL
    assert cache.lookup(good_ref, T + HOUR) is None


def test_P_4_an_older_crl_cannot_take_back_a_revocation() -> None:
    ca = CA("example.org", now=T)
    bad = ca.issue("spiffe://example.org/bad")
    key = issuer_key_digest(ca.certificate)
    newer = make_crl(ca, [bad.leaf.serial_number], this_update=T - timedelta(minutes=1))
    older = make_crl(ca, [], this_update=T - timedelta(minutes=30))
    cache = RevocationCache()
    cache.store_crl(key, judge_crl(newer, ca.certificate, now=T, skew=SKEW), now=T, origin="a")
    cache.store_crl(key, judge_crl(older, ca.certificate, now=T, skew=SKEW), now=T, origin="b")
    ref = RevocationTarget.of(bad.leaf, ca.certificate).ref
    assert (record := cache.lookup(ref, T)) is not None
    assert record.status == "revoked"


def test_P_4_the_cache_is_bounded_least_recently_used_first() -> None:
    ca = CA("example.org", now=T)
    key = issuer_key_digest(ca.certificate)
    cache = RevocationCache(limit=3)
    for serial in range(1, 5):
        cache.store_ocsp(
            CertRef(key, serial), "good", this_update=T, next_update=None, now=T, origin="o"
        )
    assert len(cache) == 3
    assert cache.evictions == 1
    assert cache.lookup(CertRef(key, 1), T) is None
    assert cache.oldest() == T


def test_P_4_chain_status_is_the_worst_and_lists_what_is_unknown() -> None:
    ca = CA("example.org", now=T)
    inter = ca.intermediate()
    leaf = inter.issue("spiffe://example.org/web")
    targets = chain_targets((leaf.leaf, inter.certificate, ca.certificate))
    cache = RevocationCache()
    assert chain_status(cache, targets, T).unknown == targets
    cache.store_ocsp(targets[0].ref, "good", this_update=T, next_update=None, now=T, origin="o")
    verdict = chain_status(cache, targets, T)
    assert (verdict.status, verdict.unknown) == ("unknown", targets[1:])
    cache.store_ocsp(targets[1].ref, "revoked", this_update=T, next_update=None, now=T, origin="o")
    verdict = chain_status(cache, targets, T)
    assert verdict.status == "revoked"
    assert verdict.revoked is not None
    assert verdict.revoked[0] is targets[1]
    cache.store_ocsp(targets[1].ref, "good", this_update=T, next_update=None, now=T, origin="o")
    assert chain_status(cache, targets, T).status == "good"
