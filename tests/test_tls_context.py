"""The TLS context rules of `_tls._context` that verification relies on (P-5).

The other flags are pinned by the verdict table: without ``X509_V_FLAG_PARTIAL_CHAIN`` a
bundle whose authority is an intermediate anchors nothing, and without
``X509_V_FLAG_NO_CHECK_TIME`` OpenSSL would judge the test certificates (valid around
2030) by the wall clock (tests/test_handshake_verdicts.py).
"""

from __future__ import annotations

import gc
import weakref

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from meshtls import BundleSet, X509Bundle, X509Svid
from meshtls._errors import VerificationError
from meshtls._tls import TlsContexts, TlsError, TlsSession

from .conftest import World
from .meshnet import Mesh


def handshake(client: TlsSession, server: TlsSession) -> None:
    """Run a handshake over memory to its end; AssertionError if it does not finish."""
    for _ in range(5):
        done = [client.handshake(), server.handshake()]
        pump(client, server)
        if all(done):
            return
    raise AssertionError("the handshake did not finish")


def pump(client: TlsSession, server: TlsSession) -> None:
    """Move every pending byte between the two sessions, both ways, until quiet."""
    for _ in range(10):
        sent = client.outgoing()
        received = server.outgoing()
        if not sent and not received:
            return
        server.feed(sent)
        client.feed(received)


_BUILT: dict[int, tuple[TlsContexts, TlsContexts]] = {}


def connected(world: World, offer: SSL.Session | None = None) -> tuple[TlsSession, TlsSession]:
    """A meshtls client and server after a full handshake and one round of data; the client
    offers `offer` (a session it saved) first. Both keep their contexts across calls."""
    if id(world) not in _BUILT:
        server_svid = world.ca.issue("spiffe://example.org/server").svid()
        client_svid = world.ca.issue("spiffe://example.org/client").svid()
        _BUILT[id(world)] = (
            TlsContexts.build(server_svid, world.bundles),
            TlsContexts.build(client_svid, world.bundles),
        )
    server_contexts, client_contexts = _BUILT[id(world)]
    server = server_contexts.session(server_side=True)
    client = client_contexts.session(server_side=False)
    if offer is not None:
        client._tls.set_session(offer)
    handshake(client, server)
    server.write(b"hello")  # one round of data both ways after the handshake
    pump(client, server)
    assert client.read(100) == b"hello"
    return client, server


def test_P_5_an_offered_session_resumes_nothing_and_the_peer_is_verified_again(
    world: World,
) -> None:
    """A resumed TLS 1.3 session carries no peer chain to verify: a meshtls client that
    offers the session it kept (it holds no ticket: the server sent none) gets a full
    handshake."""
    client, _ = connected(world)
    saved = client._tls.get_session()
    assert saved is not None
    again, _ = connected(world, offer=saved)
    assert not again.resumed
    assert again.verified_chain()  # the server's chain was verified again


def test_P_5_a_server_sends_no_ticket_and_neither_side_keeps_a_session_cache(
    world: World,
) -> None:
    """Once the server has the client's Finished, it has nothing more to send: no
    NewSessionTicket (a ticket would be 2 x 79 bytes here, see tests/test_ossl.py)."""
    server_contexts = TlsContexts.build(
        world.ca.issue("spiffe://example.org/s").svid(), world.bundles
    )
    client_contexts = TlsContexts.build(
        world.ca.issue("spiffe://example.org/c").svid(), world.bundles
    )
    for context in (server_contexts.server, client_contexts.client):
        assert context.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    server = server_contexts.session(server_side=True)
    client = client_contexts.session(server_side=False)
    assert not client.handshake()
    server.feed(client.outgoing())
    assert not server.handshake()
    client.feed(server.outgoing())
    assert client.handshake()
    server.feed(client.outgoing())
    assert server.handshake()
    assert server.outgoing() == b""


def test_one_engine_write_takes_a_whole_buffer(world: World) -> None:
    """pyOpenSSL turns on partial writes for every context, so an ``SSL_write`` of 64 KiB
    would return after each 16 KiB record; a memory BIO always takes everything, and
    meshtls's contexts write a whole buffer in one call (`_ossl.whole_writes`). The bytes
    are the same either way."""
    client, server = connected(world)
    assert client._tls.send(b"w" * 65536) == 65536  # one SSL_write: four records
    server.feed(client.outgoing())
    assert server.read(1 << 17) == b"w" * 65536


def test_no_chain_is_built_beyond_what_the_svid_source_gave(world: World) -> None:
    """SSL_MODE_NO_AUTO_CHAIN: a server whose SVID source gave only the leaf sends only the
    leaf, although its store holds the intermediate that would complete the chain (the
    client trusts that intermediate as a bundle authority, so the handshake completes)."""
    intermediate = world.ca.intermediate()
    issued = intermediate.issue("spiffe://example.org/server")
    leaf_only = X509Svid.from_parts([issued.leaf], issued.svid().private_key)
    bundles = BundleSet._build(
        [X509Bundle(world.ca.trust_domain, (world.ca.certificate, intermediate.certificate))]
    )
    server = TlsContexts.build(leaf_only, bundles).session(server_side=True)
    client_svid = world.ca.issue("spiffe://example.org/client").svid()
    client = TlsContexts.build(client_svid, bundles).session(server_side=False)
    handshake(client, server)
    assert client.sent_chain_length() == 1
    assert client.verified_chain()[:2] == [
        issued.leaf.public_bytes(Encoding.DER),
        intermediate.certificate.public_bytes(Encoding.DER),
    ]


def test_verified_and_unverified_chains_are_der_leaf_first_on_both_sides() -> None:
    """What the stream and the verifier read from a session (moved from test_compat.py
    when the stdlib shim went): the chain the peer sent, and the chain OpenSSL verified
    (leaf to root), as DER, on a server and on a client."""
    mesh = Mesh()
    server_ctx: TlsContexts = mesh.server.contexts()
    client_ctx: TlsContexts = mesh.client.contexts()
    server = server_ctx.session(server_side=True)
    client = client_ctx.session(server_side=False)
    handshake(client, server)

    root = mesh.ca.certificate.public_bytes(Encoding.DER)
    client_chain = [c.public_bytes(Encoding.DER) for c in client_ctx.svid.chain]
    assert len(client_chain) == 2  # the mesh's client sends its intermediate too
    assert server.verified_chain() == [*client_chain, root]
    assert server.unverified_chain() == client_chain
    assert server.sent_chain_length() == 2
    server_leaf = server_ctx.svid.leaf.public_bytes(Encoding.DER)
    assert client.verified_chain() == [server_leaf, root]
    assert client.unverified_chain() == [server_leaf]
    assert client.sent_chain_length() == 1


class _Refusing:
    """A verifier that refuses every peer, with or without a bug."""

    def __init__(self, bug: bool) -> None:
        self.bug = bug

    def judge(self, chain: list[bytes], sent: object) -> object:
        if self.bug:
            raise RuntimeError("a verifier's bug")
        raise VerificationError("unauthorized", "refused")

    def diagnose(self, chain: list[bytes], sent: object, message: str) -> VerificationError:
        return VerificationError("untrusted_chain", message)


def _run_handshake(client: TlsSession, server: TlsSession) -> None:
    for _ in range(5):
        client.handshake()
        server.handshake()
        pump(client, server)


@pytest.mark.parametrize("bug", [False, True], ids=["verdict", "bug"])
def test_a_refused_handshake_leaves_no_reference_cycle(world: World, bug: bool) -> None:
    """The verdict's traceback holds the verify callback's frame, and so the connection:
    once the handshake is over the connection no longer holds the verdict, so refcounting
    alone frees it (a flood of refused peers does not wait for the cyclic collector)."""
    server_svid = world.ca.issue("spiffe://example.org/server").svid()
    client_svid = world.ca.issue("spiffe://example.org/client").svid()
    server = TlsContexts.build(server_svid, world.bundles).session(
        server_side=True,
        verifier=_Refusing(bug),
    )
    client = TlsContexts.build(client_svid, world.bundles).session(server_side=False)
    connection = weakref.ref(server._tls)
    gc.disable()
    try:
        with pytest.raises(TlsError) as raised:
            _run_handshake(client, server)
        assert raised.value.verdict is not None
        del raised, server
        assert connection() is None
    finally:
        gc.enable()


class _Interrupted(_Refusing):
    def judge(self, chain: list[bytes], sent: object) -> object:
        raise SystemExit(3)


def test_a_systemexit_inside_the_verify_callback_is_raised_not_swallowed(world: World) -> None:
    """OpenSSL calls the verifier through cffi, which would print and drop a BaseException:
    the session keeps it and raises it from `handshake` (the peer is refused meanwhile)."""
    server_svid = world.ca.issue("spiffe://example.org/server").svid()
    client_svid = world.ca.issue("spiffe://example.org/client").svid()
    server = TlsContexts.build(server_svid, world.bundles).session(
        server_side=True, verifier=_Interrupted(False)
    )
    client = TlsContexts.build(client_svid, world.bundles).session(server_side=False)
    with pytest.raises(SystemExit):
        _run_handshake(client, server)
