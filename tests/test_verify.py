"""verify_svid: one row per X509-SVID rule (L-1..L-10, S-1..S-4, P-1..P-3), plus properties.

Every certificate comes from `meshtls.testing.CA` (or DER surgery on one, tests/certkit.py)
with explicit times around `T`. The table (`TABLES`) is also run through a real TLS 1.3
handshake, in both roles, by tests/test_handshake_verdicts.py: one case, one verdict.
tests/test_external_certs.py runs a second, independent set built by the openssl CLI.
"""

from __future__ import annotations

import functools
import ipaddress
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meshtls
from meshtls import ValidationPolicy, VerificationError, verify_svid
from meshtls._boundary import clamp_time
from meshtls._ca import CertificateSpec, build_certificate
from meshtls._svid import Role
from meshtls.testing import CA, AnyPrivateKey, IssuedCertificate, KeyType, generate_key

from . import cases_limbo, certkit
from .conftest import T, World, assert_verifies
from .table import Accepted, Case, Presented, Rejected, once, presented

MIN = timedelta(minutes=1)
NO_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # RFC 5280 4.1.2.5


def trusting(world: World, td: str, *authorities: x509.Certificate) -> meshtls.BundleSet:
    """The world's bundles, with trust domain `td` trusting exactly `authorities`."""
    bundle = meshtls.X509Bundle(meshtls.TrustDomain(td), authorities)
    return meshtls.BundleSet({**world.bundles, bundle.trust_domain: bundle})


def under_root(world: World, root: CA, issued: IssuedCertificate) -> Presented:
    """`issued`, verified with `root` (a hierarchy outside the world) trusted for its domain."""
    return Presented(issued, trusting(world, str(root.trust_domain), root.certificate))


@functools.cache
def hierarchy(key_type: KeyType) -> CA:
    """A root with a `key_type` key, in trust domain ``<key_type>.example``; made once."""
    return CA(f"{key_type}.example", now=T, key_type=key_type)


@functools.cache
def forger(key_type: KeyType) -> AnyPrivateKey:
    """Someone else's `key_type` key: what a forged signature is made with."""
    return generate_key(key_type)


def forged_leaf(world: World, key_type: KeyType) -> Presented:
    """A leaf naming a `key_type` root as its issuer, signed by another `key_type` key."""
    root = hierarchy(key_type)
    return under_root(world, root, root.issue(signing_key=forger(key_type)))


def forged_intermediate(world: World, key_type: KeyType) -> Presented:
    """An intermediate naming a `key_type` root, signed by another `key_type` key."""
    root = hierarchy(key_type)
    return under_root(world, root, root.intermediate(signing_key=forger(key_type)).issue())


def genuine(world: World, key_type: KeyType) -> Presented:
    root = hierarchy(key_type)
    return under_root(world, root, root.intermediate().issue())


def with_key(ca: CA, key: dsa.DSAPrivateKey) -> IssuedCertificate:
    """A good leaf of `ca` whose key is `key` (so a slow key is generated once)."""
    leaf = build_certificate(
        CertificateSpec(
            subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshtls")]),
            not_before=T,
            not_after=T + 30 * MIN,
            uris=[f"spiffe://{ca.trust_domain}/workload"],
        ),
        key.public_key(),
        issuer=ca.name,
        signing_key=ca.key,
        issuer_key_id=ca.key_id,
    )
    return IssuedCertificate((leaf, *ca.chain), key)


dsa_key = functools.cache(certkit.dsa_key)


def dsa_intermediate(world: World) -> IssuedCertificate:
    """leaf <- an intermediate with a DSA key <- the world's root."""
    ca = world.ca
    key = dsa_key()
    spec = CertificateSpec(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DSA intermediate")]),
        not_before=T - timedelta(days=1),
        not_after=T + timedelta(days=30),
        is_ca=True,
        key_usage={"key_cert_sign", "crl_sign"},
        eku=None,
    )
    inter = build_certificate(
        spec, key.public_key(), issuer=ca.name, signing_key=ca.key, issuer_key_id=ca.key_id
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_spec = CertificateSpec(
        subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshtls")]),
        not_before=T,
        not_after=T + 30 * MIN,
        uris=["spiffe://example.org/workload"],
    )
    leaf = build_certificate(
        leaf_spec,
        leaf_key.public_key(),
        issuer=spec.subject,
        signing_key=key,
        issuer_key_id=x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
    )
    return IssuedCertificate((leaf, inter), leaf_key)


def uri_nc(
    permitted: list[str] | None = None, excluded: list[str] | None = None
) -> x509.NameConstraints:
    return x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier(u) for u in permitted]
        if permitted
        else None,
        excluded_subtrees=[x509.UniformResourceIdentifier(u) for u in excluded]
        if excluded
        else None,
    )


def nc(
    permitted: list[x509.GeneralName] | None = None,
    excluded: list[x509.GeneralName] | None = None,
) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


def org(name: str) -> x509.DirectoryName:
    return x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)]))


def net(text: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_network(text))


def constrained(
    world: World, constraints: x509.NameConstraints, *names: x509.GeneralName
) -> IssuedCertificate:
    """A leaf (SPIFFE ID plus `names` in its SAN) under an intermediate with `constraints`."""
    inter = world.ca.intermediate(name_constraints=constraints)
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier("spiffe://example.org/workload"), *names]
    )
    return inter.issue(uris=(), extensions=[(san, False)])


def leaf_with_common_name(
    world: World, constraints: x509.NameConstraints, cn: str
) -> IssuedCertificate:
    """A leaf with subject CN=`cn` (and no DNS SAN) under an intermediate with `constraints`."""
    inter = world.ca.intermediate(name_constraints=constraints)
    issued = inter.issue()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    leaf = certkit.resigned(issued.leaf, inter.key, subject=subject)
    return IssuedCertificate((leaf, *issued.chain[1:]), issued.private_key)


UNKNOWN_CRITICAL = (
    x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.9"), b"\x05\x00"),
    True,
)
OCSP_ACCESS = x509.AuthorityInformationAccess(
    [
        x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.OCSP,
            x509.UniformResourceIdentifier("http://ocsp.example.org"),
        )
    ]
)
CRL_POINTS = x509.CRLDistributionPoints(
    [
        x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://c.example.org")], None, None, None
        )
    ]
)
ANY_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
CODE_SIGNING = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
NS_OBJSIGN = x509.UnrecognizedExtension(certkit.NS_CERT_TYPE, bytes.fromhex("03020410"))
SPIFFE_URI = certkit.uri_name("spiffe://example.org/workload")
TWO_PRIVATE_EXTENSIONS = [
    (x509.UnrecognizedExtension(certkit.PRIVATE_EXTENSION, b"\x05\x00"), False),
    (x509.UnrecognizedExtension(certkit.PLACEHOLDER_PRIVATE, b"\x05\x00"), False),
]


def critical_in_leaf(world: World, oid: x509.ObjectIdentifier) -> IssuedCertificate:
    """A leaf whose extension `oid` (one the test CA writes) is made critical."""
    issued = world.ca.issue(ocsp_url="http://ocsp.example.org")
    leaf = certkit.resigned(issued.leaf, world.ca.key, critical=[oid])
    return IssuedCertificate((leaf,), issued.private_key)


def duplicate_in_leaf(world: World) -> IssuedCertificate:
    issued = world.ca.issue(extensions=TWO_PRIVATE_EXTENSIONS)
    leaf = certkit.duplicated(issued.leaf, world.ca.key, certkit.PLACEHOLDER_PRIVATE)
    return IssuedCertificate((leaf,), issued.private_key)


def duplicate_in_intermediate(world: World) -> IssuedCertificate:
    inter = world.ca.intermediate(extensions=TWO_PRIVATE_EXTENSIONS)
    issued = inter.issue()
    bad = certkit.duplicated(inter.certificate, world.ca.key, certkit.PLACEHOLDER_PRIVATE)
    return IssuedCertificate((issued.leaf, bad), issued.private_key)


@functools.cache
def special_root(label: str, **options: object) -> CA:
    """A second example.org root with `options` (made once per label)."""
    return CA("example.org", now=T, label=label, **options)  # type: ignore[arg-type]


def own_root(world: World, root: CA, issued: IssuedCertificate) -> Presented:
    return Presented(issued, trusting(world, "example.org", root.certificate))


def sha1_leaf(world: World) -> Presented:
    root = hierarchy("rsa-2048")
    issued = root.issue()
    return under_root(
        world,
        root,
        IssuedCertificate((certkit.sha1_signed(issued.leaf, root.key),), issued.private_key),
    )


def sha1_intermediate(world: World) -> Presented:
    root = hierarchy("rsa-2048")
    inter = root.intermediate()
    issued = inter.issue()
    bad = certkit.sha1_signed(inter.certificate, root.key)
    return under_root(world, root, IssuedCertificate((issued.leaf, bad), issued.private_key))


def renamed_issuer(
    world: World, rename: Callable[[str], str], kind: object = None
) -> IssuedCertificate:
    """A leaf whose issuer name differs from its CA's subject only as OpenSSL ignores."""
    issued = world.ca.issue()
    attributes = [
        x509.NameAttribute(a.oid, rename(str(a.value)), **({"_type": kind} if kind else {}))  # type: ignore[arg-type]
        for a in world.ca.certificate.subject
    ]
    leaf = certkit.resigned(issued.leaf, world.ca.key, issuer=x509.Name(attributes))
    return IssuedCertificate((leaf,), issued.private_key)


def wrong_authority_key_id(world: World, aki: x509.AuthorityKeyIdentifier) -> IssuedCertificate:
    issued = world.ca.issue()
    leaf = certkit.resigned(issued.leaf, world.ca.key, replace=[aki])
    return IssuedCertificate((leaf,), issued.private_key)


def partial_chain(world: World, *, send_anchor: bool) -> Presented:
    """A bundle whose only authority is an intermediate (not self-signed)."""
    inter = world.ca.intermediate(label="anchor intermediate")
    issued = inter.issue()
    chain = issued.chain if send_anchor else issued.chain[:1]
    return Presented(
        IssuedCertificate(chain, issued.private_key),
        trusting(world, "example.org", inter.certificate),
    )


def leaf_in_bundle(world: World) -> Presented:
    issued = world.ca.issue()
    return Presented(issued, trusting(world, "example.org", world.ca.certificate, issued.leaf))


def with_unrelated(world: World) -> IssuedCertificate:
    """A good chain plus another trust domain's intermediate, which is on no path."""
    issued = world.ca.intermediate().issue()
    return IssuedCertificate(
        (*issued.chain, world.other.intermediate().certificate), issued.private_key
    )


def cross_domain_anchor(world: World) -> Presented:
    """example.org's bundle trusts an intermediate that other.org's root issued."""
    inter = world.other.intermediate(label="shared intermediate")
    issued = inter.issue("spiffe://example.org/workload")
    return Presented(issued, trusting(world, "example.org", inter.certificate))


def ends_at_first_authority(world: World) -> Presented:
    """The bundle holds an intermediate and its expired root: the path ends at the first."""
    root = special_root("expired root", not_before=T - timedelta(days=30), not_after=T - MIN)
    inter = root.intermediate(not_before=T - timedelta(days=1), not_after=T + timedelta(days=1))
    return Presented(
        inter.issue(), trusting(world, "example.org", inter.certificate, root.certificate)
    )


def second_candidate(world: World) -> IssuedCertificate:
    """Two intermediates with one name and key: the first sent breaks S-3, the second is good.

    OpenSSL picks the first; the handshake must then search as `verify_svid` does."""
    good = world.ca.intermediate(label="twin")
    issued = good.issue()
    bad = certkit.with_uri_san(good.certificate, world.ca.key, "spiffe://example.org/ca")
    return IssuedCertificate((issued.leaf, bad, good.certificate), issued.private_key)


def algorithm_mismatch(world: World) -> IssuedCertificate:
    """The TBS names ecdsa-with-SHA384, the outer field (which the signature follows)
    ecdsa-with-SHA256: RFC 5280 4.1.1.2 says they must be the same."""
    sha256 = bytes.fromhex("06082a8648ce3d040302")
    sha384 = bytes.fromhex("06082a8648ce3d040303")
    issued = world.ca.issue()
    leaf = certkit.resign_tbs(issued.leaf, world.ca.key, lambda tbs: tbs.replace(sha256, sha384))
    return IssuedCertificate((leaf,), issued.private_key)


def negative_serial(world: World) -> IssuedCertificate:
    """A leaf whose serial is -62, which RFC 5280 4.1.2.2 forbids. OpenSSL accepts it;
    cryptography warns while parsing it and will refuse it (docs/decisions.md)."""
    issued = world.ca.issue(serial=0x42)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        leaf = certkit.resign_tbs(
            issued.leaf, world.ca.key, lambda tbs: tbs.replace(b"\x02\x01\x42", b"\x02\x01\xc2", 1)
        )
    return IssuedCertificate((leaf,), issued.private_key)


def without_intermediates(issued: IssuedCertificate) -> IssuedCertificate:
    return IssuedCertificate(issued.chain[:1], issued.private_key)


def weak_root(world: World) -> Presented:
    root = special_root("weak root", key_type="rsa-1024")
    return own_root(world, root, root.issue())


REJECTED: list[Rejected] = [
    ("L-1 no SAN", lambda w: w.ca.issue(uris=[]), "no_uri_san"),
    ("L-1 DNS SAN only", lambda w: w.ca.issue(uris=[], dns_names=["a.example.org"]), "no_uri_san"),
    (
        "L-1 two URI SANs",
        lambda w: w.ca.issue(uris=["spiffe://example.org/a", "spiffe://example.org/b"]),
        "multiple_uri_sans",
    ),
    ("L-2 not spiffe", lambda w: w.ca.issue(uris=["https://example.org/a"]), "invalid_spiffe_id"),
    (
        "L-2 uppercase td",
        lambda w: w.ca.issue(uris=["spiffe://EXAMPLE.org/a"]),
        "invalid_spiffe_id",
    ),
    (
        "L-2 dot segment",
        lambda w: w.ca.issue(uris=["spiffe://example.org/a/../b"]),
        "invalid_spiffe_id",
    ),
    ("L-3 root id", lambda w: w.ca.issue("spiffe://example.org"), "root_path_id"),
    ("L-4 leaf is CA", lambda w: w.ca.issue(is_ca=True), "leaf_is_ca"),
    ("L-5 no key usage", lambda w: w.ca.issue(key_usage=None), "key_usage"),
    ("L-5 key usage not critical", lambda w: w.ca.issue(key_usage_critical=False), "key_usage"),
    ("L-6 no digitalSignature", lambda w: w.ca.issue(key_usage={"key_encipherment"}), "key_usage"),
    (
        "L-7 keyCertSign",
        lambda w: w.ca.issue(key_usage={"digital_signature", "key_cert_sign"}),
        "key_usage",
    ),
    ("L-7 cRLSign", lambda w: w.ca.issue(key_usage={"digital_signature", "crl_sign"}), "key_usage"),
    (
        "L-8 EKU codeSigning only",
        lambda w: w.ca.issue(eku=[ExtendedKeyUsageOID.CODE_SIGNING]),
        "extended_key_usage",
    ),
    (
        "L-8 EKU anyExtendedKeyUsage only",  # OpenSSL's TLS purpose check refuses it
        lambda w: w.ca.issue(eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]),
        "extended_key_usage",
    ),
    (
        "L-8 Netscape cert type objectSigning only",
        lambda w: w.ca.issue(extensions=[(NS_OBJSIGN, False)]),
        "extended_key_usage",
    ),
    (
        "L-8 intermediate EKU codeSigning only",
        lambda w: w.ca.intermediate(extensions=[(CODE_SIGNING, False)]).issue(),
        "extended_key_usage",
    ),
    (
        "L-8 intermediate EKU anyExtendedKeyUsage only",
        lambda w: w.ca.intermediate(extensions=[(ANY_EKU, False)]).issue(),
        "extended_key_usage",
    ),
    (
        "L-8 root EKU codeSigning only",
        lambda w: own_root(
            w,
            r := special_root("root EKU", extensions=((CODE_SIGNING, False),)),
            r.issue(),
        ),
        "extended_key_usage",
    ),
    ("L-9 bad signature", lambda w: w.ca.issue(signing_key=w.other.key), "untrusted_chain"),
    *[
        (f"L-9 forged leaf {kt}", functools.partial(forged_leaf, key_type=kt), "untrusted_chain")
        for kt in ("ec-p256", "ec-p384", "rsa-2048", "ed25519")
    ],
    *[
        (
            f"L-9 forged intermediate {kt}",
            functools.partial(forged_intermediate, key_type=kt),
            "untrusted_chain",
        )
        for kt in ("ec-p256", "ec-p384", "rsa-2048", "ed25519")
    ],
    (
        "L-9 AKI key id names another key",
        lambda w: wrong_authority_key_id(w, x509.AuthorityKeyIdentifier(b"\x02" * 20, None, None)),
        "untrusted_chain",
    ),
    (
        "L-9 AKI serial names another certificate",
        lambda w: wrong_authority_key_id(
            w,
            x509.AuthorityKeyIdentifier(None, [x509.DirectoryName(w.ca.certificate.issuer)], 12345),
        ),
        "untrusted_chain",
    ),
    (
        "L-9 signature algorithm differs inside and outside the TBS",
        algorithm_mismatch,
        "untrusted_chain",
    ),
    ("L-9 expired", lambda w: w.ca.issue(not_before=T - 40 * MIN, ttl=5 * MIN), "expired"),
    ("L-9 not yet valid", lambda w: w.ca.issue(not_before=T + 5 * MIN), "not_yet_valid"),
    (
        "L-9 intermediate expired",
        lambda w: w.ca.intermediate(not_before=T - 60 * MIN, not_after=T - 10 * MIN).issue(),
        "expired",
    ),
    (
        "L-9 missing intermediate",
        lambda w: without_intermediates(w.ca.intermediate().issue()),
        "untrusted_chain",
    ),
    ("L-9 RSA-1024 leaf", once(lambda w: w.ca.issue(key_type="rsa-1024")), "untrusted_chain"),
    ("L-9 P-192 leaf", lambda w: w.ca.issue(key_type="ec-p192"), "untrusted_chain"),
    ("L-9 DSA leaf", once(lambda w: with_key(w.ca, dsa_key())), "untrusted_chain"),
    (
        "L-9 RSA-1024 intermediate",
        once(lambda w: w.ca.intermediate(key_type="rsa-1024").issue()),
        "untrusted_chain",
    ),
    (
        "L-9 P-192 intermediate",
        lambda w: w.ca.intermediate(key_type="ec-p192").issue(),
        "untrusted_chain",
    ),
    ("L-9 DSA intermediate", once(dsa_intermediate), "untrusted_chain"),
    ("L-9 RSA-1024 root", weak_root, "untrusted_chain"),
    ("L-9 SHA-1 signature on the leaf", sha1_leaf, "untrusted_chain"),
    ("L-9 SHA-1 signature on an intermediate", sha1_intermediate, "untrusted_chain"),
    (
        "L-10 other trust domain's root vouches",
        lambda w: w.other.issue("spiffe://example.org/workload"),
        "untrusted_chain",
    ),
    (
        "L-10 other trust domain's intermediate vouches",
        lambda w: w.other.intermediate().issue("spiffe://example.org/workload"),
        "untrusted_chain",
    ),
    ("L-10 unknown trust domain", lambda w: CA("third.org", now=T).issue(), "unknown_trust_domain"),
    (
        "S-1 intermediate not CA",
        lambda w: w.ca.intermediate(is_ca=False).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-1 intermediate no basic constraints",
        lambda w: w.ca.intermediate(is_ca=None).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-2 intermediate lacks keyCertSign",
        lambda w: w.ca.intermediate(key_usage={"crl_sign"}).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-3 intermediate SPIFFE ID with path",
        lambda w: w.ca.intermediate(uris=["spiffe://example.org/ca"]).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 pathLen 0 exceeded",
        lambda w: w.ca.intermediate(path_length=0).intermediate().issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 URI name constraint excludes",
        lambda w: w.ca.intermediate(name_constraints=uri_nc(permitted=["other.org"])).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 URI excluded subtree",
        lambda w: w.ca.intermediate(name_constraints=uri_nc(excluded=["example.org"])).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 URI .example.org does not permit example.org itself",
        lambda w: w.ca.intermediate(name_constraints=uri_nc(permitted=[".example.org"])).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 URI excluded domain .org",
        lambda w: w.ca.intermediate(name_constraints=uri_nc(excluded=[".org"])).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 DNS permitted other.org, leaf DNS a.example.org",
        lambda w: constrained(w, nc([x509.DNSName("other.org")]), x509.DNSName("a.example.org")),
        "bad_signing_certificate",
    ),
    (
        "S-4 DNS excluded example.org, leaf DNS a.example.org",
        lambda w: constrained(
            w, nc(excluded=[x509.DNSName("example.org")]), x509.DNSName("a.example.org")
        ),
        "bad_signing_certificate",
    ),
    (
        "S-4 DNS .example.org (a leading period) fails closed on example.org",
        lambda w: constrained(w, nc([x509.DNSName(".example.org")]), x509.DNSName("example.org")),
        "bad_signing_certificate",
    ),
    (
        "S-4 DNS .example.org (a leading period) fails closed on a.example.org",
        lambda w: constrained(w, nc([x509.DNSName(".example.org")]), x509.DNSName("a.example.org")),
        "bad_signing_certificate",
    ),
    (
        "S-4 DNS constraint applies to a host-like CN when there is no DNS SAN",
        lambda w: leaf_with_common_name(w, nc([x509.DNSName("example.org")]), "web.other.org"),
        "bad_signing_certificate",
    ),
    (
        "S-4 DN permitted O=other, leaf O=meshtls",
        lambda w: constrained(w, nc([org("other")])),
        "bad_signing_certificate",
    ),
    (
        "S-4 DN excluded O=meshtls",
        lambda w: constrained(w, nc(excluded=[org("meshtls")])),
        "bad_signing_certificate",
    ),
    (
        "S-4 IP permitted 10.0.0.0/8, leaf 192.0.2.1",
        lambda w: constrained(
            w, nc([net("10.0.0.0/8")]), x509.IPAddress(ipaddress.ip_address("192.0.2.1"))
        ),
        "bad_signing_certificate",
    ),
    (
        "S-4 IP permitted IPv6 only, leaf IPv4",
        lambda w: constrained(
            w, nc([net("2001:db8::/32")]), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))
        ),
        "bad_signing_certificate",
    ),
    (
        "S-4 email permitted example.org, leaf a@other.org",
        lambda w: constrained(
            w, nc([x509.RFC822Name("example.org")]), x509.RFC822Name("a@other.org")
        ),
        "bad_signing_certificate",
    ),
    (
        "S-4 registeredID name constraint cannot be evaluated",
        lambda w: w.ca.intermediate(
            name_constraints=nc([x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4"))])
        ).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 otherName name constraint cannot be evaluated",
        lambda w: w.ca.intermediate(
            name_constraints=nc(
                excluded=[x509.OtherName(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")]
            )
        ).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 URI constraint with a DNS one still applies (Ed25519 path)",
        lambda w: w.ed.intermediate(
            key_type="ed25519",
            name_constraints=nc(
                [x509.UniformResourceIdentifier("other.example"), x509.DNSName("ed.example")]
            ),
        ).issue(key_type="ed25519"),
        "bad_signing_certificate",
    ),
    ("P-1 lifetime 2h", lambda w: w.ca.issue(ttl=timedelta(hours=2)), "ttl_exceeded"),
    (
        "P-1 lifetime 1h and 1s",
        lambda w: w.ca.issue(ttl=timedelta(hours=1, seconds=1)),
        "ttl_exceeded",
    ),
    (
        "P-1 leaf notAfter 99991231235959Z",
        lambda w: w.ca.issue(not_after=NO_EXPIRY),
        "ttl_exceeded",
    ),
    (
        "P-3 expired beyond skew",
        lambda w: w.ca.issue(not_before=T - 30 * MIN, not_after=T - timedelta(seconds=31)),
        "expired",
    ),
    (
        "P-3 not yet valid beyond skew",
        lambda w: w.ca.issue(not_before=T + timedelta(seconds=31)),
        "not_yet_valid",
    ),
    # RFC 5280 4.2: a critical extension that is not handled refuses the certificate.
    (
        "4.2 unknown critical extension in the leaf",
        lambda w: w.ca.issue(extensions=[UNKNOWN_CRITICAL]),
        "malformed_certificate",
    ),
    (
        "4.2 unknown critical extension in an intermediate",
        lambda w: w.ca.intermediate(extensions=[UNKNOWN_CRITICAL]).issue(),
        "malformed_certificate",
    ),
    (
        "4.2 unknown critical extension in the root",
        lambda w: own_root(
            w, r := special_root("critical root", extensions=(UNKNOWN_CRITICAL,)), r.issue()
        ),
        "malformed_certificate",
    ),
    (
        "4.2 unknown critical extension in an Ed25519 leaf",
        lambda w: w.ed.intermediate(key_type="ed25519").issue(
            key_type="ed25519", extensions=[UNKNOWN_CRITICAL]
        ),
        "malformed_certificate",
    ),
    (
        "4.2 unknown critical extension in an Ed25519 intermediate",
        lambda w: w.ed.intermediate(key_type="ed25519", extensions=[UNKNOWN_CRITICAL]).issue(
            key_type="ed25519"
        ),
        "malformed_certificate",
    ),
    (
        "4.2 unknown critical extension in an Ed25519 root",
        lambda w: under_root(
            w,
            r := special_root(
                "critical ed root", key_type="ed25519", extensions=(UNKNOWN_CRITICAL,)
            ),
            r.issue(key_type="ed25519"),
        ),
        "malformed_certificate",
    ),
    (
        "4.2 critical authority key identifier",
        lambda w: critical_in_leaf(w, ExtensionOID.AUTHORITY_KEY_IDENTIFIER),
        "malformed_certificate",
    ),
    (
        "4.2 critical subject key identifier",
        lambda w: critical_in_leaf(w, ExtensionOID.SUBJECT_KEY_IDENTIFIER),
        "malformed_certificate",
    ),
    (
        "4.2 critical authority information access",
        lambda w: critical_in_leaf(w, ExtensionOID.AUTHORITY_INFORMATION_ACCESS),
        "malformed_certificate",
    ),
    # The boundary: what cryptography cannot read is refused, never raised as its own type.
    (
        "boundary EDIPartyName in the leaf SAN",
        lambda w: w.ca.issue(
            uris=(), extensions=[(certkit.san_extension(SPIFFE_URI, certkit.EDI_PARTY_NAME), False)]
        ),
        "malformed_certificate",
    ),
    (
        "boundary x400Address in the leaf SAN",
        lambda w: w.ca.issue(
            uris=(), extensions=[(certkit.san_extension(SPIFFE_URI, certkit.X400_ADDRESS), False)]
        ),
        "malformed_certificate",
    ),
    (
        "boundary EDIPartyName in an intermediate SAN",
        lambda w: w.ca.intermediate(
            extensions=[(certkit.san_extension(certkit.EDI_PARTY_NAME), False)]
        ).issue(),
        "malformed_certificate",
    ),
    ("boundary duplicate extension in the leaf", duplicate_in_leaf, "malformed_certificate"),
    ("4.1.2.2 negative serial", negative_serial, "malformed_certificate"),
    (
        "boundary intermediate with a negative pathLenConstraint",
        lambda w: w.ca.intermediate(
            is_ca=None,
            extensions=[
                (
                    x509.UnrecognizedExtension(
                        ExtensionOID.BASIC_CONSTRAINTS, bytes.fromhex("30060101ff0201ff")
                    ),
                    True,
                )
            ],
        ).issue(),
        "malformed_certificate",
    ),
    (
        "boundary duplicate extension in an intermediate",
        duplicate_in_intermediate,
        "malformed_certificate",
    ),
]
ACCEPTED: list[Accepted] = [
    ("L-1 URI SAN plus DNS SAN", lambda w: w.ca.issue(dns_names=["web.example.org"])),
    ("L-4 no basic constraints", lambda w: w.ca.issue(is_ca=None)),
    ("L-8 no EKU", lambda w: w.ca.issue(eku=None)),
    (
        "L-8 anyExtendedKeyUsage next to both roles",
        lambda w: w.ca.issue(
            eku=[
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
                ExtendedKeyUsageOID.CLIENT_AUTH,
                ExtendedKeyUsageOID.SERVER_AUTH,
            ]
        ),
    ),
    ("L-9 RSA-2048 leaf", once(lambda w: w.ca.issue(key_type="rsa-2048"))),
    ("L-9 two intermediates", lambda w: w.ca.intermediate().intermediate().issue()),
    *[
        (f"L-9 {kt} hierarchy", functools.partial(genuine, key_type=kt))
        for kt in ("ec-p384", "rsa-2048")
    ],
    (
        "L-9 Ed25519 CA and leaf",
        lambda w: w.ed.intermediate(key_type="ed25519").issue(key_type="ed25519"),
    ),
    (
        "L-9 chain sent out of order",
        lambda w: certkit.reordered(w.ca.intermediate().intermediate().issue(), (0, 2, 1)),
    ),
    ("L-9 chain with an unrelated certificate", with_unrelated),
    (
        "L-9 issuer name differs from the CA's subject in case and spacing",
        lambda w: renamed_issuer(w, lambda v: "  " + v.upper().replace(" ", "   ") + " "),
    ),
    (
        "L-9 issuer name in PrintableString, CA subject in UTF8String",
        lambda w: renamed_issuer(w, str, x509.name._ASN1Type.PrintableString),
    ),
    (
        "L-9 intermediate notAfter 99991231235959Z",
        lambda w: w.ca.intermediate(not_after=NO_EXPIRY).issue(),
    ),
    (
        "L-9 root notAfter 99991231235959Z",
        lambda w: own_root(w, r := special_root("no-expiry root", not_after=NO_EXPIRY), r.issue()),
    ),
    (
        "L-9 critical CRL distribution points (handled, as in OpenSSL)",
        lambda w: w.ca.issue(extensions=[(CRL_POINTS, True)]),
    ),
    ("L-10 federated domain", lambda w: w.other.issue("spiffe://other.org/x")),
    (
        "L-10 bundle authority is an intermediate (partial chain)",
        lambda w: partial_chain(w, send_anchor=False),
    ),
    (
        "L-10 bundle authority is an intermediate, and is sent",
        lambda w: partial_chain(w, send_anchor=True),
    ),
    ("L-10 the leaf itself is in the bundle too", leaf_in_bundle),
    (
        "L-10 own authority is an intermediate of another domain's root",
        cross_domain_anchor,
    ),
    ("L-9 the first of two candidate intermediates breaks S-3", second_candidate),
    ("L-10 a path ends at the first bundle authority", ends_at_first_authority),
    (
        "S-3 intermediate with root id",
        lambda w: w.ca.intermediate(uris=["spiffe://example.org"]).issue(),
    ),
    ("S-4 pathLen 0 honoured", lambda w: w.ca.intermediate(path_length=0).issue()),
    (
        "S-4 URI name constraint permits",
        lambda w: w.ca.intermediate(name_constraints=uri_nc(permitted=["example.org"])).issue(),
    ),
    (
        "S-4 URI .example permits ed.example (Ed25519 path)",
        lambda w: w.ed.intermediate(
            key_type="ed25519", name_constraints=uri_nc(permitted=[".example"])
        ).issue(key_type="ed25519"),
    ),
    (
        "S-4 DNS permitted example.org, leaf DNS a.example.org",
        lambda w: constrained(w, nc([x509.DNSName("example.org")]), x509.DNSName("a.example.org")),
    ),
    (
        "S-4 DNS constraint, leaf without DNS names",
        lambda w: constrained(w, nc([x509.DNSName("other.org")])),
    ),
    (
        "S-4 DNS .example.org (a leading period), leaf without DNS names",
        lambda w: constrained(w, nc(excluded=[x509.DNSName(".example.org")])),
    ),
    (
        "S-4 DN permitted O=MESHTLS matches O=meshtls",
        lambda w: constrained(w, nc([org("MESHTLS")])),
    ),
    (
        "S-4 IP permitted 10.0.0.0/8, leaf 10.1.2.3",
        lambda w: constrained(
            w, nc([net("10.0.0.0/8")]), x509.IPAddress(ipaddress.ip_address("10.1.2.3"))
        ),
    ),
    (
        "S-4 email permitted .example.org, leaf a@mail.example.org",
        lambda w: constrained(
            w, nc([x509.RFC822Name(".example.org")]), x509.RFC822Name("a@mail.example.org")
        ),
    ),
    ("P-1 lifetime exactly 1h", lambda w: w.ca.issue(ttl=timedelta(hours=1))),
    (
        "P-3 expired within skew",
        lambda w: w.ca.issue(not_before=T - 30 * MIN, not_after=T - timedelta(seconds=29)),
    ),
    ("P-3 not yet valid within skew", lambda w: w.ca.issue(not_before=T + timedelta(seconds=29))),
]

#: Every table of cases: run through `verify_svid` here, and through a real handshake in
#: both roles by tests/test_handshake_verdicts.py. Another table joins with one line here:
#: rows in the format of tests/table.py. x509-limbo's cases are tests/cases_limbo.py.
TABLES: list[tuple[list[Rejected], list[Accepted]]] = [
    (REJECTED, ACCEPTED),
    (cases_limbo.LIMBO_REJECTED, cases_limbo.LIMBO_ACCEPTED),
]
ALL_REJECTED: list[Rejected] = [row for rejected, _ in TABLES for row in rejected]
ALL_ACCEPTED: list[Accepted] = [row for _, accepted in TABLES for row in accepted]


def leaf_uri(cert: x509.Certificate) -> str:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)[0]


@pytest.mark.parametrize(("case", "reason"), [pytest.param(c, r, id=i) for i, c, r in ALL_REJECTED])
def test_rejected(world: World, case: Case, reason: str) -> None:
    issued, bundles = presented(world, case)
    with pytest.raises(VerificationError) as info:
        verify_svid(issued.chain, bundles, now=T)
    assert info.value.reason == reason, info.value
    assert info.value.reason in meshtls.REASONS


@pytest.mark.parametrize("case", [pytest.param(c, id=i) for i, c in ALL_ACCEPTED])
def test_accepted(world: World, case: Case) -> None:
    issued, bundles = presented(world, case)
    peer = verify_svid(issued.chain, bundles, now=T)
    assert peer.chain[0] == issued.leaf
    assert str(peer.spiffe_id) == leaf_uri(issued.leaf)
    assert peer.not_after == min(clamp_time(c.not_valid_after_utc) for c in peer.chain)
    authorities = bundles[peer.spiffe_id.trust_domain].authorities
    assert peer.chain[-1] in authorities
    assert all(c in issued.chain or c in authorities for c in peer.chain)
    for child, parent in zip(peer.chain, peer.chain[1:], strict=False):  # a path, in order
        certkit.assert_signed(child, parent)


def test_L_8_eku_must_allow_the_role(world: World) -> None:
    server_only = world.ca.issue(eku=[ExtendedKeyUsageOID.SERVER_AUTH]).chain
    assert_verifies(server_only, world.bundles, now=T, role="server")
    assert_verifies(server_only, world.bundles, now=T)  # no role: either is enough
    with pytest.raises(VerificationError) as info:
        verify_svid(server_only, world.bundles, now=T, role="client")
    assert info.value.reason == "extended_key_usage"
    # anyExtendedKeyUsage alone allows neither role: OpenSSL's TLS purpose check refuses
    # it, and both paths must agree (it was accepted here and refused in the handshake).
    any_eku = world.ca.issue(eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]).chain
    roles: list[Role | None] = ["client", "server", None]
    for role in roles:
        with pytest.raises(VerificationError) as info:
            verify_svid(any_eku, world.bundles, now=T, role=role)
        assert info.value.reason == "extended_key_usage"


def test_P_2_max_age(world: World) -> None:
    leaf = world.ca.issue(not_before=T - 50 * MIN, ttl=55 * MIN).chain
    assert_verifies(leaf, world.bundles, now=T)  # max_age is off by default
    policy = ValidationPolicy(max_age=timedelta(minutes=30))
    with pytest.raises(VerificationError) as info:
        verify_svid(leaf, world.bundles, now=T, policy=policy)
    assert info.value.reason == "age_exceeded"
    assert_verifies(leaf, world.bundles, now=T, policy=ValidationPolicy(max_age=timedelta(hours=1)))


def test_P_1_max_ttl_is_policy(world: World) -> None:
    long_lived = world.ca.issue(ttl=timedelta(hours=24)).chain
    assert_verifies(long_lived, world.bundles, now=T, policy=ValidationPolicy(max_ttl=None))
    assert_verifies(
        long_lived, world.bundles, now=T, policy=ValidationPolicy(max_ttl=timedelta(days=1))
    )


def test_P_3_skew_is_policy(world: World) -> None:
    late = world.ca.issue(not_before=T - 30 * MIN, not_after=T - 2 * MIN).chain
    with pytest.raises(VerificationError, match="expired"):
        verify_svid(late, world.bundles, now=T)
    policy = ValidationPolicy(clock_skew=timedelta(minutes=3))
    assert_verifies(late, world.bundles, now=T, policy=policy)


def test_L_9_root_outside_its_window_is_expired() -> None:
    old = CA(
        "example.org", now=T, not_before=T - timedelta(days=30), not_after=T - timedelta(days=1)
    )
    issued = old.issue(not_before=T - 5 * MIN)
    with pytest.raises(VerificationError) as info:
        verify_svid(issued.chain, old.bundle_set(), now=T)
    assert info.value.reason == "expired"


def test_L_10_root_rotation_two_roots_same_domain(world: World) -> None:
    new_root = CA("example.org", now=T, label="root 2")
    bundle = meshtls.X509Bundle(world.ca.trust_domain, (world.ca.certificate, new_root.certificate))
    bundles = meshtls.BundleSet({world.ca.trust_domain: bundle})
    for issuer in (world.ca, new_root, new_root.intermediate()):
        assert_verifies(issuer.issue().chain, bundles, now=T)


def test_error_message_names_certificate_and_rule(world: World) -> None:
    with pytest.raises(VerificationError) as info:
        verify_svid(world.ca.issue(key_usage_critical=False).chain, world.bundles, now=T)
    message = str(info.value)
    assert message.startswith("key_usage: leaf (O=meshtls, serial 0x")
    assert message.endswith("(L-5)")
    assert info.value.rule == "L-5"


def test_empty_chain_and_naive_now(world: World) -> None:
    with pytest.raises(VerificationError) as info:
        verify_svid([], world.bundles, now=T)
    assert info.value.reason == "malformed_certificate"
    with pytest.raises(ValueError, match="timezone"):
        verify_svid(world.ca.issue().chain, world.bundles, now=T.replace(tzinfo=None))


def test_own_svid_loads_and_checks(world: World) -> None:
    issued = world.ca.intermediate().issue("spiffe://example.org/me")
    svid = meshtls.X509Svid.load(issued.chain_pem, issued.key_pem)
    assert str(svid.spiffe_id) == "spiffe://example.org/me"
    assert len(svid.chain) == 2
    assert svid.check(world.bundles, now=T).spiffe_id == svid.spiffe_id
    other_key = world.ca.issue().key_pem
    with pytest.raises(ValueError, match="does not match"):
        meshtls.X509Svid.load(issued.chain_pem, other_key)
    with pytest.raises(ValueError, match="key"):
        meshtls.X509Svid.load(issued.chain_pem, b"garbage")


# --- the property: damage to a valid chain gives VerificationError, or changes nothing signed


@dataclass(frozen=True)
class Target:
    chain: tuple[x509.Certificate, ...]
    bundles: meshtls.BundleSet


@pytest.fixture(scope="module")
def targets(world: World) -> dict[str, Target]:
    return {
        "P-256 leaf": Target(world.ca.issue().chain, world.bundles),
        "P-256 leaf and intermediate": Target(world.ca.intermediate().issue().chain, world.bundles),
        "Ed25519 leaf and intermediate": Target(
            world.ed.intermediate(key_type="ed25519").issue(key_type="ed25519").chain,
            world.bundles,
        ),
    }


@pytest.mark.parametrize(
    "target", ["P-256 leaf", "P-256 leaf and intermediate", "Ed25519 leaf and intermediate"]
)
@settings(
    max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(
    st.integers(min_value=0, max_value=1),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=40),
)
def test_mutated_der_is_refused_or_changes_nothing_signed(
    targets: dict[str, Target], target: str, which: int, edits: list[tuple[int, int]], cut: int
) -> None:
    """Any damage to one certificate of a valid chain: verify_svid raises VerificationError
    (never a foreign exception), or accepts a certificate whose signed part is unchanged.
    An accepted mutant with other TBS bytes would be a forgery."""
    chain, bundles = targets[target].chain, targets[target].bundles
    index = which % len(chain)
    original = chain[index]
    data = bytearray(original.public_bytes(Encoding.DER))
    for position, value in edits:
        data[position % len(data)] = value
    if cut:
        del data[-cut:]
    try:
        with warnings.catch_warnings():  # cryptography warns about e.g. negative serials
            warnings.simplefilter("ignore")
            mutant = x509.load_der_x509_certificate(bytes(data))
    except Exception:
        return
    mutated = (*chain[:index], mutant, *chain[index + 1 :])
    try:
        peer = verify_svid(mutated, bundles, now=T)
    except VerificationError as exc:
        assert exc.reason in meshtls.REASONS
        return
    assert mutant.tbs_certificate_bytes == original.tbs_certificate_bytes, "a forgery"
    assert peer.chain[0].tbs_certificate_bytes == chain[0].tbs_certificate_bytes


@pytest.mark.parametrize(
    "root_options",
    [
        pytest.param({"key_usage": {"crl_sign"}}, id="S-2 root lacks keyCertSign"),
        pytest.param(
            {"uris": ["spiffe://example.org/root"]}, id="S-3 root carries an id with a path"
        ),
    ],
)
def test_bundle_root_that_breaks_signing_rules_anchors_nothing(
    root_options: dict[str, object],
) -> None:
    root = CA("example.org", now=T, **root_options)  # type: ignore[arg-type]
    with pytest.raises(VerificationError) as info:
        verify_svid(root.issue().chain, root.bundle_set(), now=T)
    assert info.value.reason == "bad_signing_certificate"


def test_L_9_chain_that_includes_its_root(world: World) -> None:
    issued = world.ca.intermediate().issue()
    peer = assert_verifies((*issued.chain, world.ca.certificate), world.bundles)
    assert peer.chain[-1] == world.ca.certificate
    assert len(peer.chain) == 3


def test_L_10_own_root_sent_by_a_forger_does_not_help(world: World) -> None:
    """A look-alike root with the real root's name, sent in the chain, vouches for nothing."""
    fake = CA("example.org", now=T)  # same subject name as world.ca's root, another key
    forged = fake.issue()
    with pytest.raises(VerificationError) as info:
        verify_svid((*forged.chain, fake.certificate), world.bundles, now=T)
    assert info.value.reason == "untrusted_chain"


def test_negative_serial_gives_a_verification_error_not_a_warning(world: World) -> None:
    """Found by the DER-mutation property: describing such a certificate used to warn, and a
    warning is an error under `filterwarnings = error` (and in strict applications)."""
    issued = world.ca.issue(serial=0x42)
    der = issued.leaf.public_bytes(Encoding.DER)
    assert der.count(b"\x02\x01\x42") == 1
    negative = der.replace(b"\x02\x01\x42", b"\x02\x01\xc2")  # INTEGER -62
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography also warns while parsing it
        cert = x509.load_der_x509_certificate(negative)
    with pytest.raises(VerificationError) as info:
        verify_svid([cert], world.bundles, now=T)
    assert info.value.reason == "malformed_certificate"
    assert "serial -0x3e" in str(info.value)
    assert "is not positive (RFC 5280 4.1.2.2)" in str(info.value)
