"""A small real `RevocationView` for tests: a `RevocationCache` read with `chain_status`.

No prefetcher: a test plays the prefetcher itself, storing what a fetch would have
learned (`good`, `revoke`); `fetched` waits, bounded, until the test stores something.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import trio
from cryptography import x509

from meshtls._metrics import NodeMetrics
from meshtls._revocation import (
    ChainStatus,
    RevocationCache,
    RevocationTarget,
    StatusRecord,
    chain_status,
    chain_targets,
)

HOUR = timedelta(hours=1)


class CacheView:
    """`RevocationView` over a `RevocationCache`; counts each verdict on `metrics`
    (``checks{source="cache"}``) and remembers what it was asked to fetch."""

    def __init__(self, metrics: NodeMetrics | None = None) -> None:
        self.cache = RevocationCache()
        self.metrics = metrics
        self.queued: list[RevocationTarget] = []
        self.waits: list[float] = []
        self.lookups = 0
        self._learned = trio.Event()
        self.waiting = trio.Event()  # set once a handshake waits in `fetched`

    def lookup(self, chain: Sequence[x509.Certificate], now: datetime) -> ChainStatus:
        self.lookups += 1
        status = chain_status(self.cache, chain_targets(chain), now)
        if self.metrics is not None:
            self.metrics.revocation_check("cache", status.status)
        self.queued.extend(status.unknown)
        return status

    async def fetched(self, targets: Sequence[RevocationTarget], wait: float) -> None:
        self.waits.append(wait)
        self.waiting.set()
        with trio.move_on_after(wait):
            await self._learned.wait()

    def _store(self, target: RevocationTarget, status: str, now: datetime) -> StatusRecord:
        record = self.cache.store_ocsp(
            target.ref,
            "revoked" if status == "revoked" else "good",
            this_update=now,
            next_update=now + HOUR,
            now=now,
            origin="http://ocsp.test",
            revoked_at=now if status == "revoked" else None,
            reason="keyCompromise" if status == "revoked" else None,
        )
        self._learned.set()
        self._learned = trio.Event()
        return record

    def good(self, chain: Sequence[x509.Certificate], now: datetime) -> None:
        """Every certificate of `chain` (leaf first, root last) is known good."""
        for target in chain_targets(chain):
            self._store(target, "good", now)

    def revoke(self, target: RevocationTarget, now: datetime) -> StatusRecord:
        """`target` is known revoked (keyCompromise) from `now`."""
        return self._store(target, "revoked", now)
