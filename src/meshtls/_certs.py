"""What meshtls reads from one certificate: its extensions, URI SANs and signing facts.

Pure functions over `cryptography.x509.Certificate`; no trio, no I/O. Used by the
verifier (`_svid`) and by bundles (`_bundle`), which read each root once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from ._errors import Reason, SpiffeIdError, VerificationError
from ._spiffeid import SpiffeId

Extensions = dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]]


def describe(cert: x509.Certificate, index: int) -> str:
    """Name a certificate in an error message. Never raises, never warns: it runs on
    certificates that just failed a check (cryptography warns about a negative serial)."""
    position = "leaf" if index == 0 else f"certificate {index}"
    try:
        subject = cert.subject.rfc4514_string() or "empty subject"
    except ValueError:
        subject = "unreadable subject"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = cert.serial_number
    return f"{position} ({subject}, serial {serial:#x})"


def fail(
    reason: Reason, cert: x509.Certificate, index: int, what: str, rule: str | None
) -> VerificationError:
    return VerificationError(reason, f"{describe(cert, index)}: {what}", rule=rule)


def extensions(cert: x509.Certificate, index: int) -> Extensions:
    try:
        return {ext.oid: ext for ext in cert.extensions}
    except ValueError as exc:
        raise fail(
            "malformed_certificate", cert, index, f"unreadable extensions ({exc})", None
        ) from None


def uri_sans(exts: Extensions) -> list[str]:
    san = exts.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is None:
        return []
    value = san.value
    assert isinstance(value, x509.SubjectAlternativeName)
    return value.get_values_for_type(x509.UniformResourceIdentifier)


@dataclass(frozen=True, slots=True)
class Signer:
    """What verification needs to know about an intermediate or root, read once."""

    certificate: x509.Certificate
    problem: tuple[str, str] | None  # (what, rule) when S-1..S-3 fail
    path_length: int | None
    uri_permitted: tuple[str, ...]
    uri_excluded: tuple[str, ...]
    other_constraints: bool  # name constraints other than URI
    self_issued: bool
    not_before: datetime
    not_after: datetime
    webpki_algorithm: bool  # a key/signature algorithm cryptography's verifier accepts


_NON_WEBPKI_KEYS = (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


def webpki_algorithm(cert: x509.Certificate) -> bool:
    return not isinstance(
        cert.public_key(), _NON_WEBPKI_KEYS
    ) and cert.signature_algorithm_oid not in (
        SignatureAlgorithmOID.ED25519,
        SignatureAlgorithmOID.ED448,
    )


def read_signer(cert: x509.Certificate, index: int) -> Signer:
    """Read the signing-certificate facts (S-1..S-4) of `cert`, at chain position `index`."""
    exts = extensions(cert, index)
    problem: tuple[str, str] | None = None
    path_length: int | None = None
    bc = exts.get(ExtensionOID.BASIC_CONSTRAINTS)
    ku = exts.get(ExtensionOID.KEY_USAGE)
    if bc is None or not cast(x509.BasicConstraints, bc.value).ca:
        problem = ("is not a CA (basic constraints)", "S-1")
    else:
        path_length = cast(x509.BasicConstraints, bc.value).path_length
        if ku is None or not cast(x509.KeyUsage, ku.value).key_cert_sign:
            problem = ("key usage lacks keyCertSign", "S-2")
    for uri in uri_sans(exts):
        if problem is not None or not uri.startswith("spiffe:"):
            continue
        try:
            spiffe_id = SpiffeId.parse(uri)
        except SpiffeIdError as exc:
            problem = (f"URI SAN: {exc}", "S-3")
        else:
            if not spiffe_id.is_root:
                problem = (f"carries {spiffe_id}, which has a path", "S-3")
    permitted: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    other = False
    nc_ext = exts.get(ExtensionOID.NAME_CONSTRAINTS)
    if nc_ext is not None:
        nc = cast(x509.NameConstraints, nc_ext.value)
        for names, is_permitted in ((nc.permitted_subtrees, True), (nc.excluded_subtrees, False)):
            for name in names or ():
                if not isinstance(name, x509.UniformResourceIdentifier):
                    other = True
                elif is_permitted:
                    permitted += (name.value.lower(),)
                else:
                    excluded += (name.value.lower(),)
    return Signer(
        cert,
        problem,
        path_length,
        permitted,
        excluded,
        other,
        cert.issuer == cert.subject,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        webpki_algorithm(cert),
    )
