"""The TLS context rules of `_tls._context` that verification relies on (P-5).

The other flags are pinned by the verdict table: without ``X509_V_FLAG_PARTIAL_CHAIN`` a
bundle whose authority is an intermediate anchors nothing, and without
``X509_V_FLAG_NO_CHECK_TIME`` OpenSSL would judge the test certificates (valid around
2030) by the wall clock (tests/test_handshake_verdicts.py).
"""

from __future__ import annotations

import ssl

from meshtls._tls import TlsContexts, TlsSession

from .conftest import World


def pump(client: TlsSession, server: TlsSession) -> None:
    """Move every pending byte between the two sessions, both ways, until quiet."""
    for _ in range(10):
        sent = client.outgoing()
        received = server.outgoing()
        if not sent and not received:
            return
        server.feed(sent)
        client.feed(received)


def connected(world: World) -> tuple[TlsSession, TlsSession]:
    """A meshtls client and server after a full handshake and one round of data."""
    server_svid = world.ca.issue("spiffe://example.org/server").svid()
    client_svid = world.ca.issue("spiffe://example.org/client").svid()
    server = TlsContexts.build(server_svid, world.bundles).session(server_side=True)
    client = TlsContexts.build(client_svid, world.bundles).session(server_side=False)
    for _ in range(5):
        done = [client.handshake(), server.handshake()]
        pump(client, server)
        if all(done):
            break
    else:
        raise AssertionError("the handshake did not finish")
    server.write(b"hello")  # a server sends NewSessionTicket after the client's Finished
    pump(client, server)
    assert client.read(100) == b"hello"
    return client, server


def test_P_5_no_session_ticket_is_ever_issued(world: World) -> None:
    """A resumed TLS 1.3 session carries no peer chain to verify (CPython gh-160171), so a
    meshtls server issues no ticket and a meshtls client would not keep one."""
    client, _ = connected(world)
    tls: ssl.SSLObject = client._tls
    assert tls.session is not None
    assert not tls.session.has_ticket
    assert not tls.session_reused


def test_P_5_contexts_refuse_tickets_on_both_sides(world: World) -> None:
    svid = world.ca.issue().svid()
    contexts = TlsContexts.build(svid, world.bundles)
    for context in (contexts.server, contexts.client):
        assert context.options & ssl.OP_NO_TICKET
    assert contexts.server.num_tickets == 0
