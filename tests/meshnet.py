"""Test helpers for streams: a small mesh of identities and a server in a nursery."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

import meshtls
from meshtls._stream import Observer
from meshtls.testing import CA


@dataclass
class Mesh:
    """example.org (ours) and other.org (federated), with a server and a client identity."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    ca: CA = field(init=False)
    other: CA = field(init=False)
    bundles: meshtls.BundleSet = field(init=False)
    server: meshtls.StaticSource = field(init=False)
    client: meshtls.StaticSource = field(init=False)

    def __post_init__(self) -> None:
        self.ca = CA("example.org", now=self.now)
        self.other = CA("other.org", now=self.now)
        self.bundles = self.ca.bundle_set(self.other)
        self.server = self.source("spiffe://example.org/server")
        self.client = self.source("spiffe://example.org/client", via_intermediate=True)

    def source(self, spiffe_id: str, *, via_intermediate: bool = False) -> meshtls.StaticSource:
        issuer = self.ca.intermediate() if via_intermediate else self.ca
        return meshtls.StaticSource(issuer.issue(spiffe_id).svid(), self.bundles)

    def clock(self) -> datetime:
        return self.now


async def start_server(
    nursery: trio.Nursery,
    handler: Callable[[meshtls.MeshStream], Awaitable[object]],
    *,
    source: meshtls.IdentitySource,
    authorize: meshtls.Authorizer | None = None,
    on_rejected: Callable[[meshtls.HandshakeError], object] | None = None,
    observer: Observer | None = None,
    handshake_timeout: float = 10.0,
    max_handshakes: int = 256,
    max_connections: int = 1024,
) -> int:
    """Start `meshtls.serve` on 127.0.0.1:0 and return its port."""
    serve = functools.partial(
        meshtls.serve,
        handler,
        0,
        host="127.0.0.1",
        source=source,
        authorize=authorize or meshtls.authorize_member_of("example.org"),
        on_rejected=on_rejected,
        observer=observer,
        handshake_timeout=handshake_timeout,
        max_handshakes=max_handshakes,
        max_connections=max_connections,
    )
    listeners: list[trio.SocketListener] = await nursery.start(serve)
    port: int = listeners[0].socket.getsockname()[1]
    return port


@asynccontextmanager
async def stream_pair(mesh: Mesh) -> AsyncIterator[tuple[meshtls.MeshStream, meshtls.MeshStream]]:
    """A connected (client, server) pair of MeshStreams over loopback."""
    server_side: trio.MemorySendChannel[meshtls.MeshStream]
    server_side, received = trio.open_memory_channel[meshtls.MeshStream](1)
    done = trio.Event()

    async def handler(stream: meshtls.MeshStream) -> None:
        await server_side.send(stream)
        await done.wait()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler, source=mesh.server)
        client = await meshtls.connect(
            "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
        )
        server = await received.receive()
        try:
            yield client, server
        finally:
            await client.aclose()
            done.set()
            nursery.cancel_scope.cancel()
