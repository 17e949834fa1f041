"""Health that tells the truth (issue 8 §1): readiness from our SVID's validity, warnings
before it runs out, the endpoint served from the first instant, JSON status, and the
standard metrics (§7), over real HTTP on 127.0.0.1 and real identity files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

import meshtls
from meshtls import ConfigError
from meshtls._config import (
    FileIdentity,
    MetricsSettings,
    NodeConfig,
    NodeSettings,
    WorkloadApiIdentity,
    parse_config,
)
from meshtls._logs import FIELDS
from meshtls._node import Node, NodeError, _bound, open_node
from meshtls._status import NodeState, Readiness, lifetime_marks, readiness, status
from meshtls.testing import CA

from .test_metrics import promtool, types_of

T0 = datetime(2030, 1, 1, tzinfo=UTC)
#: prometheus_client's process collector reads /proc; without it, it exports nothing.
HAS_PROC = Path("/proc/self/stat").exists()
NODE_ID = "spiffe://example.org/node"


class FakeClock:
    """Certificate time that moves only when told to (Trio time runs on)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def cert_time() -> datetime:
    """Certificate time that follows Trio's (mock) clock."""
    return T0 + timedelta(seconds=trio.current_time())


def write_svid(directory: Path, ca: CA, *, not_before: datetime, ttl: timedelta) -> None:
    issued = ca.issue(NODE_ID, not_before=not_before, ttl=ttl)
    for name, data in (("node.pem", issued.chain_pem), ("node.key", issued.key_pem)):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)


def file_config(tmp_path: Path, ca: CA, *, ttl: timedelta = timedelta(hours=1)) -> NodeConfig:
    write_svid(tmp_path, ca, not_before=T0, ttl=ttl)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    return NodeConfig(
        identity=FileIdentity(
            cert=tmp_path / "node.pem", key=tmp_path / "node.key", bundle=tmp_path / "bundle.pem"
        ),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=("127.0.0.1", 0)),
    )


def http_port(node: Node) -> int:
    port: int = node.listeners["metrics"][0].socket.getsockname()[1]
    return port


async def get(port: int, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        with trio.fail_after(5):
            return await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)


def events(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == message]


def fields(record: logging.LogRecord) -> dict[str, object]:
    found: dict[str, object] = getattr(record, FIELDS)
    return found


# ------------------------------------------------------------------ 1. readiness from validity


async def test_readyz_is_503_once_our_svid_expires_and_200_again_after_a_renewal(
    tmp_path: Path,
) -> None:
    ca = CA("example.org", now=T0)
    clock = FakeClock(T0 + timedelta(minutes=10))
    async with open_node(file_config(tmp_path, ca), clock=clock) as node:
        port = http_port(node)
        assert (await get(port, "/readyz")).status_code == 200
        clock.now = T0 + timedelta(minutes=59, seconds=59)
        assert (await get(port, "/readyz")).status_code == 200  # still valid
        clock.now = T0 + timedelta(hours=1)  # not_after: no valid SVID to present any more
        expired = await get(port, "/readyz")
        assert expired.status_code == 503
        assert "expired" in expired.text
        assert NODE_ID in expired.text
        assert (await get(port, "/healthz")).status_code == 200  # the process lives
        clock.now = T0 + timedelta(hours=1, minutes=5)
        write_svid(tmp_path, ca, not_before=clock.now, ttl=timedelta(hours=1))
        with trio.fail_after(5):
            await node.changed()  # the file source picks up the renewal
        renewed = await get(port, "/readyz")
        assert (renewed.status_code, renewed.text) == (200, "ready\n")


async def test_B_7_readyz_is_503_while_our_svid_does_not_verify_against_our_bundle(
    tmp_path: Path,
) -> None:
    """Our trust domain's bundle moves to a new root while our SVID still chains to the old
    one: the rotation keeps the SVID (there is no other), but every peer that holds the new
    bundle refuses it, so the node is not ready until an SVID from the new root comes."""
    old, new = CA("example.org", now=T0), CA("example.org", now=T0)
    clock = FakeClock(T0 + timedelta(minutes=10))
    async with open_node(file_config(tmp_path, old), clock=clock) as node:
        port = http_port(node)
        (tmp_path / "bundle.pem").write_bytes(new.bundle_pem)
        with trio.fail_after(5):
            await node.changed()
        answer = await get(port, "/readyz")
        assert answer.status_code == 503
        assert "does not verify" in answer.text
        assert NODE_ID in answer.text
        write_svid(tmp_path, new, not_before=T0, ttl=timedelta(hours=1))
        with trio.fail_after(5):
            await node.changed()
        renewed = await get(port, "/readyz")
        assert (renewed.status_code, renewed.text) == (200, "ready\n")


async def test_P_2_readyz_is_503_once_our_svid_passes_max_age(tmp_path: Path) -> None:
    """Under ``[policy] max_age = "30m"`` (ours, and our peers'), a one-hour SVID is
    refused by every peer from 30 minutes after its not_before: the node is not ready
    from then on, although the SVID has not expired."""
    ca = CA("example.org", now=T0)
    config = file_config(tmp_path, ca)
    policy = meshtls.ValidationPolicy(max_age=timedelta(minutes=30))
    clock = FakeClock(T0 + timedelta(minutes=10))
    async with open_node(replace(config, policy=policy), clock=clock) as node:
        port = http_port(node)
        clock.now = T0 + timedelta(minutes=29, seconds=59)
        assert (await get(port, "/readyz")).status_code == 200
        clock.now = T0 + timedelta(minutes=30, seconds=1)
        aged = await get(port, "/readyz")
        assert aged.status_code == 503
        assert "max_age" in aged.text


# ------------------------------------------------------------------ 2. warnings before expiry

WARNING = "our SVID is past 80% of its lifetime and has not been renewed"
EXPIRED = "our SVID has expired: peers will refuse this node"


async def test_a_warning_at_80_percent_and_an_error_at_expiry_once_per_svid(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshtls")
    ca = CA("example.org", now=T0)
    config = file_config(tmp_path, ca, ttl=timedelta(minutes=10))
    async with open_node(replace(config, node=replace(config.node, metrics=None)), clock=cert_time):
        await trio.sleep(8 * 60 - 1)
        assert not events(caplog, WARNING)
        await trio.sleep(2)
        (warned,) = events(caplog, WARNING)
        assert warned.levelno == logging.WARNING
        assert str(fields(warned)["id"]) == NODE_ID
        assert fields(warned)["seconds_left"] == 120
        assert not events(caplog, EXPIRED)
        await trio.sleep(2 * 60)
        (error,) = events(caplog, EXPIRED)
        assert error.levelno == logging.ERROR
        await trio.sleep(10 * 60)  # no repeat for the same SVID
        assert len(events(caplog, WARNING)) == len(events(caplog, EXPIRED)) == 1
        # A new SVID gets its own warning, 80 % into its own lifetime.
        written = trio.current_time()
        write_svid(tmp_path, ca, not_before=cert_time(), ttl=timedelta(minutes=10))
        await trio.sleep(8 * 60 - 10)
        assert len(events(caplog, WARNING)) == 1  # the new SVID is not at 80 % yet
        await trio.sleep(11)
        assert len(events(caplog, WARNING)) == 2
        assert trio.current_time() - written == pytest.approx(8 * 60 + 1)


async def test_L_9_the_expiry_error_counts_whole_seconds_since_not_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that starts 10.5 s after its SVID's not_after (inside the 30 s skew) says at
    once that it expired 10 s ago, as /readyz does, not 11."""
    caplog.set_level(logging.INFO, logger="meshtls")
    ca = CA("example.org", now=T0)
    config = file_config(tmp_path, ca, ttl=timedelta(minutes=10))
    clock = FakeClock(T0 + timedelta(minutes=10, seconds=10.5))
    async with open_node(replace(config, node=replace(config.node, metrics=None)), clock=clock):
        with trio.fail_after(5):
            while not events(caplog, EXPIRED):  # noqa: ASYNC110 - the watch task logs it
                await trio.sleep(0.01)
    (error,) = events(caplog, EXPIRED)
    assert fields(error)["seconds_ago"] == 10


AGED = "our SVID is older than [policy] max_age: peers will refuse this node"


async def test_P_2_under_max_age_the_warning_and_the_error_follow_the_usable_life(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-hour SVID under ``max_age = "30m"`` is usable for 30 minutes: the warning
    comes at 80 % of those (24 min), the error when they end, as /readyz turns 503."""
    caplog.set_level(logging.INFO, logger="meshtls")
    ca = CA("example.org", now=T0)
    config = file_config(tmp_path, ca)
    config = replace(
        config,
        node=replace(config.node, metrics=None),
        policy=meshtls.ValidationPolicy(max_age=timedelta(minutes=30)),
    )
    async with open_node(config, clock=cert_time) as node:
        await trio.sleep(24 * 60 - 1)
        assert not events(caplog, WARNING)
        await trio.sleep(2)
        (warned,) = events(caplog, WARNING)
        assert fields(warned)["seconds_left"] == 6 * 60  # logged at 24 min sharp
        await trio.sleep(6 * 60)
        (error,) = events(caplog, AGED)
        assert error.levelno == logging.ERROR
        assert fields(error)["seconds_ago"] == 0
        assert fields(error)["max_age"] == "30m"
        assert not node.readiness().ready


async def test_a_renewal_before_80_percent_gives_no_warning(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CA("example.org", now=T0)
    config = file_config(tmp_path, ca, ttl=timedelta(minutes=10))
    async with open_node(replace(config, node=replace(config.node, metrics=None)), clock=cert_time):
        for _ in range(3):
            await trio.sleep(5 * 60)
            write_svid(tmp_path, ca, not_before=cert_time(), ttl=timedelta(minutes=10))
        await trio.sleep(5 * 60)
    assert not events(caplog, WARNING)
    assert not events(caplog, EXPIRED)


# ------------------------------------------------------------------ 3. served from the start


@asynccontextmanager
async def starting_node(config: NodeConfig, caplog: pytest.LogCaptureFixture) -> AsyncIterator[int]:
    """Start a node that waits for its first identity; yield its health port meanwhile."""
    caplog.set_level(logging.DEBUG, logger="meshtls")
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            async with open_node(config):
                raise AssertionError("the node should still be waiting")  # pragma: no cover
        except NodeError as exc:
            failure.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(5):
            while not events(caplog, "health endpoint serving"):  # noqa: ASYNC110 - a log
                await trio.sleep(0.01)
        (serving,) = events(caplog, "health endpoint serving")
        address = str(fields(serving)["address"])
        yield int(address.rpartition(":")[2])
        nursery.cancel_scope.cancel()


def waiting_config(tmp_path: Path, **node: object) -> NodeConfig:
    return NodeConfig(
        identity=WorkloadApiIdentity(address=f"unix://{tmp_path}/nobody-listens.sock"),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=("127.0.0.1", 0), **node),  # type: ignore[arg-type]
    )


async def test_health_is_served_while_waiting_for_the_first_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with starting_node(waiting_config(tmp_path), caplog) as port:
        assert (await get(port, "/healthz")).status_code == 200
        waiting = await get(port, "/readyz")
        assert waiting.status_code == 503
        assert "waiting for the first identity from" in waiting.text
        assert "nobody-listens.sock" in waiting.text
        status = (await get(port, "/status")).json()
        assert status["ready"] is False
        assert status["svid"] is None
        assert "waiting for the first identity" in status["reason"]
        assert (await get(port, "/metrics")).status_code == 200


async def test_startup_timeout_bounds_the_first_wait(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = waiting_config(tmp_path, startup_timeout=timedelta(seconds=5))
    config = replace(config, node=replace(config.node, metrics=None))
    start = trio.current_time()
    with pytest.raises(NodeError, match="within 5s"):
        async with open_node(config):
            pass  # pragma: no cover
    # The error comes at 5 s; closing the Workload API client may add a few (Trio) seconds.
    assert 5 <= trio.current_time() - start < 30


def test_startup_timeout_is_a_config_key(tmp_path: Path) -> None:
    text = '[identity]\nworkload_api = "unix:///run/spire.sock"\n[node]\nstartup_timeout = "2m"\n'
    config = parse_config(text, base_dir=tmp_path, source="node.toml")
    assert config.node.startup_timeout == timedelta(minutes=2)
    assert NodeSettings().startup_timeout == timedelta(seconds=30)
    with pytest.raises(ConfigError, match=r"node.toml: \[node\] startup_timeout"):
        parse_config(text.replace('"2m"', '"0s"'), base_dir=tmp_path, source="node.toml")


# ------------------------------------------------------------------ 5. JSON status


def sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


async def test_status_and_readyz_json_say_who_we_are_and_what_runs(tmp_path: Path) -> None:
    ca = CA("example.org", now=T0)
    other = CA("other.org", now=T0)
    config = file_config(tmp_path, ca)
    (tmp_path / "other.pem").write_bytes(other.bundle_pem)
    assert isinstance(config.identity, FileIdentity)
    config = replace(
        config, identity=replace(config.identity, federated={"other.org": tmp_path / "other.pem"})
    )
    clock = FakeClock(T0 + timedelta(minutes=15))
    async with open_node(config, clock=clock) as node:
        port = http_port(node)
        leaf = node.identity().svid.leaf
        client_ca = ca.issue("spiffe://example.org/client", not_before=T0)
        (tmp_path / "client.pem").write_bytes(client_ca.chain_pem)
        (tmp_path / "client.key").write_bytes(client_ca.key_pem)
        client = meshtls.StaticSource(
            meshtls.X509Svid.load(client_ca.chain_pem, client_ca.key_pem), ca.bundle_set()
        )
        mesh = node.listeners["mesh"][0].socket.getsockname()[1]
        stream = await meshtls.connect(
            "127.0.0.1",
            mesh,
            source=client,
            authorize=meshtls.authorize_id(NODE_ID),
            clock=clock,
        )
        async with stream:
            with trio.fail_after(5):
                while node.live_connections < 1:  # noqa: ASYNC110 - a count with no event
                    await trio.sleep(0.01)
            response = await get(port, "/status")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        status = response.json()
        assert status["ready"] is True
        assert status["reason"] is None
        assert status["time"] == "2030-01-01T00:15:00Z"
        assert status["svid"] == {
            "spiffe_id": NODE_ID,
            "serial": format(leaf.serial_number, "x"),
            "sha256": sha256(leaf.public_bytes(Encoding.DER)),
            "not_before": "2030-01-01T00:00:00Z",
            "not_after": "2030-01-01T01:00:00Z",
            "seconds_left": 45 * 60,
        }
        assert set(status["bundles"]) == {"example.org", "other.org"}
        (root,) = status["bundles"]["example.org"]
        assert root["sha256"] == sha256(ca.root.certificate.public_bytes(Encoding.DER))
        assert root["subject"] == ca.root.certificate.subject.rfc4514_string()
        assert root["not_after"].endswith("Z")
        assert status["listeners"] == {
            "mesh": f"127.0.0.1:{mesh}",
            "metrics": f"127.0.0.1:{port}",
        }
        assert status["connections"] == {"mesh": 1}  # listeners that carry verified peers
        assert status["rotations"] == 0
        assert status["last_rotation"] is None
        assert "PRIVATE" not in response.text
        # /readyz gives the same document when asked for JSON, either way.
        for path, headers in (
            ("/readyz?format=json", {}),
            ("/readyz", {"accept": "application/json"}),
        ):
            ready = await get(port, path, **headers)
            assert ready.status_code == 200
            assert ready.headers["content-type"] == "application/json"
            assert ready.json()["svid"]["spiffe_id"] == NODE_ID
        assert (await get(port, "/readyz")).text == "ready\n"

        # A rotation shows up as the last rotation.
        clock.now = T0 + timedelta(minutes=20)
        write_svid(tmp_path, ca, not_before=clock.now, ttl=timedelta(hours=1))
        with trio.fail_after(5):
            await node.changed()
        status = (await get(port, "/status")).json()
        assert status["rotations"] == 1
        assert status["last_rotation"] == {
            "time": "2030-01-01T00:20:00Z",
            "svid": "new",
            "bundles": "kept",
        }
        # Expired: /status still answers 200 (it describes), /readyz?format=json is 503.
        clock.now = T0 + timedelta(hours=2)
        status = (await get(port, "/status")).json()
        assert status["ready"] is False
        assert "expired" in status["reason"]
        assert status["svid"]["seconds_left"] < 0
        assert (await get(port, "/readyz?format=json")).status_code == 503


# ------------------------------------------------------------------ 6, 7. standard metrics, prefix


async def test_process_metrics_are_on_the_node_registry_and_openmetrics_on_request(
    tmp_path: Path,
) -> None:
    ca = CA("example.org", now=T0)
    async with open_node(file_config(tmp_path, ca), clock=FakeClock(T0)) as node:
        port = http_port(node)
        text = (await get(port, "/metrics")).text
        await promtool(text)
        types = types_of(text)
        assert types["python_info"] == "gauge"
        if HAS_PROC:
            assert types["process_cpu_seconds_total"] == "counter"
            assert types["process_resident_memory_bytes"] == "gauge"
        opened = await get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
        assert opened.headers["content-type"].startswith("application/openmetrics-text")
        assert opened.text.endswith("# EOF\n")
        # promtool 2.42 reads only the Prometheus text format; prometheus_client's strict
        # OpenMetrics parser judges this one, and both show the same families.
        parsed = openmetrics_families(opened.text)  # type: ignore[no-untyped-call]
        names = {family.name for family in parsed}
        assert "python_info" in names
        assert "meshtls_certificate_rotations" in names  # OpenMetrics names counters bare
        plain = await get(port, "/metrics", accept="text/plain")
        assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")


SEED_NAMES = {
    "mtls_certificate_rotations_total": "counter",
    "mtls_certificate_expiry_seconds": "gauge",
    "mtls_certificate_age_seconds": "gauge",
    "mtls_certificate_validation_failures_total": "counter",
    "mtls_peer_verification_failures_total": "counter",
}


async def test_metrics_prefix_mtls_gives_the_seed_system_names(tmp_path: Path) -> None:
    ca = CA("example.org", now=T0)
    write_svid(tmp_path, ca, not_before=T0, ttl=timedelta(hours=1))
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    text = (
        '[identity]\ncert = "node.pem"\nkey = "node.key"\nbundle = "bundle.pem"\n'
        '[node]\nlisten = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
        '[metrics]\nprefix = "mtls"\n'
    )
    config = parse_config(text, base_dir=tmp_path, source="node.toml")
    assert config.metrics == MetricsSettings(prefix="mtls")
    async with open_node(config, clock=FakeClock(T0)) as node:
        scraped = (await get(http_port(node), "/metrics")).text
    await promtool(scraped)
    types = types_of(scraped)
    for name, kind in SEED_NAMES.items():
        assert types.get(name) == kind, name
    assert not [name for name in types if name.startswith("meshtls_")]


@pytest.mark.parametrize("prefix", ['"my-mesh"', '""', "3"])
def test_a_bad_metrics_prefix_is_one_config_error(tmp_path: Path, prefix: str) -> None:
    text = f'[identity]\nworkload_api = "unix:///run/spire.sock"\n[metrics]\nprefix = {prefix}\n'
    with pytest.raises(ConfigError, match=r"node.toml: \[metrics\] prefix") as info:
        parse_config(text, base_dir=tmp_path, source="node.toml")
    assert "\n" not in str(info.value)


def test_metrics_settings_default_to_meshtls() -> None:
    assert MetricsSettings().prefix == "meshtls"
    config = NodeConfig(identity=WorkloadApiIdentity())
    assert config.metrics.prefix == "meshtls"


# ------------------------------------------------------------------ the pure verdicts


def state(identity: meshtls.Identity | None, now: datetime, **changes: object) -> NodeState:
    base = NodeState(
        now=now,
        phase="running",
        waiting_for="the Workload API at unix:///run/spire.sock",
        identity=identity,
        listeners={"mesh": "127.0.0.1:8443"},
        connections={"mesh": 0},
        rotations=0,
        last_rotation=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def identity() -> meshtls.Identity:
    ca = CA("example.org", now=T0)
    issued = ca.issue(NODE_ID, not_before=T0, ttl=timedelta(minutes=10))
    return meshtls.Identity(
        meshtls.X509Svid.load(issued.chain_pem, issued.key_pem), ca.bundle_set()
    )


def test_readiness_ends_at_not_after_to_the_microsecond(identity: meshtls.Identity) -> None:
    not_after = T0 + timedelta(minutes=10)
    assert readiness(state(identity, not_after - timedelta(microseconds=1))) == Readiness(True)
    expired = readiness(state(identity, not_after))
    assert not expired.ready
    assert expired.reason is not None
    assert "expired at 2030-01-01T00:10:00Z (0s ago)" in expired.reason


def test_readiness_reasons_in_each_phase(identity: meshtls.Identity) -> None:
    now = T0 + timedelta(minutes=1)
    waiting = readiness(state(None, now, phase="starting"))
    assert waiting == Readiness(
        False, "waiting for the first identity from the Workload API at unix:///run/spire.sock"
    )
    assert readiness(state(identity, now, phase="starting")) == Readiness(
        False, "starting: opening the listeners"
    )
    draining = readiness(state(identity, now, phase="draining"))
    assert not draining.ready
    assert draining.reason is not None
    assert draining.reason.startswith("draining")


def test_status_has_no_secret_and_round_trips_as_json(identity: meshtls.Identity) -> None:
    document = status(state(identity, T0 + timedelta(minutes=9)))
    text = json.dumps(document)
    assert json.loads(text) == document
    assert "PRIVATE" not in text
    assert "BEGIN" not in text
    svid = document["svid"]
    assert isinstance(svid, dict)
    assert svid["seconds_left"] == 60


def test_the_warning_mark_is_80_percent_into_the_lifetime(identity: meshtls.Identity) -> None:
    assert lifetime_marks(identity.svid) == (T0 + timedelta(minutes=8), T0 + timedelta(minutes=10))


async def test_a_closed_listener_is_shown_as_closed() -> None:
    """A drain that stops accepting closes listeners; /status must still answer then."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    assert _bound(listeners) == f"127.0.0.1:{port}"
    await listeners[0].aclose()
    assert _bound(listeners) == "closed"
