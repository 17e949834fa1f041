"""P-5: no session resumption that skips verification.

A resumed TLS session carries no peer chain to verify, so meshtls never resumes. Its
server sends no TLS 1.3 ticket, except after a HelloRetryRequest, when OpenSSL 4 sends
two stateful ones (pyOpenSSL cannot reach ``SSL_CTX_set_num_tickets``): each is only a
key into the server's session cache, which is off, so a client that offers one gets a
full handshake in which its certificate is verified again (src/meshtls/_ossl.py). The peers are
independent of meshtls: Python's ``ssl`` (through `trio.SSLStream`) and the ``openssl``
CLI. Each test here fails if `_tls._context` turns tickets back on.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

import meshtls
from meshtls.testing import CA, IssuedCertificate

pytestmark = pytest.mark.openssl

WAIT = 5.0  # seconds: the bound on every wait for a peer
SERVER_ID = "spiffe://example.org/server"
CLIENT_ID = "spiffe://example.org/client"


@dataclass
class Identity:
    """One SVID as meshtls holds it and as the files an outside client reads."""

    issued: IssuedCertificate
    cert: Path  # the leaf (openssl's -cert); the whole chain for Python's load_cert_chain
    key: Path

    @property
    def spiffe_id(self) -> str:
        return str(self.issued.svid().spiffe_id)


@dataclass
class World:
    ca: CA
    bundle: Path  # example.org's roots, PEM
    server: Identity
    client: Identity
    intruder: Identity  # an id the server does not authorize


@pytest.fixture
def world(tmp_path: Path) -> World:
    # Real time: the openssl CLI checks validity against the wall clock.
    ca = CA("example.org", now=datetime.now(UTC))

    def identity(name: str, spiffe_id: str) -> Identity:
        issued = ca.issue(spiffe_id)
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert.write_bytes(issued.chain_pem)
        key.write_bytes(issued.key_pem)
        return Identity(issued, cert, key)

    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem)
    return World(
        ca=ca,
        bundle=bundle,
        server=identity("server", SERVER_ID),
        client=identity("client", CLIENT_ID),
        intruder=identity("intruder", "spiffe://example.org/intruder"),
    )


@dataclass
class Greeter:
    """A meshtls server whose handler greets each verified peer by its id, then closes."""

    port: int = 0
    greeted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    async def greet(self, stream: meshtls.MeshStream) -> None:
        self.greeted.append(str(stream.peer.spiffe_id))
        await stream.send_all(f"hello {stream.peer.spiffe_id}\n".encode())

    def on_rejected(self, exc: meshtls.HandshakeError) -> None:
        self.rejected.append(exc.reason)


@pytest.fixture
async def greeter(world: World) -> AsyncIterator[Greeter]:
    greeter = Greeter()
    source = meshtls.StaticSource(world.server.issued.svid(), world.ca.bundle_set())
    serve = functools.partial(
        meshtls.serve,
        greeter.greet,
        0,
        host="127.0.0.1",
        source=source,
        authorize=meshtls.authorize_id(CLIENT_ID),
        on_rejected=greeter.on_rejected,
    )
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(serve)
        greeter.port = listeners[0].socket.getsockname()[1]
        yield greeter
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- Python's ssl as the client


def python_client_context(world: World, who: Identity) -> ssl.SSLContext:
    """A plain stdlib TLS 1.3 client context: tickets welcome, as by default."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # SPIFFE names the server by URI SAN, not by host name
    context.load_verify_locations(cafile=world.bundle)
    context.load_cert_chain(who.cert, who.key)
    return context


@dataclass(frozen=True)
class Visit:
    greeting: bytes
    session: ssl.SSLSession | None
    reused: bool


async def python_visit(
    port: int, context: ssl.SSLContext, *, offer: ssl.SSLSession | None = None
) -> Visit:
    """Connect (offering the session `offer`, if any), read until the server closes."""
    with trio.fail_after(WAIT):
        tls = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context)
        if offer is not None:
            tls.session = offer
        async with tls:
            await tls.do_handshake()
            greeting = b""
            # Any NewSessionTicket comes right after the handshake, before the greeting.
            while chunk := await tls.receive_some():
                greeting += chunk
            session: ssl.SSLSession | None = tls.session
            reused: bool = tls.session_reused
        return Visit(greeting, session, reused)


async def test_P_5_the_server_gives_python_ssl_no_session_ticket(
    world: World, greeter: Greeter
) -> None:
    context = python_client_context(world, world.client)
    first = await python_visit(greeter.port, context)
    assert first.greeting == f"hello {CLIENT_ID}\n".encode()
    assert first.session is not None
    assert not first.session.has_ticket  # the server sent none
    assert not first.reused

    # Offering that session (it holds no ticket) resumes nothing: a full handshake,
    # verified again.
    second = await python_visit(greeter.port, context, offer=first.session)
    assert second.greeting == first.greeting
    assert not second.reused
    assert greeter.greeted == [CLIENT_ID, CLIENT_ID]
    assert greeter.rejected == []


# ---------------------------------------------------------------- the openssl CLI


async def openssl(*argv: str, stdin: bytes = b"") -> str:
    """Run one ``openssl`` command to its end (bounded); stdout and stderr, merged."""
    with trio.fail_after(WAIT):
        done = await trio.run_process(
            ["openssl", *argv],
            stdin=stdin,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return done.stdout.decode(errors="replace")


async def s_client(port: int, world: World, who: Identity, *args: str, stdin: bytes = b"") -> str:
    """``openssl s_client`` as `who`, TLS 1.3: sends `stdin`, reads until the server closes."""
    return await openssl(
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-noservername",
        "-tls1_3",
        "-ign_eof",
        "-cert",
        str(who.cert),
        "-key",
        str(who.key),
        "-CAfile",
        str(world.bundle),
        *args,
        stdin=stdin,
    )


@contextlib.asynccontextmanager
async def ticket_issuing_server(world: World) -> AsyncIterator[int]:
    """An ``openssl s_server -www`` with our server's identity that issues TLS 1.3 tickets.

    Yields its port. ``-www`` answers ``GET /`` with a page that says whether the
    handshake was ``New`` or ``Reused``. s_server cannot take port 0, so it is given a port
    that was free a moment ago (a clash fails the test loudly, never silently).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    argv = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-www", "-tls1_3"]
    argv += ["-num_tickets", "2", "-Verify", "1", "-CAfile", str(world.bundle)]
    argv += ["-cert", str(world.server.cert), "-key", str(world.server.key)]
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    try:
        output = b""
        with trio.fail_after(WAIT):
            while b"ACCEPT" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, output.decode(errors="replace")
                output += chunk
        yield port
    finally:
        process.kill()
        with trio.move_on_after(WAIT) as scope:
            scope.shield = True
            await process.wait()
        await process.stdout.aclose()


async def test_P_5_openssl_s_client_gets_no_ticket(
    world: World, greeter: Greeter, tmp_path: Path
) -> None:
    saved = tmp_path / "session.pem"
    got = await s_client(greeter.port, world, world.client, "-sess_out", str(saved), "-msg")
    assert f"hello {CLIENT_ID}" in got, got
    assert "New, TLSv1.3" in got, got
    assert "NewSessionTicket" not in got, got  # -msg names every handshake message read
    assert not saved.exists()  # s_client writes a TLS 1.3 session only when a ticket arrives
    assert greeter.greeted == [CLIENT_ID]


async def test_P_5_after_a_hello_retry_the_tickets_resume_nothing(
    world: World, greeter: Greeter, tmp_path: Path
) -> None:
    """A client whose only key share is for a group the server does not take (P-256) gets
    a HelloRetryRequest, after which OpenSSL 4 sends two stateful tickets (src/meshtls/
    _ossl.py): offering one resumes nothing."""
    saved = tmp_path / "session.pem"
    retry = ("-groups", "P-256:X25519")
    got = await s_client(greeter.port, world, world.client, *retry, "-sess_out", str(saved), "-msg")
    assert got.count("], ClientHello") == 2, got  # -msg: the second follows the retry
    assert got.count("], NewSessionTicket") == 2, got
    assert f"hello {CLIENT_ID}" in got, got
    assert saved.exists()  # the ticket arrived
    again = await s_client(greeter.port, world, world.client, *retry, "-sess_in", str(saved))
    assert "New, TLSv1.3" in again, again
    assert "Reused" not in again, again
    assert greeter.greeted == [CLIENT_ID, CLIENT_ID]  # verified and greeted twice


async def test_P_5_an_offered_ticket_gets_a_full_verified_handshake(
    world: World, greeter: Greeter, tmp_path: Path
) -> None:
    # A real stateless ticket for our client, from a server with the same identity that
    # keeps tickets on: the kind that could resume, were meshtls to accept one.
    ticket = tmp_path / "ticket.pem"
    async with ticket_issuing_server(world) as port:
        request = b"GET / HTTP/1.0\r\n\r\n"
        got = await s_client(port, world, world.client, "-sess_out", str(ticket), stdin=request)
    assert "TLS session ticket:" in got, got
    described = await openssl("sess_id", "-in", str(ticket), "-noout", "-text")
    assert "TLS session ticket:" in described, described

    got = await s_client(greeter.port, world, world.client, "-sess_in", str(ticket))
    assert "New, TLSv1.3" in got, got
    assert "Reused" not in got, got
    assert f"hello {CLIENT_ID}" in got, got
    # The same ticket from a client the server does not authorize: verified, and refused.
    refused = await s_client(greeter.port, world, world.intruder, "-sess_in", str(ticket))
    assert "hello" not in refused, refused
    assert greeter.greeted == [CLIENT_ID]
    assert greeter.rejected == ["unauthorized"]


# ---------------------------------------------------------------- meshtls as the client


async def test_P_5_connect_never_resumes_with_a_server_that_issues_tickets(
    world: World,
) -> None:
    """A server that issues tickets sees each of meshtls's handshakes as a new one."""
    source = meshtls.StaticSource(world.client.issued.svid(), world.ca.bundle_set())
    pages: list[str] = []
    async with ticket_issuing_server(world) as port:
        for _ in range(2):
            with trio.fail_after(WAIT):
                stream = await meshtls.connect(
                    "127.0.0.1", port, source=source, authorize=meshtls.authorize_id(SERVER_ID)
                )
                async with stream:
                    await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                    received = b""
                    while chunk := await stream.receive_some():
                        received += chunk
            pages.append(received.decode(errors="replace"))
    assert len(pages) == 2
    for page in pages:
        assert "New, TLSv1.3" in page, page
        assert "Reused" not in page, page
