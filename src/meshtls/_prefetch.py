"""The revocation prefetcher: the one part of P-4 that does I/O, and the view handshakes read.

Theory of operation. A node (or an embedder) owns one `Revocations`. Handshakes call
`Revocations.lookup`, which answers from the `RevocationCache` only, counts the verdict and
queues the certificates nothing live is known about (a bounded queue: past its bound a
target is dropped and counted, never waited for). `Revocations.run` is the prefetcher task:

- it fetches each queued target first, then every certificate of the live chains
  (``live_chains()``, intermediates included) whose record is due: at 3/4 of its life and
  at least every ``refresh_interval``;
- per target, its OCSP URLs (AIA) first, then its CRL distribution points, until one gives
  a definite status; at most ``concurrency`` fetches run at once;
- a responder (a URL's scheme, host and port) that fails is backed off exponentially, up
  to `BACKOFF_CAP`, and listed in `status` with its last error until it answers again;
- a target that becomes revoked calls ``on_revoked`` once per transition.

Hostile input is normal input: whatever a fetch raises is counted
(``revocation_fetch_total{kind,result}``) and kept as the responder's last error; the task
itself only ends when cancelled. `Revocations.fetched` lets a hard-fail handshake wait, at
most a bounded time, for the first fetch of a target; targets with no fetch pending never
wait.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, Protocol
from urllib.parse import urlsplit

import trio
from cryptography import x509

from ._cache import LruCache
from ._crl import CrlError, JudgedCrl, judge_crl, load_crl
from ._duration import format_time
from ._fetch import FetchError, crl_urls, fetch_crl, fetch_ocsp, http_client, ocsp_urls
from ._logs import event
from ._ocsp import OcspAnswer, OcspError
from ._revocation import (
    CertRef,
    ChainStatus,
    RevocationCache,
    RevocationTarget,
    StatusRecord,
    chain_status,
    issuer_key_digest,
)

if TYPE_CHECKING:
    import httpx

    from ._metrics import FetchKind, FetchResult, NodeMetrics
    from ._status import Json

__all__ = ["BACKOFF_CAP", "Fetcher", "HttpFetcher", "Revocations"]

logger = logging.getLogger("meshtls")

DEFAULT_REFRESH_INTERVAL: Final = timedelta(minutes=5)
DEFAULT_SKEW: Final = timedelta(seconds=30)
DEFAULT_CONCURRENCY: Final = 8
#: Targets waiting for their first fetch; past it, `lookup` drops (and counts) new ones.
DEFAULT_QUEUE_LIMIT: Final = 1024
#: A responder's first backoff after a failure; each further failure doubles it, up to the cap.
BACKOFF_BASE: Final = timedelta(seconds=5)
BACKOFF_CAP: Final = timedelta(minutes=5)
#: Failing responders remembered (for backoff and `/status`); past it, the least recent goes.
FAILING_LIMIT: Final = 256
#: Issuers whose key digest `lookup` remembers.
ISSUER_MEMO_LIMIT: Final = 256
#: The least time between two fetches about one certificate.
MIN_GAP: Final = timedelta(seconds=1)

_Kind = Literal["ocsp", "crl"]


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def responder_of(url: str) -> str:
    """The responder a URL names, for backoff: ``scheme://host:port``."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.scheme}://{parts.hostname}:{port}"
    except ValueError:
        return url


class Fetcher(Protocol):
    """Fetches and judges revocation data; raises `meshtls._fetch.FetchError` on failure."""

    async def ocsp(self, url: str, target: RevocationTarget, now: datetime) -> OcspAnswer: ...

    async def crl(self, url: str, issuer: x509.Certificate, now: datetime) -> JudgedCrl: ...


class HttpFetcher:
    """The real `Fetcher`: `meshtls._fetch` over one httpx client, which the caller owns."""

    def __init__(self, client: httpx.AsyncClient, *, skew: timedelta = DEFAULT_SKEW) -> None:
        self._client = client
        self._skew = skew

    async def ocsp(self, url: str, target: RevocationTarget, now: datetime) -> OcspAnswer:
        return await fetch_ocsp(self._client, url, target, now=now, skew=self._skew)

    async def crl(self, url: str, issuer: x509.Certificate, now: datetime) -> JudgedCrl:
        return await fetch_crl(self._client, url, issuer, now=now, skew=self._skew)


@contextlib.asynccontextmanager
async def _http_fetcher(skew: timedelta) -> AsyncIterator[HttpFetcher]:
    async with http_client() as client:
        yield HttpFetcher(client, skew=skew)


@dataclass(slots=True)
class _Failing:
    """A responder that failed: since when, how often in a row, why, and when to retry."""

    since: datetime
    failures: int
    last_error: str
    retry_at: datetime


class Revocations:
    """The node's revocation room: cache, prefetcher and the `RevocationView` handshakes read.

    Owned by a node (or an embedder), which runs `run` in its nursery and gives `lookup`
    and `fetched` to verification. All methods run on the Trio thread. `clock` is the
    time every status is judged at; the prefetcher sleeps on Trio's clock for the same
    spans, so tests drive both with a `trio.testing.MockClock`.
    """

    def __init__(
        self,
        *,
        cache: RevocationCache | None = None,
        metrics: NodeMetrics | None = None,
        clock: Callable[[], datetime] = _wall_clock,
        refresh_interval: timedelta = DEFAULT_REFRESH_INTERVAL,
        skew: timedelta = DEFAULT_SKEW,
        concurrency: int = DEFAULT_CONCURRENCY,
        fetcher: Fetcher | None = None,
        live_chains: Callable[[], Iterable[Sequence[x509.Certificate]]] = lambda: (),
        on_revoked: Callable[[RevocationTarget, StatusRecord], None] | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if refresh_interval <= timedelta(0):
            raise ValueError("refresh_interval must be positive")
        self.cache = cache if cache is not None else RevocationCache()
        self.metrics = metrics
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.skew = skew
        self.queue_limit = queue_limit
        self._fetcher = fetcher
        self._live_chains = live_chains
        self._on_revoked = on_revoked
        self._limiter = trio.CapacityLimiter(concurrency)
        #: Targets waiting for a first fetch, in arrival order.
        self._queue: dict[CertRef, RevocationTarget] = {}
        #: Targets queued and not yet tried: set once tried (queued or in flight).
        self._pending: dict[CertRef, trio.Event] = {}
        self._in_flight: set[CertRef] = set()
        #: No fetch about this certificate before then (just fetched, or its responders back off).
        self._not_before: dict[CertRef, datetime] = {}
        self._failing: dict[str, _Failing] = {}
        self._revoked: dict[CertRef, None] = {}  # told `on_revoked` already, oldest first
        self._wake = trio.Event()
        self._issuer_keys: LruCache[int, tuple[x509.Certificate, bytes]] = LruCache(
            ISSUER_MEMO_LIMIT
        )
        self.dropped = 0
        if metrics is not None:
            metrics.watch_revocations(lambda: len(self.cache), self._oldest_age)

    # ------------------------------------------------------------ the handshake's view

    def lookup(self, chain: Sequence[x509.Certificate], now: datetime) -> ChainStatus:
        """The cache's verdict on a verified chain at `now` (counted as source ``cache``).

        Queues the unknown targets for the prefetcher; never does I/O, never blocks.
        """
        verdict = chain_status(self.cache, self._targets(chain), now)
        if self.metrics is not None:
            self.metrics.revocation_check("cache", verdict.status)
        for target in verdict.unknown:
            self._enqueue(target, now)
        return verdict

    def _targets(self, chain: Sequence[x509.Certificate]) -> tuple[RevocationTarget, ...]:
        """`chain_targets`, with each issuer's key digest remembered by object identity.

        Hashing an issuer's key is most of a lookup's cost, and a handshake's issuers are
        mostly the same objects (the bundle's roots, cached intermediates). The cache
        holds the issuer itself, so its `id` cannot be reused while the entry lives.
        """
        targets = []
        for i in range(len(chain) - 1):
            certificate, issuer = chain[i], chain[i + 1]
            held = self._issuer_keys.get(id(issuer))
            if held is None or held[0] is not issuer:
                held = (issuer, issuer_key_digest(issuer))
                self._issuer_keys.put(id(issuer), held)
            ref = CertRef(held[1], certificate.serial_number)
            targets.append(RevocationTarget(certificate, issuer, ref))
        return tuple(targets)

    def _enqueue(self, target: RevocationTarget, now: datetime) -> None:
        ref = target.ref
        if ref in self._pending:
            return
        not_before = self._not_before.get(ref)
        if not_before is not None and not_before > now:
            return  # tried lately (or its responders back off): no new wait for it
        if len(self._queue) >= self.queue_limit:
            self.dropped += 1
            return
        self._queue[ref] = target
        self._pending[ref] = trio.Event()
        self._wake.set()

    async def fetched(self, targets: Sequence[RevocationTarget], wait: float) -> None:
        """Wait, at most `wait` seconds, until each target queued has been tried once.

        Returns at once when none of `targets` has a fetch pending. Never raises for a
        failed fetch: the caller judges the chain again from the cache.
        """
        events = [self._pending[t.ref] for t in targets if t.ref in self._pending]
        if not events:
            return
        with trio.move_on_after(wait):
            for pending in events:
                await pending.wait()

    def add_crl(self, data: bytes, issuer: x509.Certificate, *, origin: str) -> JudgedCrl:
        """Judge the CRL in `data` as `issuer`'s at `clock()` and keep it (from `origin`:
        ``file:PATH``, ``workload-api``...). Raises `CrlError` if it cannot be trusted."""
        now = self.clock()
        judged = judge_crl(load_crl(data), issuer, now=now, skew=self.skew)
        self.cache.store_crl(issuer_key_digest(issuer), judged, now=now, origin=origin)
        self._wake.set()  # live chains it revokes are told at the next scan
        return judged

    def status(self) -> dict[str, Json]:
        """The ``/status`` section: cache size and age, the queue, the failing responders."""
        oldest = self.cache.oldest()
        failing: list[Json] = [
            {
                "responder": responder,
                "since": format_time(state.since),
                "failures": state.failures,
                "last_error": state.last_error,
                "retry_at": format_time(state.retry_at),
            }
            for responder, state in sorted(self._failing.items())
        ]
        return {
            "entries": len(self.cache),
            "oldest": None if oldest is None else format_time(oldest),
            "oldest_age_seconds": self._oldest_age(),
            "queued": len(self._queue),
            "dropped": self.dropped,
            "failing_responders": failing,
        }

    def _oldest_age(self) -> float | None:
        oldest = self.cache.oldest()
        return None if oldest is None else (self.clock() - oldest).total_seconds()

    # ------------------------------------------------------------ the prefetcher task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The prefetcher: fetch queued and due targets until cancelled.

        Without a `fetcher`, opens `meshtls._fetch`'s HTTP client for the task's life.
        """
        async with contextlib.AsyncExitStack() as stack:
            if self._fetcher is None:
                self._fetcher = await stack.enter_async_context(_http_fetcher(self.skew))
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    due, next_due = self._scan(self.clock())
                    if not self._queue and not due:
                        await self._idle(next_due)
                        continue
                    while self._queue or due:
                        target = self._pop_queued() or due.pop()
                        if target.ref in self._in_flight:
                            continue
                        token = object()
                        await self._limiter.acquire_on_behalf_of(token)
                        self._in_flight.add(target.ref)
                        nursery.start_soon(self._attempt, target, token)

    def _pop_queued(self) -> RevocationTarget | None:
        if not self._queue:
            return None
        ref = next(iter(self._queue))
        return self._queue.pop(ref)

    def _scan(self, now: datetime) -> tuple[list[RevocationTarget], datetime]:
        """The live targets due now (last first), and when the next one falls due.

        Also tells `on_revoked` about live targets the cache now says are revoked.
        """
        due: list[RevocationTarget] = []
        next_due = now + self.refresh_interval
        seen: set[CertRef] = set()
        for target in self._live_targets():
            if target.ref in seen or target.ref in self._in_flight:
                continue
            seen.add(target.ref)
            record = self.cache.lookup(target.ref, now)
            if record is not None:
                self._transition(target, record)
            when = self._due(target.ref, record, now)
            if when <= now:
                due.append(target)
            else:
                next_due = min(next_due, when)
        due.reverse()  # popped from the end: first seen, first fetched
        return due, next_due

    def _live_targets(self) -> list[RevocationTarget]:
        """Every target of `live_chains()`; none when that callback fails (logged)."""
        try:
            return [t for chain in self._live_chains() for t in self._targets(chain)]
        except Exception as exc:
            event(logger, logging.ERROR, "revocation: live_chains failed", exc_info=exc)
            return []

    def _due(self, ref: CertRef, record: StatusRecord | None, now: datetime) -> datetime:
        """When a live certificate must be fetched again: at 3/4 of its record's life and
        at least every refresh interval, not before its `_not_before`."""
        when = now
        if record is not None:
            life = record.expires_at - record.fetched_at
            when = record.fetched_at + min(self.refresh_interval, life * 3 / 4)
        not_before = self._not_before.get(ref)
        return when if not_before is None else max(when, not_before)

    async def _idle(self, until: datetime) -> None:
        seconds = (until - self.clock()).total_seconds()
        with trio.move_on_after(max(seconds, MIN_GAP.total_seconds())):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = trio.Event()

    async def _attempt(self, target: RevocationTarget, token: object) -> None:
        try:
            await self._check(target)
        except Exception as exc:  # a bug here must not end the prefetcher
            event(logger, logging.ERROR, "revocation check failed", exc_info=exc)
            self._not_before[target.ref] = self.clock() + self.refresh_interval
        finally:
            self._in_flight.discard(target.ref)
            self._limiter.release_on_behalf_of(token)
            if (pending := self._pending.pop(target.ref, None)) is not None:
                pending.set()
            self._prune()
            self._wake.set()

    async def _check(self, target: RevocationTarget) -> None:
        """Ask `target`'s responders, OCSP first, until one gives a definite status."""
        sources: list[tuple[_Kind, str]] = [("ocsp", u) for u in ocsp_urls(target.certificate)]
        sources += [("crl", u) for u in crl_urls(target.certificate)]
        retry_at: datetime | None = None
        for kind, url in sources:
            responder = responder_of(url)
            failing = self._failing.get(responder)
            if failing is not None and failing.retry_at > self.clock():
                retry_at = failing.retry_at if retry_at is None else min(retry_at, failing.retry_at)
                continue
            try:
                record = await self._ask(kind, url, target)
            except Exception as exc:
                failing = self._failed(kind, url, responder, exc)
                retry_at = failing.retry_at if retry_at is None else min(retry_at, failing.retry_at)
                continue
            self._failing.pop(responder, None)
            if record is not None:
                self._transition(target, record)
                if record.status != "unknown":
                    self._not_before[target.ref] = self.clock() + MIN_GAP
                    return
        # Nothing definite: wait for the first responder back, or a refresh interval.
        self._not_before[target.ref] = retry_at or self.clock() + self.refresh_interval

    async def _ask(self, kind: _Kind, url: str, target: RevocationTarget) -> StatusRecord | None:
        """Fetch from `url`, count and store what it says; the record about `target`."""
        assert self._fetcher is not None
        if kind == "ocsp":
            answer = await self._fetcher.ocsp(url, target, self.clock())
            self._count_fetch("ocsp", "ok")
            if self.metrics is not None:
                self.metrics.revocation_check("ocsp", answer.status)
            return self.cache.store_ocsp(
                target.ref,
                answer.status,
                this_update=answer.this_update,
                next_update=answer.next_update,
                now=self.clock(),
                origin=url,
                revoked_at=answer.revoked_at,
                reason=answer.reason,
            )
        judged = await self._fetcher.crl(url, target.issuer, self.clock())
        self._count_fetch("crl", "ok")
        if self.metrics is not None:
            self.metrics.revocation_check("crl", judged.status(target.ref.serial))
        now = self.clock()
        self.cache.store_crl(target.ref.issuer_key, judged, now=now, origin=url)
        return self.cache.lookup(target.ref, now)

    def _failed(self, kind: _Kind, url: str, responder: str, exc: Exception) -> _Failing:
        """Count a failed fetch and back its responder off; the responder's state."""
        fetch_kind, result = _classify(exc, kind)
        self._count_fetch(fetch_kind, result)
        now = self.clock()
        problem: object = getattr(exc, "problem", None)
        said: object = getattr(exc, "detail", None)
        if result == "invalid" and self.metrics is not None:
            self.metrics.revocation_refused(
                fetch_kind, problem if isinstance(problem, str) else "other"
            )
        if isinstance(problem, str) and isinstance(said, str):  # a FetchError, a judge's error
            detail = f"{problem}: {said}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        failing = self._failing.get(responder)
        failures = 1 if failing is None else failing.failures + 1
        backoff = min(BACKOFF_BASE * 2 ** min(failures - 1, 32), BACKOFF_CAP)
        state = _Failing(
            since=now if failing is None else failing.since,
            failures=failures,
            last_error=detail,
            retry_at=now + backoff,
        )
        self._failing.pop(responder, None)  # most recently failed last
        self._failing[responder] = state
        while len(self._failing) > FAILING_LIMIT:  # forget the longest quiet one
            del self._failing[next(iter(self._failing))]
        event(
            logger,
            logging.WARNING,
            "revocation fetch failed",
            kind=fetch_kind,
            url=url,
            error=detail,
            failures=failures,
            retry_in=backoff.total_seconds(),
        )
        return state

    def _count_fetch(self, kind: FetchKind, result: FetchResult) -> None:
        if self.metrics is not None:
            self.metrics.revocation_fetch(kind, result)

    def _transition(self, target: RevocationTarget, record: StatusRecord) -> None:
        """Tell `on_revoked` once when `target` turns revoked; forget it once good again."""
        if record.status == "revoked":
            if target.ref in self._revoked:
                return
            self._revoked[target.ref] = None
            if len(self._revoked) > self.cache.limit:  # bounded like the cache it mirrors
                del self._revoked[next(iter(self._revoked))]
            if self._on_revoked is not None:
                try:
                    self._on_revoked(target, record)
                except Exception as exc:
                    event(logger, logging.ERROR, "on_revoked failed", exc_info=exc)
        elif record.status == "good":
            self._revoked.pop(target.ref, None)

    def _prune(self) -> None:
        """Keep `_not_before` bounded: drop past entries, then the oldest, past the limit."""
        limit = max(self.cache.limit, self.queue_limit)
        if len(self._not_before) <= limit:
            return
        now = self.clock()
        kept = {ref: t for ref, t in self._not_before.items() if t > now}
        self._not_before = dict(list(kept.items())[-limit:])


def _classify(exc: Exception, kind: _Kind) -> tuple[FetchKind, FetchResult]:
    """The kind and result a failure is counted as: a `FetchError` says both; a judge's
    refusal (`CrlError`, `OcspError`) is ``invalid``; anything else ``error``."""
    if isinstance(exc, FetchError):
        return exc.kind, exc.result
    return kind, "invalid" if isinstance(exc, (CrlError, OcspError)) else "error"
