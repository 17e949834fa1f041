"""Revocation statuses: the cache that every handshake reads, and one chain's verdict (P-4).

Theory of operation. The handshake never waits on the network for revocation. A
prefetcher (`meshtls._prefetch`, the only part that does I/O) fetches OCSP responses and
CRLs, judges them (`meshtls._ocsp`, `meshtls._crl`) and stores what they say here. A
handshake only looks here, through a `RevocationView`:

- a certificate is named by a `CertRef`: the digest of its issuer's public key and its
  serial, as an OCSP CertID names it. Two CAs that share a name never share a status;
- an OCSP answer is stored per `CertRef`, and lives ``min(ocsp_ttl, nextUpdate)``;
- a CRL is stored once per issuer key and answers for every serial of that issuer; it
  lives ``min(crl_ttl, nextUpdate)``;
- `revoked` from any live entry wins over `good` from another; nothing live means
  `unknown`.

The cache is bounded (an LRU over OCSP entries and CRLs together) and keeps no clock of
its own: every call takes ``now``. Pure: no trio, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._cache import LruCache
from ._errors import VerificationError

if TYPE_CHECKING:
    from ._crl import JudgedCrl

Status = Literal["good", "revoked", "unknown"]
#: Where a stored status came from.
StatusSource = Literal["ocsp", "crl"]

DEFAULT_CACHE_LIMIT: Final = 10_000
DEFAULT_OCSP_TTL: Final = timedelta(hours=1)
DEFAULT_CRL_TTL: Final = timedelta(hours=6)


def issuer_key_digest(issuer: x509.Certificate) -> bytes:
    """SHA-256 of `issuer`'s SubjectPublicKeyInfo: the issuer half of every `CertRef`."""
    spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


@dataclass(frozen=True, slots=True)
class CertRef:
    """One certificate, as revocation data names it: its issuer's key and its serial."""

    issuer_key: bytes  # `issuer_key_digest` of the issuer
    serial: int

    def __str__(self) -> str:
        return f"{self.issuer_key[:8].hex()}/{self.serial:#x}"


@dataclass(frozen=True, slots=True)
class RevocationTarget:
    """A certificate whose status is wanted, with the issuer that vouches for it.

    The issuer is needed to ask (an OCSP CertID hashes its name and key) and to judge
    the answer (its key signs the response or the CRL, or a delegated responder's cert).
    """

    certificate: x509.Certificate
    issuer: x509.Certificate
    ref: CertRef

    @classmethod
    def of(cls, certificate: x509.Certificate, issuer: x509.Certificate) -> RevocationTarget:
        ref = CertRef(issuer_key_digest(issuer), certificate.serial_number)
        return cls(certificate, issuer, ref)


def chain_targets(chain: Sequence[x509.Certificate]) -> tuple[RevocationTarget, ...]:
    """The certificates of a verified chain (leaf first, root last) that can be revoked:
    all but the root, each with the next one as its issuer."""
    return tuple(RevocationTarget.of(cert, chain[i + 1]) for i, cert in enumerate(chain[:-1]))


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """What one source said about one certificate, and until when we believe it.

    ``expires_at`` is ``min(fetched_at + ttl, next_update)``; after it the record is gone
    (unknown). ``origin`` says where it came from in words: a URL, ``file:PATH`` or
    ``workload-api``. ``reason`` is the revocation reason when one was given.
    """

    status: Status
    source: StatusSource
    this_update: datetime
    next_update: datetime | None
    fetched_at: datetime
    expires_at: datetime
    origin: str
    revoked_at: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class _CrlEntry:
    crl: JudgedCrl
    fetched_at: datetime
    expires_at: datetime
    origin: str

    def record(self, serial: int) -> StatusRecord:
        revoked = self.crl.revoked_entry(serial)
        return StatusRecord(
            "revoked" if revoked is not None else "good",
            "crl",
            self.crl.this_update,
            self.crl.next_update,
            self.fetched_at,
            self.expires_at,
            self.origin,
            revoked_at=None if revoked is None else revoked.revoked_at,
            reason=None if revoked is None else revoked.reason,
        )


def _expiry(fetched_at: datetime, ttl: timedelta, next_update: datetime | None) -> datetime:
    end = fetched_at + ttl
    return end if next_update is None else min(end, next_update)


class RevocationCache:
    """Statuses by `CertRef`, from OCSP answers and CRLs; at most `limit` entries in all.

    Owned by one node (or one embedder's revocation room); written by its prefetcher,
    read by every handshake. Not thread-safe (the Trio thread only).
    """

    __slots__ = ("_crls", "_entries", "crl_ttl", "limit", "ocsp_ttl")

    def __init__(
        self,
        *,
        limit: int = DEFAULT_CACHE_LIMIT,
        ocsp_ttl: timedelta = DEFAULT_OCSP_TTL,
        crl_ttl: timedelta = DEFAULT_CRL_TTL,
    ) -> None:
        self.limit = limit
        self.ocsp_ttl = ocsp_ttl
        self.crl_ttl = crl_ttl
        # One LRU order over both kinds, so that `limit` bounds memory as a whole: an
        # OCSP entry is keyed by its CertRef, a CRL by its issuer key (bytes).
        self._entries: LruCache[CertRef | bytes, StatusRecord | _CrlEntry] = LruCache(limit)
        self._crls: dict[bytes, None] = {}  # the issuer keys that have a CRL in `_ocsp`

    # ------------------------------------------------------------ writing

    def store_ocsp(
        self,
        ref: CertRef,
        status: Status,
        *,
        this_update: datetime,
        next_update: datetime | None,
        now: datetime,
        origin: str,
        revoked_at: datetime | None = None,
        reason: str | None = None,
    ) -> StatusRecord:
        """Keep a verified OCSP answer about `ref` (fetched at `now`); returns the record."""
        record = StatusRecord(
            status,
            "ocsp",
            this_update,
            next_update,
            now,
            _expiry(now, self.ocsp_ttl, next_update),
            origin,
            revoked_at,
            reason,
        )
        self._put(ref, record)
        return record

    def store_crl(self, issuer_key: bytes, crl: JudgedCrl, *, now: datetime, origin: str) -> None:
        """Keep a judged CRL of the issuer whose key digest is `issuer_key` (fetched at `now`).

        A CRL older than the one kept (by thisUpdate) is ignored: a replayed CRL cannot
        take back a revocation.
        """
        held = self._entries.peek(issuer_key)
        if isinstance(held, _CrlEntry) and held.crl.this_update > crl.this_update:
            return
        entry = _CrlEntry(crl, now, _expiry(now, self.crl_ttl, crl.next_update), origin)
        self._put(issuer_key, entry)
        self._crls[issuer_key] = None

    def _put(self, key: CertRef | bytes, value: StatusRecord | _CrlEntry) -> None:
        self._entries.put(key, value)
        if len(self._crls) > len(self._entries):  # a CRL was evicted: forget its key
            self._crls = {k: None for k in self._crls if k in self._entries}

    def forget(self, ref: CertRef) -> None:
        """Drop the OCSP answer about `ref` (the CRL of its issuer stays)."""
        self._entries.discard(ref)

    # ------------------------------------------------------------ reading

    def records(self, ref: CertRef, now: datetime) -> Iterator[StatusRecord]:
        """The live records about `ref`: its OCSP answer, then its issuer's CRL."""
        for key in (ref, ref.issuer_key):
            held = self._entries.get(key)
            if held is None:
                continue
            if held.expires_at <= now:
                self._entries.discard(key)
                continue
            yield held.record(ref.serial) if isinstance(held, _CrlEntry) else held

    def lookup(self, ref: CertRef, now: datetime) -> StatusRecord | None:
        """The status of `ref` at `now`: any `revoked` record wins, else `good`, else an
        OCSP `unknown` answer, else None (nothing live is known)."""
        best: StatusRecord | None = None
        for record in self.records(ref, now):
            if record.status == "revoked":
                return record
            if best is None or (best.status == "unknown" and record.status == "good"):
                best = record
        return best

    def has_crl(self, issuer_key: bytes, now: datetime) -> bool:
        """Whether a live CRL of this issuer is kept (without touching the LRU order)."""
        held = self._entries.peek(issuer_key)
        return isinstance(held, _CrlEntry) and held.expires_at > now

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def evictions(self) -> int:
        return self._entries.evictions

    def oldest(self) -> datetime | None:
        """When the oldest kept entry was fetched (None when empty). Walks every entry:
        for gauges and `/status`, not for the handshake path."""
        return min((v.fetched_at for v in self._entries.values()), default=None)


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """The revocation verdict on a chain: the worst status among its certificates.

    ``revoked`` holds the first revoked target (nearest the leaf) with its record;
    ``unknown`` the targets nothing live is known about (or whose OCSP answer was
    ``unknown``), for the prefetcher to fetch.
    """

    status: Status
    revoked: tuple[RevocationTarget, StatusRecord] | None = None
    unknown: tuple[RevocationTarget, ...] = field(default=())


class RevocationView(Protocol):
    """What verification asks about revocation: the cache only, never the network.

    ``lookup`` judges a verified chain (leaf first, root last) at `now`; it may ask a
    prefetcher to fetch the unknown parts, and count what it answered, but it must not
    block. ``fetched`` waits until the prefetcher has tried each target once, at most
    `wait` seconds (hard-fail's bounded wait); it never raises for a failed fetch.
    """

    def lookup(self, chain: Sequence[x509.Certificate], now: datetime) -> ChainStatus: ...

    async def fetched(self, targets: Sequence[RevocationTarget], wait: float) -> None: ...


def chain_status(
    cache: RevocationCache, targets: Sequence[RevocationTarget], now: datetime
) -> ChainStatus:
    """Look up each target of a chain in `cache`; the verdict on the whole chain."""
    unknown: list[RevocationTarget] = []
    for target in targets:
        record = cache.lookup(target.ref, now)
        if record is None or record.status == "unknown":
            unknown.append(target)
        elif record.status == "revoked":
            return ChainStatus("revoked", (target, record), tuple(unknown))
    if unknown:
        return ChainStatus("unknown", None, tuple(unknown))
    return ChainStatus("good")


class RevocationPendingError(VerificationError):
    """Hard-fail, and the status of part of a chain is unknown (``revocation_unknown``).

    ``targets`` are the unknown certificates: a handshake may wait, bounded by
    ``hard_fail_wait``, for the prefetcher to fetch them (`RevocationView.fetched`), then
    judge the chain again; everywhere else this is a plain rejection.
    """

    def __init__(self, detail: str, targets: Sequence[RevocationTarget]) -> None:
        super().__init__("revocation_unknown", detail)
        self.targets = tuple(targets)
