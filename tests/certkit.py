"""DER surgery for verification tests: certificates that `meshtls.testing.CA` cannot mint.

cryptography's builder refuses to write some defects (a duplicate extension, a critical
subject key identifier next to the one the test CA always adds, a SHA-1 signature). These
helpers take a certificate the test CA made, change its TBS bytes, and sign the result
again with the issuer's key, so the only defect is the intended one. Test code only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa

from meshtls.testing import AnyPrivateKey, IssuedCertificate

#: AlgorithmIdentifier OIDs (tag, length, value) that have the same encoded length.
SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")
SHA1_WITH_RSA = bytes.fromhex("06092a864886f70d010105")

NS_CERT_TYPE = x509.ObjectIdentifier("2.16.840.1.113730.1.1")  # Netscape certificate type

#: Placeholder OIDs for `duplicated`: each encodes to the same length as the OID it becomes.
PLACEHOLDER_SAN = x509.ObjectIdentifier("2.5.29.99")  # 55 1d 63, like SAN's 55 1d 11
PRIVATE_EXTENSION = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
PLACEHOLDER_PRIVATE = x509.ObjectIdentifier("1.3.6.1.4.1.55555.2")
_BECOMES = {
    PLACEHOLDER_SAN: x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    PLACEHOLDER_PRIVATE: PRIVATE_EXTENSION,
}


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, body: bytes) -> bytes:
    """One DER element."""
    return bytes([tag]) + _length(len(body)) + body


def _element(data: bytes, at: int) -> tuple[int, int]:
    """(start of contents, end) of the DER element at `at`."""
    first = data[at + 1]
    if first < 0x80:
        return at + 2, at + 2 + first
    count = first & 0x7F
    size = int.from_bytes(data[at + 2 : at + 2 + count], "big")
    start = at + 2 + count
    return start, start + size


def _sign(tbs: bytes, key: AnyPrivateKey, digest: hashes.HashAlgorithm) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(tbs, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(tbs, padding.PKCS1v15(), digest)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(tbs)
    raise TypeError(f"cannot sign with {type(key).__name__}")


def resign_tbs(
    cert: x509.Certificate,
    key: AnyPrivateKey,
    edit: Callable[[bytes], bytes],
    *,
    algorithm: bytes | None = None,
    digest: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    """`cert` with its TBS bytes passed through `edit`, signed again by `key`.

    `algorithm` replaces the AlgorithmIdentifier OID in both places (same length only),
    and `digest` is the hash to sign with (SHA-256 unless given; Ed25519 takes none).
    """
    der = cert.public_bytes(serialization.Encoding.DER)
    contents, _ = _element(der, 0)
    tbs_end = _element(der, contents)[1]
    tbs = edit(der[contents:tbs_end])
    algorithm_id = der[tbs_end : _element(der, tbs_end)[1]]
    if algorithm is not None:
        old = algorithm_id[2:13]
        assert len(old) == len(algorithm), "only same-length algorithm swaps"
        tbs = tbs.replace(old, algorithm, 1)
        algorithm_id = algorithm_id.replace(old, algorithm, 1)
    signature = _sign(tbs, key, digest or hashes.SHA256())
    return x509.load_der_x509_certificate(
        tlv(0x30, tbs + algorithm_id + tlv(0x03, b"\x00" + signature))
    )


def resigned(
    cert: x509.Certificate,
    key: AnyPrivateKey,
    *,
    critical: Iterable[x509.ObjectIdentifier] = (),
    issuer: x509.Name | None = None,
    subject: x509.Name | None = None,
    replace: Iterable[x509.ExtensionType] = (),
) -> x509.Certificate:
    """`cert` rebuilt by cryptography's builder with some extensions made critical, others
    replaced by `replace` (matched by OID), or another issuer or subject name; signed by
    `key`."""
    making_critical = set(critical)
    replacing = {value.oid: value for value in replace}
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or cert.subject)
        .issuer_name(issuer or cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        value = replacing.get(ext.oid, ext.value)
        builder = builder.add_extension(value, ext.critical or ext.oid in making_critical)
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, digest)


def with_uri_san(cert: x509.Certificate, key: AnyPrivateKey, uri: str) -> x509.Certificate:
    """A twin of `cert` (same names, key and extensions, another serial) that also has a
    URI SAN `uri`; signed by `key`. `cert` must have no SAN."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)])
    return builder.add_extension(san, critical=False).sign(key, hashes.SHA256())


def duplicated(
    cert: x509.Certificate, key: AnyPrivateKey, placeholder: x509.ObjectIdentifier
) -> x509.Certificate:
    """`cert`, which carries an extension with OID `placeholder`, with that OID changed to
    the one it stands for (`_BECOMES`): a certificate with a duplicate extension (RFC 5280
    4.2), which cryptography's builder refuses to write."""
    assert any(ext.oid == placeholder for ext in cert.extensions)
    old, new = _encoded_oid(placeholder), _encoded_oid(_BECOMES[placeholder])
    assert len(old) == len(new)
    return resign_tbs(cert, key, lambda tbs: tbs.replace(old, new, 1))


def _encoded_oid(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(arc) for arc in oid.dotted_string.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        rest = arc
        chunk = [rest & 0x7F]
        while rest > 0x7F:
            rest >>= 7
            chunk.append(0x80 | (rest & 0x7F))
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def sha1_signed(cert: x509.Certificate, rsa_key: AnyPrivateKey) -> x509.Certificate:
    """`cert` (signed with SHA-256 by an RSA key) signed again with SHA-1."""
    weak = hashes.SHA1()  # noqa: S303 - the point: a signature verification must refuse
    return resign_tbs(cert, rsa_key, lambda tbs: tbs, algorithm=SHA1_WITH_RSA, digest=weak)


def san_der(*names: bytes) -> bytes:
    """A SubjectAltName extension value (a SEQUENCE OF GeneralName) from encoded names."""
    return tlv(0x30, b"".join(names))


def uri_name(uri: str) -> bytes:
    return tlv(0x86, uri.encode())


#: GeneralNames cryptography cannot represent (it raises UnsupportedGeneralNameType).
EDI_PARTY_NAME = tlv(0xA5, tlv(0xA1, tlv(0x0C, b"party")))
X400_ADDRESS = tlv(0xA3, tlv(0x30, b""))


def san_extension(*names: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(
        x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san_der(*names)
    )


def reordered(issued: IssuedCertificate, order: Iterable[int]) -> IssuedCertificate:
    """The same leaf and key, with the chain's certificates sent in another order."""
    return IssuedCertificate(tuple(issued.chain[i] for i in order), issued.private_key)


def assert_signed(child: x509.Certificate, parent: x509.Certificate) -> None:
    """`parent`'s key made `child`'s signature (names are not compared). Raises if not."""
    key = parent.public_key()
    signature, tbs = child.signature, child.tbs_certificate_bytes
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, tbs)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        assert child.signature_hash_algorithm is not None
        key.verify(signature, tbs, ec.ECDSA(child.signature_hash_algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        scheme = child.signature_algorithm_parameters
        assert isinstance(scheme, padding.PKCS1v15 | padding.PSS)
        assert child.signature_hash_algorithm is not None
        key.verify(signature, tbs, scheme, child.signature_hash_algorithm)
    else:
        raise AssertionError(f"no signature check for {type(key).__name__}")


#: A DSA-2048 key, generated once and kept here: generating one takes about a second, and
#: no SVID may have such a key anyway (verification must refuse it).
DSA_2048_KEY = b"""\
-----BEGIN PRIVATE KEY-----
MIICZAIBADCCAjkGByqGSM44BAEwggIsAoIBAQDzFNtamLzCrhdMfMHC2FxLDARw
m21+yjEv5V4XI/vU6ySXkF9Q8xBAzE2qAaRH1y15Ic14HMwuGrRTmQRE7EWMEx8B
6YOGDMJpLgMO4j9viL74En7PAR4DSufdAwzO9sLkWJ7QlNWRwLnAm4BCujwu7Dvq
lZF8Batl2qISpQe5b+7maXFhzMuGWoBriIPdaUmRB8bMoza0o8xlpATJS+I3JPVV
tCZw/Xr6RGRchbYwNVq9BTmPwH+qSTz3PegpADd+BK7tE3QEQRBL5q4Q4YMPGxDD
6WRDE7/Lb8Qm8YBQXEi4ezgQ8mhH+U5E5RQyNcUTYFlLrYxBTSbIXxbfiJ5vAiEA
li8XlBTM1IJcUltisXo9ZTFL0vFjWERBzrGsKKjfxZkCggEALaIUajZwm5PVNOzd
WKPgBZtMeEeMM55rOsgaKOuZKW6mP7OAU2p9d7efUXpf9QxnoOQy4A0XkVFdioZ8
fdGzxErXLYdVgN2YQbSzjKUVzG1l9XY/QRdUp/XcJK2JOsuRbdBLH6SiJupOA4Ud
sg1kpNn2bV2iyO26BnL3PYIXtXKtxP380tipz2+nKHApdHSQx+FRBJ/qddIZqIPE
1fei2Q/mvKQRZjw9pJiu9NJGBWJyLVm8s0GFDr5ntG+UDISw3q5mBC+fQn7Veivc
lQceakJCmXAjnXkhX6HqjDffge7L81MTZPcG/I8yNDdp/kBXSIas4LVpfU3+49/i
byCYdwQiAiBVcIOWsTXckPDBpBgfVEAiLvrLj2Bf0E+FfZD05sXQOw==
-----END PRIVATE KEY-----
"""


def dsa_key() -> dsa.DSAPrivateKey:
    key = serialization.load_pem_private_key(DSA_2048_KEY, password=None)
    assert isinstance(key, dsa.DSAPrivateKey)
    return key
