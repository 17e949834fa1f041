"""One table, two paths: every case of test_verify.py's `TABLES` (its own rows and
x509-limbo's, tests/cases_limbo.py), verified by `verify_svid` and by a real TLS 1.3
handshake (OpenSSL's chain check, then `verify_handshake_chain`), in both roles.

The verdict (accept or reject) must always agree. The reason must agree too, except:

- where OpenSSL's own check rejects a *client* first: a server cannot read the client's
  chain after that, so the reason comes from OpenSSL's verify message
  (`SERVER_SIDE_OPENSSL_REASONS`);
- where the peer cannot present the certificate in TLS 1.3 at all: its key cannot sign a
  TLS 1.3 handshake, or its TLS library will not load the certificate (`CANNOT_PRESENT`).

Nowhere else may the reasons differ; docs/decisions.md gives the reason for each entry.
``python -m tests.test_handshake_verdicts`` prints the whole table as the code stands.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import meshtls
from meshtls import VerificationError, verify_svid
from meshtls._stream import _diagnose_client_side, _HandshakeContext
from meshtls._svid import Role, verify_handshake_chain
from meshtls._tls import TlsContexts, TlsError, TlsSession, _pem_path, _verify_reason
from meshtls.testing import CA, IssuedCertificate

from .conftest import T, World
from .table import Case, presented
from .test_verify import ALL_ACCEPTED, ALL_REJECTED

#: What `handshake_reason` says when the peer's own TLS library refuses to load the leaf.
PEER_CANNOT_LOAD = "(the peer's TLS library will not load the leaf)"
_PURPOSE = "unsuitable certificate purpose"
_NO_ISSUER = "unable to get local issuer certificate"
# `openssl verify` as our TLS contexts verify: bundle authorities anchor, no time check
OPENSSL_VERIFY = ("openssl", "verify", "-partial_chain", "-no_check_time")

# case id -> the reason a server gets from OpenSSL's verify message for a defective client:
# the message OpenSSL gives is shared with other defects (docs/decisions.md has each one).
SERVER_SIDE_OPENSSL_REASONS = {
    "L-6 no digitalSignature": "extended_key_usage",  # _PURPOSE (code 26)
    "L-10 unknown trust domain": "untrusted_chain",  # no root for it in the store (code 20)
    # OpenSSL cannot use a CA whose extensions it finds invalid as an issuer (_NO_ISSUER):
    # a negative pathLenConstraint, an empty key usage (RFC 5280 4.2.1.3)
    "boundary intermediate with a negative pathLenConstraint": "untrusted_chain",
    "rfc5280::root-inconsistent-ca-extensions": "untrusted_chain",
    "rfc5280::ica-ku-keycertsign": "untrusted_chain",
    "webpki::ca-as-leaf": "extended_key_usage",  # _PURPOSE: a CA is no TLS client
    "rfc5280::eku::ee-eku-empty": "extended_key_usage",  # _PURPOSE
    # "unsupported or invalid name syntax" (53), shared with names a constraint cannot read
    "rfc5280::nc::invalid-ipv4-address": "bad_signing_certificate",
}
# (case id, peer role) -> what our side sees when the peer cannot even present the leaf:
# - a P-192 or DSA key cannot sign a TLS 1.3 CertificateVerify. A client then sends no
#   certificate; a server fails its own handshake and alerts us;
# - OpenSSL will not load a leaf whose extensions it cannot parse (X509V3
#   INVALID_CERTIFICATE). `test_leaves_no_peer_can_load_are_refused_by_openssl` shows that
#   our side's OpenSSL would refuse them too, were a hand-made TLS stack to send them.
CANNOT_PRESENT = {
    **{
        (case, role): seen
        for case in (
            "L-9 P-192 leaf",
            "L-9 DSA leaf",
            "webpki::forbidden-p192-leaf",
            "webpki::forbidden-dsa-leaf",
        )
        for role, seen in (("client", "no_client_certificate"), ("server", "protocol_error"))
    },
    **{
        (case, role): PEER_CANNOT_LOAD
        for case in ("rfc5280::duplicate-extensions", "rfc5280::san::malformed")
        for role in ("client", "server")
    },
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
    try:
        theirs = raw_context(issued, roots, server_side=not we_serve)
    except ssl.SSLError:
        return PEER_CANNOT_LOAD
    their_session = TlsSession(theirs, server_side=not we_serve)
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


def expected_handshake(case_id: str, expected: str | None, peer_role: Role) -> str | None:
    """What the handshake must say: `verify_svid`'s verdict, but for the listed exceptions."""
    exception = CANNOT_PRESENT.get((case_id, peer_role))
    if exception is None and peer_role == "client":
        exception = SERVER_SIDE_OPENSSL_REASONS.get(case_id)
    return exception or expected


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
    assert handshake == expected_handshake(case_id, standalone, peer_role)


def test_the_exception_lists_are_not_stale() -> None:
    ids = [i for i, _, _ in CASES]
    assert len(ids) == len(set(ids)), "a case id appears twice in TABLES"
    rejected = {i for i, _, _ in ALL_REJECTED}
    assert set(SERVER_SIDE_OPENSSL_REASONS) <= rejected
    assert {i for i, _ in CANNOT_PRESENT} <= rejected


@pytest.mark.openssl
def test_leaves_no_peer_can_load_are_refused_by_openssl(world: World, tmp_path: Path) -> None:
    """The handshake cannot be run for a leaf the peer's OpenSSL will not load; were a
    hand-made TLS stack to send it, our side's OpenSSL (the CLI, same checks) would refuse
    it: the leaf is unusable, so no issuer is found. No skip: CI installs openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command-line tool is required")
    unloadable = sorted({i for (i, _), seen in CANNOT_PRESENT.items() if seen == PEER_CANNOT_LOAD})
    cases = {i: c for i, c, _ in CASES}
    for case_id in unloadable:
        issued, bundles = presented(world, cases[case_id])
        leaf, roots = tmp_path / "leaf.pem", tmp_path / "roots.pem"
        leaf.write_bytes(issued.leaf.public_bytes(Encoding.PEM))
        roots.write_bytes(b"".join(bundle.pem for bundle in bundles.values()))
        for purpose in ("sslclient", "sslserver"):
            done = subprocess.run(
                [*OPENSSL_VERIFY, "-purpose", purpose, "-CAfile", str(roots), str(leaf)],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            said = done.stdout + done.stderr
            assert done.returncode != 0, (case_id, purpose, said)
            assert _NO_ISSUER in said, (case_id, purpose, said)
            assert "invalid certificate" in said, (case_id, purpose, said)  # the leaf itself


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


# --------------------------------------------------------------------------- the table


def verdict(run: Callable[[], str | None]) -> str:
    """What one path says: a reason, "accept", or "raises X" for whatever escaped it
    (warnings are errors here, as in the suite)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            reason = run()
    except Exception as exc:  # the table names what escaped
        return f"raises {type(exc).__name__}"
    return reason or "accept"


Row = tuple[str, str, str, str, str]


def verdict_table(world: World) -> list[Row]:
    """Per case: id; expected; verify_svid (one verdict when both roles agree); the handshake
    with the peer as client (we serve); the handshake with the peer as server (we dial)."""
    rows = []
    for case_id, case, expected in CASES:
        issued, bundles = presented(world, case)
        svid = [verdict(partial(standalone_reason, issued, bundles, peer_role=r)) for r in ROLES]
        client, server = (
            verdict(partial(handshake_reason, world, issued, bundles, peer_role=r)) for r in ROLES
        )
        rows.append(
            (case_id, expected or "accept", " / ".join(dict.fromkeys(svid)), client, server)
        )
    return rows


ROLES: tuple[Role, Role] = ("client", "server")


def as_listed(row: Row) -> bool:
    """Whether a row's handshake verdicts are `verify_svid`'s, or differ only as listed."""
    case_id, expected, svid, client, server = row
    if svid != expected:
        return False
    wanted = None if expected == "accept" else expected
    return all(
        seen == (expected_handshake(case_id, wanted, role) or "accept")
        for role, seen in zip(ROLES, (client, server), strict=True)
    )


def main() -> None:
    """Print the table as markdown, with the counts (``python -m tests.test_handshake_verdicts``;
    ``--differ`` prints only the rows where the handshake's answer is not verify_svid's)."""
    ca, other = CA("example.org", now=T), CA("other.org", now=T)
    ed = CA("ed.example", now=T, key_type="ed25519")
    rows = verdict_table(World(ca, other, ed, ca.bundle_set(other, ed)))
    differ = [row for row in rows if len({row[2], row[3], row[4]}) > 1]
    print("| case | expected | verify_svid | handshake, peer=client | handshake, peer=server |")
    print("|---|---|---|---|---|")
    for case_id, *cells in differ if "--differ" in sys.argv[1:] else rows:
        print(f"| `{case_id}` | " + " | ".join(cells) + " |")
    wrong = [row[0] for row in rows if not as_listed(row)]
    verdicts = [row for row in differ if len({cell == "accept" for cell in row[2:]}) > 1]
    print(
        f"\n{len(rows)} cases ({len(ALL_REJECTED)} refused, {len(ALL_ACCEPTED)} accepted), each"
        f" in both roles. Verdicts (accept or refuse) that differ between verify_svid and the"
        f" handshake: {len(verdicts)}. Reasons that differ: {len(differ) - len(verdicts)}, every"
        " one listed (SERVER_SIDE_OPENSSL_REASONS, CANNOT_PRESENT)."
        if not wrong
        else f"\nNOT as expected, or differing where nothing is listed: {', '.join(wrong)}"
    )


if __name__ == "__main__":
    main()
