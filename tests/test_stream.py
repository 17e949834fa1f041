"""MeshStream as a trio stream: trio's generic half-closeable stream checks, and basics."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

import meshtls
from meshtls._stream import CLOSE_NOTIFY_TIMEOUT, Access
from meshtls._tls import TlsSession

from .meshnet import Mesh, start_server, stream_pair


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


async def test_eviction_picks_the_flooding_source_then_the_longest_stalled() -> None:
    from meshtls._stream import _Handshakes

    places = _Handshakes(3)
    honest = places.new(trio.CancelScope(), "10.0.0.1")
    flood = [places.new(trio.CancelScope(), "10.0.0.9") for _ in range(2)]
    for handshake, since in [(honest, 1.0), (flood[0], 5.0), (flood[1], 5.0)]:
        await places.acquire(handshake)
        handshake.waiting_since = since
    newcomer = places.new(trio.CancelScope(), "10.0.0.2")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(places.acquire, newcomer)
        await trio.testing.wait_all_tasks_blocked()
        # the flooding address goes first, and within it the earlier arrival (a tie on time)
        assert [h.evicted for h in (honest, *flood)] == [False, True, False]
        assert flood[0].scope.cancel_called
        places.release(flood[0])  # the victim unwinds and hands its place over
    assert not honest.evicted


async def test_a_handshake_that_is_not_waiting_is_never_evicted() -> None:
    from meshtls._stream import _Handshakes

    places = _Handshakes(1)
    busy = places.new(trio.CancelScope(), "10.0.0.1")
    await places.acquire(busy)  # waiting_since stays None: it is doing work
    newcomer = places.new(trio.CancelScope(), "10.0.0.2")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(places.acquire, newcomer)
        await trio.testing.wait_all_tasks_blocked()  # the newcomer is parked, nobody evicted
        assert not busy.evicted
        assert not busy.scope.cancel_called
        nursery.cancel_scope.cancel()


async def test_both_ends_set_tcp_nodelay() -> None:
    import socket

    async with stream_pair(Mesh()) as (client, server):
        for stream in (client, server):
            assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []
        self._changed = trio.Event()

    def _record(self, event: tuple[str, str, str | None]) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.events) < count:
            await self._changed.wait()

    def handshake(self, role: str, *, seconds: float, error: meshtls.HandshakeError | None) -> None:
        assert seconds >= 0
        self._record(("handshake", role, error.reason if error else None))

    def opened(self, role: str) -> None:
        self._record(("opened", role, None))

    def closed(self, role: str) -> None:
        self._record(("closed", role, None))

    def began(self, access: Access) -> None:
        pass  # the accounts are test_access_log.py's subject

    def ended(self, access: Access) -> None:
        pass


async def test_observer_sees_handshakes_and_connections_on_both_sides() -> None:
    mesh = Mesh()
    server_side, client_side = RecordingObserver(), RecordingObserver()
    done = trio.Event()

    async def handler(stream: meshtls.MeshStream) -> None:
        await stream.receive_some()
        done.set()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler, source=mesh.server, observer=server_side)
        stream = await meshtls.connect(
            "127.0.0.1",
            port,
            source=mesh.client,
            authorize=meshtls.authorize_any(),
            observer=client_side,
        )
        async with stream:
            await stream.send_all(b"x")
            await done.wait()
        with pytest.raises(meshtls.HandshakeError):
            await meshtls.connect(
                "127.0.0.1",
                port,
                source=mesh.client,
                authorize=meshtls.authorize_id("spiffe://example.org/nope"),
                observer=client_side,
            )
        with trio.fail_after(5):
            await server_side.wait_for(4)
        nursery.cancel_scope.cancel()
    assert client_side.events == [
        ("opened", "client", None),
        ("handshake", "client", None),
        ("closed", "client", None),
        ("handshake", "client", "unauthorized"),
    ]
    # the client refused the server inside the handshake, with an alert the server reads
    # back as the same reason (issue 11): no connection opened on the server's side
    assert server_side.events[:4] == [
        ("opened", "server", None),
        ("handshake", "server", None),
        ("closed", "server", None),
        ("handshake", "server", "unauthorized"),
    ]


# ---------------------------------------------------------------- half-close (issue 7, item 2)

REPLY = bytes(range(256)) * 4096  # 1 MiB: many TLS records, more than one socket read


async def test_send_eof_while_a_reply_is_arriving_loses_nothing() -> None:
    """The client reads one chunk of a 1 MiB reply, half-closes, then reads the rest.

    CPython's `unwrap()` calls `SSL_shutdown` twice; the second call reads the records
    already fed to OpenSSL and discards application data as a fatal error. Every byte
    of the reply must still arrive, then a clean EOF; the server sees our EOF.
    """
    mesh = Mesh()
    async with stream_pair(mesh) as (client, server):
        with trio.fail_after(10):
            await server.send_all(REPLY)
            received = bytearray(await client.receive_some())
            assert 0 < len(received) < len(REPLY)
            await client.send_eof()
            assert await server.receive_some() == b""  # our close_notify arrived
            await server.send_eof()
            while chunk := await client.receive_some():
                received += chunk
    assert bytes(received) == REPLY


async def test_send_eof_after_a_partial_record_read_loses_nothing() -> None:
    """Reading 100 bytes leaves the rest of a 16 KiB record inside OpenSSL, not in the
    memory BIO: half-closing then must keep that plaintext too."""
    mesh = Mesh()
    async with stream_pair(mesh) as (client, server):
        with trio.fail_after(10):
            await server.send_all(REPLY[:16384])
            await server.send_eof()
            received = bytearray(await client.receive_some(100))
            await client.send_eof()
            while chunk := await client.receive_some(7000):
                received += chunk
    assert bytes(received) == REPLY[:16384]


async def test_a_handler_that_fails_resets_its_peer() -> None:
    """A handler that raises part-way must not look like one that finished: its peer
    reads what was sent, then an error, never a clean EOF."""
    mesh = Mesh()

    async def failing(stream: meshtls.MeshStream) -> None:
        await stream.send_all(b"half of an answer")
        raise RuntimeError("the handler has a bug")

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, failing, source=mesh.server)
        with trio.fail_after(10):
            stream = await meshtls.connect(
                "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
            )
            async with stream:
                received = b""
                with pytest.raises(trio.BrokenResourceError):  # noqa: PT012 - read until it breaks
                    while chunk := await stream.receive_some():
                        received += chunk
        nursery.cancel_scope.cancel()
    assert received == b"half of an answer"


async def test_serve_caps_established_connections() -> None:
    """`max_connections=1`: while one verified connection is open, the next verified peer
    is reset at once (an error, never EOF) and its handler never runs; once the first
    closes, a newcomer is served again."""
    mesh = Mesh()
    served: list[meshtls.MeshStream] = []
    release = trio.Event()
    arrived: trio.MemorySendChannel[None]
    arrived, arrivals = trio.open_memory_channel[None](10)

    async def holding(stream: meshtls.MeshStream) -> None:
        served.append(stream)
        await arrived.send(None)
        await release.wait()
        await stream.send_all(b"bye")

    async def dial() -> meshtls.MeshStream:
        return await meshtls.connect(
            "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
        )

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, holding, source=mesh.server, max_connections=1)
        with trio.fail_after(10):
            first = await dial()
            await arrivals.receive()
            second = await dial()  # TLS 1.3: the client finishes before the server judges
            async with second:
                with pytest.raises(trio.BrokenResourceError):
                    await second.receive_some()
            assert len(served) == 1
            async with first:
                release.set()
                assert await first.receive_some() == b"bye"
            third = await dial()
            async with third:
                await arrivals.receive()
                assert await third.receive_some() == b"bye"
        nursery.cancel_scope.cancel()
    assert len(served) == 2


@pytest.mark.parametrize("limit", [0, -1])
async def test_serve_refuses_a_bad_connection_cap(limit: int) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        await meshtls.serve(
            meshtls.MeshStream.aclose,
            0,
            host="127.0.0.1",
            source=Mesh().server,
            authorize=meshtls.authorize_any(),
            max_connections=limit,
        )


def _session_pair(mesh: Mesh) -> tuple[TlsSession, TlsSession]:
    """A (client, server) pair of TlsSessions with the handshake done, sans I/O."""
    client = mesh.client.contexts().session(server_side=False)
    server = mesh.server.contexts().session(server_side=True)
    for _ in range(4):
        client_done = client.handshake()
        server.feed(client.outgoing())
        server_done = server.handshake()
        client.feed(server.outgoing())
        if client_done and server_done:
            break
    assert client.read(1) is None  # takes in what the server sent after its Finished
    return client, server


def test_close_notify_keeps_every_record_readable() -> None:
    client, server = _session_pair(Mesh())
    server.write(REPLY[:65536])
    client.feed(server.outgoing())
    received = bytearray(client.read(100) or b"")  # the rest of that record stays in OpenSSL
    client.close_notify()
    assert client.outgoing()  # our close_notify, to send
    while chunk := client.read(65536):
        received += chunk
    assert bytes(received) == REPLY[:65536]


async def test_a_peer_that_goes_away_after_data_is_not_called_a_rejection_of_our_certificate() -> (
    None
):
    """A server that accepted us, sent data, then vanished without close_notify (its process
    died): the client's error is still a `PeerRejectedError` (the API contract for a cut
    without close_notify), but its words say the peer may have gone away, not that it
    refused our certificate; before any data they still name the certificate."""
    mesh = Mesh()
    async with stream_pair(mesh) as (client, server):
        await server.send_all(b"hello")
        assert await client.receive_some() == b"hello"
        server.socket.close()  # a FIN with no close_notify, as from a process that died
        with pytest.raises(meshtls.PeerRejectedError) as raised:
            await client.receive_some()
    assert "went away" in str(raised.value)
    assert "certificate" not in str(raised.value)


# ---------------------------------------------------------------- close_notify flushed (issue 11)


async def _read_to_the_end(stream: meshtls.MeshStream) -> bytes:
    received = bytearray()
    while chunk := await stream.receive_some():
        received.extend(chunk)
    return bytes(received)


def _fill(stream: meshtls.MeshStream) -> None:
    """Small kernel buffers, so that a reply fills them while its reader is not reading."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)


async def test_aclose_waits_for_the_socket_to_take_close_notify() -> None:
    """The server's engine holds more than the socket can take (as a send_all that returned
    would have left it, had the kernel taken less) when it closes, and the client is not
    reading yet: `aclose` waits for room, so the client reads every byte and then a clean
    end (b""), never a truncation."""
    mesh = Mesh()
    async with stream_pair(mesh) as (client, server):
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        _fill(server)
        received = bytearray()

        async def read_later() -> None:
            await trio.sleep(0.2)  # aclose below is waiting on a full socket meanwhile
            received.extend(await _read_to_the_end(client))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_later)
            server._session.write(REPLY)
            with trio.fail_after(5):
                await server.aclose()
        assert bytes(received) == REPLY


async def test_aclose_gives_up_after_close_notify_timeout_when_the_peer_never_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only the close_notify is stuck, behind data the client never reads: aclose waits
    CLOSE_NOTIFY_TIMEOUT (Trio's clock jumps there), then resets the socket, so the client
    reads an error after the data, never a clean end."""
    mesh = Mesh()
    async with stream_pair(mesh) as (client, server):
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _fill(server)
        # records the engine holds for the socket, ahead of the close_notify (as a send_all
        # that returned would have left them, had the kernel taken less)
        server._session.write(REPLY * 4)
        started = trio.current_time()
        await server.aclose()
        assert trio.current_time() - started >= CLOSE_NOTIFY_TIMEOUT
        with pytest.raises(trio.BrokenResourceError):
            await _read_to_the_end(client)


@pytest.mark.parametrize("ending", ["close_notify", "reset"])
async def test_an_exchange_that_ends_leaves_no_reference_cycle(ending: str) -> None:
    """Each stream, its session and its socket are freed by reference counting alone once
    the echo exchange ends, with close_notify both ways or with the client's reset (the
    server's stream then keeps what broke it): none waits for the cyclic collector
    (which, with one cycle per connection, cost a full collection's pause every few
    thousand handshakes and kept closed sockets' memory until then)."""
    import gc
    import weakref

    mesh = Mesh()
    streams: list[weakref.ref[object]] = []
    served = trio.Semaphore(0)
    broken: list[bool] = []

    async def echo(stream: meshtls.MeshStream) -> None:
        streams.append(weakref.ref(stream._session._tls))  # MeshStream has no __weakref__
        streams.append(weakref.ref(stream._sock))
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        except trio.BrokenResourceError:
            broken.append(stream.broken)
        served.release()

    gc.collect()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, echo, source=mesh.server)
            for _ in range(3):
                client = await meshtls.connect(
                    "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
                )
                streams.append(weakref.ref(client._session._tls))
                await client.send_all(b"x")
                assert await client.receive_some() == b"x"
                if ending == "reset":
                    client.abort()
                else:
                    await client.aclose()
                del client
                await served.acquire()
            await trio.testing.wait_all_tasks_blocked()  # the handler tasks have ended
            nursery.cancel_scope.cancel()
        assert broken == ([True] * 3 if ending == "reset" else [])
        assert len(streams) == 9
        assert [ref() for ref in streams] == [None] * 9
    finally:
        gc.enable()
