"""`meshtls inspect --revocation` and `meshtls check` fetch and print revocation (P-4).

Against real peers: the ``openssl ocsp`` responder, CRLs over `HttpFiles`, and for
`check` a live `meshtls.serve`. The responder stamps its answers from the wall clock,
so certificates are made at a wall-clock instant read once per module; nothing sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

import meshtls
from meshtls._cli import main
from meshtls._fetch import DEFAULT_TIMEOUT
from meshtls._revocation import RevocationTarget
from meshtls._revocation_report import report_chain, report_lines
from meshtls.testing import CA

from .meshnet import start_server
from .revocation_peers import HttpFiles, OcspResponder, needs_openssl
from .test_check import CLIENT_ID, ServerSide, run_check, write_identity

WALL: Final = datetime.now(UTC).replace(microsecond=0)
SERVER_ID: Final = "spiffe://example.org/server"


def crl_der(ca: CA, revoked: dict[int, x509.ReasonFlags | None]) -> bytes:
    """`ca`'s CRL, valid for an hour around `WALL`, revoking `revoked` (serial: reason)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(WALL - timedelta(minutes=5))
        .next_update(WALL + timedelta(hours=1))
    )
    for serial, reason in revoked.items():
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(WALL)
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def inspect(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ca: CA, chain_pem: bytes, *extra: str
) -> tuple[int, str, str]:
    (tmp_path / "cert.pem").write_bytes(chain_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    code = main(["inspect", str(tmp_path / "cert.pem"), *extra, "--revocation"])
    out, err = capsys.readouterr()
    return code, out, err


def revocation_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("revocation: ")]


def fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of a revocation line (the name, ``cert=``, is last)."""
    head, _, name = line.partition(" cert=")
    found = dict(part.split("=", 1) for part in head.split()[2:])
    found["cert"] = name
    return found


# ---------------------------------------------------------------- inspect


@needs_openssl
def test_P_4_inspect_good_then_revoked_from_the_real_responder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CA(now=WALL)
    with OcspResponder(tmp_path, ca.certificate, ca.key, []) as running:
        issued = ca.issue("spiffe://example.org/web", ocsp_url=running.url)
        running.add(issued.leaf)
        bundle = ("--bundle", str(tmp_path / "bundle.pem"))
        code, out, err = inspect(capsys, tmp_path, ca, issued.chain_pem, *bundle)
        assert code == 0, (out, err)
        (line,) = revocation_lines(out)
        got = fields(line)
        assert got["result"] == "good"
        assert got["source"] == f"ocsp:{running.url}"
        assert got["serial"] == f"{issued.leaf.serial_number:#x}"
        assert got["cert"] == "spiffe://example.org/web"
        assert got["reason"] == "-"
        this_update = datetime.fromisoformat(got["this_update"])
        next_update = datetime.fromisoformat(got["next_update"])
        assert timedelta(0) < next_update - this_update <= timedelta(minutes=1)
        assert out.splitlines()[-1] == "verdict: ok"

        running.revoke(issued.leaf.serial_number, at=WALL, reason="keyCompromise")
        code, out, err = inspect(capsys, tmp_path, ca, issued.chain_pem, *bundle)
    assert code == 1, (out, err)
    (line,) = revocation_lines(out)
    assert (fields(line)["result"], fields(line)["reason"]) == ("revoked", "key_compromise")
    assert out.splitlines()[-2] == "verdict: revoked"
    assert out.splitlines()[-1] == (
        "detail: certificate 0 (spiffe://example.org/web) is revoked (key_compromise),"
        f" says ocsp:{running.url}"
    )
    assert err == ""


@needs_openssl
def test_P_4_inspect_with_the_responder_down_prints_the_error_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CA(now=WALL)
    with OcspResponder(tmp_path, ca.certificate, ca.key, []) as running:
        issued = ca.issue(ocsp_url=running.url)
        running.stop()
        code, out, err = inspect(
            capsys, tmp_path, ca, issued.chain_pem, "--bundle", str(tmp_path / "bundle.pem")
        )
    assert code == 0, (out, err)
    (line,) = revocation_lines(out)
    got = fields(line)
    assert (got["result"], got["source"]) == ("error:connect", f"ocsp:{running.url}")
    assert (got["this_update"], got["next_update"]) == ("-", "-")
    assert out.splitlines()[-1] == "verdict: ok"


@needs_openssl
def test_P_4_inspect_an_unknown_answer_is_printed_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The responder does not know the leaf (not in its index): ``unknown``, with the
    answer's times, exit 0."""
    ca = CA(now=WALL)
    with OcspResponder(tmp_path, ca.certificate, ca.key, []) as running:
        issued = ca.issue(ocsp_url=running.url)
        code, out, err = inspect(
            capsys, tmp_path, ca, issued.chain_pem, "--bundle", str(tmp_path / "bundle.pem")
        )
    assert code == 0, (out, err)
    (line,) = revocation_lines(out)
    got = fields(line)
    assert (got["result"], got["source"]) == ("unknown", f"ocsp:{running.url}")
    assert got["this_update"] != "-"
    assert out.splitlines()[-1] == "verdict: ok"


def test_P_4_inspect_a_revoked_intermediate_from_its_crl_after_a_missing_ocsp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The leaf is good by its issuer's CRL; the intermediate's OCSP URL answers 404, so its
    root's CRL is asked next and revokes it: inspect names the intermediate, exit 1."""
    root = CA(now=WALL)
    with HttpFiles() as files:
        middle = root.intermediate(ocsp_url=files.url("/no-ocsp/"), crl_url=files.url("/root.crl"))
        issued = middle.issue("spiffe://example.org/api", crl_url=files.url("/middle.crl"))
        files.files["/middle.crl"] = crl_der(middle, {})
        files.files["/root.crl"] = crl_der(
            root, {middle.certificate.serial_number: x509.ReasonFlags.ca_compromise}
        )
        code, out, err = inspect(
            capsys, tmp_path, root, issued.chain_pem, "--bundle", str(tmp_path / "bundle.pem")
        )
    assert code == 1, (out, err)
    leaf_line, middle_line = revocation_lines(out)
    leaf, inter = fields(leaf_line), fields(middle_line)
    assert (leaf["result"], leaf["source"]) == ("good", f"crl:{files.url('/middle.crl')}")
    assert (inter["result"], inter["source"]) == ("revoked", f"crl:{files.url('/root.crl')}")
    assert inter["reason"] == "ca_compromise"
    assert inter["cert"] == middle.certificate.subject.rfc4514_string()
    assert datetime.fromisoformat(inter["this_update"]) == WALL - timedelta(minutes=5)
    assert datetime.fromisoformat(inter["next_update"]) == WALL + timedelta(hours=1)
    assert out.splitlines()[-2] == "verdict: revoked"
    assert out.splitlines()[-1].startswith("detail: certificate 1 (")


def test_P_4_inspect_without_a_bundle_says_the_last_issuer_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --bundle: the intermediate's issuer (the root) is not known, so it is not asked;
    the leaf, with the intermediate after it in the file, is."""
    root = CA(now=WALL)
    with HttpFiles() as files:
        middle = root.intermediate(crl_url=files.url("/root.crl"))
        issued = middle.issue(crl_url=files.url("/middle.crl"))
        files.files["/middle.crl"] = crl_der(middle, {})
        code, out, err = inspect(capsys, tmp_path, root, issued.chain_pem)
    assert code == 0, (out, err)
    leaf_line, middle_line = revocation_lines(out)
    assert fields(leaf_line)["result"] == "good"
    assert (fields(middle_line)["result"], fields(middle_line)["source"]) == (
        "unknown",
        "no-issuer",
    )
    assert [r[1] for r in files.requests] == ["/middle.crl"]
    assert out.splitlines()[-1] == "verdict: ok (chain not verified: no --bundle)"


def test_P_4_inspect_a_certificate_without_urls_is_unknown_and_a_root_is_not_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = CA(now=WALL)
    issued = root.issue()
    chain = issued.chain_pem + root.bundle_pem  # the root in the file too: it is skipped
    code, out, _ = inspect(capsys, tmp_path, root, chain)
    (line,) = revocation_lines(out)
    assert (fields(line)["result"], fields(line)["source"]) == ("unknown", "none")
    assert code == 0


# ---------------------------------------------------------------- check


@needs_openssl
async def test_P_4_check_prints_the_peer_chain_and_fails_on_a_revoked_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CA(now=WALL)
    identity = write_identity(tmp_path, "client", ca, CLIENT_ID)
    responder_dir = tmp_path / "ocsp"
    responder_dir.mkdir()
    with OcspResponder(responder_dir, ca.certificate, ca.key, []) as running:
        issued = ca.issue(SERVER_ID, ocsp_url=running.url)
        running.add(issued.leaf)
        source = meshtls.StaticSource(issued.svid(), ca.bundle_set())
        server = ServerSide()
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, server.handler, source=source)
            address = f"127.0.0.1:{port}"
            code, out, err = await run_check(capsys, address, *identity, "--wait", "100ms")
            assert code == 0, (out, err)
            (line,) = revocation_lines(out)
            got = fields(line)
            assert (got["result"], got["cert"]) == ("good", SERVER_ID)
            assert got["source"] == f"ocsp:{running.url}"
            assert out.splitlines()[-1].startswith("verdict: ok (")

            code, out, err = await run_check(
                capsys, address, *identity, "--wait", "100ms", "--no-revocation"
            )
            assert code == 0, (out, err)
            assert revocation_lines(out) == []

            await trio.to_thread.run_sync(
                lambda: running.revoke(issued.leaf.serial_number, at=WALL, reason="superseded")
            )
            code, out, err = await run_check(capsys, address, *identity, "--wait", "100ms")
            nursery.cancel_scope.cancel()
    assert code == 1, (out, err)
    (line,) = revocation_lines(out)
    assert (fields(line)["result"], fields(line)["reason"]) == ("revoked", "superseded")
    assert out.splitlines()[-2] == "verdict: rejected reason=revoked"
    assert out.splitlines()[-1].startswith("detail: certificate 0 (spiffe://example.org/server)")


async def test_P_4_check_with_the_responder_down_prints_the_error_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CA(now=WALL)
    identity = write_identity(tmp_path, "client", ca, CLIENT_ID)
    with HttpFiles(down=True) as files:
        issued = ca.issue(SERVER_ID, ocsp_url=files.url("/"))
        source = meshtls.StaticSource(issued.svid(), ca.bundle_set())
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, ServerSide().handler, source=source)
            code, out, err = await run_check(
                capsys, f"127.0.0.1:{port}", *identity, "--wait", "100ms"
            )
            nursery.cancel_scope.cancel()
    assert code == 0, (out, err)
    (line,) = revocation_lines(out)
    assert fields(line)["result"] == "error:connect"
    assert out.splitlines()[-1].startswith("verdict: ok (")


# ---------------------------------------------------------------- the bounds, on trio's clock


async def test_P_4_report_gives_each_url_its_timeout_then_asks_the_next(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A hanging OCSP responder costs its 5 s, then the hanging CRL its 5 s: the first
    error (OCSP's) is shown. Only hanging peers here: on the autojump clock a real answer
    (or even a request reaching the server) could lose a race with a jump to the timeout."""
    root = CA(now=WALL)
    with HttpFiles(hang=True) as hanging:
        leaf = root.issue(ocsp_url=hanging.url("/o"), crl_url=hanging.url("/c")).leaf
        start = trio.current_time()
        (found,) = await report_chain(
            [RevocationTarget.of(leaf, root.certificate)], skew=timedelta(seconds=30), now=WALL
        )
        waited = trio.current_time() - start
    assert (found.result, found.source) == ("error:timeout", f"ocsp:{hanging.url('/o')}")
    assert waited == pytest.approx(2 * DEFAULT_TIMEOUT, abs=0.05)


async def test_P_4_report_is_bounded_as_a_whole(autojump_clock: trio.abc.Clock) -> None:
    """Two hanging URLs per certificate, 5 s each, a 7 s deadline: every certificate still
    unanswered at 7 s is ``error:timeout``, and the report returns then."""
    root = CA(now=WALL)
    middle = root.intermediate()
    with HttpFiles(hang=True) as hanging:
        ocsp_url, crl_url = hanging.url("/o"), hanging.url("/c")
        leaf = middle.issue(ocsp_url=ocsp_url, crl_url=crl_url).leaf
        inter = root.intermediate(ocsp_url=ocsp_url, crl_url=crl_url)
        targets = [
            RevocationTarget.of(leaf, middle.certificate),
            RevocationTarget.of(inter.certificate, root.certificate),
        ]
        start = trio.current_time()
        report = await report_chain(targets, skew=timedelta(seconds=30), now=WALL, deadline=7)
        waited = trio.current_time() - start
    assert waited == pytest.approx(7, abs=0.05)
    assert [(r.result, r.serial) for r in report] == [
        ("error:timeout", leaf.serial_number),
        ("error:timeout", inter.certificate.serial_number),
    ]
    assert report_lines(report)[1].startswith(
        f"revocation: 1 serial={inter.certificate.serial_number:#x} result=error:timeout source=-"
    )
