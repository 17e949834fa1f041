"""x509-limbo's path-validation cases, re-created as SPIFFE chains.

x509-limbo (C2SP) is a suite of X.509 path-validation cases with expected verdicts. Each row
here is limbo's case id, a `Case` that mints the chain a peer sends, and limbo's verdict adapted
to SPIFFE-RULES.md, in the format of tests/table.py. The rows are part of the shared table
(`test_verify.TABLES`): `verify_svid` and a real handshake in both roles run each one.
docs/limbo.md says where and why a verdict differs from limbo's, and why each judgement-call
reason was chosen. Ids under ``meshtls::`` have no limbo twin: they cover
edges the issue names that limbo does not (99991231235959Z, UTCTime's 1950/2049 boundary, URI
name constraints, Ed25519 chains, chains sent out of order).

Where limbo's defect is in the *root*, the case needs a trust domain of its own whose bundle
holds that root. `ANCHORED` makes those (``<slug>.limbo.test``, once per process), and such a
case returns a `Presented` (`rooted`, `within`): its chain, and the world's bundles joined by
that one domain. The world's own trust domains are unchanged.

Where `meshtls.testing.CA` cannot express a defect (an extension made critical or dropped, a
duplicate extension, a non-positive serial, a version-1 certificate, a mismatched signature
algorithm), the CA mints the certificate, its DER is edited, and the same key signs it again
(`resigned`): the one defect is the only difference.
"""

from __future__ import annotations

import functools
import ipaddress
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    ExtensionOID,
    NameOID,
)

from meshtls import BundleSet, X509Bundle
from meshtls._ca import LEAF_SUBJECT, CertificateSpec, PublicKey, build_certificate
from meshtls.testing import (
    CA,
    CA_KEY_USAGE,
    SVID_EKU,
    AnyPrivateKey,
    ExtraExtension,
    IssuedCertificate,
)

from . import certkit
from .conftest import T, World
from .table import Case, Presented, once

MIN = timedelta(minutes=1)
SKEW = timedelta(seconds=30)  # ValidationPolicy's default clock skew (P-3)

#: Judgement calls, named once (docs/limbo.md): a critical extension the verifier does not
#: process, and a key or signature algorithm too weak (docs/decisions.md).
UNHANDLED_CRITICAL = "malformed_certificate"
WEAK_ALGORITHM = "untrusted_chain"

# ------------------------------------------------------------------------------ DER editing


def _read(data: bytes, pos: int = 0) -> tuple[int, int]:
    """The DER element at `pos`: (where its content starts, where it ends)."""
    length = data[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return start, start + length


def _children(element: bytes) -> list[bytes]:
    """The elements inside one constructed DER element, each whole (tag and length included)."""
    pos, end = _read(element)
    found = []
    while pos < end:
        _, stop = _read(element, pos)
        found.append(element[pos:stop])
        pos = stop
    return found


def _element(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _oid(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(arc) for arc in oid.dotted_string.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _element(0x06, bytes(body))


_CRITICAL = b"\x01\x01\xff"  # BOOLEAN TRUE
ECDSA_SHA1 = _element(0x30, _oid(x509.ObjectIdentifier("1.2.840.10045.4.1")))
ECDSA_SHA384 = _element(0x30, _oid(x509.ObjectIdentifier("1.2.840.10045.4.3.3")))

TbsEdit = Callable[[list[bytes]], list[bytes]]  # the TBSCertificate's fields, each whole DER


def resigned(
    cert: x509.Certificate,
    key: AnyPrivateKey,
    edit: TbsEdit,
    *,
    digest: hashes.HashAlgorithm | None = None,
    algorithm: bytes | None = None,
) -> x509.Certificate:
    """`cert` with its TBS fields edited, signed again by `key` (ECDSA, SHA-256 unless
    `digest`). The outer signatureAlgorithm stays `cert`'s unless `algorithm` (DER) is given."""
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    tbs = _element(0x30, b"".join(edit(_children(cert.tbs_certificate_bytes))))
    signature = key.sign(tbs, ec.ECDSA(digest or hashes.SHA256()))
    outer = algorithm or _children(cert.public_bytes(serialization.Encoding.DER))[1]
    der = _element(0x30, tbs + outer + _element(0x03, b"\x00" + signature))
    with warnings.catch_warnings():  # cryptography warns while parsing a non-positive serial
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


def _extensions_edited(edit: Callable[[list[bytes]], list[bytes]]) -> TbsEdit:
    """A TBS edit that rewrites the list of extensions (each one a whole DER Extension)."""

    def tbs_edit(fields: list[bytes]) -> list[bytes]:
        *head, wrapped = fields
        assert wrapped[0] == 0xA3, "the certificate has no extensions"
        inner = _children(_children(wrapped)[0])
        return [*head, _element(0xA3, _element(0x30, b"".join(edit(inner))))]

    return tbs_edit


def _is(ext: bytes, oid: x509.ObjectIdentifier) -> bool:
    return _children(ext)[0] == _oid(oid)


def dropped(oid: x509.ObjectIdentifier) -> TbsEdit:
    return _extensions_edited(lambda exts: [e for e in exts if not _is(e, oid)])


def made_critical(oid: x509.ObjectIdentifier, critical: bool = True) -> TbsEdit:
    def flagged(ext: bytes) -> bytes:
        parts = _children(ext)  # extnID, [critical], extnValue
        flag = _CRITICAL if critical else b""
        return _element(0x30, parts[0] + flag + parts[-1]) if _is(ext, oid) else ext

    return _extensions_edited(lambda exts: [flagged(e) for e in exts])


def added(value: x509.ExtensionType, *, critical: bool) -> TbsEdit:
    flag = _CRITICAL if critical else b""
    ext = _element(0x30, _oid(value.oid) + flag + _element(0x04, value.public_bytes()))
    return _extensions_edited(lambda exts: [*exts, ext])


def duplicated(oid: x509.ObjectIdentifier) -> TbsEdit:
    return _extensions_edited(lambda exts: exts + [e for e in exts if _is(e, oid)])


def serial(content: bytes) -> TbsEdit:
    """The serial number (the field after the version) as this INTEGER content."""
    return lambda fields: [fields[0], _element(0x02, content), *fields[2:]]


def version_1(fields: list[bytes]) -> list[bytes]:
    """Drop the version field (so v1) and the extensions, which v1 cannot carry."""
    assert fields[0][0] == 0xA0
    assert fields[-1][0] == 0xA3
    return fields[1:-1]


def tbs_signature(algorithm: bytes) -> TbsEdit:
    return lambda fields: [*fields[:2], algorithm, *fields[3:]]


# ------------------------------------------------------------------------------ minting


UNKNOWN_CRITICAL: ExtraExtension = (
    x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55738.666.1"), b""),
    True,
)
PRIVATE_OTHER_NAME = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.55738.666.3"), b"\x05\x00")
NOT_9999 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # RFC 5280: "no well-defined expiry"
UTC_1950 = datetime(1950, 1, 1, tzinfo=UTC)  # UTCTime 500101000000Z
UTC_2049 = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)  # UTCTime 491231235959Z


def nc(
    permitted: Sequence[x509.GeneralName] = (), excluded: Sequence[x509.GeneralName] = ()
) -> x509.NameConstraints:
    return x509.NameConstraints(
        permitted_subtrees=list(permitted) or None, excluded_subtrees=list(excluded) or None
    )


def raw_nc(content: bytes) -> ExtraExtension:
    """A critical name constraints extension with hand-made content, which cryptography's
    `NameConstraints` refuses to build."""
    value = _element(0x30, content)
    return x509.UnrecognizedExtension(ExtensionOID.NAME_CONSTRAINTS, value), True


def dns(name: str) -> x509.DNSName:
    return x509.DNSName(name)


def ip(text: str) -> x509.IPAddress:
    if "/" in text:
        return x509.IPAddress(ipaddress.ip_network(text))
    return x509.IPAddress(ipaddress.ip_address(text))


def dn(text: str) -> x509.DirectoryName:
    return x509.DirectoryName(x509.Name.from_rfc4514_string(text))


def uri(text: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(text)


def email(text: str) -> x509.RFC822Name:
    return x509.RFC822Name(text)


def cn(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def workload(ca: CA) -> str:
    return f"spiffe://{ca.trust_domain}/workload"


def public(key: AnyPrivateKey) -> PublicKey:
    found = key.public_key()
    assert isinstance(found, PublicKey)
    return found


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def dsa_key() -> dsa.DSAPrivateKey:
    """A new DSA-2048 key, on certkit's fixed parameters (generating parameters is slow)."""
    return certkit.dsa_key().parameters().generate_private_key()


def leaf_spec(
    spiffe_id: str, *, subject: x509.Name = LEAF_SUBJECT, dns_names: Sequence[str] = ()
) -> CertificateSpec:
    """A good leaf SVID's spec, valid from `T` for 30 minutes."""
    return CertificateSpec(
        subject=subject,
        not_before=T,
        not_after=T + 30 * MIN,
        uris=[spiffe_id],
        dns_names=dns_names,
    )


def ca_spec(
    subject: x509.Name,
    *,
    dns_names: Sequence[str] = (),
    not_before: datetime = T - timedelta(days=1),
    not_after: datetime = T + timedelta(days=365),
    path_length: int | None = None,
) -> CertificateSpec:
    """A good CA's spec, valid from a day before `T` for a year unless told otherwise."""
    return CertificateSpec(
        subject=subject,
        not_before=not_before,
        not_after=not_after,
        dns_names=dns_names,
        is_ca=True,
        path_length=path_length,
        key_usage=CA_KEY_USAGE,
        eku=None,
    )


def mint(
    spec: CertificateSpec, key: AnyPrivateKey, *, issuer: x509.Name, signer: AnyPrivateKey
) -> x509.Certificate:
    """A certificate for `key`, with any subject and issuer name; signed by `signer`."""
    own = key is signer
    key_id = None if own else x509.SubjectKeyIdentifier.from_public_key(public(signer))
    return build_certificate(
        spec, public(key), issuer=issuer, signing_key=signer, issuer_key_id=key_id
    )


def leaf_of(
    ca: CA,
    *,
    key: AnyPrivateKey | None = None,
    issuer: x509.Name | None = None,
    subject: x509.Name = LEAF_SUBJECT,
    dns_names: Sequence[str] = (),
) -> IssuedCertificate:
    """A leaf of `ca` with what `CA.issue` does not choose: its key, subject, issuer name."""
    key = key or ec_key()
    spec = leaf_spec(workload(ca), subject=subject, dns_names=dns_names)
    leaf = mint(spec, key, issuer=ca.name if issuer is None else issuer, signer=ca.key)
    return IssuedCertificate((leaf, *ca.chain), key)


def with_names(ca: CA, *names: x509.GeneralName, critical: bool = False) -> IssuedCertificate:
    """A leaf whose SAN is its SPIFFE ID followed by `names`."""
    san = x509.SubjectAlternativeName([uri(workload(ca)), *names])
    return ca.issue(uris=(), extensions=[(san, critical)])


def with_leaf(issued: IssuedCertificate, leaf: x509.Certificate) -> IssuedCertificate:
    return IssuedCertificate((leaf, *issued.chain[1:]), issued.private_key)


def sending(issued: IssuedCertificate, *chain: x509.Certificate) -> IssuedCertificate:
    """The same leaf and key, with `chain` sent after the leaf instead of the CA's chain."""
    return IssuedCertificate((issued.leaf, *chain), issued.private_key)


def chain_of(ca: CA, length: int) -> IssuedCertificate:
    """A leaf sent with `length - 1` intermediates below `ca`."""
    for _ in range(length - 1):
        ca = ca.intermediate()
    return ca.issue()


def aia(critical: bool) -> ExtraExtension:
    location = x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, dns("example.org"))
    return x509.AuthorityInformationAccess([location]), critical


# ------------------------------------------------------------------------------ anchored domains


@dataclass(frozen=True)
class Domain:
    """A trust domain of one case's own: the authorities in its bundle, the CA that issues
    the case's chain, and any other CA of the domain whose key a case needs."""

    authorities: tuple[x509.Certificate, ...]
    ca: CA
    spare: CA | None = None


def _rooted(ca: CA) -> Domain:
    """The domain whose bundle is `ca`'s root certificate, as `CA` made it."""
    return Domain((ca.certificate,), ca)


def _edited_root(td: str, edit: TbsEdit) -> Domain:
    ca = CA(td, now=T)
    return Domain((resigned(ca.certificate, ca.key, edit),), ca)


def _remade_root(
    td: str, *, key: AnyPrivateKey | None = None, name: x509.Name | None = None
) -> Domain:
    """A root with a key or a name `CA` does not choose: a test CA, given the key and the name,
    with its self-signed certificate made again to match."""
    ca = CA(td, now=T)
    ca.key = key or ca.key
    ca.name = ca.name if name is None else name
    ca.certificate = mint(ca_spec(ca.name), ca.key, issuer=ca.name, signer=ca.key)
    return Domain((ca.certificate,), ca)


def _root_aki(td: str, *, critical: bool, own: bool) -> Domain:
    """A root with an AKI: of its own key (critical, as limbo has it), or of another key."""
    ca = CA(td, now=T)
    key = ca.key if own else ec_key()
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public(key))
    return Domain((resigned(ca.certificate, ca.key, added(aki, critical=critical)),), ca)


def _unrelated_second_root(td: str) -> Domain:
    used = CA(td, now=T)
    unrelated = CA(td, now=T, label="unrelated root", extensions=[UNKNOWN_CRITICAL])
    return Domain((used.certificate, unrelated.certificate), used)


def _intermediate_authority(td: str) -> Domain:
    """The bundle holds an intermediate, not its root (limbo: "the ICA is in the trusted set")."""
    ica = CA(td, now=T).intermediate()
    return Domain((ica.certificate,), ica)


def _cross_signed_authority_without_aki(td: str) -> Domain:
    """An authority that is not self-signed (cross-signed by another root) and has no AKI."""
    root = CA(td, now=T)
    ica = root.intermediate(path_length=0)
    edited = resigned(ica.certificate, root.key, dropped(ExtensionOID.AUTHORITY_KEY_IDENTIFIER))
    return Domain((edited,), ica)


def _two_roots(td: str) -> Domain:
    first, second = CA(td, now=T), CA(td, now=T, label="root 2")
    return Domain((first.certificate, second.certificate), first, second)


def _nc_root(
    td: str, permitted: Sequence[x509.GeneralName] = (), excluded: Sequence[x509.GeneralName] = ()
) -> Domain:
    return _rooted(CA(td, now=T, name_constraints=nc(permitted, excluded)))


ANCHORED: dict[str, Callable[[str], Domain]] = {
    "unknown-critical-root": lambda td: _rooted(CA(td, now=T, extensions=[UNKNOWN_CRITICAL])),
    "unrelated-root": _unrelated_second_root,
    "critical-aki": lambda td: _root_aki(td, critical=True, own=True),
    "aki-ski-mismatch": lambda td: _root_aki(td, critical=False, own=False),
    "critical-ski": lambda td: _edited_root(td, made_critical(ExtensionOID.SUBJECT_KEY_IDENTIFIER)),
    "missing-ski": lambda td: _edited_root(td, dropped(ExtensionOID.SUBJECT_KEY_IDENTIFIER)),
    "noncritical-bc": lambda td: _edited_root(
        td, made_critical(ExtensionOID.BASIC_CONSTRAINTS, critical=False)
    ),
    "missing-bc": lambda td: _rooted(CA(td, now=T, is_ca=None)),
    "inconsistent-ku": lambda td: _rooted(CA(td, now=T, key_usage=set(), key_usage_critical=False)),
    "empty-subject": lambda td: _remade_root(td, name=x509.Name([])),
    "root-eku": lambda td: _rooted(
        CA(
            td,
            now=T,
            extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)],
        )
    ),
    "intermediate-authority": _intermediate_authority,
    "cross-signed-no-aki": _cross_signed_authority_without_aki,
    "two-roots": _two_roots,
    "expired-root": lambda td: _rooted(
        CA(td, now=T, not_before=T - timedelta(days=400), not_after=T - timedelta(days=35))
    ),
    "root-9999": lambda td: _rooted(CA(td, now=T, not_after=NOT_9999)),
    "p192-root": lambda td: _rooted(CA(td, now=T, key_type="ec-p192")),
    "rsa1024-root": lambda td: _rooted(CA(td, now=T, key_type="rsa-1024")),
    "dsa-root": lambda td: _remade_root(td, key=dsa_key()),
    "nc-permit-dns": lambda td: _nc_root(td, permitted=[dns("example.org")]),
    "nc-noncritical-dns": lambda td: _rooted(
        CA(td, now=T, extensions=[(nc(permitted=[dns("example.org")]), False)])
    ),
    "nc-exclude-dns": lambda td: _nc_root(td, excluded=[dns("no.example.org")]),
    "nc-permit-and-exclude-dns": lambda td: _nc_root(
        td, permitted=[dns("example.org")], excluded=[dns("example.org")]
    ),
    "nc-leading-period-dns": lambda td: _nc_root(td, permitted=[dns(".example.org")]),
    "nc-permit-ip": lambda td: _nc_root(td, permitted=[ip("192.0.2.0/24")]),
    "nc-permit-ipv6": lambda td: _nc_root(td, permitted=[ip("::1/128")]),
    "nc-exclude-ip": lambda td: _nc_root(td, excluded=[ip("192.0.2.0/24"), ip("::1/128")]),
    "nc-permit-dn": lambda td: _nc_root(td, permitted=[dn("O=meshtls")]),
    "nc-permit-other-dn": lambda td: _nc_root(td, permitted=[dn("O=not-meshtls")]),
    "nc-exclude-dn": lambda td: _nc_root(td, excluded=[dn("O=meshtls")]),
    "nc-uri": lambda td: _rooted(CA(td, now=T)),  # its cases constrain intermediates
    "sub.nc-uri": lambda td: _rooted(CA(td, now=T)),
}


@functools.cache
def domain(slug: str) -> Domain:
    """The anchored trust domain ``<slug>.limbo.test``, made once per process."""
    return ANCHORED[slug](f"{slug}.limbo.test")


def anchored(slug: str) -> CA:
    """The CA that issues chains in the anchored trust domain `slug`."""
    return domain(slug).ca


_JOINED: dict[tuple[int, str], tuple[World, BundleSet]] = {}


def joined(world: World, slug: str) -> BundleSet:
    """`world`'s bundles joined by the anchored trust domain `slug`: one `BundleSet` per
    world and domain, so that the handshake harness builds its contexts for it once."""
    found = _JOINED.get((id(world), slug))
    if found is None or found[0] is not world:
        anchor = domain(slug)
        td = anchor.ca.trust_domain
        bundles = BundleSet({**world.bundles, td: X509Bundle(td, anchor.authorities)})
        found = _JOINED[id(world), slug] = (world, bundles)
    return found[1]


def within(world: World, slug: str, issued: IssuedCertificate) -> Presented:
    """`issued`, verified against `world`'s bundles and the anchored domain `slug`'s."""
    return Presented(issued, joined(world, slug))


def rooted(slug: str, make: Callable[[CA], IssuedCertificate]) -> Case:
    """A case in the anchored trust domain `slug`: `make` mints with the domain's CA."""
    return lambda w: within(w, slug, make(anchored(slug)))


# ------------------------------------------------------------------------------ cases with code


def _leaf_edited(
    w: World, edit: TbsEdit, *, digest: hashes.HashAlgorithm | None = None, algorithm: bytes = b""
) -> IssuedCertificate:
    issued = w.ca.issue()
    edited = resigned(issued.leaf, w.ca.key, edit, digest=digest, algorithm=algorithm or None)
    return with_leaf(issued, edited)


def _intermediate_edited(w: World, edit: TbsEdit) -> IssuedCertificate:
    ica = w.ca.intermediate()
    return sending(ica.issue(), resigned(ica.certificate, w.ca.key, edit))


def _unrelated_intermediate_sent(w: World) -> IssuedCertificate:
    used = w.ca.intermediate(path_length=0)
    unrelated = w.ca.intermediate(label="unrelated intermediate", extensions=[UNKNOWN_CRITICAL])
    return sending(used.issue(), used.certificate, unrelated.certificate)


def _root_sent_with_intermediate_authority(w: World) -> Presented:
    ica = anchored("intermediate-authority")
    assert ica.parent is not None
    return within(w, "intermediate-authority", sending(ica.issue(), ica.parent.certificate))


def _self_issued_pathlen(w: World) -> IssuedCertificate:
    first = w.ca.intermediate(path_length=1)
    second = first.intermediate(path_length=1, label="intermediate 1")  # same name: self-issued
    assert second.certificate.subject == second.certificate.issuer
    return second.intermediate(path_length=0).issue()


def _nc_self_issued_intermediate(w: World) -> Presented:
    """The root permits DNS example.org; a self-issued intermediate (the root's own name,
    another key) carries DNS not-example.org, which the constraint does not reach."""
    root = anchored("nc-permit-dns")
    key = ec_key()
    spec = ca_spec(root.name, dns_names=["not-example.org"])
    ica = mint(spec, key, issuer=root.name, signer=root.key)
    leaf_key = ec_key()
    leaf = mint(leaf_spec(workload(root)), leaf_key, issuer=root.name, signer=key)
    return within(w, "nc-permit-dns", IssuedCertificate((leaf, ica), leaf_key))


def _nc_self_issued_leaf(w: World) -> Presented:
    """A leaf whose subject is its issuer's name still obeys the root's DNS constraint:
    self-issued certificates are exempt only above the leaf."""
    ica = anchored("nc-permit-dns").intermediate(label="not-example.org")
    return within(w, "nc-permit-dns", leaf_of(ica, subject=ica.name, dns_names=["not-example.org"]))


def _cycle(w: World) -> IssuedCertificate:
    """Two intermediates of example.org that sign each other; neither reaches the root."""
    one, two = ec_key(), ec_key()
    ica_one = mint(ca_spec(cn("cycle one")), one, issuer=cn("cycle two"), signer=two)
    ica_two = mint(ca_spec(cn("cycle two")), two, issuer=cn("cycle one"), signer=one)
    key = ec_key()
    leaf = mint(leaf_spec(workload(w.ca)), key, issuer=cn("cycle one"), signer=one)
    return IssuedCertificate((leaf, ica_one, ica_two), key)


def _chain_of_pain(w: World) -> Presented:
    """The leaf's root, cross-signed long ago by the domain's second root, is sent too; the
    direct path to the first root is the one to take."""
    roots = domain("two-roots")
    first, second = roots.ca, roots.spare
    assert second is not None
    spec = ca_spec(
        first.name,
        not_before=datetime(1985, 1, 1, tzinfo=UTC),
        not_after=datetime(1988, 11, 25, tzinfo=UTC),
        path_length=1,
    )
    cross = mint(spec, first.key, issuer=second.name, signer=second.key)
    return within(w, "two-roots", sending(first.issue(), cross))


def _untrusted_root_sent(w: World) -> IssuedCertificate:
    untrusted = CA("example.org", now=T, label="untrusted root")
    issued = untrusted.intermediate(path_length=0).issue()
    return sending(issued, *issued.chain[1:], untrusted.certificate)


def _edipartyname(w: World) -> IssuedCertificate:
    uri_name = _element(0x86, workload(w.ca).encode())
    party = _element(0xA5, _element(0xA1, _element(0x0C, b"party")))  # [5] EDIPartyName
    value = _element(0x30, uri_name + party)
    san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, value)
    return w.ca.issue(uris=(), extensions=[(san, False)])


def _intermediates_out_of_order(w: World) -> IssuedCertificate:
    issued = w.ca.intermediate().intermediate().issue()
    return sending(issued, issued.chain[2], issued.chain[1])


def _intermediate_sent_twice(w: World) -> IssuedCertificate:
    issued = w.ca.intermediate().issue()
    return sending(issued, issued.chain[1], issued.chain[1])


def _other_domain_certificate_sent(w: World) -> IssuedCertificate:
    return sending(w.ca.issue(), w.other.intermediate().certificate)


def _with_ca_eku(w: World) -> IssuedCertificate:
    code_signing = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
    return w.ca.intermediate(extensions=[(code_signing, False)]).issue()


def _uri_constrained(
    slug: str, *, dns_names: Sequence[str] = (), **constraints: Sequence[x509.GeneralName]
) -> Case:
    """A leaf of the anchored domain `slug`, under an intermediate with `constraints`."""
    return rooted(
        slug,
        lambda ca: ca.intermediate(name_constraints=nc(**constraints)).issue(dns_names=dns_names),
    )


# ------------------------------------------------------------------------------ the table


LIMBO_REJECTED: list[tuple[str, Case, str]] = [
    # -- extensions: critical ones nobody processes, duplicates, unreadable values
    (
        "rfc5280::unknown-critical-extension-ee",
        lambda w: w.ca.issue(extensions=[UNKNOWN_CRITICAL]),
        UNHANDLED_CRITICAL,
    ),
    (
        "rfc5280::unknown-critical-extension-intermediate",
        lambda w: w.ca.intermediate(path_length=0, extensions=[UNKNOWN_CRITICAL]).issue(),
        UNHANDLED_CRITICAL,
    ),
    (
        "rfc5280::unknown-critical-extension-root",
        rooted("unknown-critical-root", lambda ca: ca.issue()),
        UNHANDLED_CRITICAL,
    ),
    (
        "meshtls::ed25519-unknown-critical-extension-ee",
        lambda w: w.ed.intermediate(key_type="ed25519").issue(
            key_type="ed25519", extensions=[UNKNOWN_CRITICAL]
        ),
        UNHANDLED_CRITICAL,
    ),
    (
        "meshtls::ed25519-unknown-critical-extension-intermediate",
        lambda w: w.ed.intermediate(key_type="ed25519", extensions=[UNKNOWN_CRITICAL]).issue(
            key_type="ed25519"
        ),
        UNHANDLED_CRITICAL,
    ),
    (
        "rfc5280::ee-critical-aia-invalid",
        lambda w: w.ca.issue(extensions=[aia(True)]),
        UNHANDLED_CRITICAL,
    ),
    (
        "rfc5280::aki::critical-aki",
        rooted("critical-aki", lambda ca: ca.issue()),
        UNHANDLED_CRITICAL,
    ),
    (
        "rfc5280::ski::critical-ski",
        rooted("critical-ski", lambda ca: ca.issue()),
        UNHANDLED_CRITICAL,
    ),
    (
        "rfc5280::duplicate-extensions",
        lambda w: _leaf_edited(w, duplicated(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)),
        "malformed_certificate",
    ),
    (
        "rfc5280::san::malformed",
        lambda w: w.ca.issue(
            uris=(),
            extensions=[
                (
                    x509.UnrecognizedExtension(
                        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, workload(w.ca).encode()
                    ),
                    False,
                )
            ],
        ),
        "malformed_certificate",
    ),
    ("meshtls::san::edipartyname", _edipartyname, "malformed_certificate"),
    (
        "webpki::malformed-aia",
        lambda w: w.ca.issue(
            extensions=[
                (
                    x509.UnrecognizedExtension(
                        ExtensionOID.AUTHORITY_INFORMATION_ACCESS, b"malformed"
                    ),
                    False,
                )
            ]
        ),
        "malformed_certificate",
    ),
    (
        "rfc5280::eku::ee-eku-empty",
        lambda w: w.ca.issue(eku=[]),
        "malformed_certificate",
    ),
    (
        "webpki::nc::intermediate-permitted-excluded-subtrees-both-null",
        lambda w: w.ca.intermediate(extensions=[raw_nc(b"")]).issue(),
        "malformed_certificate",
    ),
    (
        "webpki::nc::intermediate-permitted-excluded-subtrees-both-empty-sequences",
        lambda w: w.ca.intermediate(
            extensions=[raw_nc(_element(0xA0, b"") + _element(0xA1, b""))]
        ).issue(),
        "malformed_certificate",
    ),
    (
        "rfc5280::nc::invalid-ipv4-address",  # an iPAddress constraint without its mask
        lambda w: with_names(
            w.ca.intermediate(
                extensions=[raw_nc(_element(0xA0, _element(0x30, _element(0x87, b"\x7f\0\0\1"))))]
            ),
            ip("127.0.0.1"),
        ),
        "malformed_certificate",
    ),
    # -- serial numbers and version
    ("rfc5280::serial::zero", lambda w: _leaf_edited(w, serial(b"\x00")), "malformed_certificate"),
    (
        "rfc5280::serial::negative",
        lambda w: _leaf_edited(w, serial(b"\xc2")),
        "malformed_certificate",
    ),
    (
        "rfc5280::serial::too-long",  # 21 octets of value: over RFC 5280's 20
        lambda w: _leaf_edited(w, serial(b"\x01" * 21)),
        "malformed_certificate",
    ),
    ("webpki::v1-cert", lambda w: _leaf_edited(w, version_1), "no_uri_san"),
    (
        "meshtls::v1-intermediate",
        lambda w: _intermediate_edited(w, version_1),
        "bad_signing_certificate",
    ),
    # -- basic constraints and key usage: on CAs (S-1, S-2) and on the leaf (L-1, L-4..L-7)
    (
        "rfc5280::intermediate-ca-without-ca-bit",
        lambda w: w.ca.intermediate(is_ca=False).issue(),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::intermediate-ca-missing-basic-constraints",
        lambda w: w.ca.intermediate(is_ca=None).issue(),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::root-missing-basic-constraints",
        rooted("missing-bc", lambda ca: ca.issue()),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::root-inconsistent-ca-extensions",
        rooted("inconsistent-ku", lambda ca: ca.issue()),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::ica-ku-keycertsign",
        lambda w: w.ca.intermediate(path_length=0, key_usage=set()).issue(),
        "bad_signing_certificate",
    ),
    (
        "meshtls::intermediate-without-key-usage",
        lambda w: w.ca.intermediate(key_usage=None).issue(),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::leaf-ku-keycertsign",
        lambda w: w.ca.issue(key_usage={"digital_signature", "key_cert_sign"}),
        "key_usage",
    ),
    ("rfc5280::no-keyusage", lambda w: w.ca.issue(key_usage=None), "key_usage"),
    ("webpki::ee-basicconstraints-ca", lambda w: w.ca.issue(is_ca=True), "leaf_is_ca"),
    (
        "webpki::ca-as-leaf",
        lambda w: w.ca.issue(is_ca=True, key_usage=CA_KEY_USAGE, eku=None),
        "leaf_is_ca",
    ),
    ("webpki::san::no-san", lambda w: w.ca.issue(uris=()), "no_uri_san"),
    # -- extended key usage (L-8), on the leaf and on CAs
    (
        "rfc5280::eku::ee-wrong-eku",
        lambda w: w.ca.issue(eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION]),
        "extended_key_usage",
    ),
    (
        "webpki::eku::ee-anyeku",
        lambda w: w.ca.issue(eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]),
        "extended_key_usage",
    ),
    ("webpki::eku::root-has-eku", rooted("root-eku", lambda ca: ca.issue()), "extended_key_usage"),
    ("meshtls::intermediate-eku-excludes-role", _with_ca_eku, "extended_key_usage"),
    # -- path length (S-4) and the number of certificates sent
    (
        "pathlen::intermediate-violates-pathlen-0",
        lambda w: w.ca.intermediate(path_length=0).intermediate(path_length=0).issue(),
        "bad_signing_certificate",
    ),
    (
        "pathlen::intermediate-pathlen-too-long",
        lambda w: (
            w.ca.intermediate(path_length=1)
            .intermediate(path_length=0)
            .intermediate(path_length=0)
            .issue()
        ),
        "bad_signing_certificate",
    ),
    ("pathlen::max-chain-depth-1-exhausted", lambda w: chain_of(w.ca, 9), "malformed_certificate"),
    # -- name constraints (S-4): DNS, IP, DirectoryName, email, otherName, URI
    (
        "rfc5280::nc::permitted-dns-mismatch",
        rooted("nc-permit-dns", lambda ca: ca.issue(dns_names=["not-example.org"])),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::excluded-dns-match",
        lambda w: w.ca.intermediate(name_constraints=nc(excluded=[dns("example.org")])).issue(
            dns_names=["example.org"]
        ),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::excluded-dns-match-second",
        rooted("nc-exclude-dns", lambda ca: ca.issue(dns_names=["example.org", "no.example.org"])),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::excluded-match-permitted-and-excluded",
        rooted("nc-permit-and-exclude-dns", lambda ca: ca.issue(dns_names=["example.org"])),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::invalid-dnsname-leading-period",
        rooted("nc-leading-period-dns", lambda ca: ca.issue(dns_names=["foo.example.org"])),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::permitted-ip-mismatch",
        rooted("nc-permit-ip", lambda ca: with_names(ca, ip("192.0.3.1"))),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::excluded-ipv4-match",
        rooted("nc-exclude-ip", lambda ca: with_names(ca, ip("192.0.2.1"))),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::excluded-ipv6-match",
        rooted("nc-exclude-ip", lambda ca: with_names(ca, ip("::1"))),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::permitted-dn-mismatch",
        rooted("nc-permit-other-dn", lambda ca: ca.issue()),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::excluded-dn-match",
        rooted("nc-exclude-dn", lambda ca: ca.issue()),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::permitted-dn-match-subject-san-mismatch",
        rooted("nc-permit-other-dn", lambda ca: with_names(ca, dn("O=not-meshtls"))),
        "bad_signing_certificate",
    ),
    ("rfc5280::nc::excluded-self-issued-leaf", _nc_self_issued_leaf, "bad_signing_certificate"),
    (
        "rfc5280::nc::intermediate-with-san-rejected-by-intermediate-nc",
        lambda w: (
            w.ca.intermediate(
                name_constraints=nc(
                    permitted=[dns("permitted.example.org")],
                    excluded=[dns("forbidden.example.org")],
                )
            )
            .intermediate(
                extensions=[(x509.SubjectAlternativeName([dns("forbidden.example.org")]), False)]
            )
            .issue(dns_names=["permitted.example.org"])
        ),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::restrictive-permits-in-intermediates-narrows",
        lambda w: (
            w.ca.intermediate(
                name_constraints=nc(permitted=[dns("foo.example.org"), dns("bar.example.org")])
            )
            .intermediate(name_constraints=nc(permitted=[dns("bar.example.org")]))
            .issue(dns_names=["foo.example.org"])
        ),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::restrictive-permits-in-intermediates-widens",
        lambda w: (
            w.ca.intermediate(name_constraints=nc(permitted=[dns("bar.example.org")]))
            .intermediate(
                name_constraints=nc(permitted=[dns("foo.example.org"), dns("bar.example.org")])
            )
            .issue(dns_names=["foo.example.org"])
        ),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::nc-permits-email-literal-asterisk-rejects-user",
        lambda w: with_names(
            w.ca.intermediate(
                name_constraints=nc(
                    permitted=[x509.RFC822Name._init_without_validation("*@example.org")]
                )
            ),
            email("foo@example.org"),
        ),
        "bad_signing_certificate",
    ),
    (
        "rfc5280::nc::nc-forbids-othername",
        lambda w: with_names(
            w.ca.intermediate(
                name_constraints=nc(permitted=[dns("example.org")], excluded=[PRIVATE_OTHER_NAME])
            ),
            dns("example.org"),
            PRIVATE_OTHER_NAME,
        ),
        "bad_signing_certificate",
    ),
    (
        # limbo accepts (the leaf has no otherName); meshtls fails closed on constraint types
        # it cannot evaluate, wherever they are (docs/limbo.md)
        "rfc5280::nc::nc-forbids-othername-noop",
        lambda w: w.ca.intermediate(
            name_constraints=nc(permitted=[dns("example.org")], excluded=[PRIVATE_OTHER_NAME])
        ).issue(dns_names=["example.org"]),
        "bad_signing_certificate",
    ),
    (
        "meshtls::nc::uri-leading-dot-excludes-the-apex",
        _uri_constrained("nc-uri", permitted=[uri(".nc-uri.limbo.test")]),
        "bad_signing_certificate",
    ),
    (
        "meshtls::nc::uri-excluded-subdomain",
        _uri_constrained("sub.nc-uri", excluded=[uri(".nc-uri.limbo.test")]),
        "bad_signing_certificate",
    ),
    (
        "meshtls::nc::uri-permitted-other-host",
        _uri_constrained("nc-uri", permitted=[uri("other.limbo.test")]),
        "bad_signing_certificate",
    ),
    (
        "meshtls::nc::uri-permitted-dns-excluded",
        _uri_constrained(
            "nc-uri",
            permitted=[uri("nc-uri.limbo.test")],
            excluded=[dns("no.example.org")],
            dns_names=["no.example.org"],
        ),
        "bad_signing_certificate",
    ),
    # -- what was sent, and what it chains to (L-9, L-10)
    ("rfc5280::chain-untrusted-root", _untrusted_root_sent, "untrusted_chain"),
    (
        "rfc5280::ee-empty-issuer",
        lambda w: leaf_of(w.ca, issuer=x509.Name([])),
        "untrusted_chain",
    ),
    (
        "rfc5280::ca-empty-subject",
        rooted("empty-subject", lambda ca: ca.issue()),
        "bad_signing_certificate",
    ),
    ("pathological::intermediate-cycle-distinct-cas", _cycle, "untrusted_chain"),
    (
        "webpki::cryptographydotio-chain-missing-intermediate",
        lambda w: sending(w.ca.intermediate().issue()),
        "untrusted_chain",
    ),
    (
        "rfc5280::mismatching-signature-algorithm",
        lambda w: _leaf_edited(w, tbs_signature(ECDSA_SHA384)),
        "untrusted_chain",
    ),
    # -- validity (L-9, P-1, P-3): limbo's one-second edges move out by the 30 s skew
    (
        "rfc5280::validity::expired-root",
        rooted("expired-root", lambda ca: ca.intermediate().issue()),
        "expired",
    ),
    (
        "rfc5280::validity::expired-intermediate",
        lambda w: w.ca.intermediate(
            not_before=T - timedelta(days=30), not_after=T - timedelta(days=1)
        ).issue(),
        "expired",
    ),
    (
        "rfc5280::validity::expired-leaf",
        lambda w: w.ca.intermediate().issue(not_before=T - 60 * MIN, not_after=T - 10 * MIN),
        "expired",
    ),
    (
        "rfc5280::validity::expired-1-second",
        lambda w: w.ca.intermediate().issue(
            not_before=T - 30 * MIN, not_after=T - SKEW - timedelta(seconds=1)
        ),
        "expired",
    ),
    (
        "rfc5280::validity::not-yet-valid-1-second",
        lambda w: w.ca.intermediate().issue(not_before=T + SKEW + timedelta(seconds=1)),
        "not_yet_valid",
    ),
    (
        "meshtls::validity::leaf-notafter-99991231235959Z",
        lambda w: w.ca.issue(not_before=T - MIN, not_after=NOT_9999),
        "ttl_exceeded",
    ),
    (
        "meshtls::validity::intermediate-notafter-utctime-1950",
        lambda w: w.ca.intermediate(
            not_before=UTC_1950, not_after=datetime(1950, 12, 31, 23, 59, 59, tzinfo=UTC)
        ).issue(),
        "expired",
    ),
    (
        "meshtls::validity::intermediate-notbefore-utctime-2049",
        lambda w: w.ca.intermediate(
            not_before=UTC_2049, not_after=datetime(2050, 6, 1, tzinfo=UTC)
        ).issue(),
        "not_yet_valid",
    ),
    # -- key strength and signature algorithms
    ("webpki::forbidden-p192-leaf", lambda w: w.ca.issue(key_type="ec-p192"), WEAK_ALGORITHM),
    (
        "webpki::forbidden-weak-rsa-in-leaf",
        once(lambda w: w.ca.issue(key_type="rsa-1024")),
        WEAK_ALGORITHM,
    ),
    ("webpki::forbidden-dsa-leaf", once(lambda w: leaf_of(w.ca, key=dsa_key())), WEAK_ALGORITHM),
    ("webpki::forbidden-p192-root", rooted("p192-root", lambda ca: ca.issue()), WEAK_ALGORITHM),
    (
        "webpki::forbidden-weak-rsa-key-in-root",
        rooted("rsa1024-root", lambda ca: ca.issue()),
        WEAK_ALGORITHM,
    ),
    ("webpki::forbidden-dsa-root", rooted("dsa-root", lambda ca: ca.issue()), WEAK_ALGORITHM),
    (
        "meshtls::sha1-signature",
        lambda w: _leaf_edited(
            w,
            tbs_signature(ECDSA_SHA1),
            digest=hashes.SHA1(),  # noqa: S303 - a weak signature, to be refused
            algorithm=ECDSA_SHA1,
        ),
        WEAK_ALGORITHM,
    ),
]

LIMBO_ACCEPTED: list[tuple[str, Case]] = [
    # -- extensions that must not get in the way
    (
        "rfc5280::unknown-critical-extension-unrelated-root",
        rooted("unrelated-root", lambda ca: ca.issue()),
    ),
    ("rfc5280::unknown-critical-extension-unrelated-intermediate", _unrelated_intermediate_sent),
    ("rfc5280::ee-aia", lambda w: w.ca.issue(extensions=[aia(False)])),
    ("rfc5280::aki::self-signed-root-missing-aki", lambda w: w.ca.issue()),
    (
        "rfc5280::aki::leaf-missing-aki",
        lambda w: _leaf_edited(w, dropped(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)),
    ),
    (
        "rfc5280::aki::intermediate-missing-aki",
        lambda w: _intermediate_edited(w, dropped(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)),
    ),
    (
        "rfc5280::aki::cross-signed-root-missing-aki",
        rooted("cross-signed-no-aki", lambda ca: sending(ca.issue())),
    ),
    ("webpki::aki::root-with-aki-ski-mismatch", rooted("aki-ski-mismatch", lambda ca: ca.issue())),
    ("rfc5280::ski::root-missing-ski", rooted("missing-ski", lambda ca: ca.issue())),
    (
        "rfc5280::ski::intermediate-missing-ski",
        lambda w: _intermediate_edited(w, dropped(ExtensionOID.SUBJECT_KEY_IDENTIFIER)),
    ),
    (
        "rfc5280::root-non-critical-basic-constraints",
        rooted("noncritical-bc", lambda ca: ca.issue()),
    ),
    ("rfc5280::no-basicconstraints", lambda w: w.ca.issue(is_ca=None)),
    (
        "rfc5280::pc::ica-noncritical-pc",
        lambda w: w.ca.intermediate(extensions=[(x509.PolicyConstraints(3, None), False)]).issue(),
    ),
    ("rfc5280::eku::ee-without-eku", lambda w: w.ca.issue(eku=None)),
    (
        "webpki::eku::ee-critical-eku",
        lambda w: w.ca.issue(eku=None, extensions=[(x509.ExtendedKeyUsage(SVID_EKU), True)]),
    ),
    (
        "rfc5280::nc::not-allowed-in-ee-critical",
        lambda w: w.ca.issue(extensions=[(nc(permitted=[dns("example.org")]), True)]),
    ),
    (
        "rfc5280::san::noncritical-with-empty-subject",
        lambda w: leaf_of(w.ca, subject=x509.Name([])),
    ),
    (
        "webpki::san::san-critical-with-nonempty-subject",
        lambda w: with_names(w.ca, critical=True),
    ),
    (
        "webpki::forbidden-rsa-key-not-divisible-by-8-in-leaf",
        once(
            lambda w: leaf_of(
                w.ca, key=rsa.generate_private_key(public_exponent=65537, key_size=2052)
            )
        ),
    ),
    # -- path length and the number of certificates sent
    ("pathlen::ee-with-intermediate-pathlen-0", lambda w: w.ca.intermediate(path_length=0).issue()),
    ("pathlen::ee-with-intermediate-pathlen-1", lambda w: w.ca.intermediate(path_length=1).issue()),
    ("pathlen::ee-with-intermediate-pathlen-2", lambda w: w.ca.intermediate(path_length=2).issue()),
    (
        "pathlen::intermediate-pathlen-may-increase",
        lambda w: w.ca.intermediate(path_length=1).intermediate(path_length=2).issue(),
    ),
    ("pathlen::self-issued-certs-pathlen", _self_issued_pathlen),
    ("pathlen::max-chain-depth-1", lambda w: chain_of(w.ca, 8)),
    # -- name constraints
    (
        "rfc5280::nc::permitted-dns-match",
        rooted("nc-permit-dns", lambda ca: ca.issue(dns_names=["example.org"])),
    ),
    (
        "rfc5280::nc::permitted-dns-match-more",
        rooted("nc-permit-dns", lambda ca: ca.issue(dns_names=["foo.bar.example.org"])),
    ),
    (
        "webpki::nc::permitted-dns-match-noncritical",
        rooted("nc-noncritical-dns", lambda ca: ca.issue(dns_names=["example.org"])),
    ),
    (
        "rfc5280::nc::permitted-ipv4-match",
        rooted("nc-permit-ip", lambda ca: with_names(ca, ip("192.0.2.1"))),
    ),
    (
        "rfc5280::nc::permitted-ipv6-match",
        rooted("nc-permit-ipv6", lambda ca: with_names(ca, ip("::1"))),
    ),
    ("rfc5280::nc::permitted-dn-match", rooted("nc-permit-dn", lambda ca: ca.issue())),
    ("rfc5280::nc::permitted-self-issued", _nc_self_issued_intermediate),
    (
        "rfc5280::nc::permitted-different-constraint-type",
        rooted("nc-permit-ip", lambda ca: ca.issue(dns_names=["example.org"])),
    ),
    (
        "rfc5280::nc::excluded-different-constraint-type",
        rooted("nc-exclude-ip", lambda ca: ca.issue(dns_names=["example.org"])),
    ),
    (
        "rfc5280::nc::nc-permits-email-exact",
        lambda w: with_names(
            w.ca.intermediate(name_constraints=nc(permitted=[email("foo@example.org")])),
            email("foo@example.org"),
        ),
    ),
    (
        "rfc5280::nc::nc-permits-email-domain",
        lambda w: with_names(
            w.ca.intermediate(name_constraints=nc(permitted=[email("example.org")])),
            email("foo@example.org"),
        ),
    ),
    (
        "meshtls::nc::uri-leading-dot-permits-subdomain",
        _uri_constrained("sub.nc-uri", permitted=[uri(".nc-uri.limbo.test")]),
    ),
    (
        "meshtls::nc::uri-and-dns-permitted",
        _uri_constrained(
            "nc-uri",
            permitted=[uri("nc-uri.limbo.test"), dns("example.org")],
            dns_names=["web.example.org"],
        ),
    ),
    # -- what was sent: extra, unordered, repeated and swapped certificates
    ("rfc5280::root-and-intermediate-swapped", _root_sent_with_intermediate_authority),
    ("pathological::multiple-chains-expired-intermediate", _chain_of_pain),
    ("meshtls::intermediates-out-of-order", _intermediates_out_of_order),
    ("meshtls::intermediate-sent-twice", _intermediate_sent_twice),
    ("meshtls::other-domain-certificate-sent", _other_domain_certificate_sent),
    # -- serial numbers: RFC 5280's 20 octets are of value; a leading 00 for the sign is fine
    (
        "meshtls::serial::twenty-octets-and-a-sign-octet",
        lambda w: _leaf_edited(w, serial(b"\x00" + b"\xff" * 20)),
    ),
    ("meshtls::serial::one", lambda w: _leaf_edited(w, serial(b"\x01"))),
    # -- validity edges
    (
        "rfc5280::validity::notbefore-exact",
        lambda w: w.ca.intermediate(not_before=T).issue(not_before=T),
    ),
    (
        "rfc5280::validity::notafter-exact",
        lambda w: w.ca.intermediate(not_after=T).issue(not_before=T - 30 * MIN, not_after=T),
    ),
    (
        "meshtls::validity::intermediate-notafter-99991231235959Z",
        lambda w: w.ca.intermediate(not_after=NOT_9999).issue(),
    ),
    (
        "meshtls::validity::root-notafter-99991231235959Z",
        rooted("root-9999", lambda ca: ca.issue()),
    ),
    (
        "meshtls::validity::intermediate-notbefore-utctime-1950",
        lambda w: w.ca.intermediate(not_before=UTC_1950).issue(),
    ),
    (
        "meshtls::validity::intermediate-notafter-utctime-2049",
        lambda w: w.ca.intermediate(not_after=UTC_2049).issue(),
    ),
]
