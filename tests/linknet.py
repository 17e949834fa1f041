"""Test helpers for message channels: a recording observer and a real link pair.

`link_pair` runs `meshtls.serve` with `run_link` in the server role (started through
`start_link`) and dials it with `meshtls.connect` plus `start_link` in the client role, over
loopback TLS 1.3 with verified SPIFFE peers on both sides (tests/meshnet.py's `Mesh`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import wsproto
import wsproto.events

import meshtls
from meshtls._channel import (
    ChannelSettings,
    Inbox,
    Link,
    LinkEnd,
    Message,
    UpgradeError,
    start_link,
)
from meshtls._stream import OurRole
from tests.meshnet import Mesh, start_server

CLIENT_ID = "spiffe://example.org/client"
SERVER_ID = "spiffe://example.org/server"


@dataclass
class Recorder:
    """A `ChannelObserver` that keeps every call, and wakes `ended` on each link end."""

    sent: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    ends: list[tuple[OurRole, LinkEnd]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def message_sent(self, size: int) -> None:
        self.sent.append(size)

    def message_received(self, size: int) -> None:
        self.received.append(size)

    def send_failed(self, reason: str) -> None:
        self.failed.append(reason)

    def link_ended(self, role: OurRole, end: LinkEnd) -> None:
        self.ends.append((role, end))
        self.changed.set()
        self.changed = trio.Event()

    async def wait_ends(self, count: int) -> list[tuple[OurRole, LinkEnd]]:
        """Wait until `count` links have ended; bounded by the caller's deadline."""
        while len(self.ends) < count:
            await self.changed.wait()
        return self.ends


@dataclass
class LinkServer:
    """`meshtls.serve` whose handler serves message links into `inbox`."""

    port: int
    inbox: Inbox
    observer: Recorder
    links: trio.MemoryReceiveChannel[Link]
    handled: list[meshtls.MeshStream]
    rejected: list[meshtls.HandshakeError]
    changed: list[trio.Event]  # the one current event, set on each handler run or rejection

    def _note(self) -> None:
        self.changed[0].set()
        self.changed[0] = trio.Event()

    async def wait_handled(self, count: int) -> None:
        while len(self.handled) < count:
            await self.changed[0].wait()

    async def wait_rejected(self, count: int) -> None:
        while len(self.rejected) < count:
            await self.changed[0].wait()


async def start_link_server(
    nursery: trio.Nursery,
    mesh: Mesh,
    *,
    settings: ChannelSettings | None = None,
    queue_size: int = 64,
    inbox: Inbox | None = None,
    authorize: meshtls.Authorizer | None = None,
) -> LinkServer:
    """A listener on 127.0.0.1:0 serving `run_link` (server role); each upgraded link is
    sent on ``links``; every verified stream the handler got is in ``handled``."""
    settings = settings or ChannelSettings()
    inbox = inbox or Inbox(queue_size)
    observer = Recorder()
    send_links, links = trio.open_memory_channel[Link](100)
    handled: list[meshtls.MeshStream] = []
    rejected: list[meshtls.HandshakeError] = []
    server: LinkServer | None = None

    def note() -> None:
        if server is not None:
            server._note()

    def on_rejected(error: meshtls.HandshakeError) -> None:
        rejected.append(error)
        note()

    async def handler(stream: meshtls.MeshStream) -> None:
        handled.append(stream)
        note()
        async with trio.open_nursery() as inner:
            try:
                link = await start_link(
                    inner, stream, role="server", inbox=inbox, settings=settings, observer=observer
                )
            except UpgradeError:
                return  # the observer has the end
            send_links.send_nowait(link)

    port = await start_server(
        nursery,
        handler,
        source=mesh.server,
        authorize=authorize,
        on_rejected=on_rejected,
    )
    server = LinkServer(port, inbox, observer, links, handled, rejected, [trio.Event()])
    return server


@dataclass
class Pair:
    """Both ends of one link, with their inboxes and observers."""

    client: Link
    server: Link
    client_inbox: Inbox
    server_inbox: Inbox
    client_observer: Recorder
    server_observer: Recorder


@asynccontextmanager
async def link_pair(
    mesh: Mesh,
    *,
    client_settings: ChannelSettings | None = None,
    server_settings: ChannelSettings | None = None,
    client_queue: int = 64,
    server_queue: int = 64,
    server_inbox: Inbox | None = None,
) -> AsyncIterator[Pair]:
    """A client link dialed to a link server, both upgraded; cancelled on exit."""
    async with trio.open_nursery() as nursery:
        server = await start_link_server(
            nursery, mesh, settings=server_settings, queue_size=server_queue, inbox=server_inbox
        )
        stream = await meshtls.connect(
            "127.0.0.1", server.port, source=mesh.client, authorize=meshtls.authorize_any()
        )
        client_inbox = Inbox(client_queue)
        client_observer = Recorder()
        client = await start_link(
            nursery,
            stream,
            role="client",
            inbox=client_inbox,
            settings=client_settings or ChannelSettings(),
            observer=client_observer,
        )
        server_link = await server.links.receive()
        try:
            yield Pair(
                client,
                server_link,
                client_inbox,
                server.inbox,
                client_observer,
                server.observer,
            )
        finally:
            nursery.cancel_scope.cancel()


class WatchedInbox(Inbox):
    """An inbox that records the most messages it ever held at once."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.peak = 0

    async def deliver(self, message: Message) -> None:
        await super().deliver(message)
        self.peak = max(self.peak, self.queued)


async def silent_websocket_server(stream: meshtls.MeshStream) -> None:
    """Accept a WebSocket upgrade (wsproto, by hand), then never read or write again: a
    peer whose reader is stuck."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    while True:
        data = await stream.receive_some()
        if not data:
            return
        ws.receive_data(data)
        for item in ws.events():
            if isinstance(item, wsproto.events.Request):
                await stream.send_all(ws.send(wsproto.events.AcceptConnection()))
                await trio.sleep_forever()
