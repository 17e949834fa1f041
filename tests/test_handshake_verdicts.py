"""One table, two paths: every case of test_verify.py's `TABLES`, verified by `verify_svid`
and by a real TLS 1.3 handshake (OpenSSL's chain check, then `verify_handshake_chain`), in
both roles.

The verdict (accept or reject) must always agree. The reason must agree too, except:

- where OpenSSL's own check rejects a *client* first: a server cannot read the client's
  chain after that, so the reason comes from OpenSSL's verify message
  (`SERVER_SIDE_OPENSSL_REASONS`);
- where the peer cannot present the certificate in TLS 1.3 at all, because its key
  cannot sign a TLS 1.3 handshake (`CANNOT_PRESENT`).

Nowhere else may the reasons differ; docs/decisions.md gives the reason for each entry.
"""

from __future__ import annotations

import ssl
from datetime import timedelta

import pytest

import meshtls
from meshtls import VerificationError, verify_svid
from meshtls._stream import _diagnose_client_side, _HandshakeContext
from meshtls._svid import Role, verify_handshake_chain
from meshtls._tls import TlsContexts, TlsError, TlsSession, _pem_path, _verify_reason
from meshtls.testing import IssuedCertificate

from .conftest import T, World
from .test_verify import ALL_ACCEPTED, ALL_REJECTED, Case, presented

# case id -> the reason a server gets from OpenSSL's verify message for a defective client
SERVER_SIDE_OPENSSL_REASONS = {
    "L-6 no digitalSignature": "extended_key_usage",  # OpenSSL's purpose check (code 26)
    "L-10 unknown trust domain": "untrusted_chain",  # no root for it in the store (code 20)
    # OpenSSL cannot use an intermediate whose extensions it finds invalid as an issuer:
    # "unable to get local issuer certificate" (code 20)
    "boundary intermediate with a negative pathLenConstraint": "untrusted_chain",
}
# (case id, peer role) -> what our side sees when the peer cannot even present the leaf:
# a P-192 or DSA key cannot sign a TLS 1.3 CertificateVerify. A client then sends no
# certificate; a server fails its own handshake and alerts us.
CANNOT_PRESENT = {
    ("L-9 P-192 leaf", "client"): "no_client_certificate",
    ("L-9 P-192 leaf", "server"): "protocol_error",
    ("L-9 DSA leaf", "client"): "no_client_certificate",
    ("L-9 DSA leaf", "server"): "protocol_error",
}
CASES = [(i, c, r) for i, c, r in ALL_REJECTED] + [(i, c, None) for i, c in ALL_ACCEPTED]


def raw_context(issued: IssuedCertificate, roots: bytes, *, server_side: bool) -> ssl.SSLContext:
    """A plain TLS 1.3 context presenting `issued` as it is, defects and weak keys included."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # this peer judges nobody: only our side verifies
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that it may present RSA-1024 or SHA-1
    context.load_verify_locations(cadata=roots.decode())
    with _pem_path(issued.chain_pem + issued.key_pem) as path:
        context.load_cert_chain(path)
    return context


_OURS: dict[int, tuple[meshtls.BundleSet, TlsContexts]] = {}


def our_contexts(world: World, bundles: meshtls.BundleSet) -> TlsContexts:
    """The verifying side's contexts for `bundles`, built once per bundle set."""
    found = _OURS.get(id(bundles))
    if found is None or found[0] is not bundles:
        good = world.ca.issue("spiffe://example.org/verifier", ttl=timedelta(hours=1)).svid()
        found = (bundles, TlsContexts.build(good, bundles))
        _OURS[id(bundles)] = found
    return found[1]


def handshake_reason(
    world: World, issued: IssuedCertificate, bundles: meshtls.BundleSet, *, peer_role: Role
) -> str | None:
    """Run a real handshake where the peer presents `issued`; our side verifies it."""
    ours = our_contexts(world, bundles)
    roots = b"".join(bundle.pem for bundle in bundles.values())
    we_serve = peer_role == "client"
    our_session = ours.session(server_side=we_serve)
    their_session = TlsSession(
        raw_context(issued, roots, server_side=not we_serve), server_side=not we_serve
    )
    ctx = _HandshakeContext(
        address="test",
        bundles=bundles,
        policy=meshtls.ValidationPolicy(),
        authorize=meshtls.authorize_any(),
        clock=lambda: T,
        role=peer_role,
    )
    client, server = (their_session, our_session) if we_serve else (our_session, their_session)
    done = {"ours": False, "theirs": False}
    for _ in range(5):
        try:
            done["ours"] = our_session.handshake()
        except TlsError as exc:
            if we_serve:
                return exc.reason
            return _diagnose_client_side(our_session, exc, ctx).reason
        server.feed(client.outgoing())
        client.feed(server.outgoing())
        try:
            done["theirs"] = their_session.handshake()  # it verifies nothing...
        except TlsError:  # ...but it may be unable to sign with its key: we get its alert
            server.feed(client.outgoing())
            client.feed(server.outgoing())
            continue
        server.feed(client.outgoing())
        client.feed(server.outgoing())
        if all(done.values()):
            break
    try:
        verify_handshake_chain(
            our_session.verified_chain(),
            bundles,
            policy=ctx.policy,
            now=T,
            role=peer_role,
            sent=our_session.sent_chain_length(),
            sent_chain=our_session.unverified_chain,
        )
    except VerificationError as exc:
        return exc.reason
    return None


def standalone_reason(
    issued: IssuedCertificate, bundles: meshtls.BundleSet, *, peer_role: Role
) -> str | None:
    try:
        verify_svid(issued.chain, bundles, now=T, role=peer_role)
    except VerificationError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("peer_role", ["client", "server"])
@pytest.mark.parametrize(("case", "expected"), [pytest.param(c, r, id=i) for i, c, r in CASES])
def test_both_paths_agree(
    world: World, request: pytest.FixtureRequest, case: Case, expected: str | None, peer_role: Role
) -> None:
    issued, bundles = presented(world, case)
    standalone = standalone_reason(issued, bundles, peer_role=peer_role)
    assert standalone == expected
    handshake = handshake_reason(world, issued, bundles, peer_role=peer_role)
    case_id = request.node.callspec.id.rsplit("-", 1)[0]
    exception = CANNOT_PRESENT.get((case_id, peer_role))
    if exception is None and peer_role == "client":
        exception = SERVER_SIDE_OPENSSL_REASONS.get(case_id)
    assert handshake == (exception or standalone)


def test_the_exception_lists_are_not_stale() -> None:
    ids = {i for i, _, _ in ALL_REJECTED}
    assert set(SERVER_SIDE_OPENSSL_REASONS) <= ids
    assert {i for i, _ in CANNOT_PRESENT} <= ids


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("unhandled critical extension", "malformed_certificate"),
        ("invalid or inconsistent certificate extension", "malformed_certificate"),
        ("EE certificate key too weak", "untrusted_chain"),
        ("CA certificate key too weak", "untrusted_chain"),
        ("CA signature digest algorithm too weak", "untrusted_chain"),
        ("unsupported or invalid name syntax", "bad_signing_certificate"),
        ("unsupported name constraint type", "bad_signing_certificate"),
        ("permitted subtree violation", "bad_signing_certificate"),
        ("unsuitable certificate purpose", "extended_key_usage"),
        ("unable to get local issuer certificate", "untrusted_chain"),
    ],
)
def test_openssl_messages_map_to_the_reasons_of_verify_svid(message: str, reason: str) -> None:
    """What a server says when OpenSSL refuses a client first: the reason `verify_svid`
    gives for the same defect (the table above shows each on a real handshake)."""
    assert _verify_reason(message) == reason
