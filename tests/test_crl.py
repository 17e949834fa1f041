"""`meshtls._crl`: a CRL is judged whole before any serial in it counts (issue 9, step 1).

CRLs come from cryptography's builder signed by the test CA's key, and from the real
``meshtls ca revoke`` path (`LocalCA.revoke`). Time is injected; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshtls import SpiffeId, TrustDomain
from meshtls._ca import LocalCA
from meshtls._crl import CrlError, judge_crl, load_crl
from meshtls.testing import CA

T: Final = datetime(2030, 1, 1, tzinfo=UTC)
SKEW: Final = timedelta(seconds=30)


def make_crl(
    ca: CA,
    serials: Sequence[int] = (),
    *,
    this_update: datetime = T - timedelta(minutes=5),
    next_update: datetime | None = T + timedelta(hours=1),
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    entry_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    signer: CA | None = None,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(this_update)
    )
    if next_update is not None:
        builder = builder.next_update(next_update)
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    for serial in serials:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(T)
        for value, critical in entry_extensions:
            entry = entry.add_extension(value, critical=critical)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign((signer or ca).key, hashes.SHA256())


def judge(crl: x509.CertificateRevocationList, ca: CA, now: datetime = T) -> object:
    return judge_crl(crl, ca.certificate, now=now, skew=SKEW)


def refused(crl: x509.CertificateRevocationList, ca: CA, now: datetime = T) -> str:
    with pytest.raises(CrlError) as caught:
        judge_crl(crl, ca.certificate, now=now, skew=SKEW)
    return caught.value.problem


def test_a_listed_serial_is_revoked_and_others_are_good() -> None:
    ca = CA("example.org", now=T)
    leaf = ca.issue("spiffe://example.org/web")
    judged = judge_crl(make_crl(ca, [leaf.leaf.serial_number]), ca.certificate, now=T, skew=SKEW)
    assert judged.status(leaf.leaf.serial_number) == "revoked"
    assert judged.status(leaf.leaf.serial_number + 1) == "good"
    assert judged.next_update == T + timedelta(hours=1)


def test_the_crl_that_meshtls_ca_revoke_writes_is_read(tmp_path: Path) -> None:
    ca = LocalCA.init(tmp_path / "ca", TrustDomain("example.org"))
    svid = ca.issue(SpiffeId.parse("spiffe://example.org/web"), ttl=timedelta(minutes=30))
    now = datetime.now(UTC)
    crl_path = ca.revoke(svid.leaf.serial_number, now=now)
    for data in (
        crl_path.read_bytes(),
        load_crl(crl_path.read_bytes()).public_bytes(serialization.Encoding.DER),
    ):
        judged = judge_crl(load_crl(data), ca.issuer_certificate, now=now, skew=SKEW)
        assert judged.status(svid.leaf.serial_number) == "revoked"


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN X509 CRL-----\nAAAA\n"])
def test_bytes_that_are_no_crl_are_malformed(data: bytes) -> None:
    with pytest.raises(CrlError) as caught:
        load_crl(data)
    assert caught.value.problem == "malformed"


def test_a_crl_from_another_issuer_is_refused() -> None:
    ca, other = CA("example.org", now=T), CA("other.org", now=T)
    assert refused(make_crl(other, [1]), ca) == "wrong_issuer"


def test_a_crl_with_the_issuers_name_but_another_key_is_refused() -> None:
    """A forger who copies the issuer's name cannot make its serials count."""
    ca, forger = CA("example.org", now=T), CA("example.org", now=T)
    assert forger.certificate.subject == ca.certificate.subject
    assert refused(make_crl(ca, [1], signer=forger), ca) == "bad_signature"


def test_an_issuer_without_crl_sign_is_refused() -> None:
    ca = CA("example.org", now=T, key_usage=("key_cert_sign",))
    assert refused(make_crl(ca, [1]), ca) == "issuer_cannot_sign_crls"


def test_freshness_within_the_skew() -> None:
    ca = CA("example.org", now=T)
    crl = make_crl(ca, [1], next_update=T + timedelta(hours=1))
    assert refused(crl, ca, now=T + timedelta(hours=1) + SKEW + timedelta(seconds=1)) == "stale"
    judge(crl, ca, now=T + timedelta(hours=1) + SKEW)  # inside the skew: still fresh
    ahead = make_crl(ca, [1], this_update=T + SKEW + timedelta(seconds=1))
    assert refused(ahead, ca) == "not_yet_valid"
    judge(make_crl(ca, [1], this_update=T + SKEW), ca)


@pytest.mark.parametrize(
    "extension",
    [
        (x509.DeltaCRLIndicator(1), True),
        (
            x509.IssuingDistributionPoint(
                full_name=None,
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=True,
                only_contains_attribute_certs=False,
            ),
            True,
        ),
        (
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            True,
        ),
    ],
    ids=["delta", "indirect", "unknown-critical"],
)
def test_crls_we_do_not_fully_understand_are_refused_not_half_read(
    extension: tuple[x509.ExtensionType, bool],
) -> None:
    ca = CA("example.org", now=T)
    assert refused(make_crl(ca, [1], extensions=[extension]), ca) == "unsupported"


def test_an_unknown_non_critical_extension_is_ignored() -> None:
    ca = CA("example.org", now=T)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    assert (
        judge_crl(
            make_crl(ca, [7], extensions=[(unknown, False)]), ca.certificate, now=T, skew=SKEW
        ).status(7)
        == "revoked"
    )


def test_an_entry_about_another_issuers_certificate_is_refused() -> None:
    ca = CA("example.org", now=T)
    other = x509.CertificateIssuer([x509.DirectoryName(CA("other.org", now=T).certificate.subject)])
    assert refused(make_crl(ca, [1], entry_extensions=[(other, True)]), ca) == "unsupported"
