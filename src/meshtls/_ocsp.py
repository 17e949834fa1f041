"""Asking OCSP about one certificate, and judging the answer (P-4).

Theory of operation. An OCSP response is outside input (fetched from a responder named
in a certificate's AIA), so it is read inside `meshtls._boundary.mapped` and judged
whole before its status counts:

1. it parses (DER) and its responseStatus is ``successful``;
2. one of its single responses names the target: issuer name hash, issuer key hash
   (with the response's own hash algorithm) and serial;
3. its signer is the target's issuer, or a delegated responder whose certificate is in
   the response, was signed by the issuer, carries the OCSPSigning EKU and is valid now;
4. the signer's key signed the response;
5. it is fresh: ``thisUpdate`` is not in the future and ``nextUpdate`` (when present) is
   not in the past, each within the clock skew.

A response that fails a step is refused with `OcspError` and its ``problem``; it never
counts as "good". A judged ``unknown`` is an answer, not an error. This module does no
I/O and keeps no state; `meshtls._fetch` asks, `meshtls._prefetch` stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ._boundary import clamp_time, mapped, printable
from ._errors import MeshError
from ._revocation import RevocationTarget, Status

OcspProblem = Literal[
    "malformed", "unsuccessful", "wrong_certificate", "bad_signature", "unauthorized_signer",
    "delegate_without_eku", "not_yet_valid", "stale", "unsupported",
]  # fmt: skip

#: The hash algorithms a CertID may use (RFC 6960 names SHA-1; responders also use SHA-2).
_CERT_ID_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1(),  # noqa: S303 - the CertID hash of RFC 6960
    "sha224": hashes.SHA224(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}

_STATUS: Final[dict[ocsp.OCSPCertStatus, Status]] = {
    ocsp.OCSPCertStatus.GOOD: "good",
    ocsp.OCSPCertStatus.REVOKED: "revoked",
    ocsp.OCSPCertStatus.UNKNOWN: "unknown",
}


class OcspError(MeshError):
    """An OCSP response that cannot be trusted; ``problem`` says which step refused it."""

    def __init__(self, problem: OcspProblem, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem: OcspProblem = problem
        self.detail = detail


def _malformed(description: str) -> OcspError:
    return OcspError("malformed", description)


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """What a judged response says about its target; ``responder`` is its signer's subject."""

    status: Status
    this_update: datetime
    next_update: datetime | None
    revoked_at: datetime | None
    reason: str | None
    responder: str


def ocsp_request(target: RevocationTarget) -> bytes:
    """The DER OCSPRequest for `target` (SHA-1 CertID, no nonce: as ``openssl ocsp`` asks)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        target.certificate,
        target.issuer,
        hashes.SHA1(),  # noqa: S303 - the CertID hash RFC 6960 and responders expect
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def judge_ocsp(
    data: bytes, target: RevocationTarget, *, now: datetime, skew: timedelta
) -> OcspAnswer:
    """Check the DER OCSP response `data` about `target`, at `now` with `skew`.

    Raises `OcspError` naming the first step that refuses it (see the module docstring).
    """
    with mapped(_malformed):
        response = ocsp.load_der_ocsp_response(data)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise OcspError(
                "unsuccessful", f"the responder said {response.response_status.name.lower()}"
            )
        single = _single_for(response, target)
        signer = _signer(response, target.issuer, now)
        _check_signature(response, signer)
        this_update = clamp_time(single.this_update_utc)
        next_utc = single.next_update_utc
        next_update = None if next_utc is None else clamp_time(next_utc)
        if this_update > now + skew:
            raise OcspError(
                "not_yet_valid", f"thisUpdate {this_update:%Y-%m-%dT%H:%M:%SZ} is ahead"
            )
        if next_update is not None and next_update < now - skew:
            raise OcspError("stale", f"nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ} has passed")
        status = _STATUS[single.certificate_status]
        revoked_at: datetime | None = None
        reason: str | None = None
        if status == "revoked":
            revoked_utc = single.revocation_time_utc
            revoked_at = None if revoked_utc is None else clamp_time(revoked_utc)
            flag = single.revocation_reason
            reason = None if flag is None else flag.name
        return OcspAnswer(
            status,
            this_update,
            next_update,
            revoked_at,
            reason,
            printable(signer.subject.rfc4514_string()),
        )


def _single_for(response: ocsp.OCSPResponse, target: RevocationTarget) -> ocsp.OCSPSingleResponse:
    """The single response about `target`; `OcspError` ("wrong_certificate") if none is."""
    serial = target.certificate.serial_number
    for single in response.responses:
        if single.serial_number != serial:
            continue
        algorithm = _CERT_ID_HASHES.get(single.hash_algorithm.name)
        if algorithm is None:
            raise OcspError("unsupported", f"a CertID hashed with {single.hash_algorithm.name}")
        expected = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(target.certificate, target.issuer, algorithm)
            .build()
        )
        if (single.issuer_name_hash, single.issuer_key_hash) == (
            expected.issuer_name_hash,
            expected.issuer_key_hash,
        ):
            return single
    raise OcspError(
        "wrong_certificate", f"no single response names serial {serial:#x} of this issuer"
    )


def _names(response: ocsp.OCSPResponse, candidate: x509.Certificate) -> bool:
    """Does the response's ResponderID name `candidate` (by key hash or by name)?"""
    if response.responder_key_hash is not None:
        # byKey is the SHA-1 of the subjectPublicKey bits: RFC 5280's key identifier method 1
        key_id = x509.SubjectKeyIdentifier.from_public_key(candidate.public_key())
        return key_id.digest == response.responder_key_hash
    return response.responder_name == candidate.subject


def _signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime
) -> x509.Certificate:
    """The certificate whose key must have signed `response`: the issuer or its delegate."""
    if _names(response, issuer):
        return issuer
    for candidate in response.certificates:
        if not _names(response, candidate):
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
        except Exception as exc:  # any failure to show it is from the issuer refuses it
            raise OcspError(
                "unauthorized_signer", "the responder's certificate is not from the issuer"
            ) from exc
        try:
            eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise OcspError(
                "delegate_without_eku", "the delegated responder lacks the OCSPSigning EKU"
            )
        not_before = clamp_time(candidate.not_valid_before_utc)
        not_after = clamp_time(candidate.not_valid_after_utc)
        if not not_before <= now <= not_after:
            raise OcspError(
                "unauthorized_signer", "the delegated responder's certificate is not valid now"
            )
        return candidate
    raise OcspError(
        "unauthorized_signer", "signed neither by the issuer nor by a responder it delegated to"
    )


def _check_signature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    key = signer.public_key()
    try:
        algorithm = response.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise OcspError("unsupported", "a signature algorithm we do not verify") from exc
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(
                response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm
            )
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(response.signature, response.tbs_response_bytes)
        else:
            raise OcspError("unsupported", f"a response signed by a {type(key).__name__}")
    except InvalidSignature as exc:
        raise OcspError("bad_signature", "the responder's key did not sign this response") from exc
