"""PROXY protocol v2 from an expose to its backend: the peer's verified SPIFFE id, in a TLV.

The backend here parses the header itself, byte by byte, from haproxy's
proxy-protocol.txt (section 2.2), without meshtls's code: the signature, version and
command, family and transport, the length, the addresses and ports, then the TLVs
(PP2_TYPE_SSL with its sub-TLVs, and our PP2_TYPE_SPIFFE_ID 0xE0).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

import meshtls
from meshtls._config import parse_config
from meshtls._tunnel import expose, proxy_header

from .meshnet import Mesh

SIGNATURE = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
CLIENT = "spiffe://example.org/client"


@dataclass
class Header:
    """A parsed PROXY v2 header."""

    version: int
    command: int
    family: int
    transport: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    tlvs: list[tuple[int, bytes]] = field(default_factory=list)

    def tlv(self, kind: int) -> bytes:
        (value,) = [value for k, value in self.tlvs if k == kind]
        return value


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    tlvs = []
    index = 0
    while index < len(data):
        assert index + 3 <= len(data), "a TLV header cut short"
        kind, length = data[index], data[index + 1] << 8 | data[index + 2]
        value = data[index + 3 : index + 3 + length]
        assert len(value) == length, "a TLV value cut short"
        tlvs.append((kind, value))
        index += 3 + length
    return tlvs


def parse_body(head: bytes, body: bytes) -> Header:
    assert head[:12] == SIGNATURE
    header = Header(
        version=head[12] >> 4,
        command=head[12] & 0x0F,
        family=head[13] >> 4,
        transport=head[13] & 0x0F,
    )
    assert len(body) == head[14] << 8 | head[15]
    if header.family == 0x1:  # AF_INET: src 4, dst 4, src port 2, dst port 2
        size, af = 4, socket.AF_INET
    elif header.family == 0x2:  # AF_INET6
        size, af = 16, socket.AF_INET6
    else:
        assert header.family == 0x0, f"unexpected family {header.family}"
        header.tlvs = parse_tlvs(body)
        return header
    ports = body[2 * size : 2 * size + 4]
    header.source = (socket.inet_ntop(af, body[:size]), ports[0] << 8 | ports[1])
    header.destination = (socket.inet_ntop(af, body[size : 2 * size]), ports[2] << 8 | ports[3])
    header.tlvs = parse_tlvs(body[2 * size + 4 :])
    return header


async def read_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    """Exactly `count` bytes, never one more (what follows is the client's)."""
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        assert chunk, f"EOF after {len(data)} of {count} bytes"
        data += chunk
    return data


async def read_header(stream: trio.abc.ReceiveStream) -> Header:
    head = await read_exactly(stream, 16)
    return parse_body(head, await read_exactly(stream, head[14] << 8 | head[15]))


@dataclass
class Backend:
    port: int
    headers: list[Header] = field(default_factory=list)
    first_bytes: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def backend(*, parse: bool, host: str = "127.0.0.1") -> AsyncIterator[Backend]:
    """A backend that parses a PROXY header first (`parse`) or not, then answers
    ``got:`` and the bytes that followed, until EOF."""
    seen = Backend(0)

    async def handler(stream: trio.SocketStream) -> None:
        if parse:
            seen.headers.append(await read_header(stream))
        received = b""
        while data := await stream.receive_some():
            received += data
        seen.first_bytes.append(received)
        await stream.send_all(b"got:" + received)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=host))
        seen.port = listeners[0].socket.getsockname()[1]
        yield seen
        nursery.cancel_scope.cancel()


async def through_expose(
    mesh: Mesh, seen: Backend, *, proxy_protocol: bool, host: str = "127.0.0.1"
) -> tuple[bytes, tuple[str, int], tuple[str, int]]:
    """One client through an expose to `seen`: (the answer, the client's address, the
    address it reached the expose on)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                expose,
                (host, 0),
                (host, seen.port),
                source=mesh.server,
                authorize=meshtls.authorize_id(CLIENT),
                proxy_protocol=proxy_protocol,
            )
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            stream = await meshtls.connect(
                host, port, source=mesh.client, authorize=meshtls.authorize_any()
            )
            ours = stream.socket.getsockname()
            theirs = stream.socket.getpeername()
            async with stream:
                await stream.send_all(b"hello")
                await stream.send_eof()
                answer = b""
                while data := await stream.receive_some():
                    answer += data
        nursery.cancel_scope.cancel()
    return answer, (ours[0], ours[1]), (theirs[0], theirs[1])


async def test_the_backend_reads_the_peer_address_and_its_spiffe_id() -> None:
    mesh = Mesh()
    async with backend(parse=True) as seen:
        answer, client, reached = await through_expose(mesh, seen, proxy_protocol=True)
    assert answer == b"got:hello"  # the peer's bytes follow the header, none lost or added
    (header,) = seen.headers
    assert (header.version, header.command) == (2, 0x1)  # v2, PROXY
    assert (header.family, header.transport) == (0x1, 0x1)  # AF_INET, STREAM
    assert header.source == client  # the peer as the expose saw it
    assert header.destination == reached  # the address the peer reached us on
    assert header.tlv(0xE0) == CLIENT.encode()  # PP2_TYPE_SPIFFE_ID: the verified id
    ssl = header.tlv(0x20)  # PP2_TYPE_SSL: client flags, verify, then sub-TLVs
    assert ssl[0] == 0x01 | 0x02 | 0x04  # PP2_CLIENT_SSL | CERT_CONN | CERT_SESS
    assert ssl[1:5] == b"\0\0\0\0"  # verify: 0 means the client certificate verified
    assert parse_tlvs(ssl[5:]) == [(0x21, b"TLSv1.3")]  # PP2_SUBTYPE_SSL_VERSION


async def test_without_the_option_the_backend_gets_no_header() -> None:
    mesh = Mesh()
    async with backend(parse=False) as seen:
        answer, _, _ = await through_expose(mesh, seen, proxy_protocol=False)
    assert answer == b"got:hello"
    assert seen.first_bytes == [b"hello"]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_peer_is_sent_as_ipv6() -> None:
    mesh = Mesh()
    async with backend(parse=True, host="::1") as seen:
        _, client, reached = await through_expose(mesh, seen, proxy_protocol=True, host="::1")
    (header,) = seen.headers
    assert header.family == 0x2
    assert (header.source, header.destination) == (client, reached)
    assert header.tlv(0xE0) == CLIENT.encode()


def test_two_address_families_are_sent_as_unspec_with_the_tlvs() -> None:
    spiffe_id = meshtls.SpiffeId.parse(CLIENT)
    data = proxy_header(("10.0.0.1", 5000), ("::1", 8600), spiffe_id)
    header = parse_body(data[:16], data[16:])
    assert (header.command, header.family, header.source) == (0x1, 0x0, None)
    assert header.tlv(0xE0) == CLIENT.encode()
    mapped = parse_body(*split(proxy_header(("::ffff:10.0.0.1", 5000), ("10.0.0.2", 1), spiffe_id)))
    assert (mapped.family, mapped.source) == (0x1, ("10.0.0.1", 5000))


def split(data: bytes) -> tuple[bytes, bytes]:
    return data[:16], data[16:]


async def test_a_node_expose_with_proxy_protocol_sends_the_header(tmp_path: Path) -> None:
    mesh = Mesh()
    issued = mesh.ca.issue("spiffe://example.org/server")
    (tmp_path / "svid.pem").write_bytes(issued.chain_pem)
    (tmp_path / "svid.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(mesh.ca.bundle_pem)
    async with backend(parse=True) as seen:
        config = parse_config(
            '[identity]\ncert = "svid.pem"\nkey = "svid.key"\nbundle = "bundle.pem"\n'
            '[node]\nlisten = "127.0.0.1:0"\nmetrics = "off"\n'
            f'[[expose]]\nlisten = "127.0.0.1:0"\nbackend = "127.0.0.1:{seen.port}"\n'
            'allow = ["spiffe://example.org"]\nproxy_protocol = true\n',
            base_dir=tmp_path,
        )
        async with meshtls.open_node(config) as node:
            port = node.listeners["expose:127.0.0.1:0"][0].socket.getsockname()[1]
            with trio.fail_after(10):
                stream = await meshtls.connect(
                    "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
                )
                async with stream:
                    await stream.send_all(b"x")
                    await stream.send_eof()
                    answer = b""
                    while data := await stream.receive_some():
                        answer += data
    assert answer == b"got:x"
    (header,) = seen.headers
    assert header.tlv(0xE0) == CLIENT.encode()
