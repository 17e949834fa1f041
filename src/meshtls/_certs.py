"""What meshtls reads from one certificate, read once, and RFC 5280 name matching.

Pure functions over `cryptography.x509.Certificate`; no trio, no I/O. The verifier
(`_svid`) judges `CertFacts`, never a certificate directly, so that the handshake can
cache the facts of a certificate by its DER and `verify_svid` reads the same facts the
same way. Bundles (`_bundle`) read each root once through `read_signer`.

Reading is the boundary for certificate bytes: cryptography parses lazily and raises
its own types (``DuplicateExtension``, ``UnsupportedGeneralNameType``, ...) when an
extension is first read, so `read_facts` catches any ``Exception`` and turns it into
``malformed_certificate`` (or records it). A certificate whose extensions cannot be read
still gets facts, with ``unreadable`` saying why: it can then be named, and is refused
only if it is on the path being judged (as OpenSSL ignores an unusable certificate that
is on no path). Dates are clamped (`clamp_time`) as they are read.

Where RFC 5280 leaves room, the rules here follow OpenSSL 3 (the engine of the
handshake), so that both entry points give one verdict: which critical extensions count
as handled, how names are compared (OpenSSL's canonical form), how each name type
matches a constraint, and which keys and signature algorithms are strong enough.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, TypeAlias, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, SignatureAlgorithmOID

from ._boundary import clamp_time, describe_error, printable
from ._errors import Reason, SpiffeIdError, VerificationError
from ._spiffeid import SpiffeId

Extensions = dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]]
Role = Literal["client", "server"]
PublicKey: TypeAlias = (
    ec.EllipticCurvePublicKey
    | rsa.RSAPublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
    | dsa.DSAPublicKey
)

#: Critical extensions that count as handled: OpenSSL 3's ``X509_supported_extension``
#: list (crypto/x509/v3_purp.c), checked against the OpenSSL the handshake runs (see
#: tests/test_handshake_verdicts.py). Any other critical extension refuses the certificate.
NS_CERT_TYPE: Final = x509.ObjectIdentifier("2.16.840.1.113730.1.1")
PROXY_CERT_INFO: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
IP_ADDR_BLOCKS: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.7")
AS_IDENTIFIERS: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.8")
HANDLED_CRITICAL: Final[frozenset[x509.ObjectIdentifier]] = frozenset(
    {
        NS_CERT_TYPE,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.EXTENDED_KEY_USAGE,
        IP_ADDR_BLOCKS,
        AS_IDENTIFIERS,
        ExtensionOID.OCSP_NO_CHECK,
        ExtensionOID.POLICY_CONSTRAINTS,
        PROXY_CERT_INFO,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.POLICY_MAPPINGS,
        ExtensionOID.INHIBIT_ANY_POLICY,
    }
)
#: Extensions refused even when not critical: OpenSSL refuses proxy certificates, and
#: checks RFC 3779 resources, which meshtls does not evaluate (fail closed).
REFUSED_EXTENSIONS: Final[dict[x509.ObjectIdentifier, str]] = {
    PROXY_CERT_INFO: "is a proxy certificate (proxyCertInfo)",
    IP_ADDR_BLOCKS: "carries RFC 3779 IP address blocks, which are not evaluated",
    AS_IDENTIFIERS: "carries RFC 3779 AS identifiers, which are not evaluated",
}

_EC_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_MIN_RSA_BITS: Final = 2048
_MAX_SERIAL_BITS: Final = 160  # 20 octets of value (RFC 5280 4.1.2.2)
_STRONG_HASHES: Final = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_RSA_PKCS1 = frozenset(
    {
        SignatureAlgorithmOID.RSA_WITH_SHA256,
        SignatureAlgorithmOID.RSA_WITH_SHA384,
        SignatureAlgorithmOID.RSA_WITH_SHA512,
    }
)
_ECDSA = frozenset(
    {
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)
_NS_ROLE_BITS: Final = {"client": 0x80, "server": 0x40}  # sslClient, sslServer
BOTH_ROLES: Final[frozenset[Role]] = frozenset({"client", "server"})


# ---------------------------------------------------------------- naming and failing

_QUIET_LOCK: Final = threading.RLock()
_quiet_depth = 0  # how deep the thread that holds _QUIET_LOCK is in `quiet()`


def quiet() -> _Quiet:
    """``with quiet():`` parse hostile certificate bytes without warnings (see `_Quiet`)."""
    return _Quiet()


class _Quiet:
    """Parse hostile certificate bytes without warnings: cryptography warns about some
    values (a negative serial, a countryName of the wrong length), and a peer must not be
    able to fill our logs or break a program that makes warnings errors.

    `warnings.catch_warnings` swaps process-wide state and is not thread-safe: two threads
    inside it at once (the Workload API reader verifies in its own thread) can leave every
    warning ignored for good. So meshtls enters it under one re-entrant lock, and only at
    the outermost `quiet()` of a thread (an entry point wraps its whole work in one).
    """

    __slots__ = ("_catch",)

    def __enter__(self) -> None:
        global _quiet_depth  # noqa: PLW0603 - guarded by _QUIET_LOCK, which this thread holds
        _QUIET_LOCK.acquire()
        _quiet_depth += 1
        self._catch: warnings.catch_warnings[None] | None = None
        if _quiet_depth == 1:
            self._catch = warnings.catch_warnings(action="ignore")
            self._catch.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        global _quiet_depth  # noqa: PLW0603 - as in __enter__
        try:
            if self._catch is not None:
                self._catch.__exit__(None, None, None)
        finally:
            _quiet_depth -= 1
            _QUIET_LOCK.release()


def describe(cert: x509.Certificate, index: int) -> str:
    """Name a certificate in an error message: `index` 0 is the leaf, a positive one its
    place in the chain, a negative one a bundle authority. Never raises, never warns: it
    runs on certificates that just failed a check (cryptography warns about a negative
    serial)."""
    position = "leaf" if index == 0 else f"certificate {index}" if index > 0 else "authority"
    with quiet():
        try:
            subject = printable(cert.subject.rfc4514_string(), 200) or "empty subject"
        except Exception:  # a hostile subject must not hide the real defect
            subject = "unreadable subject"
        try:
            serial = f"{cert.serial_number:#x}"
        except Exception:
            serial = "unreadable"
    return f"{position} ({subject}, serial {serial})"


def fail(
    reason: Reason, cert: x509.Certificate, index: int, what: str, rule: str | None
) -> VerificationError:
    return VerificationError(reason, f"{describe(cert, index)}: {what}", rule=rule)


def malformed(what: str) -> Callable[[str], VerificationError]:
    """An error factory for `mapped`: anything unreadable in `what` is ``malformed_certificate``."""

    def error(description: str) -> VerificationError:
        return VerificationError("malformed_certificate", f"{what}: unreadable ({description})")

    return error


def uri_sans(exts: Extensions) -> list[str]:
    san = exts.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is None:
        return []
    names = cast(x509.SubjectAlternativeName, san.value)
    return [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]


# ---------------------------------------------------------------- names, as OpenSSL compares them

#: A distinguished name in OpenSSL's canonical form: per RDN, its (OID, value) pairs, with
#: string values trimmed, inner whitespace collapsed and ASCII lowercased.
NameKey: TypeAlias = tuple[tuple[tuple[x509.ObjectIdentifier, str], ...], ...]

#: The string types OpenSSL canonicalizes (ASN1_MASK_CANON), by tag; others compare as is.
_CANONICAL_TYPES: Final = frozenset(
    kind._value_
    for kind in (
        _ASN1Type.UTF8String,
        _ASN1Type.BMPString,
        _ASN1Type.UniversalString,
        _ASN1Type.PrintableString,
        _ASN1Type.T61String,
        _ASN1Type.IA5String,
        _ASN1Type.VisibleString,
    )
)
_SPACES: Final = re.compile(r"[ \t\n\v\f\r]+")
_HAS_SPACE: Final = re.compile(r"^[ \t\n\v\f\r]|[ \t\n\v\f\r]$|[ \t\n\v\f\r]{2}|[\t\n\v\f\r]")
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """Lowercase A-Z only, as OpenSSL's ASCII comparisons do (``str.lower`` does more)."""
    return text.translate(_ASCII_LOWER)


def _canonical_value(attribute: x509.NameAttribute[str | bytes]) -> str:
    value = attribute.value
    kind: int = attribute._type._value_  # cryptography exposes the string type nowhere else
    if isinstance(value, bytes) or kind not in _CANONICAL_TYPES:
        shown = value.hex() if isinstance(value, bytes) else value
        return f"#{kind}:{shown}"
    if _HAS_SPACE.search(value) is None:
        return value.translate(_ASCII_LOWER)
    return ascii_lower(_SPACES.sub(" ", value.strip(" \t\n\v\f\r")))


def name_key(name: x509.Name) -> NameKey:
    """`name` in OpenSSL's canonical form: how issuers are matched to subjects and how a
    directoryName constraint matches (X509_NAME_cmp, RFC 5280 7.1)."""
    key: list[tuple[tuple[x509.ObjectIdentifier, str], ...]] = []
    for rdn in name.rdns:
        pairs = [(a.oid, _canonical_value(a)) for a in rdn]
        if len(pairs) > 1:
            pairs.sort(key=lambda pair: (pair[0].dotted_string, pair[1]))
        key.append(tuple(pairs))
    return tuple(key)


_IpAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_IpNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
NameKind = Literal["dns", "email", "uri", "ip", "dn"]


@dataclass(frozen=True, slots=True)
class Names:
    """The names a certificate asserts, as name constraints see them (RFC 5280 4.2.1.10):
    its SAN entries by type, its subject (when not empty) and the subject's email
    addresses. ``cn_dns`` are common names that look like host names: OpenSSL checks them
    against DNS constraints on a leaf that has no DNS SAN."""

    dns: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    ip: tuple[_IpAddress, ...] = ()
    dn: tuple[NameKey, ...] = ()
    cn_dns: tuple[str, ...] = ()
    syntax_problem: str | None = None  # a subject email that is not an IA5String


def _looks_like_host(text: str) -> bool:
    """OpenSSL's cn2dnsid: letters, digits, ``_``, and inner ``-``/``.``; two labels at least."""
    text = text.rstrip("\x00")
    if "\x00" in text:
        return False
    labelled = False
    last = len(text) - 1
    for index, char in enumerate(text):
        if char.isascii() and (char.isalnum() or char == "_"):
            continue
        if 0 < index < last:
            if char == "-":
                continue
            if char == "." and text[index + 1] not in ".-" and text[index - 1] != "-":
                labelled = True
                continue
        return False
    return labelled


def names_of(facts: CertFacts) -> Names:
    """The names `facts`'s certificate asserts; read when name constraints apply (rarely).
    Never warns (see `read_facts`)."""
    with quiet():
        return _names_of(facts.certificate)


def _names_of(cert: x509.Certificate) -> Names:
    exts = {ext.oid: ext for ext in cert.extensions}
    subject = cert.subject
    dn: list[NameKey] = [name_key(subject)] if len(subject) else []
    email: list[str] = []
    syntax = None
    for attribute in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if attribute._type != _ASN1Type.IA5String:  # see _canonical_value
            syntax = "a subject emailAddress that is not an IA5String"
        email.append(str(attribute.value))
    cn_dns = tuple(
        str(a.value)
        for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(a.value, str) and _looks_like_host(a.value)
    )
    san = exts.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    ip: tuple[_IpAddress, ...] = ()
    if san is not None:
        value = cast(x509.SubjectAlternativeName, san.value)
        dns = tuple(value.get_values_for_type(x509.DNSName))
        uri = tuple(value.get_values_for_type(x509.UniformResourceIdentifier))
        ip = tuple(
            a
            for a in value.get_values_for_type(x509.IPAddress)
            if isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address)
        )
        email += value.get_values_for_type(x509.RFC822Name)
        dn += [name_key(n) for n in value.get_values_for_type(x509.DirectoryName)]
    return Names(dns, tuple(email), uri, ip, tuple(dn), cn_dns, syntax)


# ---------------------------------------------------------------- name constraints

Subtree: TypeAlias = tuple[NameKind, "str | _IpNetwork | NameKey"]


@dataclass(frozen=True, slots=True)
class Constraints:
    """A CA's name constraints, by name type. ``unsupported`` names the subtree types
    meshtls cannot evaluate (otherName, registeredID): their presence fails closed."""

    permitted: tuple[Subtree, ...]
    excluded: tuple[Subtree, ...]
    unsupported: tuple[str, ...]

    def violation(self, names: Names, *, leaf: bool) -> str | None:
        """Why `names` break these constraints, or None (OpenSSL's NAME_CONSTRAINTS_check)."""
        if self.unsupported:
            return f"name constraints of type {', '.join(self.unsupported)} cannot be evaluated"
        if names.syntax_problem is not None:
            return f"has {names.syntax_problem}"
        checks: list[tuple[NameKind, tuple[str | _IpAddress | NameKey, ...]]] = [
            ("dn", names.dn),
            ("email", names.email),
            ("dns", names.dns),
            ("uri", names.uri),
            ("ip", names.ip),
        ]
        if leaf and not names.dns:
            checks.append(("dns", names.cn_dns))
        for kind, values in checks:
            for value in values:
                problem = self._check(kind, value)
                if problem is not None:
                    return problem
        return None

    def _check(self, kind: NameKind, name: str | _IpAddress | NameKey) -> str | None:
        shown = _show(kind, name)
        permitted = [base for k, base in self.permitted if k == kind]
        if permitted:
            verdicts = [_matches(kind, name, base) for base in permitted]
            if not any(v is True for v in verdicts):
                syntax = next((v for v in verdicts if isinstance(v, str)), None)
                return syntax or f"{shown} is outside the permitted {kind} subtrees"
        for base in (b for k, b in self.excluded if k == kind):
            verdict = _matches(kind, name, base)
            if isinstance(verdict, str):
                return verdict
            if verdict:
                return f"{shown} is inside an excluded {kind} subtree ({_show(kind, base)})"
        return None


def _show(kind: NameKind, value: object) -> str:
    if kind == "dn":
        key = cast(NameKey, value)
        return (
            "/".join("+".join(f"{oid.dotted_string}={text}" for oid, text in rdn) for rdn in key)
            or "/"
        )
    return repr(str(value)[:200])


def _matches(kind: NameKind, name: object, base: object) -> bool | str:
    """Whether `name` is inside subtree `base`; a string when the name's syntax is unusable."""
    if kind == "dns":
        return _dns_matches(cast(str, name), cast(str, base))
    if kind == "email":
        return _email_matches(cast(str, name), cast(str, base))
    if kind == "uri":
        return _uri_matches(cast(str, name), cast(str, base))
    if kind == "ip":
        address, network = cast(_IpAddress, name), cast(_IpNetwork, base)
        if address.version != network.version:
            return False
        mask = int(network.netmask)
        return int(address) & mask == int(network.network_address) & mask
    subject, prefix = cast(NameKey, name), cast(NameKey, base)
    return subject[: len(prefix)] == prefix


def _dns_matches(name: str, base: str) -> bool | str:
    """``example.org`` matches itself and its subdomains. A leading period has no meaning
    for a dNSName constraint (RFC 5280 4.2.1.10 gives it to URI and email constraints only):
    such a constraint cannot be read as written, and fails closed (OpenSSL and Go read it as
    "subdomains only"; x509-limbo and webpki refuse it)."""
    if base.startswith("."):
        return f"DNS name constraint {base[:200]!r} has a leading period (not in RFC 5280)"
    if not base:
        return True
    if len(name) < len(base):
        return False
    if len(name) > len(base) and name[-len(base) - 1] != ".":
        return False
    return ascii_lower(name[-len(base) :]) == ascii_lower(base)


def _email_matches(name: str, base: str) -> bool | str:
    """A mailbox, a host (``example.org``) or a domain (``.example.org``); the local part
    is compared exactly, the host without ASCII case."""
    at = name.rfind("@")
    if at < 0:
        return f"email {name[:200]!r} has no @"
    if "@" not in base and base.startswith("."):
        return len(name) > len(base) and ascii_lower(name[-len(base) :]) == ascii_lower(base)
    host = base
    base_at = base.rfind("@")
    if base_at >= 0:
        if base_at > 0 and base[:base_at] != name[:at]:
            return False
        host = base[base_at + 1 :]
    return ascii_lower(name[at + 1 :]) == ascii_lower(host)


def _uri_matches(name: str, base: str) -> bool | str:
    """The URI's host against a host (``example.org``) or a domain (``.example.org``)."""
    colon = name.find(":")
    if colon < 0 or name[colon + 1 : colon + 3] != "//":
        return f"URI {name[:200]!r} has no authority to constrain"
    rest = name[colon + 3 :]
    end = rest.find(":")
    if end < 0:
        end = rest.find("/")
    host = rest if end < 0 else rest[:end]
    if not host:
        return f"URI {name[:200]!r} has an empty host"
    if base.startswith("."):
        return len(host) > len(base) and ascii_lower(host[-len(base) :]) == ascii_lower(base)
    return ascii_lower(host) == ascii_lower(base)


def _subtrees(names: list[x509.GeneralName] | None, unsupported: list[str]) -> tuple[Subtree, ...]:
    found: list[Subtree] = []
    for name in names or ():
        if isinstance(name, x509.DNSName):
            found.append(("dns", name.value))
        elif isinstance(name, x509.RFC822Name):
            found.append(("email", name.value))
        elif isinstance(name, x509.UniformResourceIdentifier):
            found.append(("uri", name.value))
        elif isinstance(name, x509.IPAddress) and isinstance(
            name.value, ipaddress.IPv4Network | ipaddress.IPv6Network
        ):
            found.append(("ip", name.value))
        elif isinstance(name, x509.DirectoryName):
            found.append(("dn", name_key(name.value)))
        else:
            unsupported.append(type(name).__name__)
    return tuple(found)


def _constraints(exts: Extensions) -> Constraints | None:
    ext = exts.get(ExtensionOID.NAME_CONSTRAINTS)
    if ext is None:
        return None
    value = cast(x509.NameConstraints, ext.value)
    unsupported: list[str] = []
    permitted = _subtrees(value.permitted_subtrees, unsupported)
    excluded = _subtrees(value.excluded_subtrees, unsupported)
    return Constraints(permitted, excluded, tuple(sorted(set(unsupported))))


# ---------------------------------------------------------------- keys and signatures


def key_problem(key: PublicKey | None) -> str | None:
    """Why a certificate key is too weak to verify anything, or None: RSA >= 2048 bits,
    EC P-256/P-384/P-521, Ed25519 and Ed448 only (docs/decisions.md)."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            return f"has an RSA-{key.key_size} key (RSA needs {_MIN_RSA_BITS} bits)"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _EC_CURVES:
            return f"has an EC key on {key.curve.name} (P-256, P-384 or P-521 only)"
        return None
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return None
    if key is None:
        return "has a key of an unsupported type"
    return f"has a {type(key).__name__.removesuffix('PublicKey').lstrip('_')} key"


def _signature_problem(cert: x509.Certificate) -> str | None:
    """Why this certificate's own signature algorithm is refused, or None: ECDSA, RSA
    PKCS#1 v1.5 or RSA-PSS with SHA-256/384/512, Ed25519 or Ed448."""
    oid = cert.signature_algorithm_oid
    if oid in (SignatureAlgorithmOID.ED25519, SignatureAlgorithmOID.ED448):
        return None
    if oid in _RSA_PKCS1 or oid in _ECDSA:
        return None
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        digest = cert.signature_hash_algorithm
        if isinstance(digest, _STRONG_HASHES):
            return None
        return f"is signed with RSA-PSS over {digest.name if digest else 'no hash'}"
    return f"is signed with {oid._name}, which is too weak or unsupported"


def _element(data: bytes, at: int) -> tuple[int, int]:
    """(where the contents start, where the element ends) of the DER element at `at`."""
    first = data[at + 1]
    if first < 0x80:
        return at + 2, at + 2 + first
    count = first & 0x7F
    start = at + 2 + count
    return start, start + int.from_bytes(data[at + 2 : start], "big")


def _signed_part(der: bytes) -> tuple[bytes, bool]:
    """The TBS bytes of a certificate's DER, and whether its two signature algorithms agree
    (the one signed inside the TBS and the one outside it: RFC 5280 4.1.1.2)."""
    tbs_at, _ = _element(der, 0)
    contents, tbs_end = _element(der, tbs_at)
    outer = der[tbs_end : _element(der, tbs_end)[1]]
    at = contents
    if der[at] == 0xA0:  # [0] version
        at = _element(der, at)[1]
    at = _element(der, at)[1]  # serialNumber
    inner = der[at : _element(der, at)[1]]
    return der[tbs_at:tbs_end], inner == outer


def signed_by(cert: x509.Certificate, key: PublicKey | None) -> bool:
    """Whether `key` made `cert`'s signature, with the signature algorithm named the same
    inside and outside the signed part (OpenSSL refuses a mismatch). Never raises: anything
    odd is False."""
    try:
        tbs, agree = _signed_part(cert.public_bytes(Encoding.DER))
        if not agree:
            return False
        signature = cert.signature
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            wanted = (
                SignatureAlgorithmOID.ED25519
                if isinstance(key, ed25519.Ed25519PublicKey)
                else SignatureAlgorithmOID.ED448
            )
            if cert.signature_algorithm_oid != wanted:
                return False
            key.verify(signature, tbs)
            return True
        digest = cert.signature_hash_algorithm
        if digest is None:
            return False
        if isinstance(key, ec.EllipticCurvePublicKey):
            if cert.signature_algorithm_oid not in _ECDSA:
                return False
            key.verify(signature, tbs, ec.ECDSA(digest))
            return True
        if isinstance(key, rsa.RSAPublicKey):
            scheme = cert.signature_algorithm_parameters
            if not isinstance(scheme, padding.PKCS1v15 | padding.PSS):
                return False
            key.verify(signature, tbs, scheme, digest)
            return True
    except Exception:  # InvalidSignature, or a key and algorithm that do not fit: not signed
        return False
    return False


# ---------------------------------------------------------------- the facts of one certificate


@dataclass(slots=True, eq=False)
class CertFacts:
    """Everything verification needs from one certificate, read once.

    Shared by caches and by bundles, so never changed after `read_facts` made it, except
    that ``spiffe_id`` is filled in once parsed (a fact of the certificate alone). Not
    frozen because a frozen dataclass costs 5 us more to build, on every `verify_svid`.
    When ``unreadable`` is set, cryptography could not read the extensions (or the key);
    the rest then holds defaults and the certificate is refused wherever it is judged.
    """

    certificate: x509.Certificate
    subject: NameKey | None  # None for a leaf: it is never matched as an issuer
    issuer: NameKey | None
    not_before: datetime
    not_after: datetime
    public_key: PublicKey | None
    unreadable: str | None = None
    key_problem: str | None = None
    signature_problem: str | None = None
    unhandled_critical: tuple[str, ...] = ()
    refused_extension: str | None = None
    serial_problem: str | None = None  # not positive, or over 20 octets (RFC 5280 4.1.2.2)
    ca: bool | None = None  # basic constraints cA; None when there is no such extension
    path_length: int | None = None
    key_usage: x509.KeyUsage | None = None
    key_usage_critical: bool = False
    ekus: frozenset[x509.ObjectIdentifier] | None = None
    roles: frozenset[Role] = BOTH_ROLES  # what its EKU allows, as OpenSSL reads it
    leaf_roles: frozenset[Role] = BOTH_ROLES  # ... and its Netscape cert type (leaves only)
    uris: tuple[str, ...] = ()
    constraints: Constraints | None = None
    key_id: bytes | None = None  # subjectKeyIdentifier
    authority_key_id: bytes | None = None
    authority_serial: int | None = None
    authority_issuer: NameKey | None = None
    signing_problem: tuple[str, str | None] | None = None  # (what, rule) when it may not sign
    spiffe_id: SpiffeId | None = None  # a leaf's, once a verification has parsed it (L-1..L-3)

    @property
    def self_issued(self) -> bool:
        return self.subject is not None and self.subject == self.issuer

    def window(self) -> tuple[datetime, datetime]:
        return self.not_before, self.not_after

    def issued(self, child: CertFacts) -> bool:
        """Whether this certificate may have issued `child` by names and key identifiers
        (OpenSSL's x509_likely_issued); the signature is checked apart."""
        if child.issuer is None or child.issuer != self.subject:
            return False
        if (
            child.authority_key_id is not None
            and self.key_id is not None
            and child.authority_key_id != self.key_id
        ):
            return False
        if child.authority_serial is not None and child.authority_serial != _serial(self):
            return False
        return child.authority_issuer is None or child.authority_issuer == self.issuer


def _serial(facts: CertFacts) -> int | None:
    with quiet():  # a negative serial warns; it is still a serial
        try:
            return facts.certificate.serial_number
        except Exception:
            return None


def read_facts(cert: x509.Certificate, *, index: int = 0, leaf: bool = False) -> CertFacts:
    """The facts of `cert` (at chain position `index`, for messages; a `leaf` issues
    nothing, so its subject is not read). Raises `VerificationError`
    (``malformed_certificate``) only when not even its names and dates can be read; an
    unreadable key or extension is recorded in ``unreadable`` instead.

    Never warns: cryptography warns about some hostile values (a negative serial, a
    countryName of the wrong length) as it parses them, and a peer must not be able to
    fill our logs, or break a program that makes warnings errors.
    """
    with quiet():
        return _read_facts(cert, index, leaf=leaf)


def _read_facts(cert: x509.Certificate, index: int, *, leaf: bool) -> CertFacts:
    # Plain ``except`` clauses, as `mapped` would do, without its generator: this is the
    # hot path of `verify_svid` (which runs inside `mapped` itself).
    try:
        core = (
            None if leaf else name_key(cert.subject),
            name_key(cert.issuer),
            clamp_time(cert.not_valid_before_utc),
            clamp_time(cert.not_valid_after_utc),
        )
    except Exception as exc:
        what = f"unreadable ({describe_error(exc)})"
        raise fail("malformed_certificate", cert, index, what, None) from exc
    # Below, what cannot be read is recorded, not raised.
    try:
        key = cert.public_key()
    except Exception as exc:  # an unreadable key: this certificate verifies nothing
        return CertFacts(cert, *core, None, unreadable=f"unreadable key ({describe_error(exc)})")
    public = key if isinstance(key, PublicKey) else None
    try:
        return _read_extensions(cert, core, public)
    except Exception as exc:
        what = f"unreadable extensions ({describe_error(exc)})"
        return CertFacts(cert, *core, public, unreadable=what)


def _read_extensions(
    cert: x509.Certificate,
    core: tuple[NameKey | None, NameKey, datetime, datetime],
    public: PublicKey | None,
) -> CertFacts:
    exts = {ext.oid: ext for ext in cert.extensions}
    unhandled = sorted(
        oid.dotted_string
        for oid, ext in exts.items()
        if ext.critical and oid not in HANDLED_CRITICAL
    )
    bc = exts.get(ExtensionOID.BASIC_CONSTRAINTS)
    constraints = None if bc is None else cast(x509.BasicConstraints, bc.value)
    ca = None if constraints is None else constraints.ca
    ku = exts.get(ExtensionOID.KEY_USAGE)
    key_usage = None if ku is None else cast(x509.KeyUsage, ku.value)
    eku = exts.get(ExtensionOID.EXTENDED_KEY_USAGE)
    ekus = None if eku is None else frozenset(cast(x509.ExtendedKeyUsage, eku.value))
    roles = BOTH_ROLES if ekus is None else _roles(ekus)
    leaf_roles = roles
    ns = exts.get(NS_CERT_TYPE)
    if ns is not None:
        raw = cast(x509.UnrecognizedExtension, ns.value).value
        # a BIT STRING: tag 03, length, unused-bit count, then the bits (the first byte is ours)
        bits = raw[3] if len(raw) >= 4 and raw[0] == 0x03 else 0
        leaf_roles = frozenset(r for r in roles if bits & _NS_ROLE_BITS[r])
    ski = exts.get(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    aki_ext = exts.get(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    aki = None if aki_ext is None else cast(x509.AuthorityKeyIdentifier, aki_ext.value)
    authority_issuer = None
    if aki is not None and aki.authority_cert_issuer:
        directory = next(
            (n for n in aki.authority_cert_issuer if isinstance(n, x509.DirectoryName)), None
        )
        authority_issuer = None if directory is None else name_key(directory.value)
    uris = tuple(uri_sans(exts))
    return CertFacts(
        cert,
        *core,
        public,
        key_problem=key_problem(public),
        signature_problem=_signature_problem(cert),
        unhandled_critical=tuple(unhandled),
        refused_extension=next(
            (what for oid, what in REFUSED_EXTENSIONS.items() if oid in exts), None
        ),
        ca=ca,
        path_length=constraints.path_length if constraints is not None and ca else None,
        key_usage=key_usage,
        key_usage_critical=ku is not None and ku.critical,
        ekus=ekus,
        roles=roles,
        leaf_roles=leaf_roles,
        uris=uris,
        constraints=_constraints(exts),
        key_id=None if ski is None else cast(x509.SubjectKeyIdentifier, ski.value).digest,
        authority_key_id=None if aki is None else aki.key_identifier,
        authority_serial=None if aki is None else aki.authority_cert_serial_number,
        authority_issuer=authority_issuer,
        serial_problem=_serial_problem(cert),
        signing_problem=_signing_problem(ca, key_usage, uris, empty_subject=core[0] == ()),
    )


def _roles(ekus: frozenset[x509.ObjectIdentifier]) -> frozenset[Role]:
    """The roles an EKU allows. anyExtendedKeyUsage alone allows neither: OpenSSL's purpose
    check for TLS refuses it (tests/test_handshake_verdicts.py shows it)."""
    client = ExtendedKeyUsageOID.CLIENT_AUTH in ekus
    server = ExtendedKeyUsageOID.SERVER_AUTH in ekus
    return _ROLE_SETS[client, server]


_ROLE_SETS: Final[dict[tuple[bool, bool], frozenset[Role]]] = {
    (True, True): BOTH_ROLES,
    (True, False): frozenset({"client"}),
    (False, True): frozenset({"server"}),
    (False, False): frozenset(),
}


def _serial_problem(cert: x509.Certificate) -> str | None:
    """Why a serial number is refused, or None. RFC 5280 4.1.2.2: a positive integer of at
    most 20 octets. cryptography deprecates parsing non-positive serials (a later release
    will refuse them), so accepting them would make a verdict depend on its version."""
    serial = cert.serial_number
    if serial <= 0:
        return f"serial number {serial:#x} is not positive (RFC 5280 4.1.2.2)"
    if serial.bit_length() > _MAX_SERIAL_BITS:
        return "serial number is longer than 20 octets (RFC 5280 4.1.2.2)"
    return None


def _signing_problem(
    ca: bool | None,
    key_usage: x509.KeyUsage | None,
    uris: tuple[str, ...],
    *,
    empty_subject: bool,
) -> tuple[str, str | None] | None:
    """S-1..S-3 for a certificate that signs others, and a CA's non-empty subject
    (RFC 5280 4.1.2.6): (what is wrong, rule), or None."""
    if not ca:
        return ("is not a CA (basic constraints)", "S-1")
    if key_usage is None or not key_usage.key_cert_sign:
        return ("key usage lacks keyCertSign", "S-2")
    if empty_subject:
        return ("is a CA with an empty subject (RFC 5280 4.1.2.6)", None)
    for uri in uris:
        if not uri.startswith("spiffe:"):
            continue
        try:
            spiffe_id = SpiffeId.parse(uri)
        except SpiffeIdError as exc:
            return (f"URI SAN: {exc}", "S-3")
        if not spiffe_id.is_root:
            return (f"carries {spiffe_id}, which has a path", "S-3")
    return None


def read_signer(cert: x509.Certificate, index: int) -> CertFacts:
    """The facts of a bundle authority (`index` -1) or an intermediate. Raises
    `VerificationError` (``malformed_certificate``) if any of it is unreadable."""
    facts = read_facts(cert, index=index)
    if facts.unreadable is not None:
        raise fail("malformed_certificate", cert, index, facts.unreadable, None)
    return facts
