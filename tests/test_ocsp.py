"""`meshtls._ocsp`: an OCSP response is judged whole before its status counts (P-4).

Answers come from the real ``openssl ocsp`` responder (`OcspResponder`), asked over real
HTTP on 127.0.0.1; defects openssl will not make (a forged signature, an unsuccessful or
future response) are built with cryptography's OCSP builder. openssl stamps its answers
with the wall clock, so those tests judge at a wall-clock instant read once (`WALL`)
and travel from it by passing another ``now``; nothing sleeps.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshtls._ocsp import OcspError, judge_ocsp, ocsp_request
from meshtls._revocation import RevocationTarget
from meshtls.testing import CA
from tests.revocation_peers import OcspResponder, needs_openssl

WALL = datetime.now(UTC).replace(microsecond=0)  # read again as each module starts: below


@pytest.fixture(autouse=True, scope="module")
def _wall() -> None:
    """The wall-clock instant this module judges at, read as it starts (the whole suite
    imports every module long before it runs this one, and openssl stamps the present)."""
    global WALL  # noqa: PLW0603 - one instant per module, read by every test here
    WALL = datetime.now(UTC).replace(microsecond=0)


SKEW: Final = timedelta(seconds=30)


def ask(url: str, target: RevocationTarget) -> bytes:
    """POST `target`'s OCSP request to the responder at `url`; the DER answer."""
    request = urllib.request.Request(  # noqa: S310 - a local http URL
        url, data=ocsp_request(target), headers={"Content-Type": "application/ocsp-request"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - a local URL
        body: bytes = response.read()
        return body


def refused(data: bytes, target: RevocationTarget, now: datetime | None = None) -> str:
    with pytest.raises(OcspError) as caught:
        judge_ocsp(data, target, now=WALL if now is None else now, skew=SKEW)
    return caught.value.problem


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA(now=WALL)


@pytest.fixture
def responder(tmp_path: Path, ca: CA) -> Iterator[tuple[OcspResponder, RevocationTarget]]:
    leaf = ca.issue().leaf
    with OcspResponder(tmp_path, ca.certificate, ca.key, [leaf]) as running:
        yield running, RevocationTarget.of(leaf, ca.certificate)


def delegate(
    ca: CA, *, eku: bool = True, not_after: datetime | None = None, signer: CA | None = None
) -> tuple[x509.Certificate, object]:
    """A delegated responder's certificate and key, issued by `signer` (default `ca`)."""
    issued = (signer or ca).issue(
        uris=(),
        dns_names=("ocsp.example.org",),
        eku=(ExtendedKeyUsageOID.OCSP_SIGNING,) if eku else None,
        not_before=WALL - timedelta(hours=1),
        not_after=not_after or WALL + timedelta(hours=1),
    )
    return issued.leaf, issued.private_key


# ---------------------------------------------------------------- the real responder


@needs_openssl
def test_P_4_good_from_the_real_responder(
    responder: tuple[OcspResponder, RevocationTarget], ca: CA
) -> None:
    running, target = responder
    answer = judge_ocsp(ask(running.url, target), target, now=WALL, skew=SKEW)
    assert answer.status == "good"
    assert answer.revoked_at is None
    assert answer.reason is None
    assert answer.next_update is not None
    assert answer.next_update - answer.this_update == timedelta(minutes=1)
    assert answer.responder == ca.certificate.subject.rfc4514_string()


@needs_openssl
def test_P_4_revoked_with_its_reason(responder: tuple[OcspResponder, RevocationTarget]) -> None:
    running, target = responder
    running.revoke(target.certificate.serial_number, at=WALL, reason="keyCompromise")
    answer = judge_ocsp(ask(running.url, target), target, now=WALL, skew=SKEW)
    assert answer.status == "revoked"
    assert answer.revoked_at == WALL
    assert answer.reason == "key_compromise"


@needs_openssl
def test_P_4_revoked_without_a_reason(responder: tuple[OcspResponder, RevocationTarget]) -> None:
    running, target = responder
    running.revoke(target.certificate.serial_number, at=WALL)
    answer = judge_ocsp(ask(running.url, target), target, now=WALL, skew=SKEW)
    assert (answer.status, answer.reason) == ("revoked", None)


@needs_openssl
def test_P_4_a_certificate_the_responder_does_not_know_is_unknown(
    responder: tuple[OcspResponder, RevocationTarget], ca: CA
) -> None:
    running, _ = responder
    stranger = RevocationTarget.of(ca.issue().leaf, ca.certificate)
    answer = judge_ocsp(ask(running.url, stranger), stranger, now=WALL, skew=SKEW)
    assert answer.status == "unknown"


@needs_openssl
def test_P_4_an_answer_past_its_next_update_is_stale(
    responder: tuple[OcspResponder, RevocationTarget],
) -> None:
    running, target = responder
    data = ask(running.url, target)
    later = WALL + timedelta(minutes=1) + SKEW + timedelta(minutes=2)
    assert refused(data, target, now=later) == "stale"
    # within the skew of nextUpdate it still counts
    answer = judge_ocsp(data, target, now=WALL + timedelta(minutes=1), skew=SKEW)
    assert answer.status == "good"


@needs_openssl
def test_P_4_an_answer_about_another_certificate_is_refused(tmp_path: Path, ca: CA) -> None:
    asked, other = ca.issue().leaf, ca.issue().leaf
    with OcspResponder(tmp_path, ca.certificate, ca.key, [asked, other]) as running:
        data = ask(running.url, RevocationTarget.of(other, ca.certificate))
    assert refused(data, RevocationTarget.of(asked, ca.certificate)) == "wrong_certificate"


@needs_openssl
def test_P_4_an_answer_about_the_same_serial_of_another_issuer_is_refused(
    tmp_path: Path, ca: CA
) -> None:
    impostor = CA(now=WALL)  # same name, another key
    leaf = ca.issue(serial=0x1234).leaf
    twin = impostor.issue(serial=0x1234).leaf
    with OcspResponder(tmp_path, impostor.certificate, impostor.key, [twin]) as running:
        data = ask(running.url, RevocationTarget.of(twin, impostor.certificate))
    assert refused(data, RevocationTarget.of(leaf, ca.certificate)) == "wrong_certificate"


@needs_openssl
def test_P_4_an_answer_signed_by_another_ca_is_refused(tmp_path: Path, ca: CA) -> None:
    stranger = CA("other.org", now=WALL)
    leaf = ca.issue().leaf
    with OcspResponder(
        tmp_path, ca.certificate, ca.key, [leaf], signer=stranger.certificate,
        signer_key=stranger.key,
    ) as running:  # fmt: skip
        target = RevocationTarget.of(leaf, ca.certificate)
        data = ask(running.url, target)
    assert refused(data, target) == "unauthorized_signer"


@needs_openssl
def test_P_4_a_delegated_responder_with_the_ocsp_signing_eku_is_accepted(
    tmp_path: Path, ca: CA
) -> None:
    cert, key = delegate(ca)
    leaf = ca.issue().leaf
    with OcspResponder(
        tmp_path,
        ca.certificate,
        ca.key,
        [leaf],
        signer=cert,
        signer_key=key,  # type: ignore[arg-type]
    ) as running:
        target = RevocationTarget.of(leaf, ca.certificate)
        answer = judge_ocsp(ask(running.url, target), target, now=WALL, skew=SKEW)
    assert answer.status == "good"
    assert answer.responder == cert.subject.rfc4514_string()


@needs_openssl
def test_P_4_a_delegated_responder_without_the_eku_is_refused(tmp_path: Path, ca: CA) -> None:
    cert, key = delegate(ca, eku=False)
    leaf = ca.issue().leaf
    with OcspResponder(
        tmp_path,
        ca.certificate,
        ca.key,
        [leaf],
        signer=cert,
        signer_key=key,  # type: ignore[arg-type]
    ) as running:
        target = RevocationTarget.of(leaf, ca.certificate)
        data = ask(running.url, target)
    assert refused(data, target) == "delegate_without_eku"


@needs_openssl
def test_P_4_a_delegated_responder_outside_its_validity_is_refused(tmp_path: Path, ca: CA) -> None:
    cert, key = delegate(ca, not_after=WALL + timedelta(minutes=5))
    leaf = ca.issue().leaf
    with OcspResponder(
        tmp_path, ca.certificate, ca.key, [leaf], signer=cert, signer_key=key,  # type: ignore[arg-type]
        next_update_days=1,
    ) as running:  # fmt: skip
        target = RevocationTarget.of(leaf, ca.certificate)
        data = ask(running.url, target)
    assert refused(data, target, now=WALL + timedelta(minutes=10)) == "unauthorized_signer"


@needs_openssl
def test_P_4_a_delegate_of_another_ca_is_refused(tmp_path: Path, ca: CA) -> None:
    cert, key = delegate(ca, signer=CA("other.org", now=WALL))
    leaf = ca.issue().leaf
    with OcspResponder(
        tmp_path,
        ca.certificate,
        ca.key,
        [leaf],
        signer=cert,
        signer_key=key,  # type: ignore[arg-type]
    ) as running:
        target = RevocationTarget.of(leaf, ca.certificate)
        data = ask(running.url, target)
    assert refused(data, target) == "unauthorized_signer"


@needs_openssl
def test_P_4_a_revoked_intermediate_from_the_roots_responder(tmp_path: Path) -> None:
    root = CA(now=WALL)
    middle = root.intermediate()
    with OcspResponder(tmp_path, root.certificate, root.key, [middle.certificate]) as running:
        running.revoke(middle.certificate.serial_number, at=WALL, reason="cACompromise")
        target = RevocationTarget.of(middle.certificate, root.certificate)
        answer = judge_ocsp(ask(running.url, target), target, now=WALL, skew=SKEW)
    assert (answer.status, answer.reason) == ("revoked", "ca_compromise")


# ---------------------------------------------------------------- built by hand


def built(
    ca: CA,
    target: RevocationTarget,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    this_update: datetime = WALL - timedelta(minutes=1),
    next_update: datetime | None = WALL + timedelta(hours=1),
    signing_key: object = None,
    responder: x509.Certificate | None = None,
    certificates: list[x509.Certificate] | None = None,
) -> bytes:
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=target.certificate,
        issuer=target.issuer,
        algorithm=hashes.SHA1(),  # noqa: S303 - the CertID hash
        cert_status=status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=WALL if status == ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder or ca.certificate)
    if certificates:
        builder = builder.certificates(certificates)
    key = signing_key or ca.key
    response = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return response.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def target(ca: CA) -> RevocationTarget:
    return RevocationTarget.of(ca.issue().leaf, ca.certificate)


def test_P_4_a_response_the_issuers_key_did_not_sign_is_refused(
    ca: CA, target: RevocationTarget
) -> None:
    data = built(ca, target)  # no certificates: the signature's last byte ends the DER
    forged = data[:-1] + bytes([data[-1] ^ 0x01])
    assert refused(forged, target) == "bad_signature"


def test_P_4_a_response_naming_an_unknown_responder_is_refused(
    ca: CA, target: RevocationTarget
) -> None:
    stranger = CA(now=WALL)
    data = built(ca, target, signing_key=stranger.key, responder=stranger.certificate)
    assert refused(data, target) == "unauthorized_signer"


def test_P_4_a_response_from_the_future_is_refused(ca: CA, target: RevocationTarget) -> None:
    ahead = built(ca, target, this_update=WALL + timedelta(minutes=5))
    assert refused(ahead, target) == "not_yet_valid"
    judge_ocsp(built(ca, target, this_update=WALL + SKEW), target, now=WALL, skew=SKEW)


def test_P_4_a_response_without_next_update_is_kept_by_its_ttl(
    ca: CA, target: RevocationTarget
) -> None:
    answer = judge_ocsp(built(ca, target, next_update=None), target, now=WALL, skew=SKEW)
    assert (answer.status, answer.next_update) == ("good", None)


@pytest.mark.parametrize(
    "status", [ocsp.OCSPResponseStatus.TRY_LATER, ocsp.OCSPResponseStatus.UNAUTHORIZED]
)
def test_P_4_an_unsuccessful_response_is_refused(
    status: ocsp.OCSPResponseStatus, target: RevocationTarget
) -> None:
    data = ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )
    assert refused(data, target) == "unsuccessful"


@pytest.mark.parametrize("data", [b"", b"\x30\x03\x0a\x01\x00", b"not der at all", b"\x30" * 50])
def test_P_4_garbage_is_malformed(data: bytes, target: RevocationTarget) -> None:
    assert refused(data, target) == "malformed"


def test_P_4_a_cut_response_is_malformed(ca: CA, target: RevocationTarget) -> None:
    data = built(ca, target)
    for cut in (1, len(data) // 2, len(data) - 1):
        assert refused(data[:cut], target) == "malformed"


def test_P_4_the_request_names_the_certificate_by_sha1_cert_id(target: RevocationTarget) -> None:
    request = ocsp.load_der_ocsp_request(ocsp_request(target))
    assert request.serial_number == target.certificate.serial_number
    assert isinstance(request.hash_algorithm, hashes.SHA1)
