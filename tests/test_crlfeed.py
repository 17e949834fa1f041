"""`meshtls._crlfeed`: CRLs that arrive without a fetch are kept, or refused and counted (P-4).

A real `Revocations` and real CRLs signed by `meshtls.testing.CA` keys; the places are
plain readers (the node's files and Workload API readers are tested end to end). Time is
a `trio.testing.MockClock` that the revocation clock follows; nothing sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry

from meshtls._crlfeed import CrlFeed, CrlPlace
from meshtls._logs import FIELDS
from meshtls._metrics import NodeMetrics
from meshtls._prefetch import Revocations
from meshtls._revocation import RevocationCache
from meshtls.testing import CA, IssuedCertificate

from .test_crl import make_crl

T: Final = datetime(2030, 1, 1, tzinfo=UTC)


class Room:
    """A `Revocations` with metrics, judged at ``T + trio.current_time()`` (or at `T`)."""

    def __init__(self, *, crl_ttl: timedelta = timedelta(hours=1), trio_clock: bool = False):
        self.registry = CollectorRegistry()
        self.now: Callable[[], datetime] = (
            (lambda: T + timedelta(seconds=trio.current_time())) if trio_clock else (lambda: T)
        )
        self.metrics = NodeMetrics(self.registry, clock=self.now)
        self.revocations = Revocations(
            cache=RevocationCache(crl_ttl=crl_ttl), metrics=self.metrics, clock=self.now
        )

    def feed(
        self, places: Sequence[CrlPlace], issuers: Sequence[x509.Certificate], **kw: timedelta
    ) -> CrlFeed:
        return CrlFeed(self.revocations, places, lambda: issuers, metrics=self.metrics, **kw)

    def fetches(self, result: str) -> float:
        value = self.registry.get_sample_value(
            "meshtls_revocation_fetch_total", {"kind": "crl", "result": result}
        )
        return value or 0.0

    def status(self, issued: IssuedCertificate, ca: CA) -> str:
        return self.revocations.lookup((issued.leaf, ca.certificate), self.now()).status


def pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(Encoding.PEM)


def fields(record: logging.LogRecord) -> dict[str, object]:
    found: dict[str, object] = getattr(record, FIELDS)
    return found


def holding(*crls: bytes) -> Callable[[], Sequence[bytes]]:
    return lambda: crls


def test_P_4_a_fed_crl_is_kept_and_answers_lookups() -> None:
    ca = CA("example.org", now=T)
    alice, bob = ca.issue("spiffe://example.org/alice"), ca.issue("spiffe://example.org/bob")
    room = Room()
    der = make_crl(ca, [alice.leaf.serial_number]).public_bytes(Encoding.DER)
    feed = room.feed([CrlPlace("file:ca.crl", holding(der))], [ca.certificate])
    assert feed.refresh() == 1
    assert room.status(alice, ca) == "revoked"
    assert room.status(bob, ca) == "good"
    assert room.fetches("invalid") == room.fetches("error") == room.fetches("ok") == 0


@pytest.mark.parametrize("stranger", ["same name, other key", "unknown name"])
def test_P_4_a_crl_no_known_authority_signed_is_refused_counted_and_logged_once(
    stranger: str, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CA("example.org", now=T)
    other = CA("example.org" if stranger == "same name, other key" else "other.org", now=T)
    if stranger == "same name, other key":
        assert other.certificate.subject == ca.certificate.subject
    alice = ca.issue("spiffe://example.org/alice")
    forged = pem(make_crl(other, [alice.leaf.serial_number]))
    room = Room()
    feed = room.feed([CrlPlace("workload-api", holding(forged))], [ca.certificate])
    with caplog.at_level(logging.WARNING, logger="meshtls.revocation"):
        for _ in range(3):
            assert feed.refresh() == 0
    assert room.fetches("invalid") == 1
    why = "bad_signature" if stranger == "same name, other key" else "wrong_issuer"
    counted = room.registry.get_sample_value(
        "meshtls_revocation_refused_total", {"kind": "crl", "problem": why}
    )
    assert counted == 1
    refused = [r for r in caplog.records if r.getMessage().startswith("CRL refused")]
    assert len(refused) == 1, caplog.text
    assert fields(refused[0])["origin"] == "workload-api"
    assert room.status(alice, ca) == "unknown"  # nothing kept: the forged list counts for nothing


def test_P_4_a_refused_crl_that_leaves_and_returns_is_counted_again() -> None:
    """Once per distinct content per place while it stays; a new arrival is news."""
    ca, other = CA("example.org", now=T), CA("other.org", now=T)
    forged = pem(make_crl(other))
    held: list[bytes] = [forged]
    room = Room()
    feed = room.feed([CrlPlace("file:x", lambda: held)], [ca.certificate])
    feed.refresh()
    feed.refresh()
    held.clear()
    feed.refresh()
    held.append(forged)
    feed.refresh()
    assert room.fetches("invalid") == 2


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"garbage",
        b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
        b"\x30\x03\x02\x01\x00",
    ],
)
def test_P_4_garbage_bytes_are_refused(junk: bytes) -> None:
    ca = CA("example.org", now=T)
    alice = ca.issue("spiffe://example.org/alice")
    good = pem(make_crl(ca, [alice.leaf.serial_number]))
    room = Room()
    feed = room.feed([CrlPlace("file:junk", holding(junk, good))], [ca.certificate])
    assert feed.refresh() == 1  # the garbage does not stop the good CRL beside it
    assert room.fetches("invalid") == 1
    assert room.status(alice, ca) == "revoked"


def test_P_4_a_reader_that_raises_counts_error_and_the_next_pass_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = CA("example.org", now=T)
    alice = ca.issue("spiffe://example.org/alice")
    crl = pem(make_crl(ca, [alice.leaf.serial_number]))
    failures = [OSError("disk gone")]

    def flaky() -> Sequence[bytes]:
        if failures:
            raise failures.pop()
        return (crl,)

    room = Room()
    feed = room.feed(
        [CrlPlace("file:flaky", flaky), CrlPlace("file:broken", lambda: 1 / 0)],  # type: ignore[arg-type,return-value]
        [ca.certificate],
    )
    with caplog.at_level(logging.WARNING, logger="meshtls.revocation"):
        assert feed.refresh() == 0
        assert room.fetches("error") == 2
        assert room.status(alice, ca) == "unknown"
        assert feed.refresh() == 1  # the flaky place recovered; the broken one is counted again
    assert room.fetches("error") == 3
    assert room.status(alice, ca) == "revoked"
    unreadable = [fields(r) for r in caplog.records if r.getMessage() == "CRL unreadable"]
    assert [f["origin"] for f in unreadable] == ["file:flaky", "file:broken", "file:broken"]
    assert "disk gone" in str(unreadable[0]["error"])


async def test_P_4_a_kept_crl_is_judged_again_each_pass_and_outlives_the_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ca = CA("example.org", now=T)
    alice = ca.issue("spiffe://example.org/alice", ttl=timedelta(days=1))
    crl = pem(make_crl(ca, [alice.leaf.serial_number], next_update=T + timedelta(days=1)))
    held = [crl]
    room = Room(crl_ttl=timedelta(seconds=60), trio_clock=True)
    feed = room.feed(
        [CrlPlace("file:ca.crl", lambda: held)], [ca.certificate], interval=timedelta(seconds=5)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(feed.run)
        assert room.status(alice, ca) == "revoked"  # kept before `started`
        await trio.sleep(600)  # ten TTLs: each pass kept it again
        assert room.status(alice, ca) == "revoked"
        held.clear()  # its place no longer holds it: it lives out its TTL, then is gone
        await trio.sleep(30)
        assert room.status(alice, ca) == "revoked"
        await trio.sleep(60)
        assert room.status(alice, ca) == "unknown"
        nursery.cancel_scope.cancel()
    assert room.fetches("invalid") == room.fetches("error") == 0


async def test_P_4_a_fed_crl_past_its_next_update_is_refused_at_the_next_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Judged again at each pass: a file left behind does not keep a stale CRL alive."""
    ca = CA("example.org", now=T)
    alice = ca.issue("spiffe://example.org/alice", ttl=timedelta(days=1))
    crl = pem(make_crl(ca, [alice.leaf.serial_number], next_update=T + timedelta(minutes=10)))
    room = Room(crl_ttl=timedelta(hours=1), trio_clock=True)
    feed = room.feed([CrlPlace("file:ca.crl", holding(crl))], [ca.certificate])
    async with trio.open_nursery() as nursery:
        await nursery.start(feed.run)
        assert room.status(alice, ca) == "revoked"
        await trio.sleep(15 * 60)
        assert room.status(alice, ca) == "unknown"
        assert room.fetches("invalid") == 1  # once, though every pass refuses it
        nursery.cancel_scope.cancel()


def test_P_4_a_newer_crl_replaces_an_older_one_and_an_older_one_cannot_come_back() -> None:
    ca = CA("example.org", now=T)
    alice, bob = ca.issue("spiffe://example.org/alice"), ca.issue("spiffe://example.org/bob")
    old = pem(make_crl(ca, [alice.leaf.serial_number], this_update=T - timedelta(minutes=10)))
    new = pem(make_crl(ca, [bob.leaf.serial_number], this_update=T - timedelta(minutes=1)))
    held = [old]
    room = Room()
    feed = room.feed([CrlPlace("file:ca.crl", lambda: held)], [ca.certificate])
    feed.refresh()
    assert (room.status(alice, ca), room.status(bob, ca)) == ("revoked", "good")
    held[:] = [new]
    feed.refresh()
    assert (room.status(alice, ca), room.status(bob, ca)) == ("good", "revoked")
    held[:] = [old]  # a replayed older CRL
    feed.refresh()
    assert (room.status(alice, ca), room.status(bob, ca)) == ("good", "revoked")


def test_P_4_a_crl_is_judged_against_the_authority_whose_key_signed_it() -> None:
    """Two authorities share a name: each CRL is kept as its own signer's."""
    ca, twin = CA("example.org", now=T), CA("example.org", now=T)
    alice, bob = ca.issue("spiffe://example.org/alice"), twin.issue("spiffe://example.org/bob")
    room = Room()
    places = [
        CrlPlace("file:twin", holding(pem(make_crl(twin, [bob.leaf.serial_number])))),
        CrlPlace("file:ca", holding(pem(make_crl(ca, [alice.leaf.serial_number])))),
    ]
    feed = room.feed(places, [ca.certificate, twin.certificate])
    assert feed.refresh() == 2
    assert room.status(alice, ca) == "revoked"
    assert room.status(bob, twin) == "revoked"
    assert room.fetches("invalid") == 0


def test_P_4_a_fault_judging_one_crl_is_counted_and_the_pass_goes_on() -> None:
    """Whatever goes wrong judging a CRL (here: the node's list of authorities raises)
    refuses that CRL only: counted once, and the feed's task never ends on it."""
    ca = CA("example.org", now=T)
    room = Room()

    def broken() -> list[x509.Certificate]:
        raise RuntimeError("a bug listing the authorities")

    feed = CrlFeed(
        room.revocations, [CrlPlace("file:x", holding(pem(make_crl(ca))))], broken,
        metrics=room.metrics,
    )  # fmt: skip
    assert feed.refresh() == 0
    assert feed.refresh() == 0
    assert room.fetches("invalid") == 1
    assert (
        room.registry.get_sample_value(
            "meshtls_revocation_refused_total", {"kind": "crl", "problem": "other"}
        )
        == 1
    )
