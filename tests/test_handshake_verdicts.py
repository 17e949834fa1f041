"""One table, two paths: every case of test_verify.py, verified by `verify_svid` and by a
real TLS 1.3 handshake (OpenSSL's chain check, then `verify_handshake_chain`), in both roles.

The verdict (accept or reject) must always agree. The reason must agree too, except where
OpenSSL's own check rejects a *client* first: a server cannot read the client's chain
after that, so the reason comes from OpenSSL's verify code. Those cases are listed in
SERVER_SIDE_OPENSSL_REASONS, and nowhere else may the reasons differ.
"""

from __future__ import annotations

import ssl

import pytest

import meshtls
from meshtls import VerificationError, verify_svid
from meshtls._stream import _diagnose_client_side, _HandshakeContext
from meshtls._svid import Role, verify_handshake_chain
from meshtls._tls import TlsContexts, TlsError, TlsSession, _pem_path
from meshtls.testing import IssuedCertificate

from .conftest import T, World
from .test_verify import ACCEPTED, REJECTED, Case

# case id -> the reason a server gets from OpenSSL's verify code for a defective client
SERVER_SIDE_OPENSSL_REASONS = {
    "L-6 no digitalSignature": "extended_key_usage",  # OpenSSL's purpose check (code 26)
    "L-10 unknown trust domain": "untrusted_chain",  # no root for it in the store (code 20)
}
CASES = [(i, c, r) for i, c, r in REJECTED] + [(i, c, None) for i, c in ACCEPTED]


def raw_context(issued: IssuedCertificate, roots: bytes, *, server_side: bool) -> ssl.SSLContext:
    """A plain TLS 1.3 context presenting `issued` as it is, defects included."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # this peer judges nobody: only our side verifies
    context.load_verify_locations(cadata=roots.decode())
    with _pem_path(issued.chain_pem + issued.key_pem) as path:
        context.load_cert_chain(path)
    return context


def handshake_reason(world: World, issued: IssuedCertificate, *, peer_role: Role) -> str | None:
    """Run a real handshake where the peer presents `issued`; our side verifies it."""
    good = world.ca.issue("spiffe://example.org/verifier").svid()
    ours: TlsContexts = TlsContexts.build(good, world.bundles)
    roots = b"".join(bundle.pem for bundle in world.bundles.values())
    we_serve = peer_role == "client"
    our_session = ours.session(server_side=we_serve)
    their_session = TlsSession(
        raw_context(issued, roots, server_side=not we_serve), server_side=not we_serve
    )
    ctx = _HandshakeContext(
        address="test",
        bundles=world.bundles,
        policy=meshtls.ValidationPolicy(),
        authorize=meshtls.authorize_any(),
        clock=lambda: T,
        role=peer_role,
    )
    client, server = (their_session, our_session) if we_serve else (our_session, their_session)
    for _ in range(4):
        try:
            ours_done = our_session.handshake()
        except TlsError as exc:
            if we_serve:
                return exc.reason
            return _diagnose_client_side(our_session, exc, ctx).reason
        server.feed(client.outgoing())
        client.feed(server.outgoing())
        theirs_done = their_session.handshake()  # it verifies nothing, so it must not fail
        done = [ours_done, theirs_done]
        server.feed(client.outgoing())
        client.feed(server.outgoing())
        if all(done):
            break
    try:
        verify_handshake_chain(
            our_session.verified_chain(), world.bundles, policy=ctx.policy, now=T, role=peer_role
        )
    except VerificationError as exc:
        return exc.reason
    return None


def standalone_reason(world: World, issued: IssuedCertificate, *, peer_role: Role) -> str | None:
    try:
        verify_svid(issued.chain, world.bundles, now=T, role=peer_role)
    except VerificationError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("peer_role", ["client", "server"])
@pytest.mark.parametrize(("case", "expected"), [pytest.param(c, r, id=i) for i, c, r in CASES])
def test_both_paths_agree(
    world: World, request: pytest.FixtureRequest, case: Case, expected: str | None, peer_role: Role
) -> None:
    issued = case(world)
    standalone = standalone_reason(world, issued, peer_role=peer_role)
    assert standalone == expected
    handshake = handshake_reason(world, issued, peer_role=peer_role)
    case_id = request.node.callspec.id.rsplit("-", 1)[0]
    exception = SERVER_SIDE_OPENSSL_REASONS.get(case_id) if peer_role == "client" else None
    assert handshake == (exception or standalone)


def test_the_exception_list_is_not_stale() -> None:
    ids = {i for i, _, _ in REJECTED}
    assert set(SERVER_SIDE_OPENSSL_REASONS) <= ids
