"""Tunnels: forward (plaintext in, mTLS out) -> expose (mTLS in, plaintext out) -> backend."""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import meshtls
from meshtls._authorize import IdPattern, authorize_patterns
from meshtls._tunnel import expose, forward

from .hostile import EDI_PARTY_NAME, san_with, server_context, write_pem
from .meshnet import Mesh

CLIENT = "spiffe://example.org/client"
SERVER = "spiffe://example.org/server"


@contextmanager
def http_backend() -> Iterator[int]:
    """A real HTTP server (stdlib) on 127.0.0.1, in a thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def first_port(listeners: list[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port


@asynccontextmanager
async def tunnel_pair(
    mesh: Mesh,
    backend: int,
    *,
    allow: meshtls.Authorizer | None = None,
    expect: str = SERVER,
    cap: int = 1024,
    peer_port: int | None = None,
    connect_timeout: float = 10.0,
) -> AsyncIterator[int]:
    """An expose in front of `backend` and a forward to it (or to `peer_port`); yields the
    forward's port."""
    async with trio.open_nursery() as nursery:
        expose_listeners = await nursery.start(
            functools.partial(
                expose,
                ("127.0.0.1", 0),
                ("127.0.0.1", backend),
                source=mesh.server,
                authorize=allow or meshtls.authorize_id(CLIENT),
                max_connections=cap,
                connect_timeout=connect_timeout,
            ),
        )
        forward_listeners = await nursery.start(
            functools.partial(
                forward,
                ("127.0.0.1", 0),
                ("127.0.0.1", peer_port or first_port(expose_listeners)),
                authorize=meshtls.authorize_id(expect),
                source=mesh.client,
                connect_timeout=connect_timeout,
            ),
        )
        yield first_port(forward_listeners)
        nursery.cancel_scope.cancel()


async def test_curl_through_forward_and_expose() -> None:
    mesh = Mesh()
    with http_backend() as backend:
        async with tunnel_pair(mesh, backend) as port:
            with trio.fail_after(10):
                done = await trio.run_process(
                    ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}/through/the/mesh"],
                    capture_stdout=True,
                    capture_stderr=True,
                )
    assert done.stdout == b"hello from /through/the/mesh"


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


@asynccontextmanager
async def counting_backend(connected: trio.Event | None = None) -> AsyncIterator[int]:
    """Reads until EOF, then answers with the byte count: needs half-close to work.
    Sets `connected` when a connection arrives."""

    async def handler(stream: trio.SocketStream) -> None:
        if connected is not None:
            connected.set()
        received = await read_all(stream)
        await stream.send_all(f"{len(received)}:".encode() + received[-16:])

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_half_close_and_a_large_transfer_pass_through() -> None:
    mesh = Mesh()
    payload = bytes(range(256)) * 32768  # 8 MiB: backpressure, ordering, integrity
    async with counting_backend() as backend, tunnel_pair(mesh, backend) as port:
        with trio.fail_after(30):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            async with client:
                await client.send_all(payload)
                await client.send_eof()  # only now does the backend answer
                answer = await read_all(client)
    assert answer == f"{len(payload)}:".encode() + payload[-16:]


async def test_expose_allow_list_refuses_other_ids() -> None:
    mesh = Mesh()
    with http_backend() as backend:
        only_batch = meshtls.authorize_id("spiffe://example.org/batch")
        async with tunnel_pair(mesh, backend, allow=only_batch) as port:
            with trio.fail_after(10):
                client = await trio.open_tcp_stream("127.0.0.1", port)
                async with client:
                    await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
                    assert await read_all_or_broken(client) == b""


async def test_forward_expect_refuses_the_wrong_server() -> None:
    mesh = Mesh()
    with http_backend() as backend:
        async with tunnel_pair(mesh, backend, expect="spiffe://example.org/elsewhere") as port:
            with trio.fail_after(10):
                client = await trio.open_tcp_stream("127.0.0.1", port)
                async with client:
                    await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
                    assert await read_all_or_broken(client) == b""


async def read_all_or_broken(stream: trio.abc.ReceiveStream) -> bytes:
    try:
        return await read_all(stream)
    except trio.BrokenResourceError:
        return b""


async def test_expose_connection_cap() -> None:
    """One tunnel at a time: the second peer is reset at once (it sees an error, never a
    clean EOF), the first is untouched."""
    mesh = Mesh()
    connected = trio.Event()
    async with counting_backend(connected) as backend, tunnel_pair(mesh, backend, cap=1) as port:
        with trio.fail_after(10):
            first = await trio.open_tcp_stream("127.0.0.1", port)
            async with first:
                await first.send_all(b"held open")
                await connected.wait()  # the first tunnel holds the only place
                second = await trio.open_tcp_stream("127.0.0.1", port)
                async with second:
                    try:
                        await second.send_all(b"x")
                        await second.send_eof()
                    except trio.BrokenResourceError:
                        ended = "reset"
                    else:
                        received, ended = await read_until_end(second)
                        assert received == b""
                    assert ended != "eof", "refused at the cap, yet a clean EOF"
                await first.send_eof()
                assert await read_all(first) == b"9:held open"


@pytest.mark.parametrize("limit", [0, -1])
async def test_bad_caps_are_refused(limit: int) -> None:
    mesh = Mesh()
    with pytest.raises(ValueError, match="cap"):
        await expose(
            ("127.0.0.1", 0),
            ("127.0.0.1", 9),
            source=mesh.server,
            authorize=meshtls.authorize_any(),
            max_connections=limit,
        )


# ---------------------------------------------------------------- no byte lost quietly (issue 7)


async def test_soak_20_clients_half_of_them_half_closing_lose_nothing() -> None:
    """benchmarks/tunnel_soak.py with 20 clients: a backend that talks at once while half
    of its clients half-close mid-reply. Today's main loses the rest of the reply of
    most half-closing clients behind a clean EOF."""
    from benchmarks.tunnel_soak import soak

    with trio.fail_after(60):
        report = await soak(20, upload=256 * 1024, download=1024 * 1024)
    assert report.ok, "\n".join(report.lines())
    assert report.client_bytes_in == report.backend_bytes_out == 20 * 1024 * 1024
    assert report.backend_bytes_in == report.client_bytes_out  # every upload was checked


async def read_until_end(stream: trio.abc.ReceiveStream) -> tuple[bytes, str]:
    """Everything received, and how the stream ended: "eof" or the exception's name."""
    received = bytearray()
    try:
        while data := await stream.receive_some():
            received += data
    except (trio.BrokenResourceError, OSError) as exc:
        return bytes(received), type(exc).__name__
    return bytes(received), "eof"


def reset(stream: trio.SocketStream) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing peer does."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


@asynccontextmanager
async def backend(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_a_backend_that_crashes_mid_reply_resets_the_client() -> None:
    """The backend promises 1 MiB, sends 256 KiB and dies (RST). The client must see an
    error, never a clean EOF after a short reply."""
    mesh = Mesh()

    async def crashing(stream: trio.SocketStream) -> None:
        await stream.send_all(b"x" * (256 * 1024))
        reset(stream)

    async with backend(crashing) as port, tunnel_pair(mesh, port) as entry:
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", entry)
            async with client:
                received, ended = await read_until_end(client)
    assert len(received) < 1024 * 1024
    assert ended != "eof", f"a clean EOF after {len(received)} bytes"


async def test_a_tunnel_cancelled_mid_transfer_resets_the_client() -> None:
    """The expose side is shut down while a reply streams (a node stopping, a deadline):
    the client of the forward must see the cut, not a clean EOF."""
    mesh = Mesh()
    streaming = trio.Event()

    async def endless(stream: trio.SocketStream) -> None:
        streaming.set()
        with contextlib.suppress(trio.BrokenResourceError):  # until the expose is gone
            while True:
                await stream.send_all(b"y" * 65536)

    exposing = trio.CancelScope()

    async def run_expose(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with exposing:
            await expose(
                ("127.0.0.1", 0),
                ("127.0.0.1", port),
                source=mesh.server,
                authorize=meshtls.authorize_id(CLIENT),
                task_status=task_status,
            )

    async with backend(endless) as port, trio.open_nursery() as nursery:
        exposed = await nursery.start(run_expose)
        forwarded = await nursery.start(
            functools.partial(
                forward,
                ("127.0.0.1", 0),
                ("127.0.0.1", first_port(exposed)),
                authorize=meshtls.authorize_id(SERVER),
                source=mesh.client,
            )
        )
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", first_port(forwarded))
            async with client:
                assert await client.receive_some()
                await streaming.wait()
                exposing.cancel()  # the expose goes away mid-stream
                _, ended = await read_until_end(client)
        nursery.cancel_scope.cancel()
    assert ended != "eof"


@pytest.mark.parametrize("unreachable", ["peer", "backend"])
async def test_a_tunnel_that_cannot_reach_its_far_end_resets_the_client(unreachable: str) -> None:
    """The client's request went nowhere: it must not read a clean EOF as the answer."""
    mesh = Mesh()
    closed_port = free_port()
    async with backend(echo) as port:
        peer_port = closed_port if unreachable == "peer" else None
        backend_port = closed_port if unreachable == "backend" else port
        async with tunnel_pair(mesh, backend_port, peer_port=peer_port) as entry:
            with trio.fail_after(10):
                client = await trio.open_tcp_stream("127.0.0.1", entry)
                async with client:
                    try:
                        await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
                    except trio.BrokenResourceError as exc:  # the reset came first: seen here
                        received, ended = b"", type(exc).__name__
                    else:
                        received, ended = await read_until_end(client)
    assert received == b""
    assert ended != "eof", "the request went nowhere, yet the client read a clean EOF"


async def echo(stream: trio.SocketStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


def free_port() -> int:
    """A loopback port with nobody listening on it (a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_forward_survives_a_peer_whose_certificate_makes_the_verifier_raise(
    tmp_path: Path,
) -> None:
    """The forward's peer first presents a certificate whose SAN holds an EDIPartyName
    (cryptography raises `UnsupportedGeneralNameType`), then a good one. One plaintext
    client must not take the forward down: the first is reset, the second is served."""
    mesh = Mesh()
    bad = mesh.ca.issue(uris=(), extensions=[(san_with(SERVER, EDI_PARTY_NAME), False)])
    contexts = [
        server_context(write_pem(tmp_path, bad, "bad")),
        server_context(write_pem(tmp_path, mesh.ca.issue(SERVER), "good")),
    ]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def tls_echo(task_status: trio.TaskStatus[None]) -> None:
        async with listeners[0] as listener:
            task_status.started()
            for context in contexts:
                tls = trio.SSLStream(await listener.accept(), context, server_side=True)
                with contextlib.suppress(trio.BrokenResourceError):
                    async with tls:
                        while data := await tls.receive_some():
                            await tls.send_all(data)

    async with trio.open_nursery() as nursery:
        await nursery.start(tls_echo)
        forwarded = await nursery.start(
            functools.partial(
                forward,
                ("127.0.0.1", 0),
                ("127.0.0.1", first_port(listeners)),
                authorize=meshtls.authorize_id(SERVER),
                source=mesh.client,
            )
        )
        with trio.fail_after(10):
            for expected in ("reset", b"ping"):
                client = await trio.open_tcp_stream("127.0.0.1", first_port(forwarded))
                async with client:
                    try:
                        await client.send_all(b"ping")
                        await client.send_eof()
                    except trio.BrokenResourceError:
                        received, ended = b"", "reset"
                    else:
                        received, ended = await read_until_end(client)
                    assert (received or ("reset" if ended != "eof" else ended)) == expected
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- deadlines on the dials


@pytest.fixture
def jumping_clock() -> trio.testing.MockClock:
    """pytest-trio runs the test on any fixture that is a `trio.abc.Clock`."""
    return trio.testing.MockClock(autojump_threshold=0.05)


@contextmanager
def black_hole() -> Iterator[int]:
    """A loopback port whose TCP connects never complete: backlog 0, already taken once."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # the one place in the accept queue
        yield listener.getsockname()[1]


async def test_expose_gives_up_on_a_backend_that_never_answers(
    jumping_clock: trio.testing.MockClock,
) -> None:
    """`connect_timeout` bounds expose's dial to its backend (default 10 s); the client of
    the forward is then reset, exactly that much Trio time after it connected."""
    mesh = Mesh()
    with black_hole() as port:
        async with tunnel_pair(mesh, port, connect_timeout=3.0) as entry:
            client = await trio.open_tcp_stream("127.0.0.1", entry)
            started = trio.current_time()
            async with client:
                with trio.fail_after(60):
                    _, ended = await read_until_end(client)
            waited = trio.current_time() - started
    assert ended != "eof"
    assert waited == pytest.approx(3.0, abs=0.05)


async def test_forward_gives_up_on_a_peer_that_never_answers_its_handshake(
    jumping_clock: trio.testing.MockClock,
) -> None:
    """`connect_timeout` bounds forward's dial and handshake with its peer."""
    mesh = Mesh()

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with (
        backend(silent) as peer,
        tunnel_pair(mesh, 9, peer_port=peer, connect_timeout=4.0) as entry,
    ):
        client = await trio.open_tcp_stream("127.0.0.1", entry)
        started = trio.current_time()
        async with client:
            with trio.fail_after(60):
                _, ended = await read_until_end(client)
        waited = trio.current_time() - started
    assert ended != "eof"
    assert waited == pytest.approx(4.0, abs=0.05)


@pytest.mark.parametrize("seconds", [0.0, -1.0])
async def test_bad_connect_timeouts_are_refused(seconds: float) -> None:
    mesh = Mesh()
    with pytest.raises(ValueError, match="connect_timeout"):
        await expose(
            ("127.0.0.1", 0),
            ("127.0.0.1", 9),
            source=mesh.server,
            authorize=meshtls.authorize_any(),
            connect_timeout=seconds,
        )
    with pytest.raises(ValueError, match="connect_timeout"):
        await forward(
            ("127.0.0.1", 0),
            ("127.0.0.1", 9),
            authorize=meshtls.authorize_id(SERVER),
            source=mesh.client,
            connect_timeout=seconds,
        )


@pytest.mark.parametrize(
    ("allow", "expect", "passes"),
    [
        ("spiffe://example.org", "spiffe://example.org", True),  # membership both ways
        ("spiffe://example.org/client/*", "spiffe://example.org/server/*", True),  # the id itself
        ("spiffe://example.org/ns/*", "spiffe://example.org/server", False),  # client not under
        ("spiffe://other.org", "spiffe://example.org/server", False),
        ("spiffe://example.org/client", "spiffe://example.org/serv/*", False),  # not /server
    ],
)
async def test_allow_and_expect_patterns_through_a_tunnel(
    allow: str, expect: str, passes: bool
) -> None:
    mesh = Mesh()
    allowed = authorize_patterns(IdPattern.parse(allow))
    async with counting_backend() as backend, trio.open_nursery() as nursery:
        exposed = await nursery.start(
            functools.partial(
                expose,
                ("127.0.0.1", 0),
                ("127.0.0.1", backend),
                source=mesh.server,
                authorize=allowed,
            )
        )
        forwarded = await nursery.start(
            functools.partial(
                forward,
                ("127.0.0.1", 0),
                ("127.0.0.1", first_port(exposed)),
                authorize=authorize_patterns(IdPattern.parse(expect)),
                source=mesh.client,
            )
        )
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", first_port(forwarded))
            async with client:
                try:  # a refusal may reset the client before it has sent or half-closed
                    await client.send_all(b"abc")
                    await client.send_eof()
                    answer = await read_all(client)
                except trio.BrokenResourceError:
                    answer = b""
        nursery.cancel_scope.cancel()
    assert answer == (b"3:abc" if passes else b"")
