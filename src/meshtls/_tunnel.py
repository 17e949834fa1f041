"""Tunnels, like ghostunnel: `expose` (mTLS in, plaintext out) and `forward` (the reverse).

Theory of operation: a tunnel joins two streams and copies each direction in its own
task. A copy moves one chunk at a time, so a slow reader slows the writer at the
other end (backpressure: no unbounded buffer anywhere). When one side ends its
direction, the copy half-closes the other side's matching direction and the opposite
direction keeps flowing, so request/response protocols that half-close work. When
both directions are done, or either breaks, both streams are closed.

Each listener has its own cap on concurrent connections; a connection over the cap is
closed at once and logged (the node counts it). The mTLS side is a `MeshStream`, so
its peer has passed verification and the listener's own authorizer before one byte is
copied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import NoReturn

import trio

from ._authorize import Authorizer, authorize_id
from ._errors import HandshakeError
from ._policy import ValidationPolicy
from ._sources import IdentitySource
from ._spiffeid import SpiffeId
from ._stream import MeshStream, Observer, OurRole, connect, serve

Track = Callable[[MeshStream, OurRole], AbstractContextManager[None]]


@contextmanager
def _untracked(stream: MeshStream, role: OurRole) -> Iterator[None]:
    yield


logger = logging.getLogger("meshtls")

COPY_SIZE = 65536


async def _copy(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
    """Copy until `source` ends, then half-close `sink` (or close it if it cannot)."""
    while True:
        data = await source.receive_some(COPY_SIZE)
        if not data:
            break
        await sink.send_all(data)
    if isinstance(sink, trio.abc.HalfCloseableStream):
        await sink.send_eof()
    else:
        await sink.aclose()


async def join(left: trio.abc.HalfCloseableStream, right: trio.abc.HalfCloseableStream) -> None:
    """Copy both ways until both directions end; then close both. Owns both streams.

    A broken or closed stream on either side ends the tunnel (both are closed).
    """
    async with left, right:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_copy, left, right)
                nursery.start_soon(_copy, right, left)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            logger.info("tunnel ended early error=%r", group.exceptions[0])


class _Cap:
    """A cap on concurrent connections that refuses, rather than queues, when full."""

    __slots__ = ("_active", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a connection cap must be >= 1")
        self.limit = limit
        self._active = 0

    def try_take(self) -> bool:
        if self._active >= self.limit:
            return False
        self._active += 1
        return True

    def give_back(self) -> None:
        self._active -= 1


async def expose(
    listen: tuple[str, int],
    backend: tuple[str, int],
    *,
    source: IdentitySource,
    authorize: Authorizer,
    policy: ValidationPolicy | None = None,
    max_connections: int = 1024,
    handshake_timeout: float = 10.0,
    on_rejected: Callable[[HandshakeError], object] | None = None,
    observer: Observer | None = None,
    track: Track = _untracked,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """mTLS in on `listen`, plaintext TCP out to `backend`, for peers `authorize` accepts.

    ``started()`` gives the listeners. A backend that refuses the connection closes the
    peer's stream (logged). `track` wraps each tunnel (the node's deadlines). Runs until
    cancelled.
    """
    cap = _Cap(max_connections)
    backend_host, backend_port = backend

    async def tunnel(stream: MeshStream) -> None:
        if not cap.try_take():
            logger.warning(
                "expose at its connection cap, closing peer=%s limit=%d",
                stream.peer.spiffe_id,
                cap.limit,
            )
            return
        try:
            try:
                upstream = await trio.open_tcp_stream(backend_host, backend_port)
            except OSError as exc:
                logger.error(
                    "expose backend unreachable backend=%s:%d error=%r",
                    backend_host,
                    backend_port,
                    exc,
                )
                return
            with track(stream, "server"):
                await join(stream, upstream)  # closing twice is fine: serve closes it too
        finally:
            cap.give_back()

    host, port = listen
    await serve(
        tunnel,
        port,
        host=host,
        source=source,
        authorize=authorize,
        policy=policy,
        handshake_timeout=handshake_timeout,
        on_rejected=on_rejected,
        observer=observer,
        task_status=task_status,
    )


async def forward(
    listen: tuple[str, int],
    peer: tuple[str, int],
    *,
    expect: SpiffeId | str,
    source: IdentitySource,
    policy: ValidationPolicy | None = None,
    max_connections: int = 1024,
    observer: Observer | None = None,
    track: Track = _untracked,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Plaintext in on `listen`, mTLS out to `peer`, which must prove it is `expect`.

    A peer that fails verification or is not `expect` closes the plaintext client's
    connection (logged by `connect`). ``started()`` gives the listeners.
    """
    cap = _Cap(max_connections)
    authorize = authorize_id(expect)
    peer_host, peer_port = peer

    async def tunnel(client: trio.SocketStream) -> None:
        if not cap.try_take():
            logger.warning("forward at its connection cap, closing limit=%d", cap.limit)
            await client.aclose()
            return
        try:
            try:
                upstream = await connect(
                    peer_host,
                    peer_port,
                    source=source,
                    authorize=authorize,
                    policy=policy,
                    observer=observer,
                )
            except (HandshakeError, OSError) as exc:
                logger.warning("forward could not reach its peer error=%r", exc)
                await client.aclose()
                return
            with track(upstream, "client"):
                await join(client, upstream)
        finally:
            cap.give_back()

    host, port = listen
    await trio.serve_tcp(tunnel, port, host=host, task_status=task_status)
    raise AssertionError("unreachable")  # pragma: no cover
