"""`meshtls check` against a live meshtls server: ok, wrong id, rejected by the server, refused."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

import meshtls
from meshtls._cli import main
from meshtls.testing import CA

from .meshnet import Mesh, start_server


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
    identity = write_identity(tmp_path, "client", mesh.ca, "spiffe://example.org/client")
    handled = trio.Event()

    async def handler(stream: meshtls.MeshStream) -> None:
        handled.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler, source=mesh.server)
        address = f"127.0.0.1:{port}"
        code, out, err = await run_check(
            capsys, address, *identity, "--expect", "spiffe://example.org/server", "--wait", "200ms"
        )
        assert code == 0, err
        assert "spiffe_id: spiffe://example.org/server" in out
        assert "verdict: ok (no rejection within 0.2s" in out
        assert "handshake: " in out
        assert handled.is_set()

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
    forged = write_identity(tmp_path, "forged", mesh.other, "spiffe://example.org/client")
    (tmp_path / "bundle.pem").write_bytes(mesh.ca.bundle_pem)  # we still trust the server
    (tmp_path / "other.pem").write_bytes(mesh.other.bundle_pem)
    federated = f"other.org={tmp_path / 'other.pem'}"
    rejected: list[meshtls.HandshakeError] = []

    async def handler(stream: meshtls.MeshStream) -> None:
        raise AssertionError("the handler must not run for a rejected peer")

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler, source=mesh.server, on_rejected=rejected.append)
        address = f"127.0.0.1:{port}"
        code, out, _ = await run_check(capsys, address, *forged, "--federated", federated)
        assert code == 1
        assert "verdict: rejected reason=protocol_error" in out
        assert [r.reason for r in rejected] == ["untrusted_chain"]
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
