"""NodeMetrics and the /metrics, /healthz, /readyz endpoint, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import get_args

import httpx
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshtls import REASONS
from meshtls._metrics import (
    CERTIFICATE_REASONS,
    HANDSHAKE_BUCKETS,
    MAX_REQUEST_HEAD,
    NodeMetrics,
    serve_http,
)
from meshtls._status import Json, Readiness

from .conftest import T

#: API.md's required names, with the type each must be exposed as.
REQUIRED = {
    "meshtls_certificate_rotations_total": "counter",
    "meshtls_certificate_expiry_seconds": "gauge",
    "meshtls_certificate_age_seconds": "gauge",
    "meshtls_certificate_validation_failures_total": "counter",
    "meshtls_peer_verification_failures_total": "counter",
    "meshtls_handshakes_total": "counter",
    "meshtls_handshake_duration_seconds": "histogram",
    "meshtls_connections_active": "gauge",
    "meshtls_revocation_checks_total": "counter",
    "meshtls_revocation_fetch_total": "counter",
}


class FakeClock:
    """A `now()` that moves only when told to."""

    def __init__(self, now: datetime = T) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Endpoint:
    port: int
    metrics: NodeMetrics
    registry: CollectorRegistry
    clock: FakeClock
    is_ready: list[bool]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def request(self, method: str, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.request(method, self.base + path)

    async def scrape(self) -> str:
        response = await self.request("GET", "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
        return response.text

    async def raw(self, data: bytes, *, eof: bool = False) -> bytes:
        """Send `data` (then half-close if `eof`), and read everything until the server closes."""
        async with await trio.open_tcp_stream("127.0.0.1", self.port) as stream:
            if data:
                await stream.send_all(data)
            if eof:
                await stream.send_eof()
            return await read_to_eof(stream)


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until the server closes (an EOF, or a reset: both are a close)."""
    received = bytearray()
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some():
            received += chunk
    return bytes(received)


async def start(
    nursery: trio.Nursery,
    metrics: NodeMetrics,
    ready: Callable[[], bool],
    *,
    connection_timeout: float = 10.0,
    request_timeout: float = 2.0,
    max_connections: int = 64,
) -> int:
    """Start `serve_http` on 127.0.0.1 port 0 in `nursery`; the bound port. `ready`
    gives readiness as a bool (the reason when not ready is "told so")."""
    serve = functools.partial(
        serve_http,
        metrics.registry,
        "127.0.0.1",
        0,
        ready=lambda: Readiness(True) if ready() else Readiness(False, "told so"),
        connection_timeout=connection_timeout,
        request_timeout=request_timeout,
        max_connections=max_connections,
    )
    listeners: list[trio.SocketListener] = await nursery.start(serve)
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.fixture
async def endpoint(nursery: trio.Nursery) -> AsyncIterator[Endpoint]:
    registry = CollectorRegistry()
    clock = FakeClock()
    metrics = NodeMetrics(registry, clock=clock)
    is_ready = [False]
    port = await start(nursery, metrics, lambda: is_ready[0])
    yield Endpoint(port, metrics, registry, clock, is_ready)
    nursery.cancel_scope.cancel()


def types_of(text: str) -> dict[str, str]:
    """``# TYPE`` lines as name -> type."""
    return {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")
    }


def series(text: str) -> list[str]:
    """Every sample line's series (name and labels), in order."""
    return [
        line.rpartition(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition, found with prometheus_client's parser."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def promtool(text: str) -> str:
    """``promtool check metrics`` on `text`; fails the test on any complaint."""
    if shutil.which("promtool") is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package"
            " (apt-get install prometheus), as .ci/run does"
        )
    result = await trio.run_process(
        ["promtool", "check", "metrics"],
        stdin=text.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    report = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, report
    assert report.strip() == "", report  # lint findings would be printed here
    return report


def exercise(metrics: NodeMetrics) -> None:
    """Touch every method, so every kind of series carries a non-zero value."""
    metrics.set_certificate(T - timedelta(minutes=10), T + timedelta(minutes=50))
    metrics.rotated()
    metrics.handshake("server", seconds=0.0042)
    metrics.handshake("client", seconds=12.0)
    metrics.handshake("client", seconds=0.2, reason="untrusted_chain")
    metrics.handshake("server", seconds=10.0, reason="handshake_timeout")
    metrics.peer_rejected("revoked")
    metrics.certificate_invalid("ttl_exceeded")
    metrics.connection_opened("server")
    metrics.revocation_check("cache", "good")
    metrics.revocation_fetch("crl", "error")
    metrics.watch_revocations(lambda: 3, lambda: 42.5)


# ------------------------------------------------------------------ exposition over HTTP


async def test_every_required_name_over_http_and_promtool_passes(endpoint: Endpoint) -> None:
    fresh = await endpoint.scrape()
    await promtool(fresh)
    exercise(endpoint.metrics)
    busy = await endpoint.scrape()
    await promtool(busy)

    for text in (fresh, busy):
        types = types_of(text)
        for name, kind in REQUIRED.items():
            assert types.get(name) == kind, name
    names = {line.split("{")[0].split()[0] for line in series(busy)}
    assert set(REQUIRED) - {"meshtls_handshake_duration_seconds"} <= names
    assert {f"meshtls_handshake_duration_seconds_{s}" for s in ("bucket", "sum", "count")} <= names
    # Nothing but this node's metrics: not the global registry's process/platform collectors.
    assert all(name.startswith("meshtls_") for name in names)


async def test_no_duplicate_series(endpoint: Endpoint) -> None:
    exercise(endpoint.metrics)
    text = await endpoint.scrape()
    duplicated = [key for key, count in Tally(series(text)).items() if count > 1]
    assert duplicated == []


async def test_every_known_label_combination_exists_at_zero_from_the_start(
    endpoint: Endpoint,
) -> None:
    text = await endpoint.scrape()
    for reason in REASONS:
        assert value(text, "meshtls_peer_verification_failures_total", reason=reason) == 0
    for reason in CERTIFICATE_REASONS:
        assert value(text, "meshtls_certificate_validation_failures_total", reason=reason) == 0
    for role in ("client", "server"):
        assert value(text, "meshtls_connections_active", role=role) == 0
        assert value(text, "meshtls_handshake_duration_seconds_count", role=role) == 0
        for result in ("ok", "failed"):
            assert value(text, "meshtls_handshakes_total", role=role, result=result) == 0
    for source in ("ocsp", "crl", "cache"):
        for result in ("good", "revoked", "unknown"):
            labels = {"source": source, "result": result}
            assert value(text, "meshtls_revocation_checks_total", **labels) == 0
    for kind in ("ocsp", "crl"):
        for result in ("ok", "error", "invalid"):
            assert value(text, "meshtls_revocation_fetch_total", kind=kind, result=result) == 0
    assert value(text, "meshtls_certificate_rotations_total") == 0
    # Certificates fail for every reason but these four, which are about the peer or the wire.
    not_certificate = {
        "unauthorized",
        "handshake_timeout",
        "protocol_error",
        "no_client_certificate",
    }
    assert not_certificate == REASONS - CERTIFICATE_REASONS


async def test_histogram_buckets_span_half_a_millisecond_to_ten_seconds(
    endpoint: Endpoint,
) -> None:
    endpoint.metrics.handshake("server", seconds=0.0004)
    endpoint.metrics.handshake("server", seconds=0.003)
    text = await endpoint.scrape()
    assert HANDSHAKE_BUCKETS[0] == 0.0005
    assert HANDSHAKE_BUCKETS[-1] == 10.0
    assert list(HANDSHAKE_BUCKETS) == sorted(HANDSHAKE_BUCKETS)
    name = "meshtls_handshake_duration_seconds_bucket"
    assert value(text, name, role="server", le="0.0005") == 1
    assert value(text, name, role="server", le="0.0025") == 1
    assert value(text, name, role="server", le="0.005") == 2
    assert value(text, name, role="server", le="+Inf") == 2
    assert value(text, name, role="client", le="+Inf") == 0


# ------------------------------------------------------------------ counters and gauges


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    assert got is not None, (name, labels)
    return got


def test_handshakes_count_by_role_and_result() -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    metrics.handshake("server", seconds=0.01)
    metrics.handshake("server", seconds=0.02)
    metrics.handshake("client", seconds=0.5, reason="unauthorized")
    assert sample(metrics, "meshtls_handshakes_total", role="server", result="ok") == 2
    assert sample(metrics, "meshtls_handshakes_total", role="client", result="failed") == 1
    assert sample(metrics, "meshtls_handshakes_total", role="client", result="ok") == 0
    assert sample(metrics, "meshtls_handshake_duration_seconds_sum", role="server") == 0.03
    # A failed handshake is counted, not timed.
    assert sample(metrics, "meshtls_handshake_duration_seconds_count", role="client") == 0


def test_a_rejected_handshake_counts_its_reason_once_per_metric() -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    metrics.handshake("server", seconds=0.01, reason="expired")
    metrics.handshake("server", seconds=0.01, reason="unauthorized")
    peer = "meshtls_peer_verification_failures_total"
    cert = "meshtls_certificate_validation_failures_total"
    assert sample(metrics, peer, reason="expired") == 1
    assert sample(metrics, peer, reason="unauthorized") == 1
    assert sample(metrics, cert, reason="expired") == 1
    # An authorization failure is no certificate failure: there is no such series at all.
    assert metrics.registry.get_sample_value(cert, {"reason": "unauthorized"}) is None


def test_other_counters_increase() -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    metrics.rotated()
    metrics.rotated()
    metrics.peer_rejected("revoked")
    metrics.certificate_invalid("malformed_certificate")
    metrics.revocation_check("ocsp", "revoked")
    metrics.revocation_fetch("ocsp", "ok")
    metrics.revocation_fetch("ocsp", "ok")
    assert sample(metrics, "meshtls_certificate_rotations_total") == 2
    assert sample(metrics, "meshtls_peer_verification_failures_total", reason="revoked") == 1
    assert (
        sample(
            metrics, "meshtls_certificate_validation_failures_total", reason="malformed_certificate"
        )
        == 1
    )
    assert sample(metrics, "meshtls_revocation_checks_total", source="ocsp", result="revoked") == 1
    assert sample(metrics, "meshtls_revocation_fetch_total", kind="ocsp", result="ok") == 2
    assert sample(metrics, "meshtls_revocation_fetch_total", kind="crl", result="ok") == 0


def test_connections_active_goes_up_and_down() -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    metrics.connection_opened("client")
    metrics.connection_opened("client")
    with metrics.connection("server"):
        assert sample(metrics, "meshtls_connections_active", role="server") == 1
        metrics.connection_closed("client")
    assert sample(metrics, "meshtls_connections_active", role="server") == 0
    assert sample(metrics, "meshtls_connections_active", role="client") == 1
    with pytest.raises(KeyError), metrics.connection("server"):
        raise KeyError("the with block failed")
    assert sample(metrics, "meshtls_connections_active", role="server") == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.handshake("peer", seconds=1.0),
        lambda m: m.handshake("server", seconds=1.0, reason="bored"),
        lambda m: m.peer_rejected("bored"),
        lambda m: m.certificate_invalid("bored"),
        lambda m: m.certificate_invalid("handshake_timeout"),  # a reason, but no certificate's
        lambda m: m.connection_opened("peer"),
        lambda m: m.connection_closed("peer"),
        lambda m: m.revocation_check("dns", "good"),
        lambda m: m.revocation_check("ocsp", "fine"),
        lambda m: m.revocation_fetch("cache", "ok"),
        lambda m: m.revocation_fetch("crl", "good"),
        lambda m: m.set_certificate(datetime(2030, 1, 1), datetime(2030, 1, 2)),
    ],
)
def test_label_values_outside_their_sets_are_bugs(call: Callable[[NodeMetrics], None]) -> None:
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry, clock=FakeClock())
    before = [(s.name, s.labels, s.value) for family in registry.collect() for s in family.samples]
    with pytest.raises(ValueError, match=r"unknown|aware"):
        call(metrics)
    after = [(s.name, s.labels, s.value) for family in registry.collect() for s in family.samples]
    assert after == before  # nothing counted and no new series


async def test_certificate_gauges_move_with_the_clock(endpoint: Endpoint) -> None:
    text = await endpoint.scrape()
    # Before the first SVID the gauges are declared but have no sample.
    assert types_of(text)["meshtls_certificate_expiry_seconds"] == "gauge"
    assert types_of(text)["meshtls_certificate_age_seconds"] == "gauge"
    assert not [key for key in series(text) if key.startswith("meshtls_certificate_expiry")]
    assert not [key for key in series(text) if key.startswith("meshtls_certificate_age")]

    endpoint.metrics.set_certificate(T - timedelta(minutes=5), T + timedelta(hours=1))
    first = await endpoint.scrape()
    assert value(first, "meshtls_certificate_expiry_seconds") == 3600
    assert value(first, "meshtls_certificate_age_seconds") == 300

    endpoint.clock.advance(1234.5)
    second = await endpoint.scrape()
    assert value(second, "meshtls_certificate_expiry_seconds") == 3600 - 1234.5
    assert value(second, "meshtls_certificate_age_seconds") == 300 + 1234.5

    endpoint.clock.advance(3000)  # past not_after: the gauge goes negative, it does not stop
    late = await endpoint.scrape()
    assert value(late, "meshtls_certificate_expiry_seconds") == 3600 - 4234.5


async def test_certificate_gauges_move_with_rotation(endpoint: Endpoint) -> None:
    endpoint.metrics.set_certificate(T - timedelta(minutes=40), T + timedelta(minutes=20))
    endpoint.metrics.set_certificate(T, T + timedelta(hours=1))  # the rotation task swapped
    endpoint.metrics.rotated()
    text = await endpoint.scrape()
    assert value(text, "meshtls_certificate_expiry_seconds") == 3600
    assert value(text, "meshtls_certificate_age_seconds") == 0
    assert value(text, "meshtls_certificate_rotations_total") == 1


async def test_P_4_revocation_cache_gauges_are_read_from_their_callbacks_at_each_scrape(
    endpoint: Endpoint,
) -> None:
    text = await endpoint.scrape()
    # Until a prefetcher names its cache, the gauges are declared without samples.
    assert types_of(text)["meshtls_revocation_cache_entries"] == "gauge"
    assert types_of(text)["meshtls_revocation_cache_age_seconds"] == "gauge"
    assert not [key for key in series(text) if key.startswith("meshtls_revocation_cache_")]

    entries: list[int] = [0]
    age: list[float | None] = [None]
    endpoint.metrics.watch_revocations(lambda: entries[0], lambda: age[0])
    empty = await endpoint.scrape()
    await promtool(empty)
    assert value(empty, "meshtls_revocation_cache_entries") == 0
    assert "meshtls_revocation_cache_age_seconds" not in series(empty)  # no entry, no age

    entries[0], age[0] = 7, 90.0
    full = await endpoint.scrape()
    await promtool(full)
    assert value(full, "meshtls_revocation_cache_entries") == 7
    assert value(full, "meshtls_revocation_cache_age_seconds") == 90.0


def test_nodes_on_separate_registries_do_not_interfere() -> None:
    a = NodeMetrics(CollectorRegistry(), clock=FakeClock(T))
    b = NodeMetrics(CollectorRegistry(), clock=FakeClock(T + timedelta(minutes=1)))
    a.set_certificate(T, T + timedelta(hours=1))
    b.set_certificate(T, T + timedelta(hours=2))
    a.rotated()
    a.handshake("server", seconds=0.01, reason="revoked")
    b.connection_opened("client")
    assert sample(a, "meshtls_certificate_rotations_total") == 1
    assert sample(b, "meshtls_certificate_rotations_total") == 0
    assert sample(a, "meshtls_peer_verification_failures_total", reason="revoked") == 1
    assert sample(b, "meshtls_peer_verification_failures_total", reason="revoked") == 0
    assert sample(a, "meshtls_connections_active", role="client") == 0
    assert sample(b, "meshtls_connections_active", role="client") == 1
    assert sample(a, "meshtls_certificate_expiry_seconds") == 3600
    assert sample(b, "meshtls_certificate_expiry_seconds") == 7140
    assert sample(b, "meshtls_certificate_age_seconds") == 60


def test_two_nodes_on_one_registry_are_refused() -> None:
    registry = CollectorRegistry()
    NodeMetrics(registry, clock=FakeClock())
    with pytest.raises(ValueError, match="Duplicated"):
        NodeMetrics(registry, clock=FakeClock())


def test_nothing_lands_in_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    NodeMetrics(CollectorRegistry(), clock=FakeClock())
    assert REGISTRY.get_sample_value("meshtls_certificate_rotations_total") is None


async def test_the_prefix_renames_every_family_and_promtool_still_passes() -> None:
    """``prefix="mtls"`` gives the seed system's names; nothing keeps ``meshtls_``."""
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry, clock=FakeClock(T), prefix="mtls")
    exercise(metrics)
    text = generate_latest(registry).decode()
    await promtool(text)
    types = types_of(text)
    for name, kind in REQUIRED.items():
        assert types.get("mtls_" + name.removeprefix("meshtls_")) == kind, name
    assert not any(line.startswith("meshtls_") for line in series(text))
    assert value(text, "mtls_certificate_rotations_total") == 1


@pytest.mark.parametrize("prefix", ["", "9lives", "my-mesh", "mesh tls"])
def test_a_prefix_that_is_not_a_metric_name_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        NodeMetrics(CollectorRegistry(), clock=FakeClock(), prefix=prefix)


# ------------------------------------------------------------------ health and errors


async def test_healthz_and_readyz(endpoint: Endpoint) -> None:
    health = await endpoint.request("GET", "/healthz")
    assert (health.status_code, health.text) == (200, "ok\n")
    not_ready = await endpoint.request("GET", "/readyz")
    assert (not_ready.status_code, not_ready.text) == (503, "not ready: told so\n")
    endpoint.is_ready[0] = True
    ready = await endpoint.request("GET", "/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    endpoint.is_ready[0] = False
    assert (await endpoint.request("GET", "/readyz")).status_code == 503


async def test_head_answers_like_get_without_a_body(endpoint: Endpoint) -> None:
    get = await endpoint.request("GET", "/healthz")
    head = await endpoint.request("HEAD", "/healthz")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == "3"
    metrics = await endpoint.request("HEAD", "/metrics?x=1")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4


async def test_unknown_paths_404_and_other_methods_405(endpoint: Endpoint) -> None:
    assert (await endpoint.request("GET", "/")).status_code == 404
    assert (await endpoint.request("GET", "/metrics/extra")).status_code == 404
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        response = await endpoint.request(method, "/metrics")
        assert response.status_code == 405, method
        assert response.headers["allow"] == "GET, HEAD"


async def test_each_answer_closes_the_connection(endpoint: Endpoint) -> None:
    # Two pipelined requests: one answer, then EOF.
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await endpoint.raw(request * 2)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.count(b"HTTP/1.1") == 1
    assert b"connection: close" in answer.lower()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02\xff garbage\r\n\r\n",
        b"GET /metrics\r\n\r\n",  # HTTP/0.9
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\nHost: x\r\n\r\n",
        b"\r\n" * 200,
    ],
)
async def test_garbage_gets_400_and_the_server_keeps_serving(
    endpoint: Endpoint, garbage: bytes
) -> None:
    answer = await endpoint.raw(garbage)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert (await endpoint.request("GET", "/healthz")).status_code == 200


@pytest.mark.parametrize("pad", [MAX_REQUEST_HEAD, 10 * MAX_REQUEST_HEAD])
async def test_an_oversized_request_head_gets_431(endpoint: Endpoint, pad: int) -> None:
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * pad + b"\r\n\r\n"
    answer = await endpoint.raw(huge)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:80]
    assert (await endpoint.request("GET", "/healthz")).status_code == 200


async def test_a_request_head_just_under_the_bound_is_served(endpoint: Endpoint) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n"
    pad = MAX_REQUEST_HEAD - len(head)
    answer = await endpoint.raw(head.replace(b"X-Pad: ", b"X-Pad: " + b"a" * pad))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:80]


async def test_a_client_that_leaves_early_does_not_stop_the_server(endpoint: Endpoint) -> None:
    # Half-closed mid-request: a truncated request is a bad one.
    assert (await endpoint.raw(b"GET /metr", eof=True)).startswith(b"HTTP/1.1 400 ")
    # Half-closed before a byte: nothing to answer.
    assert await endpoint.raw(b"", eof=True) == b""
    # Gone entirely, without reading the answer.
    for _ in range(3):
        stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.aclose()
    assert (await endpoint.request("GET", "/healthz")).status_code == 200


async def test_a_failing_ready_check_is_a_500_and_is_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise RuntimeError("ready check broke")

    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    port = await start(nursery, metrics, broken)
    async with httpx.AsyncClient() as client:
        failed = await client.get(f"http://127.0.0.1:{port}/readyz")
        assert failed.status_code == 500
        assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    assert "ready check broke" in caplog.text
    nursery.cancel_scope.cancel()


async def test_bad_arguments_are_refused(nursery: trio.Nursery) -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    with pytest.raises(ValueError, match="connection_timeout"):
        await start(nursery, metrics, lambda: True, connection_timeout=0)
    with pytest.raises(ValueError, match="request_timeout"):
        await start(nursery, metrics, lambda: True, request_timeout=0)
    with pytest.raises(ValueError, match="max_connections"):
        await start(nursery, metrics, lambda: True, max_connections=0)


# ------------------------------------------------------------------ deadlines, on Trio's clock


async def test_a_silent_client_is_closed_at_the_request_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    port = await start(nursery, metrics, lambda: True, request_timeout=2.0)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        opened = trio.current_time()
        assert await read_to_eof(stream) == b""
        assert trio.current_time() - opened == 2.0
    nursery.cancel_scope.cancel()


async def test_a_slowloris_is_closed_at_the_request_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    port = await start(nursery, metrics, lambda: True, request_timeout=2.0)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        opened = trio.current_time()

        async def drip() -> None:
            with contextlib.suppress(trio.BrokenResourceError):  # ends when the server closes
                for byte in b"GET /metrics HTTP/1.1\r\nHost: x" * 10:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(1)  # on the MockClock: one byte per (virtual) second

        async with trio.open_nursery() as inner:
            inner.start_soon(drip)
            assert await read_to_eof(stream) == b""
            assert trio.current_time() - opened == 2.0
    nursery.cancel_scope.cancel()


PROBE = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_at_the_cap_the_oldest_idle_connection_makes_room(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    port = await start(nursery, metrics, lambda: True, max_connections=2)
    async with (
        await trio.open_tcp_stream("127.0.0.1", port) as oldest,
        await trio.open_tcp_stream("127.0.0.1", port) as younger,
    ):
        await younger.send_all(b"GET /healthz HTTP/1.1\r\n")  # half a head: still waiting
        await trio.testing.wait_all_tasks_blocked()  # both accepted, both hold a place
        async with await trio.open_tcp_stream("127.0.0.1", port) as probe:
            opened = trio.current_time()
            await probe.send_all(PROBE)
            assert (await read_to_eof(probe)).startswith(b"HTTP/1.1 200 OK\r\n")
            assert trio.current_time() - opened < 1.5  # answered, then a lingering close
        assert await read_to_eof(oldest) == b""  # evicted without an answer
        # The younger one kept its place and is answered when its head completes.
        await younger.send_all(b"Host: x\r\n\r\n")
        assert (await read_to_eof(younger)).startswith(b"HTTP/1.1 200 OK\r\n")
    nursery.cancel_scope.cancel()


async def test_a_connection_that_sent_its_request_is_never_evicted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    port = await start(nursery, metrics, lambda: True, max_connections=1)
    async with await trio.open_tcp_stream("127.0.0.1", port) as answered:
        await answered.send_all(PROBE)  # answered, then lingers (reading) for up to 1 s
        await trio.testing.wait_all_tasks_blocked()
        async with await trio.open_tcp_stream("127.0.0.1", port) as refused:
            opened = trio.current_time()
            await refused.send_all(PROBE)
            assert await read_to_eof(refused) == b""  # no idle place to take: closed at once
            assert trio.current_time() == opened
        assert (await read_to_eof(answered)).startswith(b"HTTP/1.1 200 OK\r\n")
    async with httpx.AsyncClient() as client:  # the place is free again
        assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    nursery.cancel_scope.cancel()


async def stalled_reader(port: int, path: bytes) -> trio.SocketStream:
    """A client that asks for `path` and then never reads: a tiny receive buffer, so the
    server's answer stops in the socket."""
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 1)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    return stream


async def test_connections_that_do_not_read_their_answer_make_room_after_the_request_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Every place is taken by a client that sent its request and never reads the answer
    (a large /metrics): once such a client has held its place for the request timeout,
    it is as stalled as an idle one, and a probe takes its place, well before the
    connection timeout (10 s) would free it."""
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    filler = Gauge("filler", "Makes the answer large.", ["n"], registry=metrics.registry)
    for n in range(4000):
        filler.labels(f"{n:0>120}").set(n)
    port = await start(nursery, metrics, lambda: True, max_connections=2)
    stalled = [await stalled_reader(port, b"/metrics") for _ in range(2)]
    await trio.testing.wait_all_tasks_blocked()
    async with await trio.open_tcp_stream("127.0.0.1", port) as early:
        await early.send_all(PROBE)  # both are busy, and have not had their time yet
        assert await read_to_eof(early) == b""
    await trio.sleep(2.5)  # past the request timeout (2 s)
    async with await trio.open_tcp_stream("127.0.0.1", port) as probe:
        opened = trio.current_time()
        await probe.send_all(PROBE)
        assert (await read_to_eof(probe)).startswith(b"HTTP/1.1 200 OK\r\n")
        assert trio.current_time() - opened < 1.5
    for stream in stalled:
        await stream.aclose()
    nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ probes under load


async def test_idle_connections_do_not_starve_a_probe(endpoint: Endpoint) -> None:
    """100 connections that never send a request (more than the 64 places): /healthz still
    gets its answer at once, because the oldest idle connection makes room for it."""
    idle = [await trio.open_tcp_stream("127.0.0.1", endpoint.port) for _ in range(100)]
    try:
        await trio.sleep(0.1)  # let the server accept them all
        for _ in range(3):
            with trio.fail_after(2):
                probe = await endpoint.request("GET", "/healthz")
            assert (probe.status_code, probe.text) == (200, "ok\n")
    finally:
        for stream in idle:
            await stream.aclose()


async def test_status_is_404_without_a_report_and_500_when_the_report_fails(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = NodeMetrics(CollectorRegistry(), clock=FakeClock())
    port = await start(nursery, metrics, lambda: False)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/status")).status_code == 404
        bare = await client.get(f"http://127.0.0.1:{port}/readyz?format=json")
        assert (bare.status_code, bare.json()) == (503, {"ready": False, "reason": "told so"})

    def broken() -> dict[str, Json]:
        raise RuntimeError("status report broke")

    serve = functools.partial(
        serve_http, metrics.registry, "127.0.0.1", 0, ready=lambda: Readiness(True), status=broken
    )
    listeners: list[trio.SocketListener] = await nursery.start(serve)
    other = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{other}/status")).status_code == 500
        assert (await client.get(f"http://127.0.0.1:{other}/readyz")).status_code == 200
    assert "status report broke" in caplog.text
    nursery.cancel_scope.cancel()


def test_P_4_refusal_problems_are_every_judge_problem() -> None:
    """The ``problem`` label of ``revocation_refused_total`` names every check the OCSP and
    CRL judges can refuse with, and nothing else but ``other``."""
    from meshtls._crl import CrlProblem
    from meshtls._metrics import REFUSAL_PROBLEMS
    from meshtls._ocsp import OcspProblem

    judged = set(get_args(OcspProblem)) | set(get_args(CrlProblem))
    assert set(REFUSAL_PROBLEMS) == judged | {"other"}
