"""Tunnel soak: forward -> expose -> a backend that talks while its clients half-close.

    python benchmarks/tunnel_soak.py [--clients 200] [--upload 262144] [--download 1048576]

Every client dials the `forward` listener, whose mTLS connection goes to an `expose`,
whose plaintext connection goes to the backend, all on 127.0.0.1 in this process.
The backend starts sending its reply (``--download`` bytes) the moment a connection
arrives, and reads the client's upload (``--upload`` bytes) at the same time. Half of
the clients half-close: they send their upload, call ``send_eof()`` at once while the
reply is still streaming, then read the reply to its end; the backend checks that their
EOF arrives after the whole upload. The other half read the whole reply, then close.

Each payload is a 16-byte nonce followed by SHAKE-256 of it, so each end checks every
byte it received, in order, against what the other end sent. Printed: bytes in and out
at the clients and at the backend, quiet losses (a clean EOF after a short or wrong
transfer) and errors (an exception at any end). Exits 1 on any loss or error.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

import meshtls
from meshtls._tunnel import expose, forward
from meshtls.testing import CA

CLIENT_ID = "spiffe://example.org/soak-client"
SERVER_ID = "spiffe://example.org/soak-server"
HEADER = 16 + 8 + 1  # nonce, upload length, 1 if the client half-closes
CHUNK = 65536
#: Seconds the backends get, once every client is done, to finish checking what they got.
BACKEND_GRACE = 10.0


@dataclass
class Report:
    """What a soak saw. ``ok`` when nothing was lost and nothing failed."""

    clients: int = 0
    half_closing: int = 0
    client_bytes_out: int = 0
    client_bytes_in: int = 0
    backend_bytes_in: int = 0
    backend_bytes_out: int = 0
    backends_finished: int = 0
    quiet_losses: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.quiet_losses == 0 and not self.errors

    def lines(self) -> list[str]:
        errors = ", ".join(f"{name} x{count}" for name, count in self.errors.most_common())
        return [
            f"clients {self.clients} ({self.half_closing} half-closing) in {self.seconds:.2f} s",
            f"clients: bytes out {self.client_bytes_out}, bytes in {self.client_bytes_in}",
            f"backend: bytes in {self.backend_bytes_in}, bytes out {self.backend_bytes_out}",
            f"quiet losses {self.quiet_losses}",
            f"errors {sum(self.errors.values())}" + (f": {errors}" if errors else ""),
        ]


def expected(nonce: bytes, length: int) -> bytes:
    """The payload of `length` bytes that starts with `nonce`."""
    return nonce + hashlib.shake_256(nonce).digest(max(length - len(nonce), 0))


async def receive_exactly(stream: trio.abc.ReceiveStream, length: int) -> bytes:
    """`length` bytes, or fewer if the stream ends first (EOF)."""
    data = bytearray()
    while len(data) < length:
        chunk = await stream.receive_some(min(CHUNK, length - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def receive_to_eof(stream: trio.abc.ReceiveStream, received: Callable[[int], None]) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(CHUNK):
        data += chunk
        received(len(chunk))
    return bytes(data)


async def send_in_chunks(
    stream: trio.abc.SendStream, data: bytes, sent: Callable[[int], None]
) -> None:
    for start in range(0, len(data), CHUNK):
        chunk = data[start : start + CHUNK]
        await stream.send_all(chunk)
        sent(len(chunk))


def _error(report: Report, where: str, exc: BaseException) -> None:
    """Count `exc` by type (each leaf of an exception group: which failure, not how many)."""
    if isinstance(exc, BaseExceptionGroup):
        for leaf in exc.exceptions:
            _error(report, where, leaf)
        return
    report.errors[f"{where}: {type(exc).__name__}"] += 1


async def backend(
    report: Report, download: int, finished: Callable[[], None], stream: trio.SocketStream
) -> None:
    """Talk at once; listen at the same time; check the upload and, if promised, its EOF.
    Calls `finished` once it has judged this connection (not when it is cancelled)."""
    reply = expected(os.urandom(16), download)

    def sent(count: int) -> None:
        report.backend_bytes_out += count

    async def talk() -> None:
        await send_in_chunks(stream, reply, sent)
        await stream.send_eof()

    async def listen() -> None:
        header = await receive_exactly(stream, HEADER)
        report.backend_bytes_in += len(header)
        if len(header) < HEADER:
            report.quiet_losses += 1
            return
        nonce, length, half_closes = header[:16], int.from_bytes(header[16:24]), header[24]
        body = await receive_exactly(stream, length)
        report.backend_bytes_in += len(body)
        if body != expected(nonce, length):
            report.quiet_losses += 1
        elif half_closes and await stream.receive_some(CHUNK) != b"":
            report.quiet_losses += 1  # more bytes after the upload: out of step

    try:
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(talk)
            nursery.start_soon(listen)
    except Exception as exc:
        _error(report, "backend", exc)
    report.backends_finished += 1
    finished()


async def client(report: Report, port: int, upload: int, download: int, half_close: bool) -> None:
    nonce = os.urandom(16)
    body = expected(nonce, upload)
    message = nonce + len(body).to_bytes(8) + bytes([half_close]) + body

    def sent(count: int) -> None:
        report.client_bytes_out += count

    def received(count: int) -> None:
        report.client_bytes_in += count

    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            reply = b""

            async def send() -> None:
                await send_in_chunks(stream, message, sent)
                if half_close:
                    await stream.send_eof()

            async def receive() -> None:
                nonlocal reply
                reply = await receive_to_eof(stream, received)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                nursery.start_soon(receive)
        if len(reply) != download or reply != expected(reply[:16], download):
            report.quiet_losses += 1  # a clean EOF, yet not the whole reply
    except Exception as exc:
        _error(report, "client", exc)


def _identities() -> tuple[meshtls.StaticSource, meshtls.StaticSource]:
    ca = CA("example.org", now=datetime.now(UTC))
    bundles = ca.bundle_set()
    return (
        meshtls.StaticSource(ca.issue(SERVER_ID).svid(), bundles),
        meshtls.StaticSource(ca.issue(CLIENT_ID).svid(), bundles),
    )


async def soak(clients: int, *, upload: int, download: int) -> Report:
    """Run `clients` clients at once through forward -> expose -> backend; every other
    client half-closes. Returns the report; raises only if the tunnel cannot start."""
    server, client_source = _identities()
    report = Report(clients=clients, half_closing=clients // 2)
    all_finished = trio.Event()

    def finished() -> None:
        if report.backends_finished == clients:
            all_finished.set()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        backend_listeners = await nursery.start(
            functools.partial(
                trio.serve_tcp,
                functools.partial(backend, report, download, finished),
                0,
                host="127.0.0.1",
            )
        )
        exposed = await nursery.start(
            functools.partial(
                expose,
                ("127.0.0.1", 0),
                ("127.0.0.1", backend_listeners[0].socket.getsockname()[1]),
                source=server,
                authorize=meshtls.authorize_id(CLIENT_ID),
                max_connections=clients,
            )
        )
        forwarded = await nursery.start(
            functools.partial(
                forward,
                ("127.0.0.1", 0),
                ("127.0.0.1", exposed[0].socket.getsockname()[1]),
                authorize=meshtls.authorize_id(SERVER_ID),
                source=client_source,
                max_connections=clients,
            )
        )
        port = forwarded[0].socket.getsockname()[1]
        async with trio.open_nursery() as crowd:
            for index in range(clients):
                crowd.start_soon(client, report, port, upload, download, index % 2 == 0)
        # A client is done once it has the reply's EOF, which can come before its backend
        # has read the whole upload: the backends' checks must finish, not be cancelled.
        with trio.move_on_after(BACKEND_GRACE):
            await all_finished.wait()
        if report.backends_finished < clients:
            report.errors["backend: unfinished"] += clients - report.backends_finished
        nursery.cancel_scope.cancel()
    report.seconds = time.perf_counter() - started
    return report


def raise_descriptor_limit(needed: int) -> None:
    """Six descriptors per client live in this process (both ends of three hops)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--upload", type=int, default=256 * 1024, help="bytes per client")
    parser.add_argument("--download", type=int, default=1024 * 1024, help="bytes per client")
    args = parser.parse_args(argv)
    raise_descriptor_limit(6 * args.clients + 256)
    report = trio.run(
        functools.partial(soak, args.clients, upload=args.upload, download=args.download)
    )
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
