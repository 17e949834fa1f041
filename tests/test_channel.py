"""Message links over real verified TLS pairs: delivery, acknowledgement, failures, bounds."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

import meshtls
from meshtls._channel import ChannelSettings, Inbox, LinkEnd, Message, start_link
from tests.linknet import (
    CLIENT_ID,
    SERVER_ID,
    Recorder,
    WatchedInbox,
    link_pair,
    silent_websocket_server,
    start_link_server,
)
from tests.meshnet import Mesh, start_server


async def test_a_message_each_way_carries_the_verified_sender() -> None:
    with trio.fail_after(10):
        async with link_pair(Mesh()) as pair:
            await pair.client.send(b"hello")
            await pair.server.send("h\u00e9llo")  # a str goes as its UTF-8 bytes
            got_server = await anext(aiter(pair.server_inbox.messages()))
            got_client = await anext(aiter(pair.client_inbox.messages()))
            assert got_server == Message(meshtls.SpiffeId.parse(CLIENT_ID), b"hello")
            assert got_client == Message(meshtls.SpiffeId.parse(SERVER_ID), "h\u00e9llo".encode())
            assert pair.client.peer == meshtls.SpiffeId.parse(SERVER_ID)
            assert pair.server.peer == meshtls.SpiffeId.parse(CLIENT_ID)
            assert pair.client_observer.sent == [5]
            assert pair.server_observer.received == [5]
            assert pair.server_observer.sent == [6]
            assert pair.client_observer.received == [6]


async def test_send_returns_only_once_the_peer_queued_the_message() -> None:
    """The peer's inbox holds 1 and nobody reads it: the first send returns with the message
    queued there, the second is held by the peer's forwarder, the third waits for a reader."""
    with trio.fail_after(10):
        async with link_pair(Mesh(), server_queue=1) as pair:
            await pair.client.send(b"1")
            assert pair.server_inbox.queued == 1  # already there when send returned
            await pair.client.send(b"2")
            done = trio.Event()

            async def third() -> None:
                await pair.client.send(b"3")
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(third)
                await trio.sleep(0.3)
                assert not done.is_set()  # the peer holds 1 + 1: no acknowledgement yet
                assert pair.server_observer.received == [1, 1]
                messages = aiter(pair.server_inbox.messages())
                assert (await anext(messages)).data == b"1"
                await done.wait()  # room again: the third is queued and acknowledged
            assert [(await anext(messages)).data for _ in range(2)] == [b"2", b"3"]
            assert pair.server_inbox.queued == 0


async def test_a_link_that_breaks_while_a_send_waits_raises_closed() -> None:
    with trio.fail_after(10):
        async with link_pair(Mesh(), server_queue=1) as pair:
            await pair.client.send(b"1")
            await pair.client.send(b"2")
            errors: list[meshtls.SendError] = []

            async def third() -> None:
                try:
                    await pair.client.send(b"3")
                except meshtls.SendError as exc:
                    errors.append(exc)
                else:
                    raise AssertionError("a send on a broken link returned")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(third)
                await trio.sleep(0.2)
                pair.server.stream.abort()  # the peer's connection is cut: a TCP reset
            assert [e.reason for e in errors] == ["closed"]
            assert errors[0].peer == SERVER_ID
            assert pair.client.closed
            await pair.client.wait_closed()
            assert pair.client.end is not None
            assert pair.client.end.reason == "broken"
            assert not pair.client.end.clean
            assert pair.client_observer.failed == ["closed"]
            with pytest.raises(meshtls.SendError) as after:
                await pair.client.send(b"4")
            assert after.value.reason == "closed"


async def test_too_large_is_refused_before_sending_and_the_link_stays() -> None:
    settings = ChannelSettings(max_message_size=1000)
    with trio.fail_after(10):
        async with link_pair(Mesh(), client_settings=settings) as pair:
            with pytest.raises(meshtls.SendError) as too_big:
                await pair.client.send(b"x" * 1001)
            assert too_big.value.reason == "too_large"
            with pytest.raises(meshtls.SendError) as too_big_text:
                await pair.client.send("\u00e9" * 501)  # 1002 bytes in UTF-8
            assert too_big_text.value.reason == "too_large"
            await pair.client.send(b"x" * 1000)
            got = await anext(aiter(pair.server_inbox.messages()))
            assert got.data == b"x" * 1000
            assert pair.client_observer.failed == ["too_large", "too_large"]
            assert pair.server_observer.received == [1000]
            assert not pair.client.closed


async def test_aclose_ends_both_sides_cleanly() -> None:
    with trio.fail_after(10):
        async with link_pair(Mesh()) as pair:
            await pair.client.send(b"last")
            await pair.client.aclose()
            assert pair.client.end == LinkEnd(True, "closed", "we closed (1000)")
            await pair.server.wait_closed()
            assert pair.server.end is not None
            assert (pair.server.end.clean, pair.server.end.reason) == (True, "closed")
            assert (await anext(aiter(pair.server_inbox.messages()))).data == b"last"
            with pytest.raises(meshtls.SendError) as closed:
                await pair.server.send(b"x")
            assert closed.value.reason == "closed"
            assert [r for r, _ in pair.server_observer.ends] == ["server"]


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        ChannelSettings(max_message_size=0)
    with pytest.raises(ValueError, match="keepalive_timeout"):
        ChannelSettings(keepalive_timeout=float("nan"))
    with pytest.raises(TypeError, match="queue_size"):  # the inbox's, not a link's: no such key
        ChannelSettings(queue_size=0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="at least 1"):
        Inbox(0)


# ---------------------------------------------------------------- bounds and backpressure


async def test_a_slow_consumer_slows_its_sender_and_the_queue_stays_bounded() -> None:
    inbox = WatchedInbox(4)
    consumed = 0
    with trio.fail_after(20):
        async with link_pair(Mesh(), server_inbox=inbox) as pair:

            async def consume() -> None:
                nonlocal consumed
                async for message in inbox.messages():
                    assert message.data == b"%d" % consumed  # in order
                    consumed += 1
                    await trio.sleep(0.002)  # slow
                    if consumed == 60:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                for n in range(60):
                    await pair.client.send(b"%d" % n)
                    # acknowledged means queued: never more than the inbox plus the one
                    # message the peer's forwarder holds ahead of it
                    assert n + 1 - consumed <= inbox.size + 1
            assert consumed == 60
            assert 1 <= inbox.peak <= inbox.size


async def test_concurrent_senders_share_one_bounded_inbox_in_order() -> None:
    inbox = WatchedInbox(3)
    with trio.fail_after(20):
        async with link_pair(Mesh(), server_inbox=inbox) as pair:

            async def sender(k: int) -> None:
                for n in range(10):
                    await pair.client.send(b"%d:%d" % (k, n))

            seen: dict[bytes, list[int]] = {}
            async with trio.open_nursery() as nursery:
                for task in range(8):
                    nursery.start_soon(sender, task)
                async for message in inbox.messages():
                    who, n = message.data.split(b":")
                    seen.setdefault(who, []).append(int(n))
                    await trio.sleep(0.001)
                    if sum(map(len, seen.values())) == 80:
                        break
            assert all(ns == list(range(10)) for ns in seen.values())
            assert len(seen) == 8
            assert inbox.peak <= inbox.size


async def test_a_send_cancelled_waiting_for_its_ack_keeps_the_link_and_may_arrive() -> None:
    """The caller's deadline (a node's send timeout) ends the wait, not the link; the
    message it gave up on still arrives: at-least-once for a caller that retries."""
    with trio.fail_after(10):
        async with link_pair(Mesh(), server_queue=1) as pair:
            await pair.client.send(b"1")
            await pair.client.send(b"2")
            with trio.move_on_after(0.2) as waited:
                await pair.client.send(b"3")
            assert waited.cancelled_caught
            assert not pair.client.closed
            messages = aiter(pair.server_inbox.messages())
            got = [(await anext(messages)).data for _ in range(3)]
            assert got == [b"1", b"2", b"3"]
            await pair.client.send(b"4")
            assert (await anext(messages)).data == b"4"


async def test_an_oversized_incoming_message_closes_the_link_with_1009() -> None:
    """The sender allows more than the receiver: the receiver closes with 1009, counts it,
    and the sender's send fails closed (never reported as sent)."""
    with trio.fail_after(10):
        async with link_pair(
            Mesh(), server_settings=ChannelSettings(max_message_size=1000)
        ) as pair:
            await pair.client.send(b"x" * 1000)
            with pytest.raises(meshtls.SendError) as failed:
                await pair.client.send(b"x" * 1001)
            assert failed.value.reason == "closed"
            await pair.server.wait_closed()
            await pair.client.wait_closed()
            assert pair.server.end is not None
            assert pair.client.end is not None
            assert pair.server.end.reason == "message_too_large"
            assert pair.client.end.reason == "message_too_large"
            assert "1009" in (pair.client.end.detail or "")
            assert [(r, e.reason) for r, e in pair.server_observer.ends] == [
                ("server", "message_too_large")
            ]
            assert pair.server_observer.received == [1000]
            assert pair.server_inbox.queued == 1


# ---------------------------------------------------------------- keepalive


async def test_a_peer_whose_reader_is_stuck_is_found_dead_by_keepalive(
    mock_clock: trio.testing.MockClock,
) -> None:
    mesh = Mesh()
    observer = Recorder()
    settings = ChannelSettings(keepalive_interval=15, keepalive_timeout=10)
    with trio.fail_after(60):  # Trio's (mock) clock: fails fast if nobody notices
        await _dead_peer(mock_clock, mesh, observer, settings)


async def _dead_peer(
    mock_clock: trio.testing.MockClock, mesh: Mesh, observer: Recorder, settings: ChannelSettings
) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, silent_websocket_server, source=mesh.server)
        stream = await meshtls.connect(
            "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
        )
        link = await start_link(
            nursery, stream, role="client", inbox=Inbox(4), settings=settings, observer=observer
        )
        started = trio.current_time()  # the clock has not moved: the last byte came now
        mock_clock.autojump_threshold = 0
        await link.wait_closed()
        assert trio.current_time() - started == pytest.approx(15 + 10)
        assert link.end == LinkEnd(False, "keepalive_timeout", "no answer to a ping in 10s")
        assert observer.ends == [("client", link.end)]
        with pytest.raises(meshtls.SendError) as failed:
            await link.send(b"x")
        assert failed.value.reason == "closed"
        nursery.cancel_scope.cancel()


async def test_an_idle_link_whose_peer_answers_stays_open(
    mock_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(700):
        await _idle(mock_clock)


async def _idle(mock_clock: trio.testing.MockClock) -> None:
    async with link_pair(Mesh()) as pair:
        mock_clock.autojump_threshold = 0
        await trio.sleep(600)  # 40 keepalive intervals
        assert not pair.client.closed
        assert not pair.server.closed
        mock_clock.autojump_threshold = math.inf
        await pair.client.send(b"still here")
        assert (await anext(aiter(pair.server_inbox.messages()))).data == b"still here"


async def test_a_slow_consumer_is_not_taken_for_a_dead_peer(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The receiver's inbox is full for ten minutes: its reader is held, yet neither side
    ends the link; the held send completes once the consumer reads."""
    with trio.fail_after(700):
        await _slow_consumer(mock_clock)


async def _slow_consumer(mock_clock: trio.testing.MockClock) -> None:
    async with link_pair(Mesh(), server_queue=1) as pair:
        await pair.client.send(b"1")
        await pair.client.send(b"2")
        done = trio.Event()

        async def third() -> None:
            await pair.client.send(b"3")
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            mock_clock.autojump_threshold = 0
            await trio.sleep(600)
            assert not done.is_set()
            assert not pair.client.closed
            assert not pair.server.closed
            mock_clock.autojump_threshold = math.inf
            messages = aiter(pair.server_inbox.messages())
            assert (await anext(messages)).data == b"1"
            await done.wait()
        assert [(await anext(messages)).data for _ in range(2)] == [b"2", b"3"]
        assert pair.client_observer.ends == pair.server_observer.ends == []


async def test_a_frame_held_for_its_ping_is_sent_even_if_the_ping_never_comes() -> None:
    """`send` holds the message back to write it with its ping (one TLS record). A send
    that gives up in between (its deadline passed, say) leaves the frame held: the link's
    flusher sends it, whole, so it is never stuck or cut."""
    with trio.fail_after(10):
        async with link_pair(Mesh()) as pair:
            transport, ws = pair.client._transport, pair.client._ws
            assert ws is not None
            with transport.corked():
                await ws.send_message(b"held")
                assert transport._held  # held back, waiting for a ping that will not come
            got = await anext(aiter(pair.server_inbox.messages()))
            assert got.data == b"held"
            assert not transport._held
            assert not pair.client.closed
            await pair.client.send(b"after")
            assert (await anext(aiter(pair.server_inbox.messages()))).data == b"after"


# ---------------------------------------------------------------- the inbox alone


async def test_a_subscribed_channel_claims_its_peers_messages_and_returns_leftovers() -> None:
    a, b = meshtls.SpiffeId.parse(CLIENT_ID), meshtls.SpiffeId.parse(SERVER_ID)
    inbox = Inbox(2)
    with inbox.subscribe(a) as channel:
        with pytest.raises(trio.BusyResourceError), inbox.subscribe(a):
            pass  # one channel per peer
        await inbox.deliver(Message(a, b"a1"))
        await inbox.deliver(Message(b, b"b1"))
        await inbox.deliver(Message(a, b"a2"))
        assert inbox.queued == 3
        assert channel.receive_nowait() == Message(a, b"a1")
    # a2 was left unread: it goes back to the shared queue
    messages = inbox.messages()
    assert [await anext(messages), await anext(messages)] == [
        Message(b, b"b1"),
        Message(a, b"a2"),
    ]
    await inbox.deliver(Message(a, b"a3"))  # no channel: the shared queue
    inbox.close()
    assert [m.data async for m in inbox.messages()] == [b"a3"]  # drained, then the end
    with pytest.raises(trio.ClosedResourceError):
        await inbox.deliver(Message(a, b"late"))


async def test_closing_the_inbox_ends_an_open_channel_after_what_it_holds() -> None:
    """A node that stops closes its inbox: a channel still being read ends too (it does
    not wait forever), after the messages already in it."""
    peer = meshtls.SpiffeId.parse(CLIENT_ID)
    inbox = Inbox(2)
    with inbox.subscribe(peer) as channel:
        await inbox.deliver(Message(peer, b"kept"))
        inbox.close()
        with trio.fail_after(1):
            assert [m.data async for m in channel] == [b"kept"]
        with pytest.raises(trio.ClosedResourceError):
            await inbox.deliver(Message(peer, b"late"))


async def test_a_full_inbox_makes_deliver_wait() -> None:
    peer = meshtls.SpiffeId.parse(CLIENT_ID)
    inbox = Inbox(1)
    await inbox.deliver(Message(peer, b"1"))
    with trio.move_on_after(0.05) as waited:
        await inbox.deliver(Message(peer, b"2"))
    assert waited.cancelled_caught
    assert inbox.queued == 1
    assert not inbox.deliver_nowait(Message(peer, b"3"))


@pytest.mark.parametrize("revoked", [False, True])
async def test_a_link_its_owner_cancels_ends_with_a_reset_and_the_owners_reason(
    revoked: bool,
) -> None:
    """A node cuts a link by cancelling `run_link` (a revoked peer: `MeshStream.reject`
    first). The observer hears `cancelled` or the owner's reason; the peer sees a reset
    (`broken`), never a clean end."""
    mesh = Mesh()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(nursery, mesh)
            stream = await meshtls.connect(
                "127.0.0.1", server.port, source=mesh.client, authorize=meshtls.authorize_any()
            )
            observer = Recorder()
            with trio.CancelScope() as owner:
                async with trio.open_nursery() as links:
                    link = await start_link(
                        links,
                        stream,
                        role="client",
                        inbox=Inbox(4),
                        settings=ChannelSettings(),
                        observer=observer,
                    )
                    await link.send(b"before")
                    if revoked:
                        stream.reject("revoked")
                    owner.cancel()
            assert link.closed
            want = "revoked" if revoked else "cancelled"
            assert [(role, end.reason, end.clean) for role, end in observer.ends] == [
                ("client", want, False)
            ]
            ends = await server.observer.wait_ends(1)
            assert [(end.reason, end.clean) for _, end in ends] == [("broken", False)]
            assert (await anext(aiter(server.inbox.messages()))).data == b"before"
            nursery.cancel_scope.cancel()
