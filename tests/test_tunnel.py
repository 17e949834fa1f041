"""Tunnels: forward (plaintext in, mTLS out) -> expose (mTLS in, plaintext out) -> backend."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio

import meshtls
from meshtls._tunnel import expose, forward

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
) -> AsyncIterator[int]:
    """An expose in front of `backend` and a forward to it; yields the forward's port."""
    async with trio.open_nursery() as nursery:
        expose_listeners = await nursery.start(
            functools.partial(
                expose,
                ("127.0.0.1", 0),
                ("127.0.0.1", backend),
                source=mesh.server,
                authorize=allow or meshtls.authorize_id(CLIENT),
                max_connections=cap,
            ),
        )
        forward_listeners = await nursery.start(
            functools.partial(
                forward,
                ("127.0.0.1", 0),
                ("127.0.0.1", first_port(expose_listeners)),
                expect=expect,
                source=mesh.client,
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
async def counting_backend() -> AsyncIterator[int]:
    """Reads until EOF, then answers with the byte count: needs half-close to work."""

    async def handler(stream: trio.SocketStream) -> None:
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
    mesh = Mesh()
    async with counting_backend() as backend, tunnel_pair(mesh, backend, cap=1) as port:
        with trio.fail_after(10):
            first = await trio.open_tcp_stream("127.0.0.1", port)
            async with first:
                await first.send_all(b"held open")
                await trio.sleep(0.2)  # let the first tunnel take the only place
                second = await trio.open_tcp_stream("127.0.0.1", port)
                async with second:
                    await second.send_all(b"x")
                    await second.send_eof()
                    assert await read_all_or_broken(second) == b""  # refused at the cap
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
