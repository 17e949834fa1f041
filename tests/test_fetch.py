"""`meshtls._fetch`: revocation data over real HTTP, every failure a typed `FetchError` (P-4).

OCSP answers come from the real ``openssl ocsp`` responder; CRLs and hand-made answers
from `HttpFiles`, a real HTTP server on 127.0.0.1:0 that can also be down or hang. A
hanging peer is waited out on trio's autojump clock, so the timeout is real but takes
no wall time. openssl stamps answers with the wall clock: those tests judge at `WALL`.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from meshtls._fetch import (
    MAX_BODY,
    FetchError,
    crl_urls,
    fetch_crl,
    fetch_ocsp,
    http_client,
    ocsp_urls,
)
from meshtls._ocsp import ocsp_request
from meshtls._revocation import RevocationTarget
from meshtls.testing import CA
from tests.revocation_peers import HttpFiles, OcspResponder, closed_port, needs_openssl

WALL = datetime.now(UTC).replace(microsecond=0)  # read again as each module starts: below


@pytest.fixture(autouse=True, scope="module")
def _wall() -> None:
    """The wall-clock instant this module judges at, read as it starts (the whole suite
    imports every module long before it runs this one, and openssl stamps the present)."""
    global WALL  # noqa: PLW0603 - one instant per module, read by every test here
    WALL = datetime.now(UTC).replace(microsecond=0)


SKEW: Final = timedelta(seconds=30)


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA(now=WALL)


def crl_der(
    ca: CA,
    serials: Sequence[int] = (),
    *,
    next_update: datetime = WALL + timedelta(hours=1),
    signer: CA | None = None,
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(WALL - timedelta(hours=2))
        .next_update(next_update)
    )
    for serial in serials:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(WALL)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign((signer or ca).key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def ocsp_der(ca: CA, target: RevocationTarget) -> bytes:
    """A good answer about `target`, signed by `ca`, as a responder would send it."""
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=target.certificate,
            issuer=target.issuer,
            algorithm=hashes.SHA1(),  # noqa: S303 - the CertID hash
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=WALL - timedelta(minutes=1),
            next_update=WALL + timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, ca.certificate)
        .sign(ca.key, hashes.SHA256())
    )
    return response.public_bytes(serialization.Encoding.DER)


async def failed_ocsp(
    url: str, target: RevocationTarget, now: datetime | None = None
) -> FetchError:
    async with http_client(timeout=2.0) as client:
        with pytest.raises(FetchError) as caught:
            await fetch_ocsp(client, url, target, now=WALL if now is None else now, skew=SKEW)
    assert caught.value.kind == "ocsp"
    assert caught.value.url == url
    return caught.value


async def failed_crl(url: str, issuer: x509.Certificate) -> FetchError:
    async with http_client(timeout=2.0) as client:
        with pytest.raises(FetchError) as caught:
            await fetch_crl(client, url, issuer, now=WALL, skew=SKEW)
    assert caught.value.kind == "crl"
    return caught.value


# ---------------------------------------------------------------- OCSP, the real responder


@needs_openssl
async def test_P_4_fetch_good_then_revoked_from_the_url_in_the_certificate(
    tmp_path: Path, ca: CA
) -> None:
    with OcspResponder(tmp_path, ca.certificate, ca.key, []) as running:
        leaf = ca.issue(ocsp_url=running.url).leaf
        running.add(leaf)
        (url,) = ocsp_urls(leaf)
        target = RevocationTarget.of(leaf, ca.certificate)
        async with http_client() as client:
            answer = await fetch_ocsp(client, url, target, now=WALL, skew=SKEW)
            assert answer.status == "good"
            running.revoke(leaf.serial_number, at=WALL, reason="superseded")
            answer = await fetch_ocsp(client, url, target, now=WALL, skew=SKEW)
    assert (answer.status, answer.reason) == ("revoked", "superseded")


@needs_openssl
async def test_P_4_fetch_unknown(tmp_path: Path, ca: CA) -> None:
    with OcspResponder(tmp_path, ca.certificate, ca.key, []) as running:
        target = RevocationTarget.of(ca.issue().leaf, ca.certificate)
        async with http_client() as client:
            answer = await fetch_ocsp(client, running.url, target, now=WALL, skew=SKEW)
    assert answer.status == "unknown"


@needs_openssl
async def test_P_4_a_responder_that_is_down_is_a_connect_error_until_it_is_back(
    tmp_path: Path, ca: CA
) -> None:
    leaf = ca.issue().leaf
    target = RevocationTarget.of(leaf, ca.certificate)
    with OcspResponder(tmp_path, ca.certificate, ca.key, [leaf]) as running:
        running.stop()
        error = await failed_ocsp(running.url, target)
        assert (error.result, error.problem) == ("error", "connect")
        running.start()
        async with http_client() as client:
            answer = await fetch_ocsp(client, running.url, target, now=WALL, skew=SKEW)
    assert answer.status == "good"


@needs_openssl
async def test_P_4_a_stale_answer_is_invalid(tmp_path: Path, ca: CA) -> None:
    leaf = ca.issue().leaf
    target = RevocationTarget.of(leaf, ca.certificate)
    with OcspResponder(tmp_path, ca.certificate, ca.key, [leaf]) as running:
        error = await failed_ocsp(running.url, target, now=WALL + timedelta(minutes=10))
    assert (error.result, error.problem) == ("invalid", "stale")


@needs_openssl
async def test_P_4_a_revoked_intermediate_from_the_roots_responder(tmp_path: Path) -> None:
    root = CA(now=WALL)
    middle = root.intermediate()
    with OcspResponder(tmp_path, root.certificate, root.key, [middle.certificate]) as running:
        middle = root.intermediate(ocsp_url=running.url)
        running.add(middle.certificate)
        running.revoke(middle.certificate.serial_number, at=WALL, reason="cACompromise")
        (url,) = ocsp_urls(middle.certificate)
        target = RevocationTarget.of(middle.certificate, root.certificate)
        async with http_client() as client:
            answer = await fetch_ocsp(client, url, target, now=WALL, skew=SKEW)
    assert (answer.status, answer.reason) == ("revoked", "ca_compromise")


# ---------------------------------------------------------------- OCSP, over HttpFiles


@pytest.fixture
def target(ca: CA) -> RevocationTarget:
    return RevocationTarget.of(ca.issue().leaf, ca.certificate)


async def test_P_4_ocsp_is_asked_by_post_as_an_ocsp_request(
    ca: CA, target: RevocationTarget
) -> None:
    with HttpFiles({"/ocsp": ocsp_der(ca, target)}) as files:
        async with http_client() as client:
            answer = await fetch_ocsp(client, files.url("/ocsp"), target, now=WALL, skew=SKEW)
    assert answer.status == "good"
    assert files.requests == [("POST", "/ocsp", "application/ocsp-request")]


async def test_P_4_a_refused_post_is_asked_again_by_get(ca: CA, target: RevocationTarget) -> None:
    with HttpFiles({"/ocsp/*": ocsp_der(ca, target)}, refuse_post=True) as files:
        async with http_client() as client:
            answer = await fetch_ocsp(client, files.url("/ocsp"), target, now=WALL, skew=SKEW)
    assert answer.status == "good"
    (post, get) = files.requests
    assert post[0] == "POST"
    assert get[0] == "GET"
    encoded = get[1].removeprefix("/ocsp/")
    assert base64.b64decode(urllib.parse.unquote(encoded)) == ocsp_request(target)


async def test_P_4_an_answer_about_another_certificate_is_invalid(
    ca: CA, target: RevocationTarget
) -> None:
    other = RevocationTarget.of(ca.issue().leaf, ca.certificate)
    with HttpFiles({"/ocsp": ocsp_der(ca, other)}) as files:
        error = await failed_ocsp(files.url("/ocsp"), target)
    assert (error.result, error.problem) == ("invalid", "wrong_certificate")


async def test_P_4_an_answer_signed_by_another_ca_is_invalid(target: RevocationTarget) -> None:
    with HttpFiles({"/ocsp": ocsp_der(CA(now=WALL), target)}) as files:
        error = await failed_ocsp(files.url("/ocsp"), target)
    assert (error.result, error.problem) == ("invalid", "unauthorized_signer")


async def test_P_4_garbage_from_a_responder_is_invalid(target: RevocationTarget) -> None:
    with HttpFiles({"/ocsp": b"<html>hello</html>"}) as files:
        error = await failed_ocsp(files.url("/ocsp"), target)
    assert (error.result, error.problem) == ("invalid", "malformed")


@pytest.mark.parametrize("status", [302, 404, 500, 503])
async def test_P_4_a_non_200_is_an_http_status_error_and_no_redirect_is_followed(
    status: int, ca: CA, target: RevocationTarget
) -> None:
    with HttpFiles({"/ocsp": ocsp_der(ca, target), "/ocsp/*": b""}, status=status) as files:
        error = await failed_ocsp(files.url("/ocsp"), target)
    assert (error.result, error.problem) == ("error", "http_status")
    assert str(status) in error.detail


async def test_P_4_a_body_over_the_cap_is_too_large(target: RevocationTarget) -> None:
    with HttpFiles({"/ocsp": b"\x30" * (MAX_BODY + 1)}) as files:
        error = await failed_ocsp(files.url("/ocsp"), target)
    assert (error.result, error.problem) == ("error", "too_large")


async def test_P_4_a_peer_that_closes_unanswered_is_a_connect_error(
    target: RevocationTarget,
) -> None:
    with HttpFiles(down=True) as files:
        error = await failed_ocsp(files.url("/ocsp"), target)
    assert (error.result, error.problem) == ("error", "connect")


async def test_P_4_a_closed_port_is_a_connect_error(target: RevocationTarget) -> None:
    with closed_port() as url:
        error = await failed_ocsp(url, target)
    assert (error.result, error.problem) == ("error", "connect")


async def test_P_4_a_hanging_responder_times_out_within_the_bound(
    autojump_clock: trio.abc.Clock, target: RevocationTarget
) -> None:
    with HttpFiles(hang=True) as files:
        start = trio.current_time()
        with trio.fail_after(30):
            error = await failed_ocsp(files.url("/ocsp"), target)
        waited = trio.current_time() - start
    assert (error.result, error.problem) == ("error", "timeout")
    assert waited == pytest.approx(2.0, abs=0.05)  # one timeout (2 s), not retried by GET


@pytest.mark.parametrize(
    "url",
    [
        "ldap://ocsp.example.org/",
        "file:///etc/passwd",
        "nonsense",
        "http://",
        "http://[::1/",
        "http://exa mple.org/\r\nX: y",
        "http://127.0.0.1:99999/",
        "http://\udcff.example/",
    ],
)
async def test_P_4_a_url_that_is_not_http_or_broken_is_a_connect_error(
    url: str, target: RevocationTarget
) -> None:
    error = await failed_ocsp(url, target)
    assert (error.result, error.problem) == ("error", "connect")


# ---------------------------------------------------------------- CRLs


async def test_P_4_a_crl_is_fetched_and_judged(ca: CA) -> None:
    leaf = ca.issue().leaf
    with HttpFiles({"/ca.crl": crl_der(ca, [leaf.serial_number])}) as files:
        async with http_client() as client:
            judged = await fetch_crl(
                client, files.url("/ca.crl"), ca.certificate, now=WALL, skew=SKEW
            )
    assert judged.status(leaf.serial_number) == "revoked"
    assert judged.status(leaf.serial_number + 1) == "good"
    assert files.requests[0][0] == "GET"


async def test_P_4_an_expired_crl_is_invalid(ca: CA) -> None:
    with HttpFiles({"/ca.crl": crl_der(ca, next_update=WALL - timedelta(hours=1))}) as files:
        error = await failed_crl(files.url("/ca.crl"), ca.certificate)
    assert (error.result, error.problem) == ("invalid", "stale")


async def test_P_4_a_crl_signed_by_another_ca_is_invalid(ca: CA) -> None:
    impostor = CA(now=WALL)  # the same name, another key
    with HttpFiles({"/ca.crl": crl_der(ca, signer=impostor)}) as files:
        error = await failed_crl(files.url("/ca.crl"), ca.certificate)
    assert (error.result, error.problem) == ("invalid", "bad_signature")


async def test_P_4_a_crl_of_another_issuer_is_invalid(ca: CA) -> None:
    with HttpFiles({"/ca.crl": crl_der(CA("other.org", now=WALL))}) as files:
        error = await failed_crl(files.url("/ca.crl"), ca.certificate)
    assert (error.result, error.problem) == ("invalid", "wrong_issuer")


async def test_P_4_garbage_at_a_distribution_point_is_invalid(ca: CA) -> None:
    with HttpFiles({"/ca.crl": b"\x00\x01garbage"}) as files:
        error = await failed_crl(files.url("/ca.crl"), ca.certificate)
    assert (error.result, error.problem) == ("invalid", "malformed")


async def test_P_4_a_distribution_point_that_is_down_or_missing_is_an_error(ca: CA) -> None:
    with HttpFiles(down=True) as files:
        down = await failed_crl(files.url("/ca.crl"), ca.certificate)
    with HttpFiles() as files:
        missing = await failed_crl(files.url("/ca.crl"), ca.certificate)
    assert (down.result, down.problem) == ("error", "connect")
    assert (missing.result, missing.problem) == ("error", "http_status")


async def test_P_4_a_revoked_intermediate_in_the_roots_crl(tmp_path: Path) -> None:
    root = CA(now=WALL)
    with HttpFiles() as files:
        middle = root.intermediate(crl_url=files.url("/root.crl"))
        files.files["/root.crl"] = crl_der(root, [middle.certificate.serial_number])
        (url,) = crl_urls(middle.certificate)
        async with http_client() as client:
            judged = await fetch_crl(client, url, root.certificate, now=WALL, skew=SKEW)
    assert judged.status(middle.certificate.serial_number) == "revoked"


# ---------------------------------------------------------------- URLs in certificates


def test_P_4_the_urls_named_by_a_certificate(ca: CA) -> None:
    leaf = ca.issue(ocsp_url="http://ocsp.example.org/", crl_url="https://pki.example.org/c.crl")
    assert ocsp_urls(leaf.leaf) == ("http://ocsp.example.org/",)
    assert crl_urls(leaf.leaf) == ("https://pki.example.org/c.crl",)
    bare = ca.issue().leaf
    assert (ocsp_urls(bare), crl_urls(bare)) == ((), ())


def test_P_4_urls_that_are_not_http_are_left_out(ca: CA) -> None:
    leaf = ca.issue(ocsp_url="ldap://ocsp.example.org/", crl_url="file:///etc/crl").leaf
    assert (ocsp_urls(leaf), crl_urls(leaf)) == ((), ())
