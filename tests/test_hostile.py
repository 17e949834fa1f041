"""Hostile input (issue 3, item 6): every attack is refused with its reason, the handler
never runs for the attacker, and a good client is served straight afterwards.

Each server-side test runs one `meshtls.serve` (tests/hostile.py `EchoServer`), throws
one hostile peer at it, and checks three things: the reason that `on_rejected` got,
that the echo handler never ran for the attacker, and that a good meshtls client then
gets a round trip through the same server. Hostile peers are stdlib `ssl` clients or
raw bytes, so that they can present what meshtls itself would refuse to.

"No application byte is ever delivered to an unverified peer": in the certificate
cases the attacker completes its side of the TLS 1.3 handshake (the client finishes
first), sends a probe, and must get nothing back but a close, a reset or an alert.
Each refused peer's table row names the exact TLS alert it received (read on the hostile
side, from its own TLS library's error), or None where the server can only judge after
the handshake and closes the connection without one (issue 11; docs/decisions.md).

The client side mirrors a few cases: `meshtls.connect` to a hostile stdlib server
raises `HandshakeError` with the reason and never sends it a byte of application data.
"""

from __future__ import annotations

import hashlib
import resource
import socket
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

import meshtls
from meshtls.testing import CA, IssuedCertificate

from . import certkit
from .hostile import (
    ALERT,
    EDI_PARTY_NAME,
    GOOD_CLIENT_ID,
    HANDSHAKE,
    NO_EXPIRY,
    PROBE,
    SERVER_ID,
    UNKNOWN_CRITICAL,
    WAIT,
    X400_ADDRESS,
    EchoServer,
    Outcome,
    client_context,
    echo_server,
    hostile_server,
    raw_client,
    real_client_hello,
    receive_until_closed,
    records,
    san_with,
    server_context,
    tls10_client_hello,
    tls_client,
    tls_round_trip,
    with_duplicate_san,
    write_pem,
)
from .interop import TLSLITE_MISSING, TlsliteOutcome, tlslite_client, tlslite_server
from .meshnet import Mesh


async def expect_rejection(server: EchoServer, reason: str) -> meshtls.HandshakeError:
    """The server rejected exactly one peer, for `reason`, and ran no handler for it."""
    rejected = await server.rejection()
    assert rejected.reason == reason, rejected
    assert rejected.reason in meshtls.REASONS
    assert server.served == []
    assert server.pending_rejections() == []
    return rejected


def assert_nothing_delivered(outcome: Outcome, alert: str | None) -> None:
    """The attacker finished its handshake but got no application byte back, only `alert`
    (None: the connection closed without one)."""
    assert outcome.handshake_completed, outcome
    assert outcome.received == b"", outcome
    assert outcome.alert == alert, outcome


# ---------------------------------------------------------------- not TLS 1.3 at all


async def test_tls12_client_is_refused() -> None:
    mesh = Mesh()
    async with echo_server(mesh) as server:
        context = client_context(mesh, None, maximum=ssl.TLSVersion.TLSv1_2)
        outcome = await tls_client(server.port, context)
        assert not outcome.handshake_completed
        assert isinstance(outcome.error, trio.BrokenResourceError)
        await expect_rejection(server, "protocol_error")
        await server.assert_serves_good_client()


async def test_tls10_client_hello_is_refused_with_an_alert() -> None:
    """A hand-made TLS 1.0 ClientHello: no TLS 1.3 extension at all."""
    mesh = Mesh()
    async with echo_server(mesh) as server:
        answer = await raw_client(server.port, tls10_client_hello())
        # OpenSSL answers an old ClientHello with a plaintext alert (protocol_version)
        assert [kind for kind, _ in records(answer)] == [ALERT], answer
        await expect_rejection(server, "protocol_error")
        await server.assert_serves_good_client()


async def test_tls10_stdlib_client_is_refused() -> None:
    """The stdlib's own TLS 1.0 client (OpenSSL 3 sends it only at security level 0)."""
    mesh = Mesh()
    context = client_context(mesh, None)
    context.set_ciphers("DEFAULT@SECLEVEL=0")
    with warnings.catch_warnings():  # "ssl.TLSVersion.TLSv1 is deprecated": that's the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1
    async with echo_server(mesh) as server:
        outcome = await tls_client(server.port, context)
        assert not outcome.handshake_completed
        assert isinstance(outcome.error, trio.BrokenResourceError)
        await expect_rejection(server, "protocol_error")
        await server.assert_serves_good_client()


async def test_plaintext_http_is_refused() -> None:
    mesh = Mesh()
    async with echo_server(mesh) as server:
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        answer = await raw_client(server.port, request)
        assert b"HTTP" not in answer
        assert all(kind == ALERT for kind, _ in records(answer)), answer
        await expect_rejection(server, "protocol_error")
        await server.assert_serves_good_client()


async def test_64k_of_random_bytes_are_refused() -> None:
    mesh = Mesh()
    noise = hashlib.shake_256(b"meshtls hostile noise").digest(64 * 1024)  # fixed, random-looking
    async with echo_server(mesh) as server:
        answer = await raw_client(server.port, noise)
        assert all(kind == ALERT for kind, _ in records(answer)), answer
        await expect_rejection(server, "protocol_error")
        await server.assert_serves_good_client()


# ---------------------------------------------------------------- certificates


async def test_client_without_a_certificate_is_refused() -> None:
    mesh = Mesh()
    async with echo_server(mesh) as server:
        outcome = await tls_client(server.port, client_context(mesh, None))
        assert_nothing_delivered(outcome, "certificate_required")
        await expect_rejection(server, "no_client_certificate")
        await server.assert_serves_good_client()


def _untrusted(mesh: Mesh, spiffe_id: str) -> IssuedCertificate:
    """A leaf from a CA of evil.org, a trust domain the server has never heard of."""
    return CA("evil.org", now=mesh.now).issue(spiffe_id)


def _forged(mesh: Mesh, spiffe_id: str) -> IssuedCertificate:
    """L-10: a leaf of example.org signed by other.org's CA, which the server trusts."""
    return mesh.other.issue(spiffe_id)


def _expired(mesh: Mesh, spiffe_id: str) -> IssuedCertificate:
    """Valid for 30 minutes, ending an hour ago (far outside the 30 s skew)."""
    return mesh.ca.issue(
        spiffe_id,
        not_before=mesh.now - timedelta(minutes=90),
        not_after=mesh.now - timedelta(minutes=60),
    )


def _two_hours(mesh: Mesh, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.issue(spiffe_id, ttl=timedelta(hours=2))


def _leaf_is_ca(mesh: Mesh, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.issue(spiffe_id, is_ca=True)


def _two_uri_sans(mesh: Mesh, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.issue(uris=[spiffe_id, "spiffe://example.org/also-me"])


# OpenSSL rejects the first two during the handshake; the server's verify callback still
# reads the chain OpenSSL built and names the reason as `verify_svid` does (issue 11). The
# others pass OpenSSL and are refused by the SPIFFE checks: inside the handshake, with
# ALERT_FOR's alert, judged on the chain OpenSSL built; after it, with no alert, where that
# chain ends outside the leaf's own trust domain (L-10): the verifier must then search what
# the client sent, which a server reads only after the handshake.
DEFECTS = {
    # name: (make the certificate, the id it claims, the server's reason, claimed_id seen,
    #        the alert the client receives)
    "untrusted_ca_own_domain": (
        _untrusted,
        "spiffe://evil.org/client",
        "unknown_trust_domain",
        "spiffe://evil.org/client",
        "unknown_ca",
    ),
    "untrusted_ca_claims_ours": (
        _untrusted,
        GOOD_CLIENT_ID,
        "untrusted_chain",
        GOOD_CLIENT_ID,
        "unknown_ca",
    ),
    "forged_across_trust_domains_L10": (
        _forged,
        GOOD_CLIENT_ID,
        "untrusted_chain",
        GOOD_CLIENT_ID,
        None,
    ),
    "expired": (_expired, GOOD_CLIENT_ID, "expired", GOOD_CLIENT_ID, "certificate_expired"),
    "two_hour_lifetime": (
        _two_hours,
        GOOD_CLIENT_ID,
        "ttl_exceeded",
        GOOD_CLIENT_ID,
        "bad_certificate",
    ),
    "leaf_is_ca": (_leaf_is_ca, GOOD_CLIENT_ID, "leaf_is_ca", GOOD_CLIENT_ID, "bad_certificate"),
    "two_uri_sans": (_two_uri_sans, GOOD_CLIENT_ID, "multiple_uri_sans", None, "bad_certificate"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
async def test_defective_client_certificate_is_refused(defect: str, tmp_path: Path) -> None:
    make, spiffe_id, reason, claimed_id, alert = DEFECTS[defect]
    mesh = Mesh()
    certificate = write_pem(tmp_path, make(mesh, spiffe_id))
    async with echo_server(mesh) as server:
        outcome = await tls_client(server.port, client_context(mesh, certificate))
        assert_nothing_delivered(outcome, alert)
        rejected = await expect_rejection(server, reason)
        assert rejected.claimed_id == claimed_id
        assert rejected.peer.startswith("127.0.0.1:")
        await server.assert_serves_good_client()


async def test_authorizer_that_says_no() -> None:
    """A federated peer with a perfectly good SVID, refused by the server's authorizer."""
    mesh = Mesh()
    visitor = meshtls.StaticSource(
        mesh.other.issue("spiffe://other.org/visitor").svid(), mesh.bundles
    )
    authorize = meshtls.authorize_member_of("example.org")
    async with echo_server(mesh, authorize=authorize) as server:
        with trio.fail_after(WAIT):
            # TLS 1.3: the client finishes first, so connect succeeds; the refusal
            # shows up on the first receive, as PeerRejectedError (API contract).
            stream = await meshtls.connect(
                "127.0.0.1", server.port, source=visitor, authorize=meshtls.authorize_any()
            )
            async with stream:
                with pytest.raises(meshtls.PeerRejectedError) as caught:
                    await stream.receive_some()
        # the server's alert (certificate_unknown) names the reason to the client
        assert caught.value.reason == "unauthorized", caught.value
        assert "certificate_unknown" in str(caught.value), caught.value
        rejected = await expect_rejection(server, "unauthorized")
        assert rejected.claimed_id == "spiffe://other.org/visitor"
        await server.assert_serves_good_client()


# ---------------------------------------------------------------- slow and broken peers


@pytest.fixture
def jumping_clock() -> trio.testing.MockClock:
    """pytest-trio runs the test on any fixture that is a `trio.abc.Clock`."""
    return trio.testing.MockClock(autojump_threshold=0.05)


@pytest.fixture
def running_clock() -> trio.testing.MockClock:
    """Trio time that runs with real time, and jumps ahead whenever everything waits:
    deadlines cost no real time, yet no two events happen at the same Trio time."""
    return trio.testing.MockClock(rate=1.0, autojump_threshold=0.05)


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(0, id="nothing"),
        pytest.param(7, id="the_first_7_bytes_of_a_client_hello"),
    ],
)
async def test_slowloris_is_closed_at_the_deadline(
    sent: int, jumping_clock: trio.testing.MockClock
) -> None:
    timeout = 10.0
    mesh = Mesh()
    started = time.perf_counter()
    async with echo_server(mesh, handshake_timeout=timeout) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            connected_at = trio.current_time()
            if sent:
                await stream.send_all(real_client_hello(mesh)[:sent])
            rejected_at, rejected = await server.rejection_at(timeout + WAIT)
            assert rejected.reason == "handshake_timeout"
            assert rejected_at - connected_at == pytest.approx(timeout, abs=1e-6)
            # the server closed the connection then, without a word
            with trio.fail_after(WAIT):
                answer, _ = await receive_until_closed(stream)
            assert answer == b""
            assert trio.current_time() - connected_at == pytest.approx(timeout, abs=1e-6)
        assert server.served == []
        await server.assert_serves_good_client()
    assert time.perf_counter() - started < 1.0  # the 10 s were Trio's, not ours


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_peer_disconnecting_mid_handshake(reset: bool) -> None:
    """A real ClientHello, the server's whole first flight read, then the peer goes away."""
    mesh = Mesh()
    async with echo_server(mesh) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(real_client_hello(mesh))
            flight = b""
            with trio.fail_after(WAIT):
                # ServerHello, then (as "change cipher spec" and encrypted records)
                # the rest of the server's flight: wait for the first record at least.
                while not records(flight):
                    chunk = await stream.receive_some()
                    assert chunk, "the server closed before answering the ClientHello"
                    flight += chunk
            assert records(flight)[0][0] == HANDSHAKE
            if reset:  # abort: RST instead of FIN
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        await expect_rejection(server, "protocol_error")
        await server.assert_serves_good_client()


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Enough file descriptors for 500 connections, both ends, in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * 500 + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is under {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_500_idle_connections_do_not_starve_a_good_client(descriptors: None) -> None:
    """500 idle TCP connections (more than the 256 concurrent handshakes allowed)."""
    idle = 500
    mesh = Mesh()
    async with echo_server(mesh) as server:
        sockets: list[trio.socket.SocketType] = []
        try:
            for _ in range(idle):
                sock = trio.socket.socket()
                sockets.append(sock)
                await sock.connect(("127.0.0.1", server.port))
            # accepted in order: the good client's connection comes after all 500
            await server.assert_serves_good_client(limit=1.0)
            assert server.pending_rejections() == []
        finally:
            for sock in sockets:
                sock.close()
        # every one of them had been accepted and is now dropped, each with its reason
        with trio.fail_after(WAIT):
            reasons = [(await server.rejection()).reason for _ in range(idle)]
        assert set(reasons) == {"protocol_error"}
        assert server.served == [GOOD_CLIENT_ID]
        await server.assert_serves_good_client(limit=1.0)


@pytest.mark.parametrize(
    "stall_after",
    [
        pytest.param(5, id="a_record_header"),
        pytest.param(None, id="a_whole_client_hello"),
    ],
)
async def test_stalled_handshakes_do_not_starve_a_good_client(
    stall_after: int | None, descriptors: None, running_clock: trio.testing.MockClock
) -> None:
    """More peers than `max_handshakes` (256) each send part of a handshake and stall:
    the first 5 bytes of a ClientHello, or all of it (then the server has answered and
    waits for the client's second flight). The cap is on handshakes doing work; a peer
    waiting for its own next bytes does none, so a good client must still get through
    within 1 s (Trio time) instead of waiting out the stalled ones' 10 s deadline."""
    stalled = 300
    mesh = Mesh()
    sent = real_client_hello(mesh)[:stall_after]
    async with echo_server(mesh) as server:
        sockets: list[trio.socket.SocketType] = []
        try:
            for _ in range(stalled):
                sock = trio.socket.socket()
                sockets.append(sock)
                await sock.connect(("127.0.0.1", server.port))
                await sock.send(sent)
            try:
                await server.assert_serves_good_client(limit=1.0)
            except trio.TooSlowError:
                pytest.fail(f"{stalled} stalled handshakes starved a good client for 1 s")
        finally:
            for sock in sockets:
                sock.close()
        # each stalled peer is dropped once: cut off (evicted, timed out) or on its close
        with trio.fail_after(WAIT):
            reasons = {(await server.rejection()).reason for _ in range(stalled)}
        assert reasons <= {"protocol_error", "handshake_timeout"}
        assert server.served == [GOOD_CLIENT_ID]
        assert server.pending_rejections() == []


@pytest.mark.parametrize(
    "intermediates",
    [
        pytest.param(7, id="8_certificates_sent_accepted"),
        pytest.param(8, id="9_certificates_sent_refused"),
    ],
)
async def test_chain_length_limit_matches_verify_svid(intermediates: int, tmp_path: Path) -> None:
    """A leaf sent with 7 or 8 intermediates. `verify_svid` takes at most 8 certificates
    as sent; the handshake path must give the same verdict (issue 3: both paths agree)."""
    mesh = Mesh()
    issuer = mesh.ca
    for _ in range(intermediates):
        issuer = issuer.intermediate()
    issued = issuer.issue(GOOD_CLIENT_ID)
    certificate = write_pem(tmp_path, issued)
    try:
        meshtls.verify_svid(issued.chain, mesh.bundles, now=mesh.now, role="client")
    except meshtls.VerificationError as exc:
        by_hand: str | None = exc.reason
    else:
        by_hand = None
    assert by_hand == (None if len(issued.chain) <= 8 else "malformed_certificate")
    async with echo_server(mesh) as server:
        if by_hand is None:
            try:
                echoed = await tls_round_trip(server.port, client_context(mesh, certificate))
            except trio.BrokenResourceError:
                pytest.fail(f"serve refused it: {server.pending_rejections()}")
            assert echoed == PROBE
            assert server.served == [GOOD_CLIENT_ID]
            assert server.pending_rejections() == []
        else:
            outcome = await tls_client(server.port, client_context(mesh, certificate))
            # a server learns how many certificates the client sent only after the
            # handshake: the connection is closed without an alert
            assert_nothing_delivered(outcome, None)
            await expect_rejection(server, by_hand)
            await server.assert_serves_good_client()


# ---------------------------------------------------------------- client side: hostile servers


def _server_with_id(mesh: Mesh, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.issue(spiffe_id)


# A client reads the server's chain inside the handshake, so every refusal sends its alert.
HOSTILE_SERVERS = {
    # name: (make the certificate, the id it claims, the client's authorizer, the reason,
    #        the alert the server receives)
    "untrusted_ca_own_domain": (
        _untrusted,
        "spiffe://evil.org/server",
        meshtls.authorize_any(),
        "unknown_trust_domain",  # the client reads the chain OpenSSL refused: more precise
        "unknown_ca",
    ),
    "untrusted_ca_claims_ours": (
        _untrusted,
        SERVER_ID,
        meshtls.authorize_member_of("example.org"),
        "untrusted_chain",
        "unknown_ca",
    ),
    "forged_across_trust_domains_L10": (
        _forged,
        SERVER_ID,
        meshtls.authorize_member_of("example.org"),
        "untrusted_chain",
        "unknown_ca",
    ),
    "expired": (
        _expired,
        SERVER_ID,
        meshtls.authorize_member_of("example.org"),
        "expired",
        "certificate_expired",
    ),
    "refused_by_the_authorizer": (
        _server_with_id,
        "spiffe://example.org/impostor",
        meshtls.authorize_id(SERVER_ID),
        "unauthorized",
        "certificate_unknown",  # access_denied is unreachable (docs/decisions.md)
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_SERVERS))
async def test_connect_to_a_hostile_server_raises(case: str, tmp_path: Path) -> None:
    make, spiffe_id, authorize, reason, alert = HOSTILE_SERVERS[case]
    mesh = Mesh()
    context = server_context(write_pem(tmp_path, make(mesh, spiffe_id)))
    async with hostile_server(context) as server:
        with trio.fail_after(WAIT), pytest.raises(meshtls.HandshakeError) as caught:
            await meshtls.connect("127.0.0.1", server.port, source=mesh.client, authorize=authorize)
        assert caught.value.reason == reason, caught.value
        assert caught.value.claimed_id == spiffe_id
    assert server.received == b""  # not one byte of application data went to it
    assert not server.handshake_completed
    assert server.alert == alert, server.error


async def test_control_a_good_stdlib_client_is_echoed(tmp_path: Path) -> None:
    """The hostile-client helper with a good SVID does get its probe back: so the empty
    answers above are the server's doing, not the helper's."""
    mesh = Mesh()
    certificate = write_pem(tmp_path, mesh.ca.issue(GOOD_CLIENT_ID))
    async with echo_server(mesh) as server:
        echoed = await tls_round_trip(server.port, client_context(mesh, certificate))
        assert echoed == PROBE
        assert server.served == [GOOD_CLIENT_ID]
        assert server.pending_rejections() == []


# ---------------------------------------------------------------- one peer's failure is its own


def _far_mesh() -> tuple[Mesh, CA]:
    """The mesh, federated with far.example, whose root has no well-defined expiry."""
    mesh = Mesh()
    far = CA("far.example", now=mesh.now, not_after=NO_EXPIRY)
    mesh.bundles = mesh.ca.bundle_set(mesh.other, far)
    mesh.server = mesh.source(SERVER_ID)
    mesh.client = mesh.source(GOOD_CLIENT_ID, via_intermediate=True)
    return mesh, far


def _edi_party_name(mesh: Mesh, far: CA, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.issue(uris=(), extensions=[(san_with(spiffe_id, EDI_PARTY_NAME), False)])


def _x400_address(mesh: Mesh, far: CA, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.issue(uris=(), extensions=[(san_with(spiffe_id, X400_ADDRESS), False)])


def _duplicate_san(mesh: Mesh, far: CA, spiffe_id: str) -> IssuedCertificate:
    return with_duplicate_san(mesh.ca, spiffe_id)


def _leaf_without_expiry(mesh: Mesh, far: CA, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.issue(spiffe_id, not_after=NO_EXPIRY)


def _root_without_expiry(mesh: Mesh, far: CA, spiffe_id: str) -> IssuedCertificate:
    return far.issue(spiffe_id.replace("example.org", "far.example"))


def _unknown_critical_in_leaf(mesh: Mesh, far: CA, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.issue(spiffe_id, extensions=[UNKNOWN_CRITICAL])


def _unknown_critical_in_intermediate(mesh: Mesh, far: CA, spiffe_id: str) -> IssuedCertificate:
    return mesh.ca.intermediate(extensions=[UNKNOWN_CRITICAL]).issue(spiffe_id)


MALFORMED = {
    "edi_party_name_in_san": _edi_party_name,
    "x400_address_in_san": _x400_address,
    "duplicate_san_extension": _duplicate_san,
    "leaf_not_after_99991231235959Z": _leaf_without_expiry,
    "root_not_after_99991231235959Z": _root_without_expiry,
    "unknown_critical_extension_in_leaf": _unknown_critical_in_leaf,
    "unknown_critical_extension_in_intermediate": _unknown_critical_in_intermediate,
}
#: Each case's verdict, judged by a server and by a client: the reason, or None when it is
#: served. A root with no well-defined expiry is valid (RFC 5280), so its chain is served.
VERDICTS: dict[str, tuple[str | None, str | None]] = {
    "edi_party_name_in_san": ("malformed_certificate", "malformed_certificate"),
    "x400_address_in_san": ("malformed_certificate", "malformed_certificate"),
    "duplicate_san_extension": ("malformed_certificate", "malformed_certificate"),
    "leaf_not_after_99991231235959Z": ("ttl_exceeded", "ttl_exceeded"),
    "root_not_after_99991231235959Z": (None, None),
    "unknown_critical_extension_in_leaf": ("malformed_certificate", "malformed_certificate"),
    "unknown_critical_extension_in_intermediate": (
        "malformed_certificate",
        "malformed_certificate",
    ),
}
#: The alert the hostile peer receives: (the client, from our server; the server, from our
#: client). Every refusal alerts, on both sides.
ALERTS: dict[str, tuple[str | None, str | None]] = {
    "edi_party_name_in_san": ("bad_certificate", "bad_certificate"),
    "x400_address_in_san": ("bad_certificate", "bad_certificate"),
    "duplicate_san_extension": ("bad_certificate", "bad_certificate"),
    "leaf_not_after_99991231235959Z": ("bad_certificate", "bad_certificate"),
    "root_not_after_99991231235959Z": (None, None),
    "unknown_critical_extension_in_leaf": ("bad_certificate", "bad_certificate"),
    "unknown_critical_extension_in_intermediate": ("bad_certificate", "bad_certificate"),
}
MAY_BE_SERVED = {case for case, (server, client) in VERDICTS.items() if server is None}
#: OpenSSL will not load a certificate with a duplicate extension: tlslite-ng presents it.
VIA_TLSLITE = {"duplicate_san_extension"}


def _tlslite_alert(outcome: TlsliteOutcome | None) -> str | None:
    """The alert a tlslite-ng peer received (``ended`` is ``"alert:bad_certificate"``)."""
    if outcome is None or not outcome.ended.startswith("alert:"):
        return None
    return outcome.ended.removeprefix("alert:")


async def _present_client_certificate(
    case: str, mesh: Mesh, issued: IssuedCertificate, port: int, directory: Path
) -> tuple[bytes, str | None]:
    """Handshake with `issued` as a client certificate, send PROBE; what came back, and
    the alert received (None if none)."""
    if case in VIA_TLSLITE:
        if TLSLITE_MISSING is not None:
            pytest.skip(TLSLITE_MISSING)
        with trio.fail_after(2 * WAIT):
            outcome = await trio.to_thread.run_sync(
                lambda: tlslite_client(port, PROBE, identity=issued, one_write_per_flight=True)
            )
        return outcome.received, _tlslite_alert(outcome)
    tried = await tls_client(port, client_context(mesh, write_pem(directory, issued)))
    return tried.received, tried.alert


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_client_certificate_ends_only_its_connection(
    case: str, tmp_path: Path
) -> None:
    """Whatever the certificate makes the verifier raise, `serve` refuses that peer with
    its reason (`VERDICTS`), runs no handler for it, and serves a good client straight
    afterwards."""
    mesh, far = _far_mesh()
    issued = MALFORMED[case](mesh, far, GOOD_CLIENT_ID)
    async with echo_server(mesh, authorize=meshtls.authorize_any()) as server:
        received, alert = await _present_client_certificate(
            case, mesh, issued, server.port, tmp_path
        )
        assert alert == ALERTS[case][0]
        if case in MAY_BE_SERVED:
            assert received == PROBE
            assert server.served == ["spiffe://far.example/client"]
            server.served.clear()
        else:
            assert received == b""
            rejected = await server.rejection()
            assert rejected.reason in meshtls.REASONS
            assert rejected.reason == VERDICTS[case][0], rejected
            assert server.served == []
            assert server.pending_rejections() == []
        await server.assert_serves_good_client()


@asynccontextmanager
async def _server_presenting(
    case: str, issued: IssuedCertificate, directory: Path
) -> AsyncIterator[tuple[int, Callable[[], tuple[bytes, str | None]]]]:
    """A TLS 1.3 server presenting `issued` for one connection: (its port, what it got:
    the application bytes and the alert, read once the block has ended)."""
    if case not in VIA_TLSLITE:
        async with hostile_server(server_context(write_pem(directory, issued))) as server:
            yield server.port, lambda: (server.received, server.alert)
        return
    if TLSLITE_MISSING is not None:
        pytest.skip(TLSLITE_MISSING)
    outcome: list[TlsliteOutcome] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        async with trio.open_nursery() as nursery:

            async def serve_one() -> None:
                outcome.append(await trio.to_thread.run_sync(tlslite_server, listener, issued))

            nursery.start_soon(serve_one)
            yield (
                listener.getsockname()[1],
                lambda: (
                    (outcome[0].received, _tlslite_alert(outcome[0])) if outcome else (b"", None)
                ),
            )


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_server_certificate_fails_connect_with_a_reason(
    case: str, tmp_path: Path
) -> None:
    """`connect` to a server presenting the certificate raises `HandshakeError` with its
    reason (`VERDICTS`; never a foreign exception), and sends it no application byte."""
    mesh, far = _far_mesh()
    issued = MALFORMED[case](mesh, far, SERVER_ID)
    async with _server_presenting(case, issued, tmp_path) as (port, seen):
        with trio.fail_after(WAIT):
            try:
                stream = await meshtls.connect(
                    "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
                )
            except meshtls.HandshakeError as exc:
                assert exc.reason in meshtls.REASONS
                assert exc.reason == VERDICTS[case][1], exc
            else:
                assert case in MAY_BE_SERVED
                await stream.aclose()
    assert seen() == (b"", ALERTS[case][1])


def _buggy_authorizer(peer: meshtls.VerifiedPeer) -> None:
    """Fails with a foreign exception for one id: a bug, not a verdict."""
    if peer.spiffe_id.path == "/buggy":
        raise RuntimeError("a bug in the authorizer")


async def test_an_authorizer_that_raises_refuses_that_peer_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fail closed: the peer is refused as `unauthorized`, the traceback is logged (it is a
    bug), and the server goes on serving."""
    mesh = Mesh()
    buggy = mesh.source("spiffe://example.org/buggy")
    async with echo_server(mesh, authorize=_buggy_authorizer) as server:
        with trio.fail_after(WAIT):
            stream = await meshtls.connect(
                "127.0.0.1", server.port, source=buggy, authorize=meshtls.authorize_any()
            )
            async with stream:
                with pytest.raises(meshtls.PeerRejectedError):
                    await stream.receive_some()
        rejected = await expect_rejection(server, "unauthorized")
        assert "RuntimeError" in rejected.detail
        await server.assert_serves_good_client()
    assert any(record.exc_info and "authorizer" in record.message for record in caplog.records)


async def test_connect_with_an_authorizer_that_raises_fails_closed() -> None:
    def broken(peer: meshtls.VerifiedPeer) -> None:
        raise RuntimeError("a bug in the authorizer")

    mesh = Mesh()
    async with echo_server(mesh) as server:
        with trio.fail_after(WAIT), pytest.raises(meshtls.HandshakeError) as caught:
            await meshtls.connect("127.0.0.1", server.port, source=mesh.client, authorize=broken)
    assert caught.value.reason == "unauthorized"
    assert "RuntimeError" in caught.value.detail


# ---------------------------------------------------------------- a peer's DER never warns


def _negative_serial(ca: CA, spiffe_id: str) -> IssuedCertificate:
    """A leaf of `ca` whose serial is -62: RFC 5280 4.1.2.2 forbids it, OpenSSL accepts
    it, and cryptography warns while parsing it."""
    issued = ca.issue(spiffe_id, serial=0x42)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # re-reading it warns
        leaf = certkit.resign_tbs(
            issued.leaf, ca.key, lambda tbs: tbs.replace(b"\x02\x01\x42", b"\x02\x01\xc2", 1)
        )
    return IssuedCertificate((leaf, *issued.chain[1:]), issued.private_key)


@contextmanager
def no_cryptography_warning() -> Iterator[None]:
    """Every warning is recorded (not raised, as this suite does): none may come from
    reading a peer's certificate."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted_ca", "untrusted_ca"])
async def test_a_server_whose_leaf_has_a_negative_serial_is_refused_without_a_warning(
    trusted: bool, tmp_path: Path
) -> None:
    """The client reads the server's DER twice outside the verifier, for the log line's
    claimed id and (when OpenSSL refused the chain) to name the precise reason: neither
    may warn, so a hostile server cannot fill the client's log, or turn the verdict into
    "unreadable" where warnings are errors."""
    mesh = Mesh()
    ca = mesh.ca if trusted else CA("example.org", now=mesh.now)  # a stranger's root
    context = server_context(write_pem(tmp_path, _negative_serial(ca, SERVER_ID)))
    with no_cryptography_warning():
        async with hostile_server(context) as server:
            with trio.fail_after(WAIT), pytest.raises(meshtls.HandshakeError) as caught:
                await meshtls.connect(
                    "127.0.0.1", server.port, source=mesh.client, authorize=meshtls.authorize_any()
                )
    assert caught.value.reason == "malformed_certificate", caught.value
    assert "is not positive (RFC 5280 4.1.2.2)" in caught.value.detail
    assert server.received == b""
    assert server.alert == "bad_certificate", server.error


async def test_a_client_whose_leaf_has_a_negative_serial_is_refused_without_a_warning(
    tmp_path: Path,
) -> None:
    mesh = Mesh()
    certificate = write_pem(tmp_path, _negative_serial(mesh.ca, GOOD_CLIENT_ID))
    with no_cryptography_warning():
        async with echo_server(mesh) as server:
            outcome = await tls_client(server.port, client_context(mesh, certificate))
            assert_nothing_delivered(outcome, "bad_certificate")
            rejected = await expect_rejection(server, "malformed_certificate")
            assert "is not positive (RFC 5280 4.1.2.2)" in rejected.detail
            await server.assert_serves_good_client()
