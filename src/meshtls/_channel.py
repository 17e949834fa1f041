"""Message channels: one WebSocket link (trio-websocket) over one verified `MeshStream`.

Theory of operation
-------------------
A *link* is one WebSocket connection on the path ``/mesh`` over a stream whose peer has
already passed verification and authorization (`meshtls.connect`/`meshtls.serve`). Every
message is one binary frame; a text frame from a foreign client arrives as its UTF-8 bytes.
Each incoming message becomes a `Message` tagged with the peer's *verified* SPIFFE ID (the
stream's, never anything the peer wrote) and goes into the node's `Inbox`.

`run_link` owns the stream and one nursery of four tasks, and nothing it runs raises
into that nursery (so a peer's fault never becomes an exception group):

- the *reader* (trio-websocket's, started through `_Tasks` so that it runs under
  `Link._guard_reader`): reads frames, answers pings, hands each message over. Its
  message queue has size 0, so the hand-over completes only when the *forwarder* takes
  the message;
- the *forwarder*: moves each message into the `Inbox` (`Inbox.deliver` waits while the
  inbox is full). While it waits, the reader waits, the socket is not read, and the peer's
  sends block: that is the backpressure. At most one message per link is held between
  the two queues;
- the *keepalive*: after `keepalive_interval` seconds without a byte from the peer it
  sends a ping; no byte within `keepalive_timeout` ends the link (``keepalive_timeout``).
  Time while our own forwarder waits on a full inbox does not count against the peer
  (our reader cannot read its answer then), and such a stalled side keeps pinging, which
  tells the peer that it is alive, only slow;
- the *flusher*: sends a message frame that a cancelled `Link.send` left held back
  (see Acknowledgement below).

The body of `run_link` does the upgrade (client: ``GET /mesh``; server: only ``/mesh``,
else 404), bounded by `upgrade_timeout`, calls ``task_status.started(link)``, then waits
until something ends the link: the reader ends (the peer closed, the stream broke, a
protocol error, an oversized message: trio-websocket sends close 1009), the keepalive gives
up, a send is interrupted part-way through a frame (the stream is broken), or the owner
calls `Link.aclose` (close 1000, the close handshake bounded by `keepalive_timeout`). It
then decides one `LinkEnd`, wakes every waiting `Link.send` with ``SendError("closed")``,
closes the stream, tells the observer, and returns once the forwarder has queued the one
message it may hold (it was acknowledged already). The stream is closed gracefully when
the peer was told why the link ended (a WebSocket close frame or an HTTP error
answer), and reset otherwise (timeouts, a broken stream, a protocol error trio-websocket
sent no close frame for, our own bug, cancellation), so a cut link never reads as a clean
end.

Acknowledgement: `Link.send` writes the message, then a ping, and returns when the pong
arrives. The peer's reader handles frames in order and answers a ping only after it
handed over the messages before it (to the forwarder, which queues it), so a pong means
the peer node holds the message. The message and its ping leave in one TLS record
(`_Transport.corked`): a peer reads them together, so one that closes as soon as it reads
the message has answered the ping already. A send that does not return normally raised:
the message may or may not have arrived (at-least-once for a caller that retries).

Any exception from serving one link ends that link with ``internal_error`` (logged with its
traceback); `run_link` returns a `LinkEnd` for every fault of the peer and raises only
when it is cancelled (then the link ends as ``cancelled``, or with the reason its owner
put on the stream, such as ``revoked``, and the stream is reset).
"""

from __future__ import annotations

import itertools
import logging
import math
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal, Protocol, cast, get_args

import h11
import trio
import trio_websocket
import wsproto.utilities

from ._boundary import describe_error, printable
from ._errors import MeshError, SendError, SendFailure
from ._logs import event, throttled
from ._spiffeid import SpiffeId
from ._stream import MeshStream, OurRole

logger = logging.getLogger("meshtls")

#: The one URL path of the mesh's WebSocket endpoint.
PATH: Final = "/mesh"

LinkEndReason = Literal[
    "closed",  # a WebSocket close 1000/1001 from either side, or our own aclose
    "message_too_large",  # close 1009 from either side
    "protocol_error",  # the peer broke the WebSocket protocol (or said we did: 1002/1003/1007)
    "peer_error",  # the peer closed with another code (1011, ...)
    "broken",  # the stream failed or ended without a WebSocket close
    "keepalive_timeout",  # the peer did not answer a ping in time
    "close_timeout",  # our close got no answer in time
    "not_websocket",  # server: not a WebSocket upgrade (answered 400); client: no upgrade answer
    "wrong_path",  # server: an upgrade for another path (answered 404)
    "upgrade_rejected",  # client: the server answered the upgrade with an HTTP error
    "upgrade_timeout",  # no complete upgrade within upgrade_timeout
    "internal_error",  # a bug while serving this link (logged with its traceback)
    "cancelled",  # the owner cancelled run_link
]
#: Every reason `run_link` decides itself (a cancelled link may carry its stream's reason).
LINK_END_REASONS: Final[tuple[LinkEndReason, ...]] = get_args(LinkEndReason)
#: Ends after which the peer was told why, so the stream closes gracefully (else: reset).
_TOLD: Final = frozenset(
    {
        "closed",
        "message_too_large",
        "peer_error",
        "not_websocket",
        "wrong_path",
        "upgrade_rejected",
    }
)
_CLOSE_REASONS: Final[dict[int, LinkEndReason]] = {
    1000: "closed",
    1001: "closed",
    1002: "protocol_error",
    1003: "protocol_error",
    1007: "protocol_error",
    1009: "message_too_large",
}
_ABNORMAL_CLOSURE: Final = 1006
#: Close codes trio-websocket ends with without sending a close frame (wsproto found a
#: protocol error; 1006: the stream failed): the stream is reset.
_RESET_CODES: Final = frozenset({1002, 1003, 1006, 1007})


@dataclass(frozen=True, slots=True)
class Message:
    """One message from a peer: ``sender`` is the peer's verified SPIFFE ID; ``data`` the
    bytes (a WebSocket text frame arrives as its UTF-8 bytes)."""

    sender: SpiffeId
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSettings:
    """The bounds of one link. Sizes in bytes, times in seconds. (A node's inbox size and
    send timeout are the node's: `Inbox` and ``[mesh]``, not a link's.)"""

    max_message_size: int = 1 << 20  # larger: send raises SendError("too_large"); receive: 1009
    keepalive_interval: float = 15.0  # idle seconds before a keepalive ping
    keepalive_timeout: float = 10.0  # a ping unanswered this long ends the link
    upgrade_timeout: float = 10.0  # the WebSocket upgrade after the TLS handshake

    def __post_init__(self) -> None:
        if self.max_message_size < 1:
            raise ValueError("max_message_size must be at least 1 byte")
        for name in ("keepalive_interval", "keepalive_timeout", "upgrade_timeout"):
            value: float = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class LinkEnd:
    """Why a link ended: ``clean`` when it was closed on purpose (a WebSocket close 1000 or
    1001 from either side); ``reason`` one of `LINK_END_REASONS` (or, for a link its owner
    cut, the reason the owner put on the stream, such as ``revoked``); ``detail`` one line."""

    clean: bool
    reason: str
    detail: str | None = None


class ChannelObserver(Protocol):
    """What a node counts. Called synchronously from the link's tasks; must not block.
    An exception from it is logged and ignored."""

    def message_sent(self, size: int) -> None: ...

    def message_received(self, size: int) -> None: ...

    def send_failed(self, reason: str) -> None: ...

    def link_ended(self, role: OurRole, end: LinkEnd) -> None: ...


class UpgradeError(MeshError):
    """`start_link`: the link ended before its WebSocket upgrade completed (``end`` says
    why; the stream is closed already)."""

    def __init__(self, end: LinkEnd) -> None:
        super().__init__(f"{end.reason}: {end.detail}" if end.detail else end.reason)
        self.end = end


# ---------------------------------------------------------------- the inbox


class _Messages:
    """`Inbox.messages`: every unclaimed message, until the inbox is closed."""

    __slots__ = ("_receive",)

    def __init__(self, receive: trio.MemoryReceiveChannel[Message]) -> None:
        self._receive = receive

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class Inbox:
    """A node's bounded queue of incoming messages, with per-peer channels.

    Holds at most `size` messages in the shared queue and `size` in each open channel;
    `deliver` waits while the queue it needs is full (the backpressure that reaches the
    sender). `close` ends `messages` (after what is queued) and refuses further deliveries.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an inbox holds at least 1 message")
        self.size = size
        self._send, self._receive = trio.open_memory_channel[Message](size)
        self._channels: dict[SpiffeId, trio.MemorySendChannel[Message]] = {}
        self._receivers: dict[SpiffeId, trio.MemoryReceiveChannel[Message]] = {}

    @property
    def queued(self) -> int:
        """Messages waiting now: the shared queue plus every open channel."""
        channels = sum(r.statistics().current_buffer_used for r in self._receivers.values())
        return self._receive.statistics().current_buffer_used + channels

    async def deliver(self, message: Message) -> None:
        """Queue `message` for its sender's open channel, else for `messages`; wait while
        that queue is full. Raises `trio.ClosedResourceError` once the inbox is closed."""
        channel = self._channels.get(message.sender)
        if channel is not None:
            try:
                await channel.send(message)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the channel closed while we waited: the shared queue takes it
            else:
                return
        await self._send.send(message)

    def deliver_nowait(self, message: Message) -> bool:
        """Queue `message` if there is room now; whether it was queued."""
        channel = self._channels.get(message.sender)
        try:
            (channel or self._send).send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def messages(self) -> _Messages:
        """An async iterator over every message no open channel claims, in arrival order.
        Several consumers may iterate at once (each message goes to one). It ends when
        the inbox is closed and drained."""
        return _Messages(self._receive)

    @contextmanager
    def subscribe(self, peer: SpiffeId) -> Iterator[trio.MemoryReceiveChannel[Message]]:
        """While open, messages from `peer` go to the channel given instead of `messages`.

        One channel per peer at a time (`trio.BusyResourceError` otherwise). Messages left
        unread in it when it closes go back to the shared queue as far as it has room; the
        rest are dropped with a warning (the caller closed a channel it had not read).
        """
        if peer in self._channels:
            raise trio.BusyResourceError(f"a channel for {peer} is open already")
        send, receive = trio.open_memory_channel[Message](self.size)
        self._channels[peer] = send
        self._receivers[peer] = receive
        try:
            yield receive
        finally:
            del self._channels[peer], self._receivers[peer]
            send.close()  # wakes a delivery waiting on it: it goes to the shared queue
            dropped = 0
            try:
                while True:
                    message = receive.receive_nowait()
                    if not self.deliver_nowait(message):
                        dropped += 1
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                pass
            receive.close()
            if dropped:
                event(
                    logger,
                    logging.WARNING,
                    "messages dropped: a channel closed unread and the inbox was full",
                    spiffe_id=str(peer),
                    dropped=dropped,
                )

    def close(self) -> None:
        """Refuse further deliveries; `messages` and every open channel end once what is
        queued in them was read."""
        self._send.close()
        for channel in self._channels.values():
            channel.close()


# ---------------------------------------------------------------- the link


class _Transport(trio.abc.Stream):
    """The `MeshStream` as trio-websocket sees it. Records when bytes last came in and
    what ended the stream; a send interrupted part-way through a frame ends the link.

    `corked` holds a task's next write back until its write after: a message and the ping
    that acknowledges it leave as one TLS record, so the peer reads them together (and a
    peer that closes on reading the message has answered the ping already). Any other
    write sends what is held first; bytes still held when the sender gives up are sent
    by `Link._flusher`. Writes are serialized by the transport's own lock.
    """

    def __init__(self, link: Link) -> None:
        self._link = link
        self._stream = link.stream
        self._lock = trio.StrictFIFOLock()
        self._held = b""
        self._cork: trio.lowlevel.Task | None = None
        self.flush_wanted = trio.Event()
        self.last_received = trio.current_time()
        self.error: BaseException | None = None
        self.eof = False
        self.closed_by_websocket = False

    @contextmanager
    def corked(self) -> Iterator[None]:
        """Hold the current task's next write until its following one."""
        task = trio.lowlevel.current_task()
        self._cork = task
        try:
            yield
        finally:
            if self._cork is task:
                self._cork = None
            if self._held:
                self.flush_wanted.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._cork is not None and self._cork is trio.lowlevel.current_task():
            self._cork = None
            self._held += data  # it leaves with the next write (no checkpoint: the caller
            return  # took trio-websocket's lock, which was one)
        await self._acquire()
        try:
            if self._held:
                data, self._held = self._held + data, b""
            await self._write(data)
        finally:
            self._lock.release()

    async def flush(self) -> None:
        """Send the bytes held back, if any."""
        await self._acquire()
        try:
            if self._held:
                data, self._held = self._held, b""
                await self._write(data)
        finally:
            self._lock.release()

    async def _acquire(self) -> None:
        """The write lock, without a checkpoint when it is free (the write is one)."""
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except trio.ClosedResourceError:
            raise
        except BaseException as exc:
            if self._stream.broken:  # cut part-way (cancelled), or the peer went away
                self.error = self.error or exc
                why = "a send was interrupted part-way through a frame"
                detail = why if isinstance(exc, trio.Cancelled) else describe_error(exc)
                self._link._decide(LinkEnd(False, "broken", detail))
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            if self.closed_by_websocket:  # a receive that raced our own close
                raise trio.ClosedResourceError("closed by the WebSocket layer") from exc
            self.error = self.error or exc
            raise
        if data:
            self.last_received = trio.current_time()
        else:
            self.eof = True
        return data

    async def aclose(self) -> None:
        """trio-websocket closes after a close handshake or an HTTP refusal (the peer was
        told why: gracefully), or after a protocol error it sent no close frame for, or
        once the link ended uncleanly (then with a reset)."""
        self.closed_by_websocket = True
        decided = self._link._verdict
        ws = self._link._ws
        reason = ws.closed if ws is not None else None
        if (decided is not None and decided.reason not in _TOLD) or (
            reason is not None and reason.code in _RESET_CODES
        ):
            self._stream.abort()
        else:
            self._stream.close_now()
        await trio.lowlevel.checkpoint()


class _Tasks:
    """The nursery handed to trio-websocket: its reader runs under `Link._guard_reader`,
    so nothing it raises reaches the link's nursery."""

    def __init__(self, nursery: trio.Nursery, link: Link) -> None:
        self._nursery = nursery
        self._link = link

    def start_soon(self, task: Callable[[], Awaitable[object]], *args: object) -> None:
        if args:  # trio-websocket starts only its reader, without arguments
            raise TypeError("unexpected task arguments")
        self._nursery.start_soon(self._link._guard_reader, task)


class Link:
    """One WebSocket connection over one verified `MeshStream`; made by `run_link`.

    ``peer`` is the stream's verified SPIFFE ID, ``role`` ours on the stream. `send` is safe
    from several tasks at once. `run_link` owns the stream: do not read or write it.
    """

    def __init__(
        self,
        stream: MeshStream,
        role: OurRole,
        settings: ChannelSettings,
        observer: ChannelObserver | None,
    ) -> None:
        self.stream = stream
        self.peer: SpiffeId = stream.peer.spiffe_id
        self.role: OurRole = role
        self._settings = settings
        self._observer = observer
        self._transport = _Transport(self)
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._verdict: LinkEnd | None = None  # decided, not yet acted on
        self._fault: LinkEnd | None = None  # the reader's own failure
        self._end: LinkEnd | None = None  # acted on: the link is closed
        self._wake = trio.Event()
        self._closed = trio.Event()
        #: Set when `run_link` has returned: the forwarder has queued what it held.
        self._finished = trio.Event()
        self._reader_done = trio.Event()
        self._reader_scope = trio.CancelScope()
        self._keepalive_scope = trio.CancelScope()
        self._flusher_scope = trio.CancelScope()
        self._until_reader_ends: set[trio.CancelScope] = set()
        self._sending: set[trio.CancelScope] = set()
        self._close_code: int | None = None
        self._pings = itertools.count()
        self._delivering = False
        self._last_delivered = -math.inf

    def __repr__(self) -> str:
        return f"<Link peer={self.peer} role={self.role} end={self._end}>"

    @property
    def closed(self) -> bool:
        """Whether the link takes no more sends (they raise ``SendError("closed")``): it
        has ended, or its end is under way (a close handshake, say)."""
        return self._end is not None or self._verdict is not None or self._close_code is not None

    @property
    def end(self) -> LinkEnd | None:
        """Why the link ended; None while it is open."""
        return self._end

    async def wait_closed(self) -> None:
        """Wait until the link has ended."""
        await self._closed.wait()

    async def aclose(self) -> None:
        """End the link on purpose: a WebSocket close (1000); returns once `run_link` has
        returned (every acknowledged message queued in the inbox). The close handshake is
        bounded by ``keepalive_timeout`` (then ``close_timeout``); the last hand-over waits
        for room in the inbox, so an owner that must stop bounds this call."""
        if self._end is None:
            self._request_close(1000)
        await self._finished.wait()  # not only `_closed`: the message the forwarder holds was
        # acknowledged already, so its owner must not cancel `run_link` before it is queued

    async def send(self, data: bytes | str) -> None:
        """Send one message (a str as its UTF-8 bytes) and wait for the peer node to have
        queued it (a ping after it, answered by its pong).

        Raises `SendError`: ``too_large`` before sending anything; ``closed`` when the link
        ends first (the message may or may not have arrived). Cancelled while waiting for
        the acknowledgement, the link stays open; cancelled part-way through writing the
        frame, the link ends (``broken``): the rest of the stream cannot be trusted.
        """
        payload = data.encode() if isinstance(data, str) else bytes(data)
        limit = self._settings.max_message_size
        if len(payload) > limit:
            raise self._failed("too_large", f"{len(payload)} bytes, over max_message_size {limit}")
        ws = self._ws
        if ws is None or self._verdict is not None or self._close_code is not None:
            raise self._failed("closed", self._why_closed())
        with trio.CancelScope() as scope:
            self._sending.add(scope)
            try:
                with self._transport.corked():  # the message and its ping: one record
                    await ws.send_message(payload)
                    await ws.ping(self._next_ping())
            except (trio_websocket.ConnectionClosed, wsproto.utilities.LocalProtocolError):
                raise self._failed("closed", self._why_closed()) from None
            finally:
                self._sending.discard(scope)
        if scope.cancelled_caught:  # the link ended while we waited
            raise self._failed("closed", self._why_closed())
        self._tell("message_sent", len(payload))

    # ------------------------------------------------------------ internals

    def _why_closed(self) -> str:
        end = self._end or self._verdict
        if end is None:
            return "the link is closing"
        return f"the link ended ({end.reason}{': ' + end.detail if end.detail else ''})"

    def _failed(self, reason: SendFailure, detail: str) -> SendError:
        self._tell("send_failed", reason)
        return SendError(reason, str(self.peer), detail)

    def _tell(self, what: str, *args: object) -> None:
        """Call the observer's method `what`; its failure is logged, never raised."""
        if self._observer is None:
            return
        try:
            getattr(self._observer, what)(*args)
        except Exception as bug:
            event(logger, logging.ERROR, "the channel observer failed", exc_info=bug)

    def _next_ping(self) -> bytes:
        return struct.pack("!Q", next(self._pings))

    def _decide(self, end: LinkEnd) -> None:
        """The link ends for `end` (the first decision stands); wake `run_link`'s body."""
        if self._verdict is None:
            self._verdict = end
        self._wake.set()

    def _request_close(self, code: int) -> None:
        if self._close_code is None:
            self._close_code = code
        self._wake.set()

    async def _guard_reader(self, reader: Callable[[], Awaitable[object]]) -> None:
        """Run trio-websocket's reader; whatever it raises ends the link, not the nursery."""
        try:
            with self._reader_scope:
                await reader()
        except trio_websocket.ConnectionRejected as exc:
            self._fault = LinkEnd(
                False, "upgrade_rejected", f"the server answered HTTP {exc.status_code}"
            )
        except wsproto.utilities.LocalProtocolError as exc:
            # A ping read after a close went out (ours, or trio-websocket's 1009) cannot be
            # answered: the end is the close's. Anything else is a bug.
            closing = self._ws is not None and self._ws.closed is not None
            if self._close_code is None and not closing:
                self._fault = self._bug("the WebSocket reader failed", exc)
        except h11.ProtocolError as exc:  # the peer's HTTP was garbage (trio-websocket trips)
            kind: LinkEndReason = "protocol_error" if self._ws is not None else "not_websocket"
            self._fault = LinkEnd(False, kind, describe_error(exc))
        except Exception as exc:
            self._fault = self._bug("the WebSocket reader failed", exc)
        finally:
            self._reader_done.set()
            for scope in self._until_reader_ends:
                scope.cancel()
            self._wake.set()

    def _bug(self, what: str, exc: BaseException) -> LinkEnd:
        event(logger, logging.ERROR, what, exc_info=exc, spiffe_id=str(self.peer))
        return LinkEnd(False, "internal_error", describe_error(exc))

    async def _upgrade(self, tasks: _Tasks) -> trio_websocket.WebSocketConnection | None:
        """The WebSocket upgrade, bounded by ``upgrade_timeout``; None if it failed (the
        reason is then in `_verdict`, `_fault` or the transport)."""
        settings = self._settings
        nursery = cast("trio.Nursery", tasks)
        stream = cast("trio.SocketStream", self._transport)
        with trio.move_on_after(settings.upgrade_timeout) as scope:
            self._until_reader_ends.add(scope)
            try:
                if self.role == "client":
                    address = self.stream.address
                    return await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        "mesh" if address == "-" else address,
                        PATH,
                        message_queue_size=0,
                        max_message_size=settings.max_message_size,
                        receive_buffer_size=None,
                    )
                request = await trio_websocket.wrap_server_stream(
                    nursery,
                    stream,
                    message_queue_size=0,
                    max_message_size=settings.max_message_size,
                    receive_buffer_size=None,
                )
                if request.path != PATH:
                    self._decide(
                        LinkEnd(False, "wrong_path", f"asked for {printable(request.path, 80)}")
                    )
                    await request.reject(404)
                    return None
                return await request.accept()
            except (trio_websocket.ConnectionClosed, wsproto.utilities.LocalProtocolError):
                return None  # the stream failed under the upgrade: the transport says how
            finally:
                self._until_reader_ends.discard(scope)
        return None

    def _upgrade_failure(self) -> LinkEnd:
        if self._verdict is not None:
            return self._verdict
        if self._fault is not None:
            return self._fault
        error = self._transport.error
        if error is not None:
            return LinkEnd(False, "broken", describe_error(error))
        if self._reader_done.is_set() and self.role == "server":
            return LinkEnd(False, "not_websocket", "the client did not ask for a WebSocket upgrade")
        if self._reader_done.is_set():
            return LinkEnd(False, "not_websocket", "the server did not answer with an upgrade")
        timeout = self._settings.upgrade_timeout
        return LinkEnd(False, "upgrade_timeout", f"no WebSocket upgrade within {timeout:g}s")

    def _ended(self, ws: trio_websocket.WebSocketConnection, *, closing: bool) -> LinkEnd:
        """The end of an upgraded link, once something woke `run_link`'s body; `closing`
        when we closed it (`aclose`, or the inbox closed) while the reader still ran."""
        if self._verdict is not None:
            return self._verdict
        if self._fault is not None:
            return self._fault
        error = self._transport.error
        if closing:
            if error is not None:
                return LinkEnd(False, "broken", describe_error(error))
            return LinkEnd(True, "closed", f"we closed ({self._close_code})")
        reason = ws.closed
        if reason is None:  # trio-websocket closed the stream after the peer's protocol error
            return LinkEnd(False, "protocol_error", "the peer broke the WebSocket protocol")
        if reason.code == _ABNORMAL_CLOSURE:
            detail = (
                describe_error(error)
                if error is not None
                else "the peer closed the connection without a WebSocket close"
            )
            return LinkEnd(False, "broken", detail)
        words = f"close {reason.code}" + (
            f" ({printable(reason.reason, 80)})" if reason.reason else ""
        )
        kind = _CLOSE_REASONS.get(reason.code, "peer_error")
        return LinkEnd(kind == "closed", kind, words)

    def _conclude(self, end: LinkEnd) -> LinkEnd:
        """Act on `end` once: close the link, fail its waiting sends, stop the reader and
        the keepalive, close the stream (reset unless the peer was told), tell the
        observer."""
        if self._end is not None:
            return self._end
        self._verdict = self._verdict or end
        self._end = end
        self._closed.set()
        for scope in (
            *self._sending,
            self._reader_scope,
            self._keepalive_scope,
            self._flusher_scope,
        ):
            scope.cancel()
        if end.reason in _TOLD:
            self.stream.close_now()
        else:
            self.stream.abort()
        peer, role = str(self.peer), self.role
        if end.clean:
            event(logger, logging.DEBUG, "link closed", spiffe_id=peer, role=role)
        else:
            throttled(
                logger,
                logging.INFO,
                "link ended",
                key=("reason",),
                spiffe_id=peer,
                role=role,
                reason=end.reason,
                detail=end.detail,
            )
        self._tell("link_ended", self.role, end)
        return end

    async def _serve(
        self, nursery: trio.Nursery, inbox: Inbox, task_status: trio.TaskStatus[Link]
    ) -> LinkEnd:
        ws = await self._upgrade(_Tasks(nursery, self))
        if ws is None or self._verdict is not None:
            return self._conclude(self._upgrade_failure())
        self._ws = ws
        nursery.start_soon(self._forward, ws, inbox)
        nursery.start_soon(self._keepalive, ws)
        nursery.start_soon(self._flusher)
        task_status.started(self)
        await self._wake.wait()
        closing = self._close_code is not None and not self._reader_done.is_set()
        if closing and self._verdict is None:
            await self._close_handshake(ws, self._close_code or 1000)
        return self._conclude(self._ended(ws, closing=closing))

    async def _close_handshake(self, ws: trio_websocket.WebSocketConnection, code: int) -> None:
        """Send our close and wait for the peer's, bounded by ``keepalive_timeout``."""
        timeout = self._settings.keepalive_timeout
        with trio.move_on_after(timeout) as scope:
            self._until_reader_ends.add(scope)
            try:
                await ws.aclose(code)
            finally:
                self._until_reader_ends.discard(scope)
        if scope.cancelled_caught and not self._reader_done.is_set():
            self._decide(LinkEnd(False, "close_timeout", f"no close answer within {timeout:g}s"))

    async def _forward(self, ws: trio_websocket.WebSocketConnection, inbox: Inbox) -> None:
        """Move each message the reader hands over into `inbox` (waiting while it is full)."""
        try:
            while True:
                try:
                    data = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return
                message = Message(self.peer, data.encode() if isinstance(data, str) else data)
                self._tell("message_received", len(message.data))
                self._delivering = True
                try:
                    await inbox.deliver(message)
                except BaseException:
                    if not inbox.deliver_nowait(message):  # acknowledged already: say so
                        event(
                            logger,
                            logging.WARNING,
                            "an acknowledged message was dropped: the inbox closed or the"
                            " link was cancelled while it was full",
                            spiffe_id=str(self.peer),
                        )
                    raise
                finally:
                    self._delivering = False
                    self._last_delivered = trio.current_time()
        except trio.ClosedResourceError:  # the inbox closed: the node is stopping
            self._request_close(1001)
        except Exception as exc:
            self._decide(self._bug("forwarding a message failed", exc))

    async def _flusher(self) -> None:
        """Send the bytes a cancelled `send` left held (`_Transport.corked`)."""
        transport = self._transport
        try:
            with self._flusher_scope:
                while True:
                    await transport.flush_wanted.wait()
                    transport.flush_wanted = trio.Event()
                    await transport.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the link is ending: the transport or the reader says why
        except Exception as exc:
            self._decide(self._bug("sending held bytes failed", exc))

    async def _keepalive(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Ping after ``keepalive_interval`` idle seconds; end the link when no byte came
        back within ``keepalive_timeout`` while our own reader was free to read it."""
        interval = self._settings.keepalive_interval
        timeout = self._settings.keepalive_timeout
        transport = self._transport
        try:
            with self._keepalive_scope:
                while True:
                    due = max(transport.last_received, self._last_delivered) + interval
                    if trio.current_time() < due:
                        await trio.sleep_until(due)
                        continue
                    sent_at = trio.current_time()
                    with trio.move_on_after(timeout) as wait:
                        await ws.ping(self._next_ping())
                    if not wait.cancelled_caught:
                        continue
                    # Bytes since the ping say the peer lives (">=": on a frozen clock they
                    # may share its instant; `due` put every earlier byte an interval back).
                    if transport.last_received >= sent_at:
                        continue
                    if self._delivering or self._last_delivered >= sent_at:
                        continue  # our reader was held by our own full inbox: not the peer
                    self._decide(
                        LinkEnd(False, "keepalive_timeout", f"no answer to a ping in {timeout:g}s")
                    )
                    return
        except (trio_websocket.ConnectionClosed, wsproto.utilities.LocalProtocolError):
            return  # the link is ending: the reader says why
        except Exception as exc:
            self._decide(self._bug("the keepalive failed", exc))


async def run_link(
    stream: MeshStream,
    *,
    role: OurRole,
    inbox: Inbox,
    settings: ChannelSettings,
    observer: ChannelObserver | None = None,
    task_status: trio.TaskStatus[Link] = trio.TASK_STATUS_IGNORED,
) -> LinkEnd:
    """Serve one WebSocket link over `stream` (verified already) until it ends; return why.

    Takes responsibility for `stream`: it is closed on return (reset unless the peer was
    told why the link ended). Client role: upgrades with ``GET /mesh``; server role:
    accepts only ``/mesh`` (else answers 404), both within ``upgrade_timeout``. Then calls
    ``task_status.started(link)``, delivers each message into `inbox` tagged with the
    peer's verified SPIFFE ID, and keeps the link alive with pings. If the upgrade fails,
    it returns without calling ``started`` (with ``nursery.start`` use `start_link`).

    Never raises for a peer's fault: any exception while serving this link ends it
    (``internal_error``). Cancelled, it resets the stream, reports ``cancelled`` (or the
    owner's reason on the stream, such as ``revoked``) to `observer`, and re-raises.
    """
    link = Link(stream, role, settings, observer)
    try:
        async with trio.open_nursery() as nursery:
            try:
                return await link._serve(nursery, inbox, task_status)
            except Exception as exc:  # our bug: it ends this link only
                return link._conclude(link._bug("serving a link failed", exc))
    except BaseException:
        reason = stream.end_reason if stream.end is not None and stream.end_reason else "cancelled"
        link._conclude(LinkEnd(False, reason, "the link's owner cut it"))
        raise
    finally:
        link._finished.set()


class _Relay:
    """A task status that notes whether `run_link` called ``started``."""

    def __init__(self, status: trio.TaskStatus[Link | LinkEnd]) -> None:
        self.status = status
        self.started_called = False

    def started(self, value: Link) -> None:
        self.started_called = True
        self.status.started(value)


async def _run_started(
    stream: MeshStream,
    role: OurRole,
    inbox: Inbox,
    settings: ChannelSettings,
    observer: ChannelObserver | None,
    *,
    task_status: trio.TaskStatus[Link | LinkEnd] = trio.TASK_STATUS_IGNORED,
) -> None:
    relay = _Relay(task_status)
    end = await run_link(
        stream,
        role=role,
        inbox=inbox,
        settings=settings,
        observer=observer,
        task_status=cast("trio.TaskStatus[Link]", relay),
    )
    if not relay.started_called:
        task_status.started(end)


async def start_link(
    nursery: trio.Nursery,
    stream: MeshStream,
    *,
    role: OurRole,
    inbox: Inbox,
    settings: ChannelSettings,
    observer: ChannelObserver | None = None,
) -> Link:
    """`run_link` in `nursery`: the `Link` once upgraded (``link.wait_closed()`` and
    ``link.end`` tell its end), or `UpgradeError` with the `LinkEnd` when the upgrade
    failed (the stream is closed then)."""
    value: Link | LinkEnd = await nursery.start(
        _run_started, stream, role, inbox, settings, observer
    )
    if isinstance(value, LinkEnd):
        raise UpgradeError(value)
    return value
