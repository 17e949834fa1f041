"""MeshStream as a trio stream: trio's generic half-closeable stream checks, and basics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

import meshtls

from .meshnet import Mesh, start_server


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


async def test_check_half_closeable_stream() -> None:
    mesh = Mesh()
    pairs: list[object] = []

    async def maker() -> tuple[meshtls.MeshStream, meshtls.MeshStream]:
        manager = stream_pair(mesh)
        pairs.append(manager)
        return await manager.__aenter__()

    try:
        await trio.testing.check_half_closeable_stream(maker, None)
    finally:
        for manager in reversed(pairs):
            await manager.__aexit__(None, None, None)  # type: ignore[attr-defined]


async def test_peers_are_verified_on_both_sides() -> None:
    mesh = Mesh()
    async with stream_pair(mesh) as (client, server):
        assert str(client.peer.spiffe_id) == "spiffe://example.org/server"
        assert str(server.peer.spiffe_id) == "spiffe://example.org/client"
        assert len(server.peer.chain) == 3  # leaf, intermediate, root
        await client.send_all(b"ping")
        assert await server.receive_some() == b"ping"
