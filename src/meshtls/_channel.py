"""PLACEHOLDER until helper CHANNEL's `_channel` (h-channel) is merged: the shared
contract's names over a trivial framing (no WebSocket), so the pool can be built and
tested meanwhile. Replaced whole by the merge; nothing else may depend on its framing."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import trio

from ._errors import MeshError
from ._spiffeid import SpiffeId
from ._stream import MeshStream, OurRole

SendReason = Literal["unknown_peer", "unavailable", "closed", "timeout", "too_large"]


@dataclass(frozen=True, slots=True)
class Message:
    sender: SpiffeId
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSettings:
    max_message_size: int = 1 << 20
    queue_size: int = 64
    send_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 10.0
    upgrade_timeout: float = 10.0


class SendError(MeshError):
    def __init__(self, peer: str, reason: SendReason) -> None:
        super().__init__(f"send to {peer} failed: {reason}")
        self.peer = peer
        self.reason = reason


class Inbox:
    def __init__(self, size: int) -> None:
        self._size = size
        self._send, self._receive = trio.open_memory_channel[Message](size)
        self._subs: dict[SpiffeId, trio.MemorySendChannel[Message]] = {}

    async def deliver(self, message: Message) -> None:
        channel = self._subs.get(message.sender)
        await (channel or self._send).send(message)

    async def messages(self) -> AsyncIterator[Message]:
        async for message in self._receive:
            yield message

    @contextmanager
    def subscribe(self, peer: SpiffeId) -> Iterator[trio.MemoryReceiveChannel[Message]]:
        send, receive = trio.open_memory_channel[Message](self._size)
        self._subs[peer] = send
        try:
            yield receive
        finally:
            self._subs.pop(peer, None)
            send.close()


@dataclass(frozen=True, slots=True)
class LinkEnd:
    clean: bool
    reason: str


class ChannelObserver(Protocol):
    def message_sent(self, size: int) -> None: ...
    def message_received(self, size: int) -> None: ...
    def send_failed(self, reason: str) -> None: ...
    def link_ended(self, role: OurRole, end: LinkEnd) -> None: ...


_HEAD = struct.Struct("!BI")


class Link:
    def __init__(
        self,
        stream: MeshStream,
        role: OurRole,
        settings: ChannelSettings,
        observer: ChannelObserver | None,
    ) -> None:
        self.observer = observer
        self.peer = stream.peer.spiffe_id
        self.role = role
        self.stream = stream
        self._settings = settings
        self._lock = trio.Lock()
        self._sent = 0
        self._acked = 0
        self._acks = trio.Event()
        self._closed = False
        self._ended = trio.Event()

    async def send(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) > self._settings.max_message_size:
            raise SendError(str(self.peer), "too_large")
        if self._closed:
            raise SendError(str(self.peer), "closed")
        try:
            async with self._lock:
                await self.stream.send_all(_HEAD.pack(1, len(raw)) + raw)
                self._sent += 1
                mine = self._sent
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SendError(str(self.peer), "closed") from None
        while self._acked < mine:
            if self._closed:
                raise SendError(str(self.peer), "closed")
            await self._acks.wait()
        if self.observer is not None:
            self.observer.message_sent(len(raw))

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        await self._ended.wait()

    def _end(self) -> None:
        self._closed = True
        self._ended.set()
        self._acks.set()


async def _read(stream: MeshStream, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


async def run_link(
    stream: MeshStream,
    *,
    role: OurRole,
    inbox: Inbox,
    settings: ChannelSettings,
    observer: ChannelObserver | None = None,
    task_status: trio.TaskStatus[Link] = trio.TASK_STATUS_IGNORED,
) -> LinkEnd:
    link = Link(stream, role, settings, observer)
    task_status.started(link)
    end = LinkEnd(clean=False, reason="broken")
    try:
        while True:
            head = await _read(stream, _HEAD.size)
            if head is None:
                end = LinkEnd(clean=True, reason="closed")
                break
            kind, size = _HEAD.unpack(head)
            if kind == 2:
                link._acked += 1
                link._acks.set()
                link._acks = trio.Event()
                continue
            data = await _read(stream, size) if size else b""
            if data is None:
                break
            await inbox.deliver(Message(link.peer, data))
            if observer is not None:
                observer.message_received(len(data))
            async with link._lock:
                await stream.send_all(_HEAD.pack(2, 0))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        link._end()
        if not end.clean:
            stream.abort()
        else:
            stream.close_now()
    return end
