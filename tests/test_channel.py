"""Message links over real verified TLS pairs: delivery, acknowledgement, failures, bounds."""

from __future__ import annotations

import pytest
import trio

import meshtls
from meshtls._channel import ChannelSettings, Inbox, LinkEnd, Message
from tests.linknet import CLIENT_ID, SERVER_ID, link_pair
from tests.meshnet import Mesh


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
    with pytest.raises(ValueError, match="queue_size"):
        ChannelSettings(queue_size=0)
    with pytest.raises(ValueError, match="at least 1"):
        Inbox(0)
