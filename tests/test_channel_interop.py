"""Interop: the `websockets` library (an independent WebSocket implementation, with the
stdlib's ssl for TLS 1.3) talks to `run_link`'s server role over mutual TLS.

The client runs in a thread (websockets.sync.client), bounded by its own timeouts.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import cast

import pytest
import trio
import websockets.exceptions
import websockets.sync.client
from websockets.sync.client import ClientConnection

import meshtls
from meshtls._channel import LinkEnd
from meshtls._node import open_node
from meshtls.testing import CA
from tests.linknet import LinkServer, start_link_server
from tests.meshnet import Mesh
from tests.test_mesh_pool import B, World
from tests.test_node import port, sample, scrape

WS_CLIENT = "spiffe://example.org/ws-client"
TIMEOUT = 5.0


def client_context(
    tmp_path: Path, mesh: Mesh, issuer: CA | None, spiffe_id: str = WS_CLIENT
) -> ssl.SSLContext:
    """TLS 1.3 only, the mesh's root as the only trust anchor, and a client certificate
    from `issuer` (none when None). A SPIFFE server has no DNS name: the chain is verified,
    the host name is not."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(mesh.ca.bundle_pem)
    context.load_verify_locations(bundle)
    if issuer is not None:
        issued = issuer.issue(spiffe_id)
        cert, key = tmp_path / "client.pem", tmp_path / "client.key"
        cert.write_bytes(issued.chain_pem)
        key.write_bytes(issued.key_pem)
        context.load_cert_chain(cert, key)
    return context


def connect(port: int, context: ssl.SSLContext, path: str = "/mesh") -> ClientConnection:
    return websockets.sync.client.connect(
        f"wss://127.0.0.1:{port}{path}",
        ssl=context,
        proxy=None,
        compression=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
    )


async def test_websockets_exchanges_messages_both_ways_with_the_verified_id(
    tmp_path: Path,
) -> None:
    mesh = Mesh()
    context = client_context(tmp_path, mesh, mesh.ca)
    received: list[bytes | str] = []

    closed: list[int | None] = []

    def client(port: int) -> None:
        with connect(port, context) as ws:
            ws.send(b"\x00binary\xff")
            ws.send("text \u00e9")  # a text frame
            try:
                while True:
                    received.append(ws.recv(timeout=TIMEOUT))
            except websockets.exceptions.ConnectionClosedOK as exc:
                closed.append(exc.rcvd.code if exc.rcvd else None)

    with trio.fail_after(3 * TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(nursery, mesh)
            nursery.start_soon(trio.to_thread.run_sync, client, server.port)
            link = await server.links.receive()
            messages = aiter(server.inbox.messages())
            first, second = await anext(messages), await anext(messages)
            sender = meshtls.SpiffeId.parse(WS_CLIENT)
            assert first == meshtls.Message(sender, b"\x00binary\xff")
            assert second == meshtls.Message(sender, "text \u00e9".encode())
            assert link.peer == sender
            await link.send(b"binary back")  # returns once websockets answered our ping
            await link.send("text back")
            await link.aclose()  # a close handshake with websockets
            assert link.end == LinkEnd(True, "closed", "we closed (1000)")
            nursery.cancel_scope.cancel()
    assert received == [b"binary back", b"text back"]  # every frame we send is binary
    assert closed == [1000]


async def test_a_send_is_acknowledged_even_when_websockets_closes_on_reading_it(
    tmp_path: Path,
) -> None:
    """The message and its ping leave in one TLS record, so websockets answers the ping
    before its application can close on reading the message (else that send would raise
    `closed` although the message arrived). Twenty rounds: the race is not left to luck."""
    mesh = Mesh()
    context = client_context(tmp_path, mesh, mesh.ca)

    def client(port: int) -> None:
        with connect(port, context) as ws:
            ws.recv(timeout=TIMEOUT)
            ws.recv(timeout=TIMEOUT)
        # and close at once

    with trio.fail_after(6 * TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(nursery, mesh)
            for _ in range(20):
                nursery.start_soon(trio.to_thread.run_sync, client, server.port)
                link = await server.links.receive()
                await link.send(b"one")
                await link.send(b"two")  # would raise SendError("closed") if it lost the race
                await link.wait_closed()
                assert link.end is not None
                assert link.end.reason == "closed"
            nursery.cancel_scope.cancel()


async def test_websockets_asking_for_another_path_gets_404(tmp_path: Path) -> None:
    mesh = Mesh()
    context = client_context(tmp_path, mesh, mesh.ca)
    failures: list[websockets.exceptions.InvalidStatus] = []

    def client(port: int) -> None:
        try:
            connect(port, context, "/elsewhere").close()
        except websockets.exceptions.InvalidStatus as exc:
            failures.append(exc)

    with trio.fail_after(3 * TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(nursery, mesh)
            await trio.to_thread.run_sync(client, server.port)
            ends = await server.observer.wait_ends(1)
            nursery.cancel_scope.cancel()
    assert [f.response.status_code for f in failures] == [404]
    assert [end.reason for _, end in ends] == ["wrong_path"]


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        pytest.param(None, "no_client_certificate", id="no-certificate"),
        pytest.param("other.org", "unauthorized", id="federated-other-domain"),
        pytest.param("evil.org", "unknown_trust_domain", id="untrusted-domain"),
    ],
)
async def test_websockets_without_an_acceptable_certificate_is_refused_before_any_websocket_byte(
    tmp_path: Path, who: str | None, reason: str
) -> None:
    """No certificate, one from a federated domain the listener does not authorize, or
    one from a domain nobody trusts: the TLS layer refuses the peer, the WebSocket handler
    never runs, the reason is counted, and websockets gets an error, not an HTTP answer."""
    mesh = Mesh()
    issuer = {None: None, "other.org": mesh.other, "evil.org": CA("evil.org", now=mesh.now)}[who]
    spiffe_id = f"spiffe://{who}/ws-client" if who else WS_CLIENT
    context = client_context(tmp_path, mesh, issuer, spiffe_id)
    errors: list[BaseException] = []

    def client(port: int) -> None:
        try:
            connect(port, context).close()
        except Exception as exc:
            errors.append(exc)

    with trio.fail_after(3 * TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: LinkServer = await start_link_server(nursery, mesh)
            await trio.to_thread.run_sync(client, server.port)
            await server.wait_rejected(1)
            nursery.cancel_scope.cancel()
    assert len(errors) == 1
    assert not isinstance(errors[0], websockets.exceptions.InvalidStatus)  # no HTTP answer
    assert [e.reason for e in server.rejected] == [reason]
    assert server.handled == []  # the handler never ran
    assert server.observer.ends == []
    assert server.inbox.queued == 0


# ---------------------------------------------------------------- a real node


async def test_websockets_talks_to_a_real_nodes_mesh_listener(tmp_path: Path) -> None:
    """`open_node` without a handler: its mesh listener speaks message channels. websockets
    sends to the node, which answers over the same (inbound) link with `node.send`."""
    world = World(tmp_path)
    context = client_context(tmp_path, _as_mesh(world), world.ca)
    received: list[bytes | str] = []
    acknowledged = threading.Event()

    def client(port: int) -> None:
        with connect(port, context) as ws:
            ws.send(b"to the node")
            ws.send("as text \u00e9")
            received.append(ws.recv(timeout=TIMEOUT))
            # Close only once the node's send returned: a close may overtake the pong that
            # acknowledges the message, and then that send would raise `closed`.
            assert acknowledged.wait(TIMEOUT)

    with trio.fail_after(4 * TIMEOUT):
        async with open_node(world.config("b", B)) as node, trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, client, port(node, "mesh"))
            messages = node.messages()
            first, second = await anext(messages), await anext(messages)
            sender = meshtls.SpiffeId.parse(WS_CLIENT)
            assert (first.sender, first.data) == (sender, b"to the node")
            assert (second.sender, second.data) == (sender, "as text \u00e9".encode())
            await node.send(WS_CLIENT, b"from the node")  # over the client's own link
            acknowledged.set()
            text = await scrape(node)
    assert received == [b"from the node"]
    assert sample(text, "meshtls_messages_received_total") == 2
    assert sample(text, "meshtls_messages_sent_total") == 1


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        pytest.param(None, "no_client_certificate", id="no-certificate"),
        pytest.param("other.org", "unknown_trust_domain", id="another-trust-domain"),
    ],
)
async def test_a_real_node_refuses_websockets_before_any_websocket_byte(
    tmp_path: Path, who: str | None, reason: str
) -> None:
    world = World(tmp_path)
    issuer = None if who is None else CA(who, now=world.now)
    spiffe_id = f"spiffe://{who}/ws-client" if who else WS_CLIENT
    context = client_context(tmp_path, _as_mesh(world), issuer, spiffe_id)
    errors: list[Exception] = []

    def client(port: int) -> None:
        try:
            connect(port, context).close()
        except Exception as exc:
            errors.append(exc)

    with trio.fail_after(4 * TIMEOUT):
        async with open_node(world.config("b", B)) as node:
            await trio.to_thread.run_sync(client, port(node, "mesh"))
            text = await scrape(node)
            while f'reason="{reason}"' not in text:
                await trio.sleep(0.01)
                text = await scrape(node)
    assert len(errors) == 1
    assert not isinstance(errors[0], websockets.exceptions.InvalidStatus)  # no HTTP answer
    assert sample(text, "meshtls_peer_verification_failures_total", reason=reason) == 1
    ended = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("meshtls_channel_links_ended_total{")
    ]
    assert sum(ended) == 0  # no link began: the handler never ran
    assert sample(text, "meshtls_messages_received_total") == 0


class _Roots:
    """What `client_context` needs of a mesh: a CA whose root the client trusts."""

    def __init__(self, ca: CA) -> None:
        self.ca = ca


def _as_mesh(world: World) -> Mesh:
    return cast("Mesh", _Roots(world.ca))
