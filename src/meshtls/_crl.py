"""Judging a CRL: may it be trusted, and what does it say about one certificate? (P-4)

Theory of operation. A CRL is outside input (fetched from a distribution point, read from
a file, or delivered by a Workload API), so it is read inside `meshtls._boundary.mapped`
and judged before any serial in it counts:

1. it parses (PEM or DER);
2. its issuer is the certificate's issuer, by name, and that issuer may sign CRLs (the
   cRLSign key usage, when the issuer has a key usage at all);
3. the issuer's key signed it;
4. it is fresh: ``thisUpdate`` is not in the future and ``nextUpdate`` (which must be
   present) is not in the past, each within the clock skew;
5. it is a full CRL about this issuer's own certificates: a delta CRL, an indirect CRL, an
   entry naming another issuer, or any critical extension we do not implement is refused
   rather than half-read.

A CRL that fails a step is refused with `CrlError` and its ``problem``; it never counts as
"good". Only then is a serial looked up. This module does no I/O and keeps no state: the
fetching, the cache and the node's use of it are built on top.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from ._boundary import clamp_time, mapped
from ._errors import MeshError

CrlProblem = Literal[
    "malformed", "wrong_issuer", "issuer_cannot_sign_crls", "bad_signature", "not_yet_valid",
    "stale", "no_next_update", "unsupported",
]  # fmt: skip
CertificateStatus = Literal["good", "revoked"]

#: The issuer key types that can sign a CRL.
_SIGNING_KEYS: Final = (
    dsa.DSAPublicKey,
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)


class CrlError(MeshError):
    """A CRL that cannot be trusted; ``problem`` says which step refused it."""

    def __init__(self, problem: CrlProblem, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem: CrlProblem = problem
        self.detail = detail


def _malformed(description: str) -> CrlError:
    return CrlError("malformed", description)


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """The CRL in `data` (PEM or DER). Raises `CrlError` ("malformed") for anything else."""
    with mapped(_malformed):
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One revoked certificate in a CRL: when, and why (the reasonCode's name, if any)."""

    revoked_at: datetime
    reason: str | None


@dataclass(frozen=True, slots=True)
class JudgedCrl:
    """A CRL that passed every check for `issuer`: its validity and its revoked serials."""

    issuer: x509.Name
    this_update: datetime
    next_update: datetime
    entries: Mapping[int, RevokedEntry]

    @property
    def revoked(self) -> frozenset[int]:
        return frozenset(self.entries)

    def status(self, serial: int) -> CertificateStatus:
        """What this CRL says about the certificate with `serial` from its issuer."""
        return "revoked" if serial in self.entries else "good"

    def revoked_entry(self, serial: int) -> RevokedEntry | None:
        return self.entries.get(serial)


def judge_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    *,
    now: datetime,
    skew: timedelta,
) -> JudgedCrl:
    """Check `crl` as issued by `issuer`, at `now` with `skew`; return what it says.

    Raises `CrlError` naming the first step that refuses it (see the module docstring).
    """
    with mapped(_malformed):
        if crl.issuer != issuer.subject:
            raise CrlError(
                "wrong_issuer",
                f"the CRL is from {crl.issuer.rfc4514_string()!r},"
                f" not {issuer.subject.rfc4514_string()!r}",
            )
        _check_issuer_may_sign(issuer)
        key = issuer.public_key()
        if not isinstance(key, _SIGNING_KEYS):
            raise CrlError("unsupported", f"the issuer's key cannot sign: {type(key).__name__}")
        if not crl.is_signature_valid(key):
            raise CrlError("bad_signature", "the issuer's key did not sign this CRL")
        this_update = clamp_time(crl.last_update_utc)
        if crl.next_update_utc is None:
            raise CrlError("no_next_update", "the CRL has no nextUpdate: its freshness is unknown")
        next_update = clamp_time(crl.next_update_utc)
        if this_update > now + skew:
            raise CrlError("not_yet_valid", f"thisUpdate {this_update:%Y-%m-%dT%H:%M:%SZ} is ahead")
        if next_update < now - skew:
            raise CrlError("stale", f"nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ} has passed")
        _check_extensions(crl)
        entries = MappingProxyType(dict(_revoked_entries(crl)))
    return JudgedCrl(issuer.subject, this_update, next_update, entries)


def _check_issuer_may_sign(issuer: x509.Certificate) -> None:
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.crl_sign:
        raise CrlError("issuer_cannot_sign_crls", "the issuer's key usage lacks cRLSign")


def _check_extensions(crl: x509.CertificateRevocationList) -> None:
    for extension in crl.extensions:
        if extension.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            raise CrlError("unsupported", "a delta CRL: only full CRLs are read")
        if extension.oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT:
            point = extension.value
            assert isinstance(point, x509.IssuingDistributionPoint)
            if point.indirect_crl:
                raise CrlError("unsupported", "an indirect CRL: only the issuer's own are read")
            if point.only_some_reasons is not None:
                raise CrlError("unsupported", "a CRL partitioned by reason: only full CRLs")
            continue
        if extension.critical:  # no other critical CRL extension is implemented here
            raise CrlError("unsupported", f"a critical extension {extension.oid.dotted_string}")


def _revoked_entries(crl: x509.CertificateRevocationList) -> Iterator[tuple[int, RevokedEntry]]:
    for entry in crl:
        reason: str | None = None
        for extension in entry.extensions:
            if extension.oid == CRLEntryExtensionOID.CERTIFICATE_ISSUER:
                raise CrlError("unsupported", "an entry about another issuer's certificate")
            if extension.oid == CRLEntryExtensionOID.CRL_REASON:
                assert isinstance(extension.value, x509.CRLReason)
                reason = extension.value.reason.name
            if extension.critical:
                raise CrlError(
                    "unsupported", f"a critical entry extension {extension.oid.dotted_string}"
                )
        yield entry.serial_number, RevokedEntry(clamp_time(entry.revocation_date_utc), reason)
