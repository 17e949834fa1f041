"""One table, two paths: every case of test_verify.py's `TABLES` (its own rows and
x509-limbo's, tests/cases_limbo.py), verified by `verify_svid` and by a real TLS 1.3
handshake in both roles: our side is the engine as `connect` and `serve` run it
(`_establish` on a socket: OpenSSL's chain check, then the SPIFFE verifier and the
authorizer inside OpenSSL's verify callback); the peer is a plain stdlib `ssl` object
(OpenSSL 3.0, security level 0) that presents the case's chain and verifies nothing, or,
for a leaf that OpenSSL 3.0 will not load, the same peer on pyOpenSSL (OpenSSL 4 loads it).

Per case and role the harness records two things: the reason our side gives, and the TLS
alert the peer received from us. The reason must be `verify_svid`'s, and the alert must
be the one `ALERT_FOR` names for that reason, so that the peer reads back
``alert_reason(ALERT_FOR.get(reason, DEFAULT_ALERT))``. The exceptions:

- where a server cannot judge inside the handshake (the verifier needs the chain the
  client *sent*, which OpenSSL hands a server only after verification: `Deferred`), the
  verdict comes right after the handshake and the client gets no alert, only the closed
  connection (`NO_ALERT`); the reason is still `verify_svid`'s;
- where OpenSSL refuses a client's chain before it has built past the leaf, the server
  can read the leaf alone (`SERVER_SIDE_OPENSSL_REASONS`);
- where the peer cannot present the certificate in TLS 1.3 at all: its key cannot sign a
  TLS 1.3 handshake (`CANNOT_PRESENT`).

Nowhere else may the reasons or the alerts differ; docs/decisions.md gives the reason for
each entry. ``python -m tests.test_handshake_verdicts`` prints the whole table as the code
stands.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Final

import pytest
import trio
from OpenSSL import SSL

import meshtls
from meshtls import VerificationError, verify_svid
from meshtls._stream import MeshStream, _establish, _HandshakeContext
from meshtls._svid import Role
from meshtls._tls import ALERT_FOR, DEFAULT_ALERT, TlsContexts, _verify_reason, alert_reason
from meshtls.testing import CA, IssuedCertificate

from .conftest import T, World
from .table import Case, presented
from .test_verify import ALL_ACCEPTED, ALL_REJECTED

#: What `handshake_verdict` says when neither peer library will load the leaf (no case now).
PEER_CANNOT_LOAD: Final = "(the peer's TLS library will not load the leaf)"
#: The alert cell of a rejection that sent none (the connection was closed after the handshake).
NONE: Final = "none"
WAIT: Final = 10.0  # bound on one in-memory handshake (it takes milliseconds)


@dataclass(frozen=True)
class Verdict:
    """One handshake: the reason our side gave (None: accepted) and the alert the peer
    received from us (None: none; the peer's own failure is not an alert from us)."""

    reason: str | None
    alert: str | None


# case ids a server (the peer is a client) judges only after the handshake: the chain
# OpenSSL built does not end at an authority of the leaf's own trust domain (L-10), or the
# verdict needs how many certificates the client sent, so the verifier needs what the
# client *sent*, which a server's verify callback cannot read yet (`Deferred`). The reason
# is exact; the client gets no alert, only the closed connection
# (`_stream._deferred_verdict`). A client reads the server's chain inside the callback, so
# every such case alerts there.
NO_ALERT: Final[frozenset[str]] = frozenset(
    {
        # OpenSSL's chain ends at another trust domain's authority (L-10)
        "L-10 other trust domain's root vouches",
        "L-10 other trust domain's intermediate vouches",
        # the client's certificate count is known only after the handshake
        "pathlen::max-chain-depth-1-exhausted",
        # the leaf passes alone; a signer on OpenSSL's path fails, and another path through
        # what the client sent might not: only the search after the handshake can tell
        "L-9 DSA intermediate",
        "S-3 intermediate SPIFFE ID with path",
        "S-4 DNS .example.org (a leading period) fails closed on a.example.org",
        "L-9 intermediate expired",
        "S-4 registeredID name constraint cannot be evaluated",
        "S-4 otherName name constraint cannot be evaluated",
        "boundary EDIPartyName in an intermediate SAN",
        "boundary duplicate extension in an intermediate",
        "rfc5280::root-missing-basic-constraints",
        "meshtls::intermediate-without-key-usage",
        "webpki::nc::intermediate-permitted-excluded-subtrees-both-null",
        "webpki::nc::intermediate-permitted-excluded-subtrees-both-empty-sequences",
        "rfc5280::nc::invalid-dnsname-leading-period",
        "rfc5280::nc::nc-forbids-othername-noop",
        "meshtls::validity::intermediate-notafter-utctime-1950",
        "meshtls::validity::intermediate-notbefore-utctime-2049",
        "rfc5280::ca-empty-subject",
        "webpki::forbidden-dsa-root",
        "rfc5280::validity::expired-root",
        "rfc5280::validity::expired-intermediate",
    }
)
# case id -> the reason a server gives for a client whose chain OpenSSL refused before the
# verify callback could read past the leaf: OpenSSL cannot use a CA whose extensions it
# finds invalid as an issuer ("unable to get local issuer certificate"), so the chain it
# built, all a server can read then, is the leaf alone (docs/decisions.md, issue 11).
SERVER_SIDE_OPENSSL_REASONS: Final[dict[str, str]] = {
    "boundary intermediate with a negative pathLenConstraint": "untrusted_chain",
    "rfc5280::ica-ku-keycertsign": "untrusted_chain",  # an empty key usage (RFC 5280 4.2.1.3)
}

# (case id, peer role) -> what our side sees when the peer cannot even present the leaf:
# - a P-192 or DSA key cannot sign a TLS 1.3 CertificateVerify. A client then sends no
#   certificate (our OpenSSL answers certificate_required); a server fails its own
#   handshake and alerts us (protocol_error; it got no alert from us).
CANNOT_PRESENT: Final[dict[tuple[str, str], Verdict | str]] = {
    (case, role): seen
    for case in (
        "L-9 P-192 leaf",
        "L-9 DSA leaf",
        "webpki::forbidden-p192-leaf",
        "webpki::forbidden-dsa-leaf",
    )
    for role, seen in (
        ("client", Verdict("no_client_certificate", "certificate_required")),
        ("server", Verdict("protocol_error", None)),
    )
}
CASES = [(i, c, r) for i, c, r in ALL_REJECTED] + [(i, c, None) for i, c in ALL_ACCEPTED]


def raw_context(issued: IssuedCertificate, roots: bytes, *, server_side: bool) -> ssl.SSLContext:
    """A plain TLS 1.3 context presenting `issued` as it is, defects and weak keys included.
    Raises `ssl.SSLError` when OpenSSL will not load the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # this peer judges nobody: only our side verifies
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that it may present RSA-1024 or SHA-1
    context.load_verify_locations(cadata=roots.decode())
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "peer.pem"
        path.write_bytes(issued.chain_pem + issued.key_pem)
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


_ALERT_REASON = re.compile(r"^(?:SSLV3|TLSV1|TLSV13)_ALERT_([A-Z_]+)$")


def alert_received(exc: ssl.SSLError) -> str | None:
    """The alert a stdlib peer's error says it received (``TLSV1_ALERT_UNKNOWN_CA``:
    ``unknown_ca``), None for a failure of its own."""
    found = _ALERT_REASON.match(exc.reason or "")
    return None if found is None else found.group(1).lower()


class _Peer:
    """A peer over memory BIOs, pumped through one end of a socket pair: it handshakes,
    then reads until the connection ends, and keeps the alert it received. This one is
    the stdlib's (OpenSSL 3.0); `_PyOpenSSLPeer` presents what the stdlib will not load."""

    def __init__(self, context: ssl.SSLContext, sock: socket.socket, *, server_side: bool) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side)
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.alert: str | None = None
        self.data = b""  # application bytes received: none may ever come from us

    # the engine's half: None means "wants more input"; raise `_Ended` at the end
    def _handshake(self) -> bool:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLZeroReturnError:
            raise _Ended(None) from None
        except (ssl.SSLEOFError, ssl.SSLSyscallError):
            raise _Ended(None) from None
        except ssl.SSLError as exc:
            raise _Ended(alert_received(exc)) from None
        return True

    def _read(self) -> bytes | None:
        try:
            return self.tls.read(65536)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""  # our close_notify: we accepted it
        except (ssl.SSLEOFError, ssl.SSLSyscallError):
            return b""  # our side closed without a word
        except ssl.SSLError as exc:
            raise _Ended(alert_received(exc)) from None

    def _take(self) -> bytes:
        return self.outgoing.read()

    def _give(self, data: bytes) -> None:
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    # the socket's half
    async def _flush(self) -> None:
        out = self._take()
        try:
            while out:
                sent = await self.sock.send(out)
                out = out[sent:]
        except OSError:
            pass  # our side may have closed already: what it said is in `incoming`

    async def _fill(self) -> None:
        try:
            data = await self.sock.recv(65536)
        except OSError:
            data = b""
        self._give(data)

    async def run(self) -> None:
        with self.sock:
            try:
                while not self._handshake():
                    await self._flush()
                    await self._fill()
                await self._flush()
                while (chunk := self._read()) != b"":  # b"": the connection ended
                    if chunk is None:
                        await self._fill()
                    else:
                        self.data += chunk
            except _Ended as ended:
                self.alert = ended.alert
                await self._flush()  # its own alert, if it failed by itself


class _Ended(Exception):  # noqa: N818 (an outcome, not an error)
    def __init__(self, alert: str | None) -> None:
        super().__init__(alert)
        self.alert = alert


_PYOPENSSL_ALERT = re.compile(r"\b(?:sslv3|tlsv1|tlsv13|tls) alert ([a-z ]+)")


class _PyOpenSSLPeer(_Peer):
    """The same peer on pyOpenSSL (cryptography's OpenSSL 4, security level 0), which
    loads a leaf the stdlib's OpenSSL 3.0 refuses (a duplicate extension, a SAN that is
    not DER)."""

    def __init__(
        self,
        issued: IssuedCertificate,
        sock: socket.socket,
        *,
        server_side: bool,
    ) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD if server_side else SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_max_proto_version(SSL.TLS1_3_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.use_certificate(issued.chain[0])
        for extra in issued.chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(issued.private_key)
        context.set_verify(SSL.VERIFY_NONE)  # this peer judges nobody either
        self.conn = SSL.Connection(context, None)
        if server_side:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.alert = None
        self.data = b""

    def _failure(self, exc: SSL.Error) -> _Ended:
        if isinstance(exc, (SSL.ZeroReturnError, SSL.SysCallError)):
            return _Ended(None)
        found = _PYOPENSSL_ALERT.search(str(exc).lower())
        return _Ended(None if found is None else found.group(1).strip().replace(" ", "_"))

    def _handshake(self) -> bool:
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise self._failure(exc) from None
        return True

    def _read(self) -> bytes | None:
        try:
            return self.conn.recv(65536)
        except SSL.WantReadError:
            return None
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return b""
        except SSL.Error as exc:
            raise self._failure(exc) from None

    def _take(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.conn.bio_read(65536)
            except SSL.WantReadError:
                return out

    def _give(self, data: bytes) -> None:
        if data:
            self.conn.bio_write(data)
        else:
            self.conn.bio_shutdown()


def handshake_verdict(
    world: World, issued: IssuedCertificate, bundles: meshtls.BundleSet, *, peer_role: Role
) -> Verdict | str:
    """Run a real handshake where the peer presents `issued`; our side verifies it as
    `connect` (peer_role "server") or `serve` (peer_role "client") does."""
    roots = b"".join(bundle.pem for bundle in bundles.values())
    we_serve = peer_role == "client"
    theirs: ssl.SSLContext | None = None
    with contextlib.suppress(ssl.SSLError):  # OpenSSL 3.0 will not load it: OpenSSL 4 may
        theirs = raw_context(issued, roots, server_side=not we_serve)
    ctx = _HandshakeContext(
        address="test",
        bundles=bundles,
        policy=meshtls.ValidationPolicy(),
        authorize=meshtls.authorize_any(),
        clock=lambda: T,
        role=peer_role,
    )
    session = our_contexts(world, bundles).session(server_side=we_serve, verifier=ctx)
    mine, their_end = socket.socketpair()
    mine.setblocking(False)
    their_end.setblocking(False)
    try:
        if theirs is not None:
            peer = _Peer(theirs, their_end, server_side=not we_serve)
        else:
            peer = _PyOpenSSLPeer(issued, their_end, server_side=not we_serve)
    except SSL.Error:
        mine.close()
        their_end.close()
        return PEER_CANNOT_LOAD
    reason: list[str | None] = []

    async def ours() -> None:
        try:
            stream: MeshStream = await _establish(mine, session, ctx)
        except meshtls.HandshakeError as exc:
            reason.append(exc.reason)
            mine.close()
        else:
            reason.append(None)
            await stream.aclose()  # close_notify, and closes `mine`

    async def both() -> None:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.run)
                nursery.start_soon(ours)

    try:
        trio.run(both)
    finally:
        mine.close()
        their_end.close()
    assert peer.data == b"", "our side sent application data"
    return Verdict(reason[0], peer.alert)


def standalone_reason(
    issued: IssuedCertificate, bundles: meshtls.BundleSet, *, peer_role: Role
) -> str | None:
    try:
        verify_svid(issued.chain, bundles, now=T, role=peer_role)
    except VerificationError as exc:
        return exc.reason
    return None


_ALERT_FOR: Final[dict[str, str]] = dict(ALERT_FOR.items())


def alert_for(reason: str | None) -> str | None:
    """The alert our side sends for `reason` (None: accepted, no alert)."""
    return None if reason is None else _ALERT_FOR.get(reason, DEFAULT_ALERT)


def expected_handshake(case_id: str, expected: str | None, peer_role: Role) -> Verdict | str:
    """What the handshake must say: `verify_svid`'s reason and the alert `ALERT_FOR` gives
    it, but for the listed exceptions."""
    cannot = CANNOT_PRESENT.get((case_id, peer_role))
    if cannot is not None:
        return cannot
    if peer_role == "client" and case_id in NO_ALERT:
        return Verdict(expected, None)
    if peer_role == "client":
        expected = SERVER_SIDE_OPENSSL_REASONS.get(case_id, expected)
    return Verdict(expected, alert_for(expected))


@pytest.mark.parametrize("peer_role", ["client", "server"])
@pytest.mark.parametrize(("case", "expected"), [pytest.param(c, r, id=i) for i, c, r in CASES])
def test_both_paths_agree(
    world: World, request: pytest.FixtureRequest, case: Case, expected: str | None, peer_role: Role
) -> None:
    issued, bundles = presented(world, case)
    standalone = standalone_reason(issued, bundles, peer_role=peer_role)
    assert standalone == expected
    handshake = handshake_verdict(world, issued, bundles, peer_role=peer_role)
    case_id = request.node.callspec.id.rsplit("-", 1)[0]
    assert handshake == expected_handshake(case_id, standalone, peer_role)
    if isinstance(handshake, Verdict) and handshake.alert is not None:
        # A meshtls peer reads a reason back from the alert (`alert_reason`): ours exactly,
        # or, where several reasons share the alert, the one it stands for, which
        # `ALERT_FOR` sends with that same alert.
        read_back = alert_reason(handshake.alert)
        assert read_back != "protocol_error", handshake
        if read_back != handshake.reason:
            assert alert_for(read_back) == handshake.alert == alert_for(handshake.reason)


def test_the_exception_lists_are_not_stale() -> None:
    ids = [i for i, _, _ in CASES]
    assert len(ids) == len(set(ids)), "a case id appears twice in TABLES"
    rejected = {i for i, _, _ in ALL_REJECTED}
    assert set(NO_ALERT) <= rejected
    assert set(SERVER_SIDE_OPENSSL_REASONS) <= rejected
    assert {i for i, _ in CANNOT_PRESENT} <= rejected
    listed = [set(NO_ALERT), set(SERVER_SIDE_OPENSSL_REASONS), {i for i, _ in CANNOT_PRESENT}]
    assert all(not (a & b) for a in listed for b in listed if a is not b), "listed twice"


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
    """What the engine says when OpenSSL refuses a chain that our verifier cannot read:
    the reason `verify_svid` gives for the same defect."""
    assert _verify_reason(message) == reason


# --------------------------------------------------------------------------- the table


def verdict(run: Callable[[], Verdict | str | None]) -> str:
    """What one path says: "reason / alert", "accept", or "raises X" for whatever escaped it
    (warnings are errors here, as in the suite)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            seen = run()
    except Exception as exc:  # the table names what escaped
        return f"raises {type(exc).__name__}"
    return cell(seen)


def cell(seen: Verdict | str | None) -> str:
    if isinstance(seen, Verdict):
        if seen.reason is None:
            return "accept" if seen.alert is None else f"accept / alert {seen.alert}"
        return f"{seen.reason} / {seen.alert or NONE}"
    return seen or "accept"


Row = tuple[str, str, str, str, str]


def verdict_table(world: World) -> list[Row]:
    """Per case: id; expected; verify_svid (one verdict when both roles agree); the handshake
    with the peer as client (we serve); the handshake with the peer as server (we dial).
    A handshake cell is "reason / the alert the peer got" (or "accept")."""
    rows = []
    for case_id, case, expected in CASES:
        issued, bundles = presented(world, case)
        svid = [verdict(partial(standalone_reason, issued, bundles, peer_role=r)) for r in ROLES]
        client, server = (
            verdict(partial(handshake_verdict, world, issued, bundles, peer_role=r)) for r in ROLES
        )
        rows.append(
            (case_id, expected or "accept", " / ".join(dict.fromkeys(svid)), client, server)
        )
    return rows


ROLES: tuple[Role, Role] = ("client", "server")


def as_listed(row: Row) -> bool:
    """Whether a row's handshake verdicts are `verify_svid`'s with `ALERT_FOR`'s alert, or
    differ only as listed."""
    case_id, expected, svid, client, server = row
    if svid != expected:
        return False
    wanted = None if expected == "accept" else expected
    return all(
        seen == cell(expected_handshake(case_id, wanted, role))
        for role, seen in zip(ROLES, (client, server), strict=True)
    )


def main() -> None:
    """Print the table as markdown, with the counts (``python -m tests.test_handshake_verdicts``;
    ``--differ`` prints only the rows where a handshake's reason is not verify_svid's or
    its alert not `ALERT_FOR`'s)."""
    ca, other = CA("example.org", now=T), CA("other.org", now=T)
    ed = CA("ed.example", now=T, key_type="ed25519")
    rows = verdict_table(World(ca, other, ed, ca.bundle_set(other, ed)))

    def plain(row: Row) -> bool:
        wanted = None if row[1] == "accept" else row[1]
        return row[2] == row[1] and all(
            seen == cell(Verdict(wanted, alert_for(wanted))) for seen in row[3:]
        )

    differ = [row for row in rows if not plain(row)]
    print("| case | expected | verify_svid | handshake, peer=client | handshake, peer=server |")
    print("|---|---|---|---|---|")
    for case_id, *cells in differ if "--differ" in sys.argv[1:] else rows:
        print(f"| `{case_id}` | " + " | ".join(cells) + " |")
    wrong = [row[0] for row in rows if not as_listed(row)]
    verdicts = [
        row for row in rows if len({c == "accept" or c.startswith("accept ") for c in row[2:]}) > 1
    ]
    print(
        f"\n{len(rows)} cases ({len(ALL_REJECTED)} refused, {len(ALL_ACCEPTED)} accepted), each"
        f" in both roles. Verdicts (accept or refuse) that differ between verify_svid and the"
        f" handshake: {len(verdicts)}. Rows whose reason or alert differs from verify_svid's"
        f" reason and ALERT_FOR's alert: {len(differ) - len(verdicts)}, every one listed"
        " (NO_ALERT, SERVER_SIDE_OPENSSL_REASONS, CANNOT_PRESENT)."
        if not wrong
        else f"\nNOT as expected, or differing where nothing is listed: {', '.join(wrong)}"
    )


if __name__ == "__main__":
    main()
