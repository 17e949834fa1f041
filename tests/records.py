"""Hand-made TLS 1.3 records after a real handshake, for probing what a server does
with broken input once the connection is up (tests/test_alerts.py).

A stdlib `ssl` client completes a real mutual-TLS handshake over memory BIOs, with a
key log: from the traffic secrets it logs, `Keys` derives each direction's record key
and IV (RFC 8446 7.1-7.3). From then on this module owns the connection: it encrypts
whatever inner plaintext and content type a probe asks for (a zero content type, an
empty alert, a malformed KeyUpdate), or writes raw bytes (an oversized record, a
ChangeCipherSpec), and decrypts what the server sends back to find its alert.
"""

from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

APPLICATION_DATA: Final = 23
ALERT: Final = 21
HANDSHAKE: Final = 22
CHANGE_CIPHER_SPEC: Final = 20

#: RFC 8446 6: the alert descriptions a probe can provoke, by number.
ALERTS: Final = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    51: "decrypt_error",
    80: "internal_error",
}

_SUITES: Final = {  # cipher suite: (hash, key length)
    "TLS_AES_128_GCM_SHA256": (hashes.SHA256(), 16),
    "TLS_AES_256_GCM_SHA384": (hashes.SHA384(), 32),
    "TLS_CHACHA20_POLY1305_SHA256": (hashes.SHA256(), 32),
}


def _expand_label(algorithm: hashes.HashAlgorithm, secret: bytes, label: str, size: int) -> bytes:
    """HKDF-Expand-Label(secret, label, "", size), RFC 8446 7.1."""
    full = b"tls13 " + label.encode()
    info = struct.pack("!HB", size, len(full)) + full + b"\x00"
    return HKDFExpand(algorithm, size, info).derive(secret)


@dataclass
class Keys:
    """One direction's record protection: key, IV and the next sequence number."""

    suite: str
    key: bytes
    iv: bytes
    sequence: int = 0

    @classmethod
    def from_secret(cls, suite: str, secret: bytes) -> Keys:
        algorithm, size = _SUITES[suite]
        return cls(
            suite,
            _expand_label(algorithm, secret, "key", size),
            _expand_label(algorithm, secret, "iv", 12),
        )

    def _aead(self) -> AESGCM | ChaCha20Poly1305:
        return ChaCha20Poly1305(self.key) if "CHACHA" in self.suite else AESGCM(self.key)

    def _nonce(self) -> bytes:
        nonce = bytes(
            a ^ b for a, b in zip(self.iv, self.sequence.to_bytes(12, "big"), strict=True)
        )
        self.sequence += 1
        return nonce

    def seal(self, content: bytes, content_type: int, padding: int = 0) -> bytes:
        """One protected record: TLSInnerPlaintext is content, type (0 allowed), zeros."""
        inner = content + bytes([content_type]) + bytes(padding)
        header = struct.pack("!BHH", APPLICATION_DATA, 0x0303, len(inner) + 16)
        return header + self._aead().encrypt(self._nonce(), inner, header)

    def seal_inner(self, inner: bytes) -> bytes:
        """A protected record whose whole TLSInnerPlaintext is `inner`, as given."""
        header = struct.pack("!BHH", APPLICATION_DATA, 0x0303, len(inner) + 16)
        return header + self._aead().encrypt(self._nonce(), inner, header)

    def open(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        """Decrypt one record: (inner content type, content)."""
        inner = self._aead().decrypt(self._nonce(), body, header).rstrip(b"\x00")
        return inner[-1], inner[:-1]


def _secrets(keylog: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for line in keylog.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        label, _random, secret = line.split()
        found[label] = bytes.fromhex(secret)
    return found


@dataclass
class Connection:
    """A raw TCP stream to the server after our side of the handshake, with its keys."""

    stream: trio.SocketStream
    ours: Keys
    theirs: Keys
    pending: bytearray = field(default_factory=bytearray)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def records(self, limit: float) -> tuple[list[tuple[int, bytes]], str]:
        """Every record the server sends until it closes, decrypted; and how it ended
        ("eof", "reset", "timeout", or "undecryptable")."""
        found: list[tuple[int, bytes]] = []
        ended = "timeout"
        with trio.move_on_after(limit):
            while True:
                while len(self.pending) >= 5:
                    length = struct.unpack("!H", self.pending[3:5])[0]
                    if len(self.pending) < 5 + length:
                        break
                    header, body = bytes(self.pending[:5]), bytes(self.pending[5 : 5 + length])
                    del self.pending[: 5 + length]
                    if header[0] == CHANGE_CIPHER_SPEC:
                        continue
                    try:
                        found.append(self.theirs.open(header, body))
                    except Exception:
                        return found, "undecryptable"
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    ended = "reset"
                    break
                if not chunk:
                    ended = "eof"
                    break
                self.pending += chunk
        return found, ended


async def connect(port: int, context: ssl.SSLContext, keylog: Path) -> Connection:
    """A real TLS 1.3 handshake with `context` (which must log keys to `keylog`); then
    the raw connection and both directions' application traffic keys."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    try:
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    await stream.send_all(outgoing.read())
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("the server closed during the handshake") from None
                incoming.write(chunk)
                continue
            break
        if outgoing.pending:
            await stream.send_all(outgoing.read())  # our Certificate, CertificateVerify, Finished
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    cipher = tls.cipher()
    assert cipher is not None
    secrets = _secrets(keylog)
    return Connection(
        stream,
        Keys.from_secret(cipher[0], secrets["CLIENT_TRAFFIC_SECRET_0"]),
        Keys.from_secret(cipher[0], secrets["SERVER_TRAFFIC_SECRET_0"]),
        bytearray(incoming.read()) if incoming.pending else bytearray(),
    )


def alert_in(records: list[tuple[int, bytes]]) -> str | None:
    """The description of the first alert among `records`, by name; None if none."""
    for content_type, content in records:
        if content_type == ALERT and len(content) == 2:
            return ALERTS.get(content[1], str(content[1]))
    return None
