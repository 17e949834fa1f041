"""Node properties: several per process, a bounded wait for the first SVID, faulty handlers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

import meshtls
from meshtls._ca import LocalCA
from meshtls._config import (
    FileIdentity,
    LocalCAIdentity,
    NodeConfig,
    NodeSettings,
    WorkloadApiIdentity,
)
from meshtls._node import NodeError, open_node
from meshtls._policy import ValidationPolicy
from meshtls._spiffeid import SpiffeId
from meshtls.testing import CA

from .hostile_identity import duplicate_extension_leaf, no_expiry_leaf


def local(tmp_path: Path, name: str) -> NodeConfig:
    return NodeConfig(
        identity=LocalCAIdentity(
            directory=tmp_path / "ca", spiffe_id=SpiffeId.parse(f"spiffe://meshtls.local/{name}")
        ),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=("127.0.0.1", 0)),
    )


def mesh_port(node: meshtls.Node) -> int:
    port: int = node.listeners["mesh"][0].socket.getsockname()[1]
    return port


async def test_two_nodes_in_one_process_talk_and_keep_separate_metrics(tmp_path: Path) -> None:
    async with (
        open_node(local(tmp_path, "a")) as a,
        open_node(local(tmp_path, "b")) as b,
    ):
        assert a.registry is not b.registry
        stream = await meshtls.connect(
            "127.0.0.1",
            mesh_port(b),
            source=a,  # a node is an identity source
            authorize=meshtls.authorize_id("spiffe://meshtls.local/b"),
            observer=a,
        )
        async with stream:
            await stream.send_all(b"hello")
        ok = {"role": "client", "result": "ok"}
        assert a.registry.get_sample_value("meshtls_handshakes_total", ok) == 1
        assert b.registry.get_sample_value("meshtls_handshakes_total", ok) == 0


@pytest.fixture
def jumping_clock() -> trio.testing.MockClock:
    """pytest-trio runs a test on any fixture that is a trio Clock: backoff in no time."""
    return trio.testing.MockClock(autojump_threshold=0.01)


async def test_no_first_svid_within_the_bounded_wait_is_a_node_error(
    tmp_path: Path, jumping_clock: trio.testing.MockClock
) -> None:
    config = NodeConfig(
        identity=WorkloadApiIdentity(address=f"unix://{tmp_path}/nobody-listens.sock"),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
    )
    start = trio.current_time()
    with pytest.raises(NodeError) as info:
        async with open_node(config):
            pass
    assert "\n" not in str(info.value)
    assert 29 <= trio.current_time() - start <= 31  # the 30 s bound, in Trio time


async def test_a_failing_handler_does_not_stop_the_node(tmp_path: Path) -> None:
    calls: list[str] = []

    async def handler(stream: meshtls.MeshStream) -> None:
        calls.append(str(stream.peer.spiffe_id))
        if len(calls) == 1:
            raise RuntimeError("a bug in one connection's handler")
        await stream.send_all(b"still serving")

    async with open_node(local(tmp_path, "n"), handler=handler) as node:
        ca = LocalCA.open(tmp_path / "ca")
        client = meshtls.StaticSource(
            ca.issue(
                SpiffeId.parse("spiffe://meshtls.local/c"),
                ttl=timedelta(minutes=5),
                now=datetime.now(UTC),
            ),
            ca.bundle(),
        )
        for expected in (None, b"still serving"):  # None: reset, the handler failed (issue 7)
            stream = await meshtls.connect(
                "127.0.0.1", mesh_port(node), source=client, authorize=meshtls.authorize_any()
            )
            async with stream:
                with trio.fail_after(5):
                    if expected is None:
                        with pytest.raises(trio.BrokenResourceError):
                            await stream.receive_some()
                    else:
                        assert await stream.receive_some() == expected
        assert node.ready
    assert len(calls) == 2


def _files(tmp_path: Path, contents: dict[str, bytes]) -> NodeConfig:
    """A files-form identity from `contents` ({"cert": ..., "key": ..., "bundle": ...})."""
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return NodeConfig(
        identity=FileIdentity(
            cert=tmp_path / "cert", key=tmp_path / "key", bundle=tmp_path / "bundle"
        ),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
    )


def _ca_at(tmp_path: Path, directory: Path, ttl: timedelta = timedelta(minutes=10)) -> NodeConfig:
    return NodeConfig(
        identity=LocalCAIdentity(
            directory=directory, spiffe_id=SpiffeId.parse("spiffe://meshtls.local/n"), ttl=ttl
        ),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
        policy=ValidationPolicy(max_ttl=None),
    )


def _hostile_leaf(tmp_path: Path, make: Callable[[CA], dict[str, bytes]]) -> NodeConfig:
    ca = CA("example.org", now=datetime.now(UTC))
    return _files(tmp_path, {**make(ca), "bundle": ca.bundle_pem})


START_FAILURES: dict[str, Callable[[Path], NodeConfig]] = {
    "a NUL byte in the CA path": lambda p: _ca_at(p, p / "c\0a"),
    "a 300-byte path component": lambda p: _ca_at(p, p / ("a" * 300)),
    "a NUL byte in the cert path": lambda p: NodeConfig(
        identity=FileIdentity(cert=p / "c\0ert", key=p / "key", bundle=p / "bundle"),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
    ),
    "our leaf with a duplicate extension": lambda p: _hostile_leaf(p, duplicate_extension_leaf),
    "our leaf valid until 9999": lambda p: _hostile_leaf(p, no_expiry_leaf),
}


@pytest.mark.parametrize("case", list(START_FAILURES))
async def test_every_start_up_failure_is_one_node_error(tmp_path: Path, case: str) -> None:
    config = START_FAILURES[case](tmp_path)
    with trio.fail_after(10):
        try:
            async with open_node(config):
                pytest.fail("the node started")
        except NodeError as exc:
            error = exc
    assert type(error) is NodeError  # not an ExceptionGroup, not a foreign type
    message = str(error)
    assert "\n" not in message
    assert "\0" not in message
    assert message.isprintable()
