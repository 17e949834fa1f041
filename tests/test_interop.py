"""meshtls against real, independent TLS 1.3 peers (issue 3, item 7).

- ``openssl s_client`` -> meshtls `serve`: a good client certificate is served; no
  certificate, a certificate from a CA we do not trust, and TLS 1.2 are rejected with
  the right reason and the handler never runs, and a good client is served right after.
- meshtls `connect` -> ``openssl s_server``: a good server is verified and echoes; an
  untrusted CA, a certificate without a URI SAN and TLS 1.2 fail `connect` with the
  reason; a server that asks no client certificate, and one that rejects ours.
- tlslite-ng (pure Python, an implementation that shares no code with OpenSSL) as a
  client with a certificate of each key type meshtls can mint, and without one.

The openssl tests are marked ``openssl`` and never skip: CI installs the CLI. The
tlslite tests skip, with the reason, when tlslite-ng is not installed.

Every certificate here is minted at the wall-clock time: the real peers check validity
times against their own clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

import meshtls
from meshtls.testing import CA, IssuedCertificate, KeyType

from .interop import (
    PEER_TIMEOUT,
    TLSLITE_MISSING,
    OpensslServer,
    PemIdentity,
    Recorder,
    TlsliteOutcome,
    openssl_s_server,
    s_client,
    tlslite_client,
    write_identity,
    write_pem,
)
from .meshnet import Mesh, start_server

LINE = b"hello from a real peer\n"
SERVER_ID = "spiffe://example.org/s-server"
CLIENT_ID = "spiffe://example.org/s-client"

requires_tlslite = pytest.mark.skipif(
    TLSLITE_MISSING is not None,
    reason=TLSLITE_MISSING or "",
)


class Files:
    """The PEM files the openssl CLI reads, in one temporary directory."""

    def __init__(self, mesh: Mesh, directory: Path) -> None:
        impostor = CA("example.org", now=mesh.now)  # same trust domain, a key we never trusted
        self.bundle = write_pem(directory, "bundle.pem", mesh.ca.bundle_pem)
        self.other_bundle = write_pem(directory, "other-bundle.pem", mesh.other.bundle_pem)
        # The client sends leaf + intermediate (-cert_chain): the server must build the path.
        self.client = write_identity(directory, "client", mesh.ca.intermediate().issue(CLIENT_ID))
        self.untrusted_client = write_identity(directory, "untrusted", impostor.issue(CLIENT_ID))
        self.server = write_identity(directory, "server", mesh.ca.issue(SERVER_ID))
        self.untrusted_server = write_identity(
            directory, "untrusted-server", impostor.issue(SERVER_ID)
        )
        self.no_uri_server = write_identity(directory, "no-uri", mesh.ca.issue(uris=[]))


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


@pytest.fixture
def files(mesh: Mesh, tmp_path: Path) -> Files:
    return Files(mesh, tmp_path)


def _trusting(files: Files) -> list[str]:
    """s_client verifies the meshtls server too, and gives up if it cannot."""
    return ["-CAfile", str(files.bundle), "-verify_return_error"]


# ---------------------------------------------------------------- openssl s_client -> serve


async def _good_s_client(port: int, files: Files, recorder: Recorder) -> None:
    """A good s_client is served: verified id, echo round trip, clean close (exit 0)."""
    done = await s_client(port, "-tls1_3", *_trusting(files), *files.client.args(), stdin=LINE)
    report = done.stderr.decode(errors="replace")
    assert done.returncode == 0, report
    assert done.stdout == LINE, report
    assert "Protocol version: TLSv1.3" in report
    assert "Verification: OK" in report  # s_client verified our server's chain
    assert recorder.peers[-1] == CLIENT_ID


@pytest.mark.openssl
async def test_s_client_with_a_good_certificate_is_served(mesh: Mesh, files: Files) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        port = await start_server(
            nursery, recorder.echo_line, source=mesh.server, on_rejected=recorder.on_rejected
        )
        await _good_s_client(port, files, recorder)
        nursery.cancel_scope.cancel()
    assert recorder.peers == [CLIENT_ID]
    assert recorder.pending_rejections() == []


def _no_certificate(files: Files) -> list[str]:
    return ["-tls1_3", *_trusting(files)]


def _untrusted_ca(files: Files) -> list[str]:
    return ["-tls1_3", *_trusting(files), *files.untrusted_client.args()]


def _tls12_only(files: Files) -> list[str]:
    return ["-tls1_2", *_trusting(files), *files.client.args()]


@pytest.mark.openssl
@pytest.mark.parametrize(
    ("arguments", "reason", "alert"),
    [
        pytest.param(_no_certificate, "no_client_certificate", "certificate required", id="none"),
        pytest.param(_untrusted_ca, "untrusted_chain", "unknown ca", id="untrusted-ca"),
        pytest.param(_tls12_only, "protocol_error", "protocol version", id="tls1_2"),
    ],
)
async def test_s_client_is_rejected(
    mesh: Mesh,
    files: Files,
    arguments: Callable[[Files], list[str]],
    reason: meshtls.Reason,
    alert: str,
) -> None:
    """Rejected with `reason`, told so by a TLS `alert`; the handler never runs.

    s_client sends no data (stdin is empty): the server must see the whole handshake
    and nothing else, so its close is a FIN and the alert is always readable.
    """
    args = arguments(files)
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        port = await start_server(
            nursery, recorder.echo_line, source=mesh.server, on_rejected=recorder.on_rejected
        )
        done = await s_client(port, *args)
        rejected = await recorder.next_rejection()
        assert rejected.reason == reason, rejected
        assert recorder.peers == []
        report = done.stderr.decode(errors="replace")
        assert done.returncode != 0, report
        assert done.stdout == b"", report
        assert f"alert {alert}" in report, report
        # The server is unharmed: a good client is served straight afterwards.
        await _good_s_client(port, files, recorder)
        nursery.cancel_scope.cancel()
    assert recorder.peers == [CLIENT_ID]
    assert recorder.pending_rejections() == []


# ---------------------------------------------------------------- connect -> openssl s_server


def _s_server_args(identity: PemIdentity, *extra: str) -> list[str]:
    """-rev: s_server echoes each line reversed. -Verify/-verify_return_error: see callers."""
    return ["-rev", "-naccept", "1", *identity.args(), *extra]


def _requiring_client_certificate(files: Files, bundle: Path | None = None) -> list[str]:
    """s_server asks for a client certificate and fails the handshake if it does not verify."""
    return ["-Verify", "1", "-verify_return_error", "-CAfile", str(bundle or files.bundle)]


async def _connect(server: OpensslServer, mesh: Mesh) -> meshtls.MeshStream:
    with trio.fail_after(PEER_TIMEOUT):
        return await meshtls.connect(
            "127.0.0.1", server.port, source=mesh.client, authorize=meshtls.authorize_id(SERVER_ID)
        )


async def _reversed_echo(stream: meshtls.MeshStream, server: OpensslServer) -> None:
    await stream.send_all(LINE)
    received = b""
    with trio.fail_after(PEER_TIMEOUT):
        while not received.endswith(b"\n"):
            chunk = await stream.receive_some()
            assert chunk, f"s_server closed early:\n{server.text}"
            received += chunk
    assert received == LINE[-2::-1] + b"\n"


@pytest.mark.openssl
async def test_connect_to_s_server_with_a_good_certificate(mesh: Mesh, files: Files) -> None:
    """meshtls verifies s_server, and s_server (-verify_return_error) verifies meshtls.

    meshtls sends its leaf and the intermediate: s_server knows only the root.
    """
    args = _s_server_args(files.server, "-tls1_3", *_requiring_client_certificate(files))
    async with openssl_s_server(*args) as server:
        stream = await _connect(server, mesh)
        async with stream:
            assert str(stream.peer.spiffe_id) == SERVER_ID
            assert len(stream.peer.chain) == 2  # leaf and root
            await _reversed_echo(stream, server)
        assert "Verification: OK" in await server.exited()  # s_server's account of us


@dataclass(frozen=True)
class ServerDefect:
    identity: str  # the attribute of `Files` that s_server presents
    version: str
    reason: meshtls.Reason
    claimed_id: str | None  # what the HandshakeError reports the server claimed


@pytest.mark.openssl
@pytest.mark.parametrize(
    "defect",
    [
        pytest.param(
            ServerDefect("untrusted_server", "-tls1_3", "untrusted_chain", SERVER_ID),
            id="untrusted-ca",
        ),
        pytest.param(ServerDefect("no_uri_server", "-tls1_3", "no_uri_san", None), id="no-uri-san"),
        pytest.param(ServerDefect("server", "-tls1_2", "protocol_error", None), id="tls1_2"),
    ],
)
async def test_connect_rejects_s_server(mesh: Mesh, files: Files, defect: ServerDefect) -> None:
    """`connect` raises HandshakeError with the reason, and returns no stream."""
    identity: PemIdentity = getattr(files, defect.identity)
    args = _s_server_args(identity, defect.version, *_requiring_client_certificate(files))
    async with openssl_s_server(*args) as server:
        with pytest.raises(meshtls.HandshakeError) as raised:
            await _connect(server, mesh)
    assert raised.value.reason == defect.reason, raised.value
    assert raised.value.claimed_id == defect.claimed_id
    assert raised.value.peer == f"127.0.0.1:{server.port}"


@pytest.mark.openssl
async def test_connect_to_s_server_that_asks_no_client_certificate(
    mesh: Mesh, files: Files
) -> None:
    """Without -Verify, s_server sends no CertificateRequest, so meshtls sends no certificate.

    `connect` verifies the server and returns a working stream: whether to demand a
    client certificate is the server's policy, not the client's. (A meshtls server
    always demands one.)
    """
    args = _s_server_args(files.server, "-tls1_3")
    async with openssl_s_server(*args) as server:
        stream = await _connect(server, mesh)
        async with stream:
            assert str(stream.peer.spiffe_id) == SERVER_ID
            await _reversed_echo(stream, server)
        assert "No peer certificate" in await server.exited()


@pytest.mark.openssl
async def test_s_server_that_rejects_our_certificate(mesh: Mesh, files: Files) -> None:
    """s_server trusts only other.org, so it refuses our example.org certificate.

    TLS 1.3 lets the client finish first: `connect` returns, and the rejection (an
    unknown_ca alert) arrives on the first read as `PeerRejectedError`, whose reason
    is the one the alert names. We send nothing, so the alert is not overtaken by a
    reset.
    """
    trusting_other = _requiring_client_certificate(files, files.other_bundle)
    args = _s_server_args(files.server, "-tls1_3", *trusting_other)
    async with openssl_s_server(*args) as server:
        stream = await _connect(server, mesh)
        async with stream:
            assert str(stream.peer.spiffe_id) == SERVER_ID
            with trio.fail_after(PEER_TIMEOUT), pytest.raises(meshtls.PeerRejectedError) as raised:
                await stream.receive_some()
        assert "certificate verify failed" in await server.exited()  # s_server's account
    assert isinstance(raised.value, trio.BrokenResourceError)
    assert "unknown_ca" in str(raised.value)
    assert raised.value.reason == "untrusted_chain"


# ---------------------------------------------------------------- tlslite-ng -> serve


async def _tlslite(port: int, payload: bytes, identity: IssuedCertificate | None) -> TlsliteOutcome:
    with trio.fail_after(PEER_TIMEOUT * 2):  # the thread's socket times out first
        return await trio.to_thread.run_sync(
            lambda: tlslite_client(port, payload, identity=identity)
        )


@requires_tlslite
@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
async def test_tlslite_client_with_a_certificate_is_served(mesh: Mesh, key_type: KeyType) -> None:
    """tlslite-ng sends leaf + intermediate, signs CertificateVerify with `key_type`."""
    identity = mesh.ca.intermediate().issue(CLIENT_ID, key_type=key_type)
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        port = await start_server(
            nursery, recorder.echo_line, source=mesh.server, on_rejected=recorder.on_rejected
        )
        outcome = await _tlslite(port, LINE, identity)
        nursery.cancel_scope.cancel()
    assert recorder.pending_rejections() == []
    assert recorder.peers == [CLIENT_ID]
    assert outcome == TlsliteOutcome(handshake=True, received=LINE, ended="close_notify")


@requires_tlslite
async def test_tlslite_client_without_a_certificate_is_rejected(mesh: Mesh) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        port = await start_server(
            nursery, recorder.echo_line, source=mesh.server, on_rejected=recorder.on_rejected
        )
        outcome = await _tlslite(port, b"", None)
        rejected = await recorder.next_rejection()
        assert rejected.reason == "no_client_certificate", rejected
        assert recorder.peers == []
        assert outcome == TlsliteOutcome(
            handshake=True, received=b"", ended="alert:certificate_required"
        )
        served = await _tlslite(port, LINE, mesh.ca.issue(CLIENT_ID))
        assert served == TlsliteOutcome(handshake=True, received=LINE, ended="close_notify")
        nursery.cancel_scope.cancel()
    assert recorder.peers == [CLIENT_ID]
