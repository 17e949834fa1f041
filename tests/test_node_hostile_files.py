"""A hostile identity source never kills the node (issue 7, item 1 "found by fuzzing").

A running node watches its identity files; each test rewrites them with one input that
today's parsers choke on (tests/hostile_identity.py). Whatever the parsers raise, the node
must keep running: it keeps its identity (counting and logging the refusal once), or swaps
in the one input that is valid after all (`VALID`), goes on serving, and goes on watching
its files (a good identity written afterwards is picked up).

Polling is Trio time: the MockClock jumps through the 0.5 s polls.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest
import trio
import trio.testing

import meshtls
from meshtls._config import FileIdentity, NodeConfig, NodeSettings
from meshtls.testing import CA

from .hostile_identity import CORPUS, Files, rewrite, write_identity

NODE = "spiffe://example.org/node"
FAILURES = "meshtls_certificate_validation_failures_total"
ROTATIONS = "meshtls_certificate_rotations_total"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    now = datetime.now(UTC)
    made = Files(tmp_path, CA("example.org", now=now), CA("other.org", now=now))
    write_identity(made)
    return made


def config(files: Files) -> NodeConfig:
    return NodeConfig(
        identity=FileIdentity(
            cert=files.cert,
            key=files.key,
            bundle=files.bundle,
            federated=MappingProxyType({"other.org": files.federated}),
        ),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
    )


def failures(node: meshtls.Node) -> float:
    total = 0.0
    for metric in node.registry.collect():
        if metric.name == FAILURES.removesuffix("_total"):
            total += sum(s.value for s in metric.samples if s.name == FAILURES)
    return total


def rotations(node: meshtls.Node) -> float:
    value = node.registry.get_sample_value(ROTATIONS)
    assert value is not None
    return value


@asynccontextmanager
async def client(node: meshtls.Node, files: Files) -> AsyncIterator[meshtls.MeshStream]:
    """A verified connection from a good example.org client to the node's mesh listener.

    The client trusts what the node trusts now: a rewrite the node accepted may have
    brought a second root of example.org, which issued the node's new SVID.
    """
    source = meshtls.StaticSource(
        files.ca.issue("spiffe://example.org/client").svid(), node.contexts().bundles
    )
    port = node.listeners["mesh"][0].socket.getsockname()[1]
    with trio.fail_after(10):
        stream = await meshtls.connect(
            "127.0.0.1", port, source=source, authorize=meshtls.authorize_member_of("example.org")
        )
    async with stream:
        yield stream


async def echo(stream: meshtls.MeshStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def assert_serves(node: meshtls.Node, files: Files) -> None:
    async with client(node, files) as stream:
        await stream.send_all(b"ping")
        with trio.fail_after(10):
            assert await stream.receive_some() == b"ping"


#: The one input that is a valid identity after all (RFC 5280's "no well-defined expiry" on
#: a root): it is swapped in. Every other input must be refused.
VALID = frozenset({"our SVID from a root with notAfter 9999"})


def test_every_valid_case_is_in_the_corpus() -> None:
    assert set(CORPUS) >= VALID


@pytest.mark.parametrize("case", list(CORPUS))
async def test_a_hostile_identity_file_never_kills_the_node(
    files: Files, case: str, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with meshtls.open_node(config(files), handler=echo) as node:
        before = node.contexts()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="meshtls"):
            rewrite(files, case)
            with trio.fail_after(5):
                await node.changed()  # a refusal, or a swap
            await trio.sleep(5)  # ten more polls: nothing more happens
        assert node.ready
        assert (node.contexts() is not before) == (case in VALID)
        if case not in VALID:  # refused: counted and logged once, not per poll
            assert failures(node) == 1
            assert rotations(node) == 0
            refusals = [r for r in caplog.records if "rejected" in r.getMessage()]
            assert len(refusals) == 1, [r.getMessage() for r in refusals]
            assert "\n" not in refusals[0].getMessage()
        else:  # a valid identity: swapped in
            assert failures(node) == 0
            assert rotations(node) == 1
        await assert_serves(node, files)

        # the source is still watching: a good identity afterwards is picked up
        swaps = rotations(node)
        write_identity(files, NODE)
        with trio.fail_after(5):
            while rotations(node) == swaps:
                await node.changed()
        assert str(node.contexts().svid.spiffe_id) == NODE
        await assert_serves(node, files)
