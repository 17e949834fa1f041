"""`TlsSession.read` gives every record already decryptable in one call (issue 11's bulk
path), and still reports close_notify, a fatal alert and a truncation exactly as before:
after the data that came ahead of them, never instead of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshtls._bench import make_identity, pyopenssl_context
from meshtls._tls import SessionError, TlsSession


@pytest.fixture
def pair(tmp_path: Path) -> tuple[TlsSession, TlsSession]:
    identity = make_identity(tmp_path)
    client = TlsSession(pyopenssl_context(identity, "client", "X25519"), server_side=False)
    server = TlsSession(pyopenssl_context(identity, "server", "X25519"), server_side=True)
    client_done = server_done = False
    for _ in range(8):
        client_done = client_done or client.handshake()
        server.feed(client.outgoing())
        server_done = server_done or server.handshake()
        client.feed(server.outgoing())
        if client_done and server_done:
            break
    assert client_done
    assert server_done
    assert server.read(1) is None  # nothing sent yet
    assert client.read(1) is None  # the server's tickets, consumed
    return client, server


def test_one_read_spans_records_up_to_max_bytes(pair: tuple[TlsSession, TlsSession]) -> None:
    client, server = pair
    client.write(b"a" * 40000)  # three records
    server.feed(client.outgoing())
    assert server.read(65536) == b"a" * 40000
    assert server.read(65536) is None
    client.write(b"b" * 40000)
    server.feed(client.outgoing())
    assert server.read(20000) == b"b" * 20000
    assert server.read(65536) == b"b" * 20000


def test_a_partial_record_waits_for_input(pair: tuple[TlsSession, TlsSession]) -> None:
    client, server = pair
    client.write(b"q" * 20000)
    out = client.outgoing()
    server.feed(out[:100])
    assert server.read(100) is None
    server.feed(out[100:17000])
    assert server.read(65536) == b"q" * 16384  # the first record only
    server.feed(out[17000:])
    assert server.read(65536) == b"q" * (20000 - 16384)


def test_close_notify_after_data(pair: tuple[TlsSession, TlsSession]) -> None:
    client, server = pair
    client.write(b"x" * 30000)
    client.close_notify()
    server.feed(client.outgoing())
    assert server.read(65536) == b"x" * 30000
    assert server.read(65536) == b""
    assert server.read(65536) == b""


def test_a_bad_record_after_data_fails_the_next_read(pair: tuple[TlsSession, TlsSession]) -> None:
    client, server = pair
    client.write(b"x" * 1000)
    good = client.outgoing()
    client.write(b"y" * 1000)
    bad = bytearray(client.outgoing())
    bad[-5] ^= 1
    server.feed(good + bytes(bad))
    assert server.read(65536) == b"x" * 1000
    with pytest.raises(SessionError, match="bad record mac"):
        server.read(65536)
    assert server.outgoing()  # OpenSSL's bad_record_mac alert, for the stream to send


def test_a_truncation_after_data_fails_the_next_read(pair: tuple[TlsSession, TlsSession]) -> None:
    client, server = pair
    client.write(b"z" * 20000)
    server.feed(client.outgoing())
    server.feed_eof()
    assert server.read(65536) == b"z" * 20000
    with pytest.raises(SessionError) as info:
        server.read(65536)
    assert info.value.truncated
