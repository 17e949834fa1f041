"""`open_node` with its identity from a SPIFFE Workload API (tests/workload_server.py).

The node reaches a real gRPC server on a Unix socket: it becomes ready with the SVID
the server gives, applies a rotation the server pushes, closes the live connections
that chained to a root a bundle update dropped (B-7), and fails with one `NodeError`
line when the server answers InvalidArgument (W-3).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import grpc  # type: ignore[import-untyped]
import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from spiffe._proto import workload_pb2

import meshtls
from meshtls._config import NodeSettings, WorkloadApiIdentity, parse_config
from meshtls.testing import CA, IssuedCertificate

from .hostile_identity import NO_EXPIRY
from .workload_server import HEADER, WorkloadApiServer, logged, svid_message, x509_response

NOW: Final = datetime.now(UTC)  # the node checks its SVID against the wall clock
NODE: Final = "spiffe://example.org/node"
TD: Final = meshtls.TrustDomain.parse("example.org")
WAIT: Final = 5.0  # seconds: the bound on every wait; each test takes well under one
FAILURES: Final = "meshtls_certificate_validation_failures_total"
PEER_FAILURES: Final = "meshtls_peer_verification_failures_total"


@dataclass(frozen=True)
class Certs:
    ca: CA  # example.org, root 1: the node's
    ca2: CA  # example.org, root 2: a second root, dropped by a bundle update
    node: IssuedCertificate  # the node's SVID, from root 1
    node2: IssuedCertificate  # the same id, rotated
    client1: IssuedCertificate  # spiffe://example.org/client1, from root 1
    client2: IssuedCertificate  # spiffe://example.org/client2, from root 2

    def state(
        self, issued: IssuedCertificate | None = None, *, roots: tuple[CA, ...] | None = None
    ) -> workload_pb2.X509SVIDResponse:
        """The node's SVID (`node` by default) with example.org's roots (both by default)."""
        bundle = [ca.certificate for ca in (roots or (self.ca, self.ca2))]
        return x509_response([svid_message(issued or self.node, bundle)])

    def client(self, issued: IssuedCertificate) -> meshtls.StaticSource:
        """A client with `issued` as its SVID that trusts root 1 (the node's)."""
        return meshtls.StaticSource(issued.svid(), self.ca.bundle_set())


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = CA("example.org", now=NOW)
    ca2 = CA("example.org", now=NOW, label="root 2")
    return Certs(
        ca=ca,
        ca2=ca2,
        node=ca.issue(NODE),
        node2=ca.issue(NODE),
        client1=ca.issue("spiffe://example.org/client1"),
        client2=ca2.issue("spiffe://example.org/client2"),
    )


@pytest.fixture
def server(tmp_path: Path, certs: Certs) -> Iterator[WorkloadApiServer]:
    """A started Workload API whose state is `certs.state()`; stopped after the test."""
    with WorkloadApiServer(tmp_path / "agent.sock", certs.state()) as started:
        yield started


def node_config(address: str, base_dir: Path) -> meshtls.NodeConfig:
    """A node on port 0 whose identity comes from the Workload API at `address`."""
    return parse_config(
        f"""
[identity]
workload_api = "{address}"

[node]
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
""",
        base_dir=base_dir,
    )


def port(node: meshtls.Node, name: str) -> int:
    (listener, *_) = node.listeners[name]
    number: int = listener.socket.getsockname()[1]
    return number


def metric(node: meshtls.Node, name: str, **labels: str) -> float:
    value = node.registry.get_sample_value(name, labels)
    assert value is not None, f"{name} {labels} is not in the node's registry"
    return value


@asynccontextmanager
async def dial(
    node: meshtls.Node, certs: Certs, issued: IssuedCertificate
) -> AsyncIterator[meshtls.MeshStream]:
    """A verified connection to the node's mesh listener with `issued` as our SVID."""
    with trio.fail_after(WAIT):
        stream = await meshtls.connect(
            "127.0.0.1",
            port(node, "mesh"),
            source=certs.client(issued),
            authorize=meshtls.authorize_id(NODE),
        )
    async with stream:
        yield stream


async def wait_for_new_contexts(node: meshtls.Node, before: object) -> None:
    """Wait, bounded, until the node's active contexts are no longer `before`."""
    with trio.fail_after(WAIT):
        while node.contexts() is before:
            await node.changed()


async def test_node_is_ready_with_the_svid_the_server_gives(
    tmp_path: Path, server: WorkloadApiServer, certs: Certs
) -> None:
    with trio.fail_after(WAIT):
        async with meshtls.open_node(node_config(server.address, tmp_path)) as node:
            assert node.ready
            contexts = node.contexts()
            assert contexts.svid.leaf == certs.node.leaf
            assert str(contexts.svid.spiffe_id) == NODE
            assert set(contexts.bundles) == {TD}
            assert server.calls == 1
            assert server.metadata[0].get(HEADER[0]) == HEADER[1]  # W-1

            async with httpx.AsyncClient() as http:
                base = f"http://127.0.0.1:{port(node, 'metrics')}"
                assert (await http.get(f"{base}/readyz")).status_code == 200
            expiry = metric(node, "meshtls_certificate_expiry_seconds")
            left = (certs.node.leaf.not_valid_after_utc - datetime.now(UTC)).total_seconds()
            assert abs(expiry - left) < 60
            assert metric(node, "meshtls_certificate_rotations_total") == 0

            async with dial(node, certs, certs.client1) as stream:
                assert stream.peer.chain[0] == certs.node.leaf  # what a peer is shown


async def test_an_svid_rotation_pushed_by_the_server_is_applied(
    tmp_path: Path, server: WorkloadApiServer, certs: Certs
) -> None:
    async with meshtls.open_node(node_config(server.address, tmp_path)) as node:
        before = node.contexts()
        server.push(certs.state(certs.node2))
        await wait_for_new_contexts(node, before)

        assert node.contexts().svid.leaf == certs.node2.leaf
        assert metric(node, "meshtls_certificate_rotations_total") == 1
        async with dial(node, certs, certs.client1) as stream:
            assert stream.peer.chain[0] == certs.node2.leaf  # new handshakes use it at once
        assert server.calls == 1  # the same stream carried the rotation


async def test_a_bundle_update_that_drops_a_root_closes_its_live_connections(
    tmp_path: Path, server: WorkloadApiServer, certs: Certs
) -> None:
    """B-7: client2 chains to root 2, which the update drops; client1 (root 1) stays."""
    cancelled: list[str] = []
    handler_cancelled = trio.Event()

    async def handler(stream: meshtls.MeshStream) -> None:
        """Greet, then echo until the peer closes; note a cancellation."""
        try:
            await stream.send_all(b"hi")
            while data := await stream.receive_some():
                await stream.send_all(data)
        except trio.Cancelled:
            cancelled.append(str(stream.peer.spiffe_id))
            handler_cancelled.set()
            raise

    untrusted = {"reason": "untrusted_chain"}
    failures = "meshtls_peer_verification_failures_total"
    config = node_config(server.address, tmp_path)
    async with (
        meshtls.open_node(config, handler=handler) as node,
        dial(node, certs, certs.client1) as stays,
        dial(node, certs, certs.client2) as dropped,
    ):
        with trio.fail_after(WAIT):
            assert await stays.receive_some() == b"hi"
            assert await dropped.receive_some() == b"hi"
        assert node.live_connections == 2
        assert metric(node, failures, **untrusted) == 0

        before = node.contexts()
        server.push(certs.state(roots=(certs.ca,)))
        await wait_for_new_contexts(node, before)
        assert node.contexts().svid.leaf == certs.node.leaf  # only the bundle changed
        assert node.contexts().bundles[TD].authorities == (certs.ca.certificate,)

        with trio.fail_after(WAIT):
            await handler_cancelled.wait()
            try:
                rest = await dropped.receive_some()
            except trio.BrokenResourceError:
                rest = b""
        assert rest == b"", "the connection from the dropped root is still open"
        assert cancelled == ["spiffe://example.org/client2"]
        assert metric(node, failures, **untrusted) == 1

        with trio.fail_after(WAIT):  # the connection from root 1 is untouched
            await stays.send_all(b"ping")
            assert await stays.receive_some() == b"ping"
        assert node.live_connections == 1

        # and a new handshake from root 2 is refused now
        with pytest.raises(meshtls.PeerRejectedError), trio.fail_after(WAIT):
            async with dial(node, certs, certs.client2) as again:
                await again.receive_some()
        assert metric(node, failures, **untrusted) == 2
    assert cancelled == ["spiffe://example.org/client2"], "client1's handler was cancelled"


async def test_invalid_argument_from_the_server_is_one_node_error(
    tmp_path: Path, server: WorkloadApiServer
) -> None:
    """W-3: never retried; `open_node` raises a plain NodeError, not an ExceptionGroup."""
    server.fail_always = grpc.StatusCode.INVALID_ARGUMENT
    config = meshtls.NodeConfig(  # the dataclasses, as a program builds them
        identity=WorkloadApiIdentity(address=server.address),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
    )
    with trio.fail_after(WAIT):
        try:
            async with meshtls.open_node(config):
                pytest.fail("the node started")
        except meshtls.NodeError as exc:
            error = exc
    assert type(error) is meshtls.NodeError
    message = str(error)
    assert "\n" not in message
    assert "InvalidArgument" in message
    assert server.address in message
    assert server.calls == 1  # not retried


async def test_a_server_down_at_start_up_is_waited_for(tmp_path: Path, certs: Certs) -> None:
    """W-3: the node retries until the server is up, then becomes ready."""
    late = WorkloadApiServer(tmp_path / "agent.sock", certs.state())
    try:
        async with trio.open_nursery() as nursery:

            async def start_after_a_failed_attempt() -> None:
                with logged("reconnecting") as retrying:
                    await retrying.wait()
                late.start()

            nursery.start_soon(start_after_a_failed_attempt)
            with trio.fail_after(WAIT):
                async with meshtls.open_node(node_config(late.address, tmp_path)) as node:
                    assert node.ready
                    assert node.contexts().svid.leaf == certs.node.leaf
            assert late.calls == 1
    finally:
        late.stop()


async def test_B_7_one_update_with_a_refused_svid_still_drops_the_root(
    tmp_path: Path, server: WorkloadApiServer, certs: Certs
) -> None:
    """ONE message: our new SVID is over max_ttl (refused) and root 2 left the bundle.

    The refusal of the SVID must not throw the bundle change away: the live connection
    through root 2 closes, a new one through root 2 is refused, root 1's connection stays,
    and the node keeps presenting its old SVID.
    """
    closed = trio.Event()

    async def handler(stream: meshtls.MeshStream) -> None:
        try:
            await stream.send_all(b"hi")
            while data := await stream.receive_some():
                await stream.send_all(data)
        except trio.Cancelled:
            if str(stream.peer.spiffe_id) == "spiffe://example.org/client2":
                closed.set()
            raise

    too_long = certs.ca.issue(NODE, ttl=timedelta(hours=2))  # P-1: the policy's max is 1 h
    config = node_config(server.address, tmp_path)
    async with (
        meshtls.open_node(config, handler=handler) as node,
        dial(node, certs, certs.client1) as stays,
        dial(node, certs, certs.client2) as dropped,
    ):
        with trio.fail_after(WAIT):
            assert await stays.receive_some() == b"hi"
            assert await dropped.receive_some() == b"hi"

        server.push(certs.state(too_long, roots=(certs.ca,)))
        with trio.fail_after(WAIT):
            while len(node.contexts().bundles[TD].authorities) == 2:
                await node.changed()
            await closed.wait()

        assert node.contexts().svid.leaf == certs.node.leaf  # the refused SVID is not used
        assert metric(node, FAILURES, reason="ttl_exceeded") == 1
        assert metric(node, PEER_FAILURES, reason="untrusted_chain") == 1
        with trio.fail_after(WAIT):
            try:
                rest = await dropped.receive_some()
            except trio.BrokenResourceError:
                rest = b""
        assert rest == b"", "the connection through the dropped root is still open"
        with trio.fail_after(WAIT):  # root 1's connection is untouched
            await stays.send_all(b"ping")
            assert await stays.receive_some() == b"ping"
        with pytest.raises(meshtls.PeerRejectedError), trio.fail_after(WAIT):
            async with dial(node, certs, certs.client2) as again:
                await again.receive_some()
        assert metric(node, PEER_FAILURES, reason="untrusted_chain") == 2
        async with dial(node, certs, certs.client1) as stream:
            assert stream.peer.chain[0] == certs.node.leaf  # what a peer is shown


async def test_an_svid_with_no_expiry_does_not_stop_rotation(
    tmp_path: Path, server: WorkloadApiServer, certs: Certs
) -> None:
    """notAfter 99991231235959Z overflows date arithmetic: refused, and rotation goes on."""
    forever = certs.ca.issue(NODE, not_after=NO_EXPIRY)
    async with meshtls.open_node(node_config(server.address, tmp_path)) as node:
        before = node.contexts()
        server.push(certs.state(forever))
        with trio.fail_after(WAIT):
            await node.changed()
        assert node.contexts() is before
        refused = metric(node, FAILURES, reason="ttl_exceeded") + metric(
            node, FAILURES, reason="malformed_certificate"
        )
        assert refused == 1

        server.push(certs.state(certs.node2))  # the rotation task is still there
        await wait_for_new_contexts(node, before)
        assert node.contexts().svid.leaf == certs.node2.leaf
        async with dial(node, certs, certs.client1) as stream:
            assert stream.peer.chain[0] == certs.node2.leaf


def _crl_listing(ca: CA, *serials: int) -> bytes:
    """A DER CRL of `ca` listing `serials`, fresh on the wall clock."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(datetime.now(UTC) - timedelta(minutes=1))
        .next_update(datetime.now(UTC) + timedelta(hours=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(datetime.now(UTC) - timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


async def _first_read(node: meshtls.Node, certs: Certs, issued: IssuedCertificate) -> None:
    async with dial(node, certs, issued) as stream:
        await stream.send_all(b"x")
        await stream.receive_some()


async def _until_broken(stream: meshtls.MeshStream) -> None:
    while True:
        assert await stream.receive_some() != b"", "a reset connection read as a clean end"


async def test_P_4_workload_api_crl_revokes_a_peer(
    tmp_path: Path, server: WorkloadApiServer, certs: Certs
) -> None:
    """A CRL the Workload API sends with our SVID reaches the node's revocation cache: a
    client it lists is refused as revoked; a CRL that arrives later resets a live
    connection of a client it lists, and the others go on."""
    bundle = [certs.ca.certificate, certs.ca2.certificate]
    listing = _crl_listing(certs.ca, certs.client1.leaf.serial_number)
    server.push(x509_response([svid_message(certs.node, bundle)], crls=[listing]))
    with trio.fail_after(3 * WAIT):
        async with meshtls.open_node(node_config(server.address, tmp_path)) as node:
            with pytest.raises(trio.BrokenResourceError):  # refused: seen on first read
                await _first_read(node, certs, certs.client1)
            assert metric(node, PEER_FAILURES, reason="revoked") == 1

            client3 = certs.ca.issue("spiffe://example.org/client3")
            async with dial(node, certs, client3) as live:
                later = _crl_listing(
                    certs.ca, certs.client1.leaf.serial_number, client3.leaf.serial_number
                )
                server.push(x509_response([svid_message(certs.node, bundle)], crls=[later]))
                with pytest.raises(trio.BrokenResourceError):  # reset, never a clean end
                    await _until_broken(live)
            assert metric(node, PEER_FAILURES, reason="revoked") == 2
