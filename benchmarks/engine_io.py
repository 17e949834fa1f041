"""How should a pyOpenSSL engine move its bytes on trio? Memory BIOs against the socket.

    python benchmarks/engine_io.py [--count 300] [--rounds 5] [--json FILE]

Issue 11 asks to measure, before an engine is written, two ways to run pyOpenSSL (on the
OpenSSL 4 that cryptography bundles) under trio, and keep the faster:

- ``membio``: ``Connection(ctx, None)``. The engine pumps ciphertext between OpenSSL's
  memory BIOs and a `trio.SocketStream` (``bio_read`` -> ``send_all``,
  ``receive_some`` -> ``bio_write``).
- ``membio-raw``: the same memory BIOs, but the bytes move by the nonblocking stdlib
  socket's own ``send``/``recv``, waiting only on ``BlockingIOError``: how `MeshStream`
  drives `_tls.TlsSession` today, so the mode an engine behind `TlsSession` would run in.
- ``socket``: ``Connection(ctx, sock)`` on trio's nonblocking socket. OpenSSL reads and
  writes the file descriptor itself; ``WantReadError`` -> ``trio.lowlevel.wait_readable``,
  ``WantWriteError`` -> ``wait_writable``.

Each is a lean loop (no SPIFFE checks, no meshtls), measured with X25519 and with the
hybrid ``X25519MLKEM768`` first, beside bare `trio.SSLStream` (stdlib ``ssl``, the system's
OpenSSL) in the same run, rounds interleaved with a rotating start. The unit of work is
`meshtls bench handshake`'s: connect, TLS 1.3 mutual handshake (chains verified against
the bundle, no resumption), one byte echoed (the latency ends there), the client's
close_notify, close. Server and client run in one trio loop in this process, so a
handshake's CPU is both sides'. The certificates are the bench's (`make_identity`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Final, Protocol, cast

import trio
from OpenSSL import SSL

from meshtls import _ossl
from meshtls._bench import HOST, Identity, make_identity, pyopenssl_context

WARMUP: Final = 5
GROUPS: Final = {"x25519": "X25519", "hybrid": _ossl.DEFAULT_GROUPS}  # hybrid, then X25519


# ---------------------------------------------------------------- memory BIOs


class Pipe(Protocol):
    """Where a memory-BIO engine's ciphertext goes and comes from."""

    async def send(self, data: bytes) -> None: ...
    async def recv(self) -> bytes: ...  # b"" at EOF


class StreamPipe:
    """Through trio's `SocketStream` (a checkpoint per call, even when nothing blocks)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self) -> bytes:
        return await self.stream.receive_some(65536)


class RawPipe:
    """Through the nonblocking stdlib socket, waiting only on ``BlockingIOError``: the
    loop `MeshStream` runs today (`_stream._send_all`, `_stream._recv`)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.sock = socket.socket(fileno=stream.socket.detach())
        self.sock.setblocking(False)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def recv(self) -> bytes:
        while True:
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)

    def close(self) -> None:
        self.sock.close()


def _take(conn: SSL.Connection) -> bytes:
    try:
        return conn.bio_read(65536)
    except SSL.WantReadError:
        return b""


async def _flush(conn: SSL.Connection, pipe: Pipe) -> None:
    if data := _take(conn):
        await pipe.send(data)


async def membio_handshake(conn: SSL.Connection, pipe: Pipe) -> None:
    while True:
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            await _flush(conn, pipe)
            data = await pipe.recv()
            if not data:
                raise trio.BrokenResourceError("the peer closed the connection") from None
            conn.bio_write(data)
        else:
            await _flush(conn, pipe)
            return


async def membio_recv(conn: SSL.Connection, pipe: Pipe, size: int) -> bytes:
    """Plaintext, or b"" at the peer's close_notify (or EOF, which a real engine refuses)."""
    while True:
        try:
            return conn.recv(size)
        except SSL.WantReadError:
            data = await pipe.recv()
            if not data:
                return b""
            conn.bio_write(data)
        except SSL.ZeroReturnError:
            return b""


async def membio_send(conn: SSL.Connection, pipe: Pipe, data: bytes) -> None:
    conn.sendall(data)  # memory BIOs take everything
    await _flush(conn, pipe)


async def _membio_serve(ctx: SSL.Context, pipe: Pipe) -> None:
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    await membio_handshake(conn, pipe)
    while data := await membio_recv(conn, pipe, 65536):
        await membio_send(conn, pipe, data)


async def _membio_visit(ctx: SSL.Context, pipe: Pipe, start: float) -> float:
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    await membio_handshake(conn, pipe)
    await membio_send(conn, pipe, b"x")
    if await membio_recv(conn, pipe, 1) != b"x":
        raise RuntimeError("no echo")
    latency = time.perf_counter() - start
    conn.shutdown()
    await _flush(conn, pipe)
    return latency


async def membio_server(ctx: SSL.Context, stream: trio.SocketStream) -> None:
    async with stream:
        await _membio_serve(ctx, StreamPipe(stream))


async def membio_client(ctx: SSL.Context, port: int) -> float:
    start = time.perf_counter()
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        return await _membio_visit(ctx, StreamPipe(stream), start)


async def membio_raw_server(ctx: SSL.Context, stream: trio.SocketStream) -> None:
    pipe = RawPipe(stream)
    try:
        await _membio_serve(ctx, pipe)
    finally:
        pipe.close()


async def membio_raw_client(ctx: SSL.Context, port: int) -> float:
    start = time.perf_counter()
    pipe = RawPipe(await trio.open_tcp_stream(HOST, port))
    try:
        return await _membio_visit(ctx, pipe, start)
    finally:
        pipe.close()


# ---------------------------------------------------------------- OpenSSL on the socket


async def _wait(sock: trio.socket.SocketType, exc: SSL.Error) -> None:
    if isinstance(exc, SSL.WantWriteError):
        await trio.lowlevel.wait_writable(sock)
    else:
        await trio.lowlevel.wait_readable(sock)


async def socket_handshake(conn: SSL.Connection, sock: trio.socket.SocketType) -> None:
    while True:
        try:
            conn.do_handshake()
        except (SSL.WantReadError, SSL.WantWriteError) as exc:
            await _wait(sock, exc)
        else:
            return


async def socket_recv(conn: SSL.Connection, sock: trio.socket.SocketType, size: int) -> bytes:
    while True:
        try:
            return conn.recv(size)
        except (SSL.WantReadError, SSL.WantWriteError) as exc:
            await _wait(sock, exc)
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError:
            return b""  # EOF without close_notify: a real engine raises BrokenResourceError


async def socket_send(conn: SSL.Connection, sock: trio.socket.SocketType, data: bytes) -> None:
    """`send` with an offset: `sendall` cannot say how much left on a nonblocking socket."""
    view = memoryview(data)
    while view:
        try:
            view = view[conn.send(view) :]
        except (SSL.WantReadError, SSL.WantWriteError) as exc:
            await _wait(sock, exc)


async def socket_shutdown(conn: SSL.Connection, sock: trio.socket.SocketType) -> None:
    while True:
        try:
            conn.shutdown()
        except (SSL.WantReadError, SSL.WantWriteError) as exc:
            await _wait(sock, exc)
        else:
            return


def _raw(sock: trio.socket.SocketType) -> socket.socket:
    """pyOpenSSL only takes the descriptor (``SSL_set_fd``) of trio's nonblocking socket."""
    return cast(socket.socket, sock)


async def socket_server(ctx: SSL.Context, stream: trio.SocketStream) -> None:
    async with stream:
        conn = SSL.Connection(ctx, _raw(stream.socket))
        conn.set_accept_state()
        await socket_handshake(conn, stream.socket)
        while data := await socket_recv(conn, stream.socket, 65536):
            await socket_send(conn, stream.socket, data)


async def socket_client(ctx: SSL.Context, port: int) -> float:
    start = time.perf_counter()
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        conn = SSL.Connection(ctx, _raw(stream.socket))
        conn.set_connect_state()
        await socket_handshake(conn, stream.socket)
        await socket_send(conn, stream.socket, b"x")
        if await socket_recv(conn, stream.socket, 1) != b"x":
            raise RuntimeError("no echo")
        latency = time.perf_counter() - start
        await socket_shutdown(conn, stream.socket)
    return latency


# ---------------------------------------------------------------- bare trio.SSLStream


def trio_server(identity: Identity) -> Callable[[trio.SocketStream], Awaitable[None]]:
    context = identity.ssl_context("server")

    async def serve(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        async with tls:
            await tls.do_handshake()
            while data := await tls.receive_some():
                await tls.send_all(data)

    return serve


def trio_client(identity: Identity) -> Callable[[int], Awaitable[float]]:
    context = identity.ssl_context("client")

    async def one(port: int) -> float:
        start = time.perf_counter()
        tcp = await trio.open_tcp_stream(HOST, port)
        tls = trio.SSLStream(tcp, context, server_side=False, https_compatible=False)
        async with tls:
            await tls.do_handshake()
            await tls.send_all(b"x")
            if await tls.receive_some(1) != b"x":
                raise RuntimeError("no echo")
            return time.perf_counter() - start

    return one


# ---------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    server: Callable[[trio.SocketStream], Awaitable[None]]
    client: Callable[[int], Awaitable[float]]


def variants(identity: Identity) -> list[Variant]:
    found = [Variant("trio-sslstream", trio_server(identity), trio_client(identity))]
    for label, groups in GROUPS.items():
        server_ctx = pyopenssl_context(identity, "server", groups)
        client_ctx = pyopenssl_context(identity, "client", groups)
        found.append(
            Variant(
                f"pyopenssl-membio-{label}",
                functools.partial(membio_server, server_ctx),
                functools.partial(membio_client, client_ctx),
            )
        )
        found.append(
            Variant(
                f"pyopenssl-membio-raw-{label}",
                functools.partial(membio_raw_server, server_ctx),
                functools.partial(membio_raw_client, client_ctx),
            )
        )
        found.append(
            Variant(
                f"pyopenssl-socket-{label}",
                functools.partial(socket_server, server_ctx),
                functools.partial(socket_client, client_ctx),
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class Step:
    rate: float  # handshakes per second of wall time
    cpu_us: float  # process CPU per handshake (both sides)
    p50_ms: float


async def _step(variant: Variant, count: int) -> Step:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host=HOST), variant.server, 0
        )
        port = int(listeners[0].socket.getsockname()[1])
        for _ in range(WARMUP):
            await variant.client(port)
        latencies: list[float] = []
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            latencies.append(await variant.client(port))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    return Step(count / elapsed, 1e6 * cpu / count, 1e3 * statistics.median(latencies))


def _groups_check(identity: Identity) -> dict[str, str | None]:
    """The group each pyOpenSSL variant really negotiated (a membio pair, no sockets)."""
    found: dict[str, str | None] = {}
    for label, groups in GROUPS.items():
        server = SSL.Connection(pyopenssl_context(identity, "server", groups), None)
        client = SSL.Connection(pyopenssl_context(identity, "client", groups), None)
        server.set_accept_state()
        client.set_connect_state()
        for _ in range(4):
            for conn, peer in ((client, server), (server, client)):
                with contextlib.suppress(SSL.WantReadError):
                    conn.do_handshake()
                if data := _take(conn):
                    peer.bio_write(data)
        found[label] = _ossl.negotiated_group(client)
    return found


def run(count: int, rounds: int) -> dict[str, object]:
    with TemporaryDirectory(prefix="meshtls-engine-io-") as tmp:
        identity = make_identity(Path(tmp))
        all_variants = variants(identity)
        steps: dict[str, list[Step]] = {v.name: [] for v in all_variants}
        for index in range(rounds):
            turn = index % len(all_variants)
            for variant in all_variants[turn:] + all_variants[:turn]:
                steps[variant.name].append(trio.run(_step, variant, count))
        groups = _groups_check(identity)
    trio_steps = steps["trio-sslstream"]
    trio_rate = statistics.median(step.rate for step in trio_steps)
    rows = []
    for name, taken in steps.items():
        rate = statistics.median(step.rate for step in taken)
        per_round = [
            mine.rate / theirs.rate for mine, theirs in zip(taken, trio_steps, strict=True)
        ]
        rows.append(
            {
                "variant": name,
                "handshakes_per_second": round(rate, 1),
                "rounds": [round(step.rate, 1) for step in taken],
                "cpu_us_per_handshake": round(statistics.median(s.cpu_us for s in taken), 1),
                "p50_ms": round(statistics.median(s.p50_ms for s in taken), 3),
                "over_trio": round(rate / trio_rate, 3),
                # each round's ratio, the two measured minutes apart at most: robust to a
                # machine whose load changes between rounds
                "over_trio_per_round": round(statistics.median(per_round), 3),
                "cpu_over_trio": round(
                    statistics.median(s.cpu_us for s in trio_steps)
                    / statistics.median(s.cpu_us for s in taken),
                    3,
                ),
            }
        )
    return {
        "python": sys.version.split()[0],
        "pyopenssl_openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "count": count,
        "rounds": rounds,
        "negotiated": groups,
        "rows": rows,
    }


def render(report: dict[str, object]) -> str:
    lines = [
        f"python {report['python']}, {report['pyopenssl_openssl']} (pyOpenSSL);"
        f" {report['rounds']} rounds x {report['count']} sequential handshakes;"
        f" negotiated {report['negotiated']}",
        "",
        "| variant | handshakes/s | x trio | x trio per round | CPU µs/hs | x trio by CPU"
        " | p50 ms | rounds (hs/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = report["rows"]
    assert isinstance(rows, list)
    for row in rows:
        rounds = " ".join(f"{r:.0f}" for r in row["rounds"])
        lines.append(
            f"| {row['variant']} | {row['handshakes_per_second']:.0f} | {row['over_trio']:.2f}"
            f" | {row['over_trio_per_round']:.2f} | {row['cpu_us_per_handshake']:.0f}"
            f" | {row['cpu_over_trio']:.2f} | {row['p50_ms']:.3f} | {rounds} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=300, help="handshakes per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    report = run(args.count, args.rounds)
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
