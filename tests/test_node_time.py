"""The node on Trio's MockClock: hours of certificate time in milliseconds of test time.

Certificate time follows Trio time (`cert_time`), so the renewal, the gauges and the
connection deadlines can be asserted to the second.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

import meshtls
from meshtls._ca import LocalCA
from meshtls._config import LocalCAIdentity, NodeConfig, NodeSettings
from meshtls._node import DRAIN_MARGIN, open_node
from meshtls._spiffeid import SpiffeId

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NODE_ID = SpiffeId.parse("spiffe://meshtls.local/node")


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def cert_time() -> datetime:
    return T0 + timedelta(seconds=trio.current_time())


def config(tmp_path: Path, ttl: timedelta = timedelta(hours=1)) -> NodeConfig:
    return NodeConfig(
        identity=LocalCAIdentity(directory=tmp_path / "ca", spiffe_id=NODE_ID, ttl=ttl),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
    )


async def test_a_1h_svid_renews_exactly_on_time_and_the_gauges_follow(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    expected = 1800 + random.Random(3).uniform(-0.05, 0.05) * 3600
    async with open_node(config(tmp_path), clock=cert_time, rng=random.Random(3)) as node:
        gauge = node.registry.get_sample_value
        assert gauge("meshtls_certificate_expiry_seconds") == 3600
        assert gauge("meshtls_certificate_age_seconds") == 0
        await trio.sleep(600)
        assert gauge("meshtls_certificate_expiry_seconds") == 3000  # moves with the clock
        assert gauge("meshtls_certificate_age_seconds") == 600
        assert gauge("meshtls_certificate_rotations_total") == 0
        await node.changed()  # the renewal
        assert trio.current_time() == pytest.approx(expected, abs=1e-6)
        assert gauge("meshtls_certificate_rotations_total") == 1
        # the new SVID starts within the second it was issued (X.509 resolution)
        assert 3599 <= gauge("meshtls_certificate_expiry_seconds") <= 3600  # type: ignore[operator]


async def test_a_connection_is_closed_before_the_peer_certificate_expires(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    closed_at: list[float] = []
    announced: list[datetime | None] = []

    async def handler(stream: meshtls.MeshStream) -> None:
        announced.append(stream.closes_at)
        try:
            await trio.sleep_forever()
        finally:
            closed_at.append(trio.current_time())

    async with open_node(config(tmp_path), handler=handler, clock=cert_time) as node:
        ca = LocalCA.open(tmp_path / "ca")
        client = ca.issue(
            SpiffeId.parse("spiffe://meshtls.local/client"),
            ttl=timedelta(minutes=20),
            now=cert_time(),
        )
        source = meshtls.StaticSource(client, ca.bundle())
        port = node.listeners["mesh"][0].socket.getsockname()[1]
        stream = await meshtls.connect(
            "127.0.0.1", port, source=source, authorize=meshtls.authorize_any(), clock=cert_time
        )
        async with stream:
            assert await stream.receive_some() == b""  # closed cleanly (close_notify), not cut
        deadline = (client.not_after - T0 - DRAIN_MARGIN).total_seconds()
        assert closed_at == [pytest.approx(deadline, abs=1e-3)]
        assert announced == [client.not_after - DRAIN_MARGIN]  # known from the start
        assert node.live_connections == 0
