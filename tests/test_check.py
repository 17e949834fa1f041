"""`meshtls check` against a live meshtls server: ok, wrong id, rejected by the server, refused.

The server side runs in the test: its handler only records who it served, and anything
`serve` would swallow (a handler's exception is logged, not raised) fails the test, so
every assertion here can fail.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

import meshtls
from meshtls._cli import main
from meshtls.testing import CA

from .hostile import EDI_PARTY_NAME, X400_ADDRESS, san_with
from .interop import openssl_s_server
from .meshnet import Mesh, start_server

WAIT = 5.0  # seconds: the bound on every wait for the server side
CLIENT_ID = "spiffe://example.org/client"


@dataclass
class ServerSide:
    """What the meshtls server did: the peers its handler served, the peers it rejected."""

    served: list[str] = field(default_factory=list)
    rejected: list[meshtls.HandshakeError] = field(default_factory=list)
    first_served: trio.Event = field(default_factory=trio.Event)

    async def handler(self, stream: meshtls.MeshStream) -> None:
        """Record the peer, then hold the connection open (silence is acceptance)."""
        self.served.append(str(stream.peer.spiffe_id))
        self.first_served.set()
        await trio.sleep_forever()

    async def wait_served(self) -> None:
        with trio.fail_after(WAIT):
            await self.first_served.wait()


@pytest.fixture(autouse=True)
def nothing_swallowed(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if meshtls logged an error: what `serve` swallows is logged as one."""
    caplog.set_level(logging.WARNING, logger="meshtls")
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert errors == [], "meshtls logged errors: a handler or the server failed"


def write_identity(directory: Path, name: str, ca: CA, spiffe_id: str) -> list[str]:
    issued = ca.issue(spiffe_id)
    (directory / f"{name}.pem").write_bytes(issued.chain_pem)
    (directory / f"{name}.key").write_bytes(issued.key_pem)
    (directory / "bundle.pem").write_bytes(ca.bundle_pem)
    return [
        "--cert",
        str(directory / f"{name}.pem"),
        "--key",
        str(directory / f"{name}.key"),
        "--bundle",
        str(directory / "bundle.pem"),
    ]


async def run_check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(main, ["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


async def test_check_reports_the_peer_and_waits_for_its_verdict(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = write_identity(tmp_path, "client", mesh.ca, CLIENT_ID)
    server = ServerSide()

    async with trio.open_nursery() as nursery:
        port = await start_server(
            nursery, server.handler, source=mesh.server, on_rejected=server.rejected.append
        )
        address = f"127.0.0.1:{port}"
        code, out, err = await run_check(
            capsys, address, *identity, "--expect", "spiffe://example.org/server", "--wait", "200ms"
        )
        assert code == 0, err
        assert "spiffe_id: spiffe://example.org/server" in out
        assert "verdict: ok (no rejection within 0.2s" in out
        assert "handshake: " in out
        await server.wait_served()  # the server did accept us, as check said
        assert server.served == [CLIENT_ID]
        assert server.rejected == []

        code, out, err = await run_check(
            capsys, address, *identity, "--expect", "spiffe://example.org/nope"
        )
        assert code == 1
        assert "verdict: rejected reason=unauthorized" in out
        assert err == ""
        nursery.cancel_scope.cancel()


async def test_check_sees_the_server_reject_us(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # other.org's CA vouching for an example.org id: the server's L-10 check refuses it
    forged = write_identity(tmp_path, "forged", mesh.other, CLIENT_ID)
    (tmp_path / "bundle.pem").write_bytes(mesh.ca.bundle_pem)  # we still trust the server
    (tmp_path / "other.pem").write_bytes(mesh.other.bundle_pem)
    federated = f"other.org={tmp_path / 'other.pem'}"
    server = ServerSide()

    async with trio.open_nursery() as nursery:
        port = await start_server(
            nursery, server.handler, source=mesh.server, on_rejected=server.rejected.append
        )
        address = f"127.0.0.1:{port}"
        code, out, _ = await run_check(capsys, address, *forged, "--federated", federated)
        assert code == 1
        assert "verdict: rejected reason=protocol_error" in out
        # The client saw the close only after `serve` had rejected it and told on_rejected.
        assert [r.reason for r in server.rejected] == ["untrusted_chain"]
        assert server.served == []  # the handler never ran for the rejected peer
        nursery.cancel_scope.cancel()


async def test_check_connection_refused_is_one_line_exit_1(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = write_identity(tmp_path, "client", mesh.ca, "spiffe://example.org/client")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        code, out, err = await run_check(capsys, f"127.0.0.1:{port}", *identity)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "Connection refused" in err


async def test_check_bad_files_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run_check(
        capsys, "127.0.0.1:1", "--cert", "nope.pem", "--key", "nope.key", "--bundle", "b.pem"
    )
    assert code == 2
    assert err.startswith("meshtls: error: nope.pem")


@pytest.mark.openssl
@pytest.mark.parametrize("other_name", ["EDIPartyName", "x400Address"])
async def test_check_of_a_server_whose_certificate_cannot_be_read_is_one_line(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str], other_name: str
) -> None:
    """A server (`openssl s_server`, which loads it) presents a trusted certificate whose SAN
    holds a name cryptography cannot read: `meshtls check` says why, on one line, exit 1.
    It used to print cryptography's UnsupportedGeneralNameType as a traceback."""
    server_id = "spiffe://example.org/server"
    name = EDI_PARTY_NAME if other_name == "EDIPartyName" else X400_ADDRESS
    issued = mesh.ca.issue(server_id, uris=(), extensions=[(san_with(server_id, name), False)])
    (tmp_path / "server.pem").write_bytes(issued.chain_pem)
    (tmp_path / "server.key").write_bytes(issued.key_pem)
    identity = write_identity(tmp_path, "client", mesh.ca, CLIENT_ID)
    args = ("-tls1_3", "-cert", str(tmp_path / "server.pem"), "-key", str(tmp_path / "server.key"))
    async with openssl_s_server("-rev", "-naccept", "1", *args) as server:
        code, out, err = await run_check(capsys, f"127.0.0.1:{server.port}", *identity)
    assert code == 1, (out, err)
    assert "verdict: rejected reason=malformed_certificate" in out
    assert "Traceback" not in out + err
    assert err == ""


async def test_check_of_a_peer_that_resets_says_so_in_words(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A peer that resets after the handshake (an expose whose backend is down does): the
    detail read ``receiving failed: [Errno 104] Connection reset by peer``."""
    identity = write_identity(tmp_path, "client", mesh.ca, CLIENT_ID)

    async def reset(stream: meshtls.MeshStream) -> None:
        stream.abort()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, reset, source=mesh.server)
        code, out, err = await run_check(capsys, f"127.0.0.1:{port}", *identity, "--wait", "2s")
        assert code == 1, err
        assert "verdict: rejected reason=protocol_error" in out
        (detail,) = [line for line in out.splitlines() if line.startswith("detail: ")]
        assert detail == "detail: the connection broke: receiving failed: connection reset by peer"
        nursery.cancel_scope.cancel()
