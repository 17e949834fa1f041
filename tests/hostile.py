"""Helpers for test_hostile.py: an echo server that records verdicts, and hostile peers.

Hostile clients are built from the stdlib `ssl` module (or raw bytes), never from
meshtls, so that they can present what meshtls would refuse to present. Every
socket and stream opened here is closed here: pytest runs with warnings as errors.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

import meshtls
from meshtls.testing import CA, IssuedCertificate

from .meshnet import Mesh, start_server

GOOD_CLIENT_ID: Final = "spiffe://example.org/client"
SERVER_ID: Final = "spiffe://example.org/server"
PROBE: Final = b"is anybody there?"
WAIT: Final = 5.0  # bound on every wait for an event that should come within milliseconds


# ---------------------------------------------------------------- the server under attack


@dataclass(eq=False)
class EchoServer:
    """`meshtls.serve` with an echo handler, on 127.0.0.1; records what it did.

    ``served`` lists the SPIFFE ids the handler ran for. Each `HandshakeError` that the
    `on_rejected` hook gets is queued with its Trio time, for `rejection`/`rejection_at`.
    """

    mesh: Mesh
    port: int = 0
    served: list[str] = field(default_factory=list)
    _send: trio.MemorySendChannel[tuple[float, meshtls.HandshakeError]] = field(init=False)
    _receive: trio.MemoryReceiveChannel[tuple[float, meshtls.HandshakeError]] = field(init=False)

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[float, meshtls.HandshakeError]](
            float("inf")
        )

    def on_rejected(self, exc: meshtls.HandshakeError) -> None:
        self._send.send_nowait((trio.current_time(), exc))

    async def handler(self, stream: meshtls.MeshStream) -> None:
        self.served.append(str(stream.peer.spiffe_id))
        while data := await stream.receive_some():
            await stream.send_all(data)

    async def rejection_at(self, limit: float = WAIT) -> tuple[float, meshtls.HandshakeError]:
        """The next rejection and the trio time it happened; fails after `limit` (trio time)."""
        with trio.fail_after(limit):
            return await self._receive.receive()

    async def rejection(self, limit: float = WAIT) -> meshtls.HandshakeError:
        _, exc = await self.rejection_at(limit)
        return exc

    def pending_rejections(self) -> list[meshtls.HandshakeError]:
        """Rejections reported and not yet taken, without waiting."""
        found: list[meshtls.HandshakeError] = []
        while True:
            try:
                found.append(self._receive.receive_nowait()[1])
            except trio.WouldBlock:
                return found

    async def assert_serves_good_client(self, limit: float = WAIT) -> None:
        """A well-behaved meshtls client connects and gets its bytes echoed back, all
        within `limit` seconds (trio time)."""
        served_before = len(self.served)
        with trio.fail_after(limit):
            stream = await meshtls.connect(
                "127.0.0.1",
                self.port,
                source=self.mesh.client,
                authorize=meshtls.authorize_id(SERVER_ID),
            )
            async with stream:
                await stream.send_all(b"ping")
                echoed = b""
                while len(echoed) < 4:
                    chunk = await stream.receive_some()
                    assert chunk, "the server closed before echoing"
                    echoed += chunk
                assert echoed == b"ping"
                await stream.send_eof()
                assert await stream.receive_some() == b""
        assert self.served[served_before:] == [GOOD_CLIENT_ID]


@asynccontextmanager
async def echo_server(
    mesh: Mesh,
    *,
    authorize: meshtls.Authorizer | None = None,
    handshake_timeout: float = 10.0,
    max_handshakes: int = 256,
) -> AsyncIterator[EchoServer]:
    """An `EchoServer` running until the block ends."""
    server = EchoServer(mesh)
    async with trio.open_nursery() as nursery:
        server.port = await start_server(
            nursery,
            server.handler,
            source=mesh.server,
            authorize=authorize,
            on_rejected=server.on_rejected,
            handshake_timeout=handshake_timeout,
            max_handshakes=max_handshakes,
        )
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- hostile TLS clients


def write_pem(directory: Path, issued: IssuedCertificate, name: str = "hostile") -> Path:
    """The chain then the key, in one PEM file, as `SSLContext.load_cert_chain` reads it."""
    path = directory / f"{name}.pem"
    path.write_bytes(issued.chain_pem + issued.key_pem)
    return path


def client_context(
    mesh: Mesh,
    certificate: Path | None,
    *,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    """A stdlib client that trusts the mesh's server and presents `certificate` (or none)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = minimum
    context.maximum_version = maximum
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=mesh.ca.bundle_pem.decode("ascii"))
    if certificate is not None:
        context.load_cert_chain(certificate)
    return context


def server_context(certificate: Path) -> ssl.SSLContext:
    """A stdlib TLS 1.3 server presenting `certificate`; it asks for no client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(certificate)
    return context


_ALERT_REASON: Final = re.compile(r"(?:SSLV3|TLSV1|TLSV13)_ALERT_([A-Z_]+)")


def alert_of(error: BaseException | None) -> str | None:
    """The TLS alert a stdlib peer's failure says it received from the other side
    (``TLSV1_ALERT_UNKNOWN_CA``: ``"unknown_ca"``); None for a close, a reset or a failure
    of its own. Read from the `ssl.SSLError` behind trio's `BrokenResourceError`."""
    while error is not None:
        if isinstance(error, ssl.SSLError):
            found = _ALERT_REASON.fullmatch(error.reason or "")
            return None if found is None else found.group(1).lower()
        error = error.__cause__ or error.__context__
    return None


@dataclass
class Outcome:
    """What a hostile client saw: whether its handshake completed, what came back, and
    how it ended (``alert``: the TLS alert it received, None if none)."""

    handshake_completed: bool = False
    received: bytes = b""
    error: BaseException | None = None

    @property
    def alert(self) -> str | None:
        return alert_of(self.error)


async def receive_until_closed(
    stream: trio.abc.ReceiveStream,
) -> tuple[bytes, BaseException | None]:
    """Everything the peer sends until it closes (EOF, reset or TLS failure)."""
    received = b""
    try:
        while chunk := await stream.receive_some(65536):
            received += chunk
    except trio.BrokenResourceError as exc:
        return received, exc
    return received, None


async def tls_client(port: int, context: ssl.SSLContext, probe: bytes = PROBE) -> Outcome:
    """Handshake with `context`; if that completes, send `probe` and receive once: EOF,
    reset or an alert leaves ``received`` empty, anything else is what the server sent."""
    outcome = Outcome()
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(tcp, context)
    try:
        with trio.fail_after(WAIT):
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                outcome.error = exc
                return outcome
            outcome.handshake_completed = True
            try:
                await tls.send_all(probe)
            except trio.BrokenResourceError as exc:
                outcome.error = exc
            try:  # one receive: any byte at all is already a failure, no need to wait for more
                outcome.received = bytes(await tls.receive_some())
            except trio.BrokenResourceError as exc:
                outcome.error = outcome.error or exc
    finally:
        await trio.aclose_forcefully(tls)
    return outcome


async def raw_client(port: int, payload: bytes) -> bytes:
    """Send `payload` on plain TCP (as much as the server takes) and return its whole answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(WAIT):
            # the server may close on us part-way: its verdict is in the answer
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(payload)
            received, _ = await receive_until_closed(stream)
    return received


# ---------------------------------------------------------------- hand-made handshakes


def tls10_client_hello() -> bytes:
    """A TLS 1.0 ClientHello record (RFC 2246), as an old client sends it.

    Record and ClientHello both say 3.1; RSA and DHE cipher suites of that era; no
    extensions, so nothing in it even hints at TLS 1.3 (no supported_versions).
    """
    suites = [0x002F, 0x0035, 0x0033, 0x0039, 0x000A]
    body = (
        b"\x03\x01"  # client_version TLS 1.0
        + bytes(range(32))  # random
        + b"\x00"  # session_id: empty
        + struct.pack("!H", 2 * len(suites))
        + b"".join(struct.pack("!H", s) for s in suites)
        + b"\x01\x00"  # compression methods: null
    )
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def real_client_hello(mesh: Mesh) -> bytes:
    """The first flight of a real TLS 1.3 client (stdlib, over memory BIOs)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(mesh, None).wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "expected a handshake record"
    return hello


def records(data: bytes) -> list[tuple[int, bytes]]:
    """Split TLS records: [(content type, fragment)]; a truncated tail is dropped."""
    found: list[tuple[int, bytes]] = []
    while len(data) >= 5:
        length = struct.unpack("!H", data[3:5])[0]
        if len(data) < 5 + length:
            break
        found.append((data[0], data[5 : 5 + length]))
        data = data[5 + length :]
    return found


ALERT: Final = 21
HANDSHAKE: Final = 22


# ---------------------------------------------------------------- a hostile server


@dataclass(eq=False)
class HostileServer:
    """A stdlib `ssl` server on trio that accepts one connection and records what came in
    (``alert``: the TLS alert it received, None if none)."""

    port: int = 0
    handshake_completed: bool = False
    received: bytes = b""
    error: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def alert(self) -> str | None:
        return alert_of(self.error)


@asynccontextmanager
async def hostile_server(context: ssl.SSLContext) -> AsyncIterator[HostileServer]:
    """Serve one TLS connection with `context` until the block ends (then wait for it)."""
    server = HostileServer()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    (listener,) = listeners
    server.port = listener.socket.getsockname()[1]

    async def serve_one() -> None:
        async with listener:
            tcp = await listener.accept()
        tls = trio.SSLStream(tcp, context, server_side=True)
        try:
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                server.error = exc
                return
            server.handshake_completed = True
            server.received, server.error = await receive_until_closed(tls)
        finally:
            await trio.aclose_forcefully(tls)
            server.done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        try:
            yield server
            with trio.fail_after(WAIT):
                await server.done.wait()
        finally:
            nursery.cancel_scope.cancel()


async def tls_round_trip(port: int, context: ssl.SSLContext, probe: bytes = PROBE) -> bytes:
    """Handshake, send `probe`, read as many bytes back, close: the echo a good peer gets."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(tcp, context)
    try:
        with trio.fail_after(WAIT):
            await tls.send_all(probe)
            echoed = b""
            while len(echoed) < len(probe) and (chunk := await tls.receive_some()):
                echoed += chunk
            await tls.aclose()
    finally:
        await trio.aclose_forcefully(tls)
    return echoed


# ---------------------------------------------------------------- malformed certificates


def der(tag: int, content: bytes) -> bytes:
    """One DER TLV."""
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + content


def san_with(spiffe_id: str, other_name: bytes) -> x509.UnrecognizedExtension:
    """A SAN holding our URI and one more GeneralName, given as DER."""
    names = der(0x86, spiffe_id.encode()) + other_name  # [6] uniformResourceIdentifier
    return x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, der(0x30, names))


#: [5] ediPartyName { partyName [1] DirectoryString (UTF8String "party") }
EDI_PARTY_NAME: Final = der(0xA5, der(0xA1, der(0x0C, b"party")))
#: [3] x400Address: an ORAddress whose built-in standard attributes are all absent
X400_ADDRESS: Final = der(0xA3, der(0x30, b""))
#: RFC 5280 4.1.2.5: "no well-defined expiration date"
NO_EXPIRY: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
UNKNOWN_CRITICAL: Final = (
    x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.7"), b"\x05\x00"),
    True,
)
#: Same length as the SAN's OID 2.5.29.17 (55 1D 11): swapped in after signing once.
_PLACEHOLDER_OID: Final = x509.ObjectIdentifier("2.5.29.99")


def with_duplicate_san(ca: CA, spiffe_id: str) -> IssuedCertificate:
    """A leaf with two SAN extensions, re-signed by `ca` (an EC CA).

    A certificate builder refuses duplicates, so the second SAN goes in under an OID of
    the same length, which is then swapped for the SAN's in the to-be-signed bytes.
    """
    second = der(0x30, der(0x86, spiffe_id.encode()))
    issued = ca.issue(
        spiffe_id,
        extensions=[(x509.UnrecognizedExtension(_PLACEHOLDER_OID, second), False)],
    )
    leaf = issued.chain[0]
    placeholder = der(0x06, b"\x55\x1d\x63")
    assert leaf.tbs_certificate_bytes.count(placeholder) == 1
    tbs = leaf.tbs_certificate_bytes.replace(placeholder, der(0x06, b"\x55\x1d\x11"))
    key = ca.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = der(0x30, der(0x06, bytes.fromhex("2a8648ce3d040302")))  # ecdsa-with-SHA256
    certificate = der(0x30, tbs + algorithm + der(0x03, b"\x00" + signature))
    forged = x509.load_der_x509_certificate(certificate)
    return IssuedCertificate(chain=(forged, *issued.chain[1:]), private_key=issued.private_key)
