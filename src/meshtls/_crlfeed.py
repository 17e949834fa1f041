"""CRLs that arrive without a fetch: ``[revocation] crl_files``, the local CA's ``crl.pem``
and the CRLs a Workload API delivers with our SVID (P-4).

Owned by a node and run as one task of its nursery. Each pass reads every place (its
`CrlPlace` reader) and hands each CRL to `Revocations.add_crl`, judged
against the first known authority that names its issuer and whose key signed it: the
authorities of our bundles, our own chain, and the chains of live connections. A CRL that
no authority accepts is counted (``revocation_fetch_total{kind="crl",result="invalid"}``)
and logged once per distinct content (a kept CRL is not counted: nothing was fetched);
it never stops the feed or the node, whatever goes wrong judging it. A reader that
raises is counted as ``error`` and tried again at the next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import trio
from cryptography import x509

from ._boundary import describe_error
from ._crl import CrlError, load_crl
from ._logs import event
from ._metrics import FetchResult, NodeMetrics
from ._prefetch import Revocations

logger = logging.getLogger("meshtls.revocation")


@dataclass(frozen=True, slots=True)
class CrlPlace:
    """Where CRLs come from without a fetch: ``origin`` names it (``file:PATH``,
    ``local-ca:DIR``, ``workload-api``); ``read`` returns its CRLs now (PEM or DER each)."""

    origin: str
    read: Callable[[], Sequence[bytes]]


class CrlFeed:
    """Keeps the CRLs of `places` in `revocations`' cache, re-read every `interval`."""

    def __init__(
        self,
        revocations: Revocations,
        places: Sequence[CrlPlace],
        issuers: Callable[[], Iterable[x509.Certificate]],
        *,
        metrics: NodeMetrics | None = None,
        interval: timedelta = timedelta(seconds=5),
    ) -> None:
        self.revocations = revocations
        self.places = tuple(places)
        self._issuers = issuers
        self._metrics = metrics
        self.interval = interval
        #: The CRLs each origin held at its last pass that were refused, and why.
        self._refusals: dict[str, dict[bytes, str]] = {}

    def refresh(self) -> int:
        """One pass over every place: each CRL found is judged and kept again (so a kept
        CRL outlives the cache's TTL for as long as its place holds it). Returns how many
        were kept."""
        kept = 0
        for place in self.places:
            try:
                found = tuple(place.read())
            except Exception as exc:  # a reader's fault is this place's, this pass
                self._count("error")
                event(logger, logging.WARNING, "CRL unreadable", origin=place.origin,
                      error=describe_error(exc))  # fmt: skip
                continue
            before = self._refusals.get(place.origin, {})
            refusals: dict[bytes, str] = {}
            for data in found:
                try:
                    problem = self._keep(place.origin, data)
                except Exception as exc:  # a fault judging one CRL is that CRL's alone
                    problem = f"other: {describe_error(exc)}"
                if problem is None:
                    kept += 1
                    continue
                refusals[data] = problem
                if data not in before:  # logged and counted once per distinct content
                    self._count("invalid")
                    if self._metrics is not None:
                        self._metrics.revocation_refused("crl", problem.split(":", 1)[0])
                    event(logger, logging.WARNING, "CRL refused", origin=place.origin,
                          problem=problem)  # fmt: skip
            self._refusals[place.origin] = refusals
        return kept

    def _keep(self, origin: str, data: bytes) -> str | None:
        """Keep `data` as the CRL of the authority that signed it; else why not."""
        try:
            issuer_name = load_crl(data).issuer
        except CrlError as exc:
            return str(exc)
        problem = f"wrong_issuer: no known authority is named {issuer_name.rfc4514_string()!r}"
        for issuer in self._issuers():
            if issuer.subject != issuer_name:
                continue
            try:
                self.revocations.add_crl(data, issuer, origin=origin)
            except CrlError as exc:
                problem = str(exc)
                continue
            return None
        return problem

    def _count(self, result: FetchResult) -> None:
        if self._metrics is not None:
            self._metrics.revocation_fetch("crl", result)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh now (before `task_status.started`, so a node starts with its files' CRLs
        kept), then every `interval` on Trio's clock, until cancelled."""
        self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.interval.total_seconds())
            self.refresh()
