"""Fatal alerts after the handshake (issue 7, item 1): meshtls answers broken input the
way OpenSSL's own server does, and the stream fails, it never reads as EOF.

After a good mutual-TLS 1.3 handshake, a client (tests/records.py: the stdlib for the
handshake, then records made by hand with the logged traffic keys) sends one broken
record: a bad MAC, an oversized record, a zero content type, an empty alert, a
ChangeCipherSpec, a malformed KeyUpdate... The same probe goes to a meshtls `serve` and
to ``openssl s_server -Verify 1``; the alert each sends back is decrypted and compared.
RFC 8446 6.2 and 5 require these alerts ("MUST terminate the connection with an ...
alert"); OpenSSL writes them, and meshtls must not drop them on the floor.
"""

from __future__ import annotations

import math
import os
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

import meshtls

from .interop import PEER_TIMEOUT, openssl_s_server, write_identity, write_pem
from .meshnet import Mesh, start_server
from .records import ALERT, APPLICATION_DATA, HANDSHAKE, Keys, alert_in, connect

CLIENT_ID = "spiffe://example.org/prober"
SERVER_ID = "spiffe://example.org/server"

Probe = Callable[[Keys], bytes]


def _bad_mac(keys: Keys) -> bytes:
    record = bytearray(keys.seal(b"hello", APPLICATION_DATA))
    record[7] ^= 0x01  # a ciphertext byte: authentication fails
    return bytes(record)


def _oversized(keys: Keys) -> bytes:
    length = 2**14 + 256 + 1  # RFC 8446 5.2: at most 2^14 + 256 bytes of ciphertext
    return struct.pack("!BHH", APPLICATION_DATA, 0x0303, length) + os.urandom(length)


def _oversized_plaintext(keys: Keys) -> bytes:
    return keys.seal(b"x" * (2**14 + 1), APPLICATION_DATA)  # 5.4: at most 2^14 inside


PROBES: dict[str, Probe] = {
    "bad_record_mac": _bad_mac,
    "oversized_record": _oversized,
    "oversized_plaintext": _oversized_plaintext,
    "zero_content_type": lambda keys: keys.seal_inner(bytes(8)),  # all padding: no type
    "empty_alert": lambda keys: keys.seal(b"", ALERT),
    "three_byte_alert": lambda keys: keys.seal(b"\x02\x0a\x00", ALERT),
    "change_cipher_spec": lambda keys: b"\x14\x03\x03\x00\x01\x01",
    "unknown_record_type": lambda keys: b"\x18\x03\x03\x00\x02\x00\x00",
    "key_update_request_2": lambda keys: keys.seal(b"\x18\x00\x00\x01\x02", HANDSHAKE),
    "key_update_too_long": lambda keys: keys.seal(b"\x18\x00\x00\x02\x00\x00", HANDSHAKE),
    "client_hello_after_handshake": lambda keys: keys.seal(b"\x01\x00\x00\x00", HANDSHAKE),
}


def _client_context(mesh: Mesh, directory: Path, keylog: Path) -> ssl.SSLContext:
    issued = mesh.ca.issue(CLIENT_ID)
    pem = write_pem(directory, "prober.pem", issued.chain_pem + issued.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(cadata=mesh.ca.bundle_pem.decode("ascii"))
    context.load_cert_chain(pem)
    context.keylog_filename = str(keylog)
    return context


async def _probe(port: int, context: ssl.SSLContext, keylog: Path, probe: Probe) -> str | None:
    """Handshake, send the probe, return the alert the server sent (None: no alert)."""
    with trio.fail_after(PEER_TIMEOUT):
        connection = await connect(port, context, keylog)
    async with connection.stream:
        await connection.send(probe(connection.ours))
        found, _ = await connection.records(PEER_TIMEOUT)
    return alert_in(found)


async def _meshtls_answer(mesh: Mesh, probe: Probe, directory: Path) -> tuple[str | None, str]:
    """The alert meshtls sends, and how its handler's `receive_some` ended."""
    ended: trio.MemorySendChannel[str]
    ended, endings = trio.open_memory_channel[str](math.inf)

    async def handler(stream: meshtls.MeshStream) -> None:
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError as exc:
            ended.send_nowait(type(exc).__name__)
        else:
            ended.send_nowait("eof")

    keylog = directory / "meshtls.keys"
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler, source=mesh.server)
        alert = await _probe(port, _client_context(mesh, directory, keylog), keylog, probe)
        with trio.fail_after(PEER_TIMEOUT):
            ending = await endings.receive()
        nursery.cancel_scope.cancel()
    return alert, ending


async def _openssl_answer(mesh: Mesh, probe: Probe, directory: Path) -> str | None:
    server = write_identity(directory, "server", mesh.ca.issue(SERVER_ID))
    bundle = write_pem(directory, "bundle.pem", mesh.ca.bundle_pem)
    keylog = directory / "openssl.keys"
    args = [
        "-rev",
        *server.args(),
        "-CAfile",
        str(bundle),
        "-Verify",
        "1",
        "-tls1_3",
        "-naccept",
        "1",
    ]
    async with openssl_s_server(*args) as s_server:
        return await _probe(s_server.port, _client_context(mesh, directory, keylog), keylog, probe)


@pytest.mark.openssl
@pytest.mark.parametrize("case", list(PROBES))
async def test_the_alert_after_the_handshake_matches_openssl_s_server(
    case: str, tmp_path: Path
) -> None:
    mesh = Mesh()
    expected = await _openssl_answer(mesh, PROBES[case], tmp_path)
    alert, ending = await _meshtls_answer(mesh, PROBES[case], tmp_path)
    assert expected is not None, "openssl s_server sent no alert: the probe is wrong"
    assert alert == expected
    assert ending != "eof", "the stream read a broken connection as a clean EOF"
