"""`meshtls._prefetch`: the prefetcher fills the revocation cache handshakes read (P-4).

Time is Trio's `MockClock` (autojump): the `Revocations` clock is ``T`` plus Trio's time,
so every span the prefetcher sleeps is a span its statuses age. The `Fetcher` is the one
stand-in: a table of answers per serial (OCSP) and real CRLs signed by the test CA and
judged by `judge_crl`; the HTTP fetch itself is tested against ``openssl ocsp`` with
`meshtls._fetch`.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID
from prometheus_client import CollectorRegistry

from meshtls import _prefetch as prefetch
from meshtls._crl import CrlError, JudgedCrl, judge_crl
from meshtls._errors import MeshError
from meshtls._fetch import crl_urls, ocsp_urls
from meshtls._metrics import NodeMetrics
from meshtls._prefetch import BACKOFF_CAP, Fetcher, Revocations, responder_of
from meshtls._revocation import RevocationCache, RevocationTarget, StatusRecord, chain_targets
from meshtls.testing import CA

from .test_crl import SKEW, T, make_crl

MINUTE = timedelta(minutes=1)


def Z(moment: datetime) -> str:  # reads as the format it writes: ...T00:15:00Z
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def clock() -> datetime:
    return T + timedelta(seconds=trio.current_time())


def aia(url: str) -> tuple[x509.ExtensionType, bool]:
    location = x509.UniformResourceIdentifier(url)
    access = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, location)
    return x509.AuthorityInformationAccess([access]), False


@dataclass
class Answer:
    """What `meshtls._ocsp.OcspAnswer` carries, as the prefetcher reads it."""

    status: str
    this_update: datetime
    next_update: datetime | None
    revoked_at: datetime | None = None
    reason: str | None = None
    responder: str = "test responder"


class FakeFetchError(MeshError):
    """Shaped as `meshtls._fetch.FetchError`."""

    def __init__(self, kind: str, result: str, problem: str, url: str) -> None:
        super().__init__(f"{problem} at {url}")
        self.kind, self.result, self.problem, self.url = kind, result, problem, url
        self.detail = "the port is closed"


@dataclass
class Table:
    """The test `Fetcher`: answers by serial; records each call's kind, URL, serial, time."""

    cas: dict[x509.Name, CA]
    revoked: set[int] = field(default_factory=set)
    failing: dict[str, Exception] = field(default_factory=dict)  # URL -> what it raises
    life: timedelta = timedelta(hours=1)  # nextUpdate - now of each answer
    delay: float = 0.0
    calls: list[tuple[str, str, int, float]] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def _enter(self, kind: str, url: str, serial: int) -> None:
        self.calls.append((kind, url, serial, trio.current_time()))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await trio.sleep(self.delay)
        finally:
            self.active -= 1
        if url in self.failing:
            raise self.failing[url]

    async def ocsp(self, url: str, target: RevocationTarget, now: datetime) -> Answer:
        await self._enter("ocsp", url, target.ref.serial)
        if target.ref.serial in self.revoked:
            return Answer("revoked", now, now + self.life, revoked_at=T, reason="keyCompromise")
        return Answer("good", now, now + self.life)

    async def crl(self, url: str, issuer: x509.Certificate, now: datetime) -> JudgedCrl:
        await self._enter("crl", url, 0)
        ca = self.cas[issuer.subject]
        crl = make_crl(ca, sorted(self.revoked), this_update=now, next_update=now + self.life)
        return judge_crl(crl, issuer, now=now, skew=SKEW)

    def times(self, url: str, serial: int | None = None) -> list[float]:
        return [t for _, u, s, t in self.calls if u == url and serial in (None, s)]


@dataclass
class World:
    root: CA
    inter: CA
    table: Table
    metrics: NodeMetrics

    def leaf(
        self, *, ocsp: str | None = "http://ocsp.test/", crl: str | None = None
    ) -> list[x509.Certificate]:
        issued = self.inter.issue("spiffe://example.org/web", ocsp_url=ocsp, crl_url=crl)
        return [issued.leaf, self.inter.certificate, self.root.certificate]

    def count(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(f"meshtls_{name}", labels)
        assert value is not None, (name, labels)
        return value


@pytest.fixture
def world() -> World:
    root = CA("example.org", now=T)
    inter = root.intermediate(extensions=[aia("http://root-ocsp.test/")])
    table = Table({root.certificate.subject: root, inter.certificate.subject: inter})
    return World(root, inter, table, NodeMetrics(CollectorRegistry(), clock=clock))


def revocations(world: World, **options: object) -> Revocations:
    fetcher = cast("Fetcher", world.table)  # answers shaped as OcspAnswer
    return Revocations(metrics=world.metrics, clock=clock, fetcher=fetcher, **options)  # type: ignore[arg-type]


def test_P_4_urls_come_from_aia_and_crl_distribution_points(world: World) -> None:
    leaf = world.inter.issue(ocsp_url="http://o.test/q", crl_url="https://c.test/x.crl").leaf
    assert ocsp_urls(leaf) == ("http://o.test/q",)
    assert crl_urls(leaf) == ("https://c.test/x.crl",)
    assert ocsp_urls(world.root.certificate) == crl_urls(world.root.certificate) == ()
    assert ocsp_urls(world.inter.certificate) == ("http://root-ocsp.test/",)
    assert responder_of("http://o.test/q") == "http://o.test:80"
    assert responder_of("https://o.test:8443/") == "https://o.test:8443"


async def test_P_4_lookup_counts_queues_unknowns_and_the_prefetcher_fills_the_cache(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    room = revocations(world)
    chain = world.leaf()
    first = room.lookup(chain, clock())
    assert first.status == "unknown"
    assert len(first.unknown) == 2  # the leaf and the intermediate
    assert room.status()["queued"] == 2
    assert world.count("revocation_checks_total", source="cache", result="unknown") == 1
    assert world.table.calls == []  # lookup does no I/O

    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        await room.fetched(first.unknown, wait=5)
        assert trio.current_time() == 0  # answered at once: no wait beyond the fetch
        again = room.lookup(chain, clock())
        assert again.status == "good"
        assert room.status()["queued"] == 0
        assert world.count("revocation_checks_total", source="cache", result="good") == 1
        assert world.count("revocation_checks_total", source="ocsp", result="good") == 2
        assert world.count("revocation_fetch_total", kind="ocsp", result="ok") == 2
        assert len(world.table.calls) == 2
        nursery.cancel_scope.cancel()


async def test_P_4_live_chains_refresh_every_interval_and_before_their_records_expire(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    hourly, short = world.leaf(ocsp="http://hourly.test/"), world.leaf(ocsp="http://short.test/")
    world.table.life = 2 * MINUTE  # nextUpdate two minutes after each answer
    live = [hourly]
    room = revocations(world, refresh_interval=5 * MINUTE, live_chains=lambda: live)
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        await trio.sleep(1)
        world.table.life = timedelta(hours=1)
        await trio.sleep(20 * 60)
        # The first answer lived 2 min: refreshed at 3/4 of its life; then every 5 minutes.
        assert world.table.times("http://hourly.test/") == [0, 90, 390, 690, 990]
        # The intermediate is refreshed too.
        assert world.table.times("http://root-ocsp.test/") == [0, 90, 390, 690, 990]

        live.append(short)
        world.table.life = 2 * MINUTE
        start = trio.current_time()
        for _ in range(10 * 60):  # the status never lapses while the chain is live
            assert room.lookup(short, clock()).status == "good" or trio.current_time() == start
            await trio.sleep(1)
        times = world.table.times("http://short.test/")
        assert [b - a for a, b in itertools.pairwise(times)] == [90.0] * (len(times) - 1)
        assert len(times) >= 6
        nursery.cancel_scope.cancel()


async def test_P_4_fetches_run_at_most_concurrency_at_once(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    world.table.delay = 1.0
    chains = [world.leaf(ocsp=f"http://o{i}.test/") for i in range(12)]
    room = revocations(world, concurrency=3)
    for chain in chains:
        room.lookup(chain, clock())
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        await room.fetched([chain_targets(c)[0] for c in chains], wait=60)
        assert world.table.peak == 3
        assert len(world.table.calls) == 13  # 12 leaves, their one intermediate once
        assert trio.current_time() == 5  # ceil(13 / 3) rounds of one second
        assert all(room.lookup(c, clock()).status == "good" for c in chains)
        nursery.cancel_scope.cancel()


async def test_P_4_a_failing_responder_backs_off_alone_is_listed_and_recovers(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    bad, good = world.leaf(ocsp="http://bad.test/"), world.leaf(ocsp="http://good.test/")
    world.table.failing["http://bad.test/"] = FakeFetchError("ocsp", "error", "connect", "bad")
    room = revocations(world, refresh_interval=5 * MINUTE, live_chains=lambda: [bad, good])
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        await trio.sleep(1)
        # A first contact whose responder fails: tried once, then no handshake waits for it.
        verdict = room.lookup(bad, clock())
        assert verdict.status == "unknown"
        assert room.status()["queued"] == 0  # not queued again while its responder backs off
        await room.fetched(verdict.unknown, wait=10)
        assert trio.current_time() == 1  # nothing pending: returned at once

        await trio.sleep(1500 - 1)
        times = world.table.times("http://bad.test/")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        cap = BACKOFF_CAP.total_seconds()
        assert gaps[:6] == [5, 10, 20, 40, 80, 160]
        assert set(gaps[6:]) == {cap}
        assert world.table.times("http://good.test/") == [0, 300, 600, 900, 1200]
        failing = room.status()["failing_responders"]
        assert failing == [
            {
                "responder": "http://bad.test:80",
                "since": Z(T),
                "failures": len(times),
                "last_error": "connect: the port is closed",
                "retry_at": Z(T + timedelta(seconds=times[-1]) + BACKOFF_CAP),
            }
        ]
        errors = world.count("revocation_fetch_total", kind="ocsp", result="error")
        assert errors == len(times)

        del world.table.failing["http://bad.test/"]  # the responder is back
        await trio.sleep(cap)
        assert room.status()["failing_responders"] == []
        assert room.lookup(bad, clock()).status == "good"
        nursery.cancel_scope.cancel()


async def test_P_4_hostile_failures_are_counted_and_the_prefetcher_keeps_running(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    odd, refused = world.leaf(ocsp="http://odd.test/"), world.leaf(ocsp="http://refused.test/")
    world.table.failing["http://odd.test/"] = ValueError("a bug in a parser")
    world.table.failing["http://refused.test/"] = CrlError("bad_signature", "not the CA's key")
    room = revocations(world)
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        for chain in (odd, refused):
            await room.fetched(room.lookup(chain, clock()).unknown, wait=5)
        assert world.count("revocation_fetch_total", kind="ocsp", result="error") == 1
        assert world.count("revocation_fetch_total", kind="ocsp", result="invalid") == 1
        assert world.count("revocation_refused_total", kind="ocsp", problem="bad_signature") == 1
        later = world.leaf(ocsp="http://fine.test/")
        await room.fetched(room.lookup(later, clock()).unknown, wait=5)
        assert room.lookup(later, clock()).status == "good"
        nursery.cancel_scope.cancel()


async def test_P_4_on_revoked_is_called_once_per_transition_for_a_leaf_and_an_intermediate(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    chain = world.leaf(ocsp=None, crl="http://crl.test/inter.crl")  # the leaf: by CRL
    told: list[tuple[int, StatusRecord]] = []

    def on_revoked(target: RevocationTarget, record: StatusRecord) -> None:
        told.append((target.ref.serial, record))

    room = revocations(
        world, refresh_interval=5 * MINUTE, live_chains=lambda: [chain], on_revoked=on_revoked
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        await trio.sleep(60)
        assert room.lookup(chain, clock()).status == "good"
        assert told == []

        world.table.revoked.add(chain[0].serial_number)
        await trio.sleep(20 * 60)
        assert [serial for serial, _ in told] == [chain[0].serial_number]
        assert told[0][1].source == "crl"
        assert told[0][1].origin == "http://crl.test/inter.crl"

        world.table.revoked.add(chain[1].serial_number)  # now the intermediate too
        await trio.sleep(20 * 60)
        assert [serial for serial, _ in told] == [chain[0].serial_number, chain[1].serial_number]
        assert told[1][1].source == "ocsp"
        assert told[1][1].reason == "keyCompromise"
        verdict = room.lookup(chain, clock())
        assert verdict.status == "revoked"
        nursery.cancel_scope.cancel()


async def test_P_4_fetched_waits_at_most_its_bound_and_returns_at_once_with_nothing_pending(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    world.table.delay = 30.0  # a slow responder
    room = revocations(world)
    chain = world.leaf()
    known = chain_targets(chain)
    await room.fetched(known, wait=10)
    assert trio.current_time() == 0  # never queued: nothing to wait for

    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        verdict = room.lookup(chain, clock())
        await room.fetched(verdict.unknown, wait=2)
        assert trio.current_time() == 2  # bounded: the fetch is still under way
        assert room.lookup(chain, clock()).status == "unknown"
        await room.fetched(verdict.unknown, wait=60)
        assert trio.current_time() == 30  # returned when the fetch ended
        assert room.lookup(chain, clock()).status == "good"
        nursery.cancel_scope.cancel()


async def test_P_4_the_queue_is_bounded_and_drops_with_a_count(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    room = revocations(world, queue_limit=3)
    chains = [world.leaf() for _ in range(3)]
    verdicts = [room.lookup(chain, clock()) for chain in chains]
    # 1st chain queues its leaf and the intermediate, the 2nd its leaf; the 3rd's is dropped.
    assert room.status()["queued"] == 3
    assert room.status()["dropped"] == 1
    await room.fetched(verdicts[2].unknown[:1], wait=10)  # dropped: nothing to wait for
    assert trio.current_time() == 0


async def test_P_4_add_crl_judges_and_keeps_a_crl_and_refuses_an_untrusted_one(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    cache = RevocationCache()
    room = Revocations(cache=cache, clock=clock, fetcher=cast("Fetcher", world.table))
    chain = world.leaf(ocsp=None)
    crl = make_crl(world.inter, [chain[0].serial_number], this_update=T, next_update=T + MINUTE)
    judged = room.add_crl(crl.public_bytes(Encoding.PEM), world.inter.certificate, origin="file:x")
    assert judged.revoked == {chain[0].serial_number}
    record = cache.lookup(chain_targets(chain)[0].ref, clock())
    assert record is not None
    assert (record.status, record.origin) == ("revoked", "file:x")
    forged = make_crl(world.inter, [], this_update=T, next_update=T + MINUTE, signer=world.root)
    with pytest.raises(CrlError) as refused:
        room.add_crl(forged.public_bytes(Encoding.DER), world.inter.certificate, origin="file:y")
    assert refused.value.problem == "bad_signature"
    with pytest.raises(CrlError):
        room.add_crl(b"\x30\x03junk", world.inter.certificate, origin="file:z")


async def test_P_4_status_is_a_json_document_of_the_cache_and_the_queue(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    room = revocations(world)
    empty = room.status()
    assert empty == {
        "entries": 0,
        "oldest": None,
        "oldest_age_seconds": None,
        "queued": 0,
        "dropped": 0,
        "failing_responders": [],
    }
    chain = world.leaf()
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        await room.fetched(room.lookup(chain, clock()).unknown, wait=5)
        await trio.sleep(42)
        document = room.status()
        assert document["entries"] == 2
        assert document["oldest"] == Z(T)
        assert document["oldest_age_seconds"] == 42
        json.dumps(document)
        assert world.count("revocation_cache_entries") == 2
        assert world.count("revocation_cache_age_seconds") == 42
        nursery.cancel_scope.cancel()


def test_the_lookup_benchmark_runs() -> None:
    from benchmarks import revocation_lookup

    report = revocation_lookup.measure(rounds=1, calls=10)
    assert report["lookup_us"] > 0
    assert report["ratio"] > 1


async def serve_files(nursery: trio.Nursery, files: dict[str, bytes], hits: list[str]) -> int:
    """A plain HTTP/1.1 file server on 127.0.0.1 (port 0): 200 with the file, else 404."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                if not (chunk := await stream.receive_some()):
                    return
                head += chunk
            path = head.split(b" ")[1].decode()
            hits.append(path)
            body = files.get(path)
            status = b"200 OK" if body is not None else b"404 Not Found"
            body = body if body is not None else b""
            await stream.send_all(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_P_4_the_real_fetcher_reads_a_crl_over_http_and_counts_a_missing_one(
    nursery: trio.Nursery,
) -> None:
    now = datetime.now(UTC)
    root = CA("example.org", now=now)
    crl = make_crl(root, [], this_update=now - MINUTE, next_update=now + 60 * MINUTE)
    hits: list[str] = []
    port = await serve_files(nursery, {"/root.crl": crl.public_bytes(Encoding.DER)}, hits)
    base = f"http://127.0.0.1:{port}"
    served = root.issue(ocsp_url=None, crl_url=f"{base}/root.crl").leaf
    other = CA("example.org", now=now, label="other root")  # its own CRL is not served
    missing = other.issue(ocsp_url=None, crl_url=f"{base}/gone.crl").leaf
    metrics = NodeMetrics(CollectorRegistry(), clock=lambda: datetime.now(UTC))
    room = Revocations(metrics=metrics)  # the default: meshtls._fetch over httpx
    await nursery.start(room.run)
    for chain in ([served, root.certificate], [missing, other.certificate]):
        verdict = room.lookup(chain, datetime.now(UTC))
        await room.fetched(verdict.unknown, wait=10)
    assert room.lookup([served, root.certificate], datetime.now(UTC)).status == "good"
    assert hits == ["/root.crl", "/gone.crl"]
    count = metrics.registry.get_sample_value
    assert count("meshtls_revocation_fetch_total", {"kind": "crl", "result": "ok"}) == 1
    assert count("meshtls_revocation_fetch_total", {"kind": "crl", "result": "error"}) == 1
    listed = room.status()["failing_responders"]
    assert isinstance(listed, list)
    assert len(listed) == 1
    failing = listed[0]
    assert isinstance(failing, dict)
    assert failing["responder"] == f"http://127.0.0.1:{port}"
    assert str(failing["last_error"]).startswith("http_status")


async def test_P_4_a_failing_live_chains_callback_does_not_stop_the_prefetcher(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    def broken() -> list[list[x509.Certificate]]:
        raise RuntimeError("the node's connection table is being rebuilt")

    room = revocations(world, live_chains=broken)
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        await trio.sleep(600)
        chain = world.leaf()
        await room.fetched(room.lookup(chain, clock()).unknown, wait=5)
        assert room.lookup(chain, clock()).status == "good"
        nursery.cancel_scope.cancel()


async def test_P_4_failing_responders_are_remembered_up_to_a_bound(
    world: World, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "FAILING_LIMIT", 2)
    room = revocations(world)
    async with trio.open_nursery() as nursery:
        await nursery.start(room.run)
        for name in ("a", "b", "c"):
            url = f"http://{name}.test/"
            world.table.failing[url] = FakeFetchError("ocsp", "error", "timeout", url)
            await room.fetched(room.lookup(world.leaf(ocsp=url), clock()).unknown, wait=5)
        listed = room.status()["failing_responders"]
        assert isinstance(listed, list)
        assert [entry["responder"] for entry in listed] == [  # type: ignore[call-overload,index]
            "http://b.test:80",
            "http://c.test:80",
        ]
        nursery.cancel_scope.cancel()
