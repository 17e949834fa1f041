"""Certificate minting for development and tests: the in-memory `CA` and the on-disk `LocalCA`.

`CA` (public as `meshtls.testing.CA`) can mint every defective certificate in
SPIFFE-RULES.md, with times given explicitly; go-spiffe's test CA is the model.
`LocalCA` keeps a development CA in a directory for ``meshtls ca`` and for the
embedded default identity. Nothing here does network I/O; `LocalCA` reads and
writes its own directory only, keys 0600, and overwrites nothing unless told.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ._bundle import BundleSet, X509Bundle, load_pem_certificates
from ._errors import ConfigError
from ._spiffeid import SpiffeId, TrustDomain
from ._svid import PrivateKey, X509Svid

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "ed25519", "rsa-1024", "ec-p192", "dsa-2048"]
#: Keys a test CA can mint but verification must refuse (too weak, or not for TLS 1.3).
WEAK_KEY_TYPES: Final[frozenset[KeyType]] = frozenset({"rsa-1024", "ec-p192", "dsa-2048"})
#: A test CA's keys: ours, plus DSA, which no SVID may have.
AnyPrivateKey = PrivateKey | dsa.DSAPrivateKey
#: An extra extension to add as it is, defects included: (value, critical).
ExtraExtension = tuple[x509.ExtensionType, bool]
KeyUsageName = Literal[
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
]
LEAF_KEY_USAGE: Final[frozenset[KeyUsageName]] = frozenset({"digital_signature"})
CA_KEY_USAGE: Final[frozenset[KeyUsageName]] = frozenset({"key_cert_sign", "crl_sign"})
SVID_EKU: Final = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
DEFAULT_LEAF_TTL: Final = timedelta(minutes=30)
DEFAULT_CA_TTL: Final = timedelta(days=365)
ISSUED: Final = "issued.json"
REVOKED: Final = "revoked.json"
_RECORDS: Final = (ISSUED, REVOKED, "crl.pem")  # what a CA directory holds about its leaves


def generate_key(key_type: KeyType = "ec-p256") -> AnyPrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p192":
        return ec.generate_private_key(ec.SECP192R1())
    if key_type == "rsa-1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - a weak key, to be refused
    if key_type == "dsa-2048":
        return dsa.generate_private_key(key_size=2048)
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigError(f"unknown key type {key_type!r}")


PublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | dsa.DSAPublicKey
)


def _public(key: AnyPrivateKey) -> PublicKey:
    public = key.public_key()
    if not isinstance(public, PublicKey):
        raise ConfigError(f"unsupported key type {type(key).__name__}")
    return public


def _hash_for(key: AnyPrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | dsa.DSAPrivateKey):
        return hashes.SHA256()
    return None  # Ed25519/Ed448 sign without a separate hash


def _key_usage(names: Iterable[KeyUsageName]) -> x509.KeyUsage:
    chosen = set(names)
    return x509.KeyUsage(
        digital_signature="digital_signature" in chosen,
        content_commitment="content_commitment" in chosen,
        key_encipherment="key_encipherment" in chosen,
        data_encipherment="data_encipherment" in chosen,
        key_agreement="key_agreement" in chosen,
        key_cert_sign="key_cert_sign" in chosen,
        crl_sign="crl_sign" in chosen,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateSpec:
    """Everything about one certificate, defects included. Defaults make a good leaf SVID.

    - ``uris``/``dns_names``: the SAN; with both empty there is no SAN extension at all.
    - ``is_ca``: basic constraints cA; None leaves the extension out.
    - ``key_usage``: None leaves the extension out; ``key_usage_critical`` as you like.
    - ``eku``: None leaves extended key usage out.
    - ``extensions``: more extensions, added as given after the others: an unknown
      critical one, or `x509.UnrecognizedExtension` with a known OID and hand-made DER
      (a SAN with an EDIPartyName, a duplicate extension). With such a SAN, pass
      ``uris=()`` so that the builder adds no SAN of its own.
    """

    subject: x509.Name
    not_before: datetime
    not_after: datetime
    uris: Sequence[str] = ()
    dns_names: Sequence[str] = ()
    is_ca: bool | None = False
    path_length: int | None = None
    key_usage: Iterable[KeyUsageName] | None = LEAF_KEY_USAGE
    key_usage_critical: bool = True
    eku: Sequence[x509.ObjectIdentifier] | None = SVID_EKU
    name_constraints: x509.NameConstraints | None = None
    ocsp_url: str | None = None
    crl_url: str | None = None
    serial: int | None = None
    extensions: Sequence[ExtraExtension] = ()


def build_certificate(
    spec: CertificateSpec,
    public_key: PublicKey,
    *,
    issuer: x509.Name,
    signing_key: AnyPrivateKey,
    issuer_key_id: x509.SubjectKeyIdentifier | None,
) -> x509.Certificate:
    """Sign one certificate as `spec` says. The caller chooses every defect."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(spec.serial if spec.serial is not None else x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = builder.add_extension(ski, critical=False)
    if issuer_key_id is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key_id)
        builder = builder.add_extension(aki, critical=False)
    if spec.is_ca is not None:
        path_length = spec.path_length if spec.is_ca else None
        builder = builder.add_extension(x509.BasicConstraints(spec.is_ca, path_length), True)
    if spec.key_usage is not None:
        builder = builder.add_extension(_key_usage(spec.key_usage), spec.key_usage_critical)
    if spec.eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(spec.eku)), critical=False)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in spec.uris]
    names += [x509.DNSName(d) for d in spec.dns_names]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if spec.name_constraints is not None:
        builder = builder.add_extension(spec.name_constraints, critical=True)
    if spec.ocsp_url:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(spec.ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), False)
    if spec.crl_url:
        point = x509.DistributionPoint(
            [x509.UniformResourceIdentifier(spec.crl_url)], None, None, None
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    for value, critical in spec.extensions:
        builder = builder.add_extension(value, critical)
    return builder.sign(signing_key, _hash_for(signing_key))


def _ca_name(trust_domain: TrustDomain, label: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshtls"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(trust_domain)[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, label),
        ]
    )


LEAF_SUBJECT: Final = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshtls")])


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A leaf as a test CA minted it, defects and all: the chain to send, and the leaf's key."""

    chain: tuple[x509.Certificate, ...]
    private_key: AnyPrivateKey

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def svid(self) -> X509Svid:
        """As our own `X509Svid`; raises if the leaf names no valid SPIFFE ID or has a DSA key."""
        if isinstance(self.private_key, dsa.DSAPrivateKey):
            raise ValueError("a DSA key cannot be an SVID's key")
        return X509Svid.from_parts(self.chain, self.private_key)

    @property
    def chain_pem(self) -> bytes:
        return _pem(self.chain)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.private_key)


class CA:
    """An in-memory CA of one trust domain, for tests: roots, intermediates and leaf SVIDs.

    Every time is explicit: a CA is made at `now` and is valid from a day before it
    for a year unless told otherwise; leaves default to ``[now, now + 30 min]``.
    Keyword knobs make each defect of the rule tables (see `CertificateSpec`).
    """

    def __init__(
        self,
        trust_domain: TrustDomain | str = "example.org",
        *,
        now: datetime,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_type: KeyType = "ec-p256",
        parent: CA | None = None,
        label: str | None = None,
        is_ca: bool | None = True,
        path_length: int | None = None,
        key_usage: Iterable[KeyUsageName] | None = CA_KEY_USAGE,
        key_usage_critical: bool = True,
        uris: Sequence[str] = (),
        name_constraints: x509.NameConstraints | None = None,
        signing_key: AnyPrivateKey | None = None,
        extensions: Sequence[ExtraExtension] = (),
        ocsp_url: str | None = None,
        crl_url: str | None = None,
    ) -> None:
        self.trust_domain = (
            trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain(trust_domain)
        )
        self.now = now
        self.parent = parent
        self.key = generate_key(key_type)
        self.depth: int = 0 if parent is None else parent.depth + 1
        default_label = "root" if parent is None else f"intermediate {self.depth}"
        self.name = _ca_name(self.trust_domain, label or default_label)
        spec = CertificateSpec(
            subject=self.name,
            not_before=not_before or now - timedelta(days=1),
            not_after=not_after or now + DEFAULT_CA_TTL,
            uris=uris,
            is_ca=is_ca,
            path_length=path_length,
            key_usage=key_usage,
            key_usage_critical=key_usage_critical,
            eku=None,
            name_constraints=name_constraints,
            ocsp_url=ocsp_url,
            crl_url=crl_url,
            extensions=extensions,
        )
        issuer = parent if parent is not None else self
        self.certificate = build_certificate(
            spec,
            _public(self.key),
            issuer=issuer.name,
            signing_key=signing_key or issuer.key,
            issuer_key_id=None if parent is None else parent.key_id,
        )

    @property
    def key_id(self) -> x509.SubjectKeyIdentifier:
        return x509.SubjectKeyIdentifier.from_public_key(_public(self.key))

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA's certificate and its parents' up to, not including, the root."""
        if self.parent is None:
            return ()
        return (self.certificate, *self.parent.chain)

    @property
    def root(self) -> CA:
        return self if self.parent is None else self.parent.root

    def intermediate(
        self,
        *,
        label: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_type: KeyType = "ec-p256",
        is_ca: bool | None = True,
        path_length: int | None = None,
        key_usage: Iterable[KeyUsageName] | None = CA_KEY_USAGE,
        uris: Sequence[str] = (),
        name_constraints: x509.NameConstraints | None = None,
        signing_key: AnyPrivateKey | None = None,
        extensions: Sequence[ExtraExtension] = (),
        ocsp_url: str | None = None,
        crl_url: str | None = None,
    ) -> CA:
        """A CA signed by this one (or forged with `signing_key`), in the same trust domain.

        `ocsp_url` / `crl_url` put this one's OCSP responder and CRL distribution point in it.
        """
        return CA(
            self.trust_domain,
            now=self.now,
            parent=self,
            label=label,
            not_before=not_before,
            not_after=not_after,
            key_type=key_type,
            is_ca=is_ca,
            path_length=path_length,
            key_usage=key_usage,
            uris=uris,
            name_constraints=name_constraints,
            signing_key=signing_key,
            extensions=extensions,
            ocsp_url=ocsp_url,
            crl_url=crl_url,
        )

    def issue(
        self,
        spiffe_id: SpiffeId | str | None = None,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        ttl: timedelta | None = None,
        key_type: KeyType = "ec-p256",
        signing_key: AnyPrivateKey | None = None,
        uris: Sequence[str] | None = None,
        dns_names: Sequence[str] = (),
        is_ca: bool | None = False,
        key_usage: Iterable[KeyUsageName] | None = LEAF_KEY_USAGE,
        key_usage_critical: bool = True,
        eku: Sequence[x509.ObjectIdentifier] | None = SVID_EKU,
        ocsp_url: str | None = None,
        crl_url: str | None = None,
        serial: int | None = None,
        extensions: Sequence[ExtraExtension] = (),
    ) -> IssuedCertificate:
        """A leaf for `spiffe_id` (default ``spiffe://<td>/workload``), with its chain.

        `uris` replaces the URI SAN with raw strings, so invalid ids can be minted.
        `signing_key` forges: the leaf names this CA as issuer but another key signs it.
        """
        sid = str(spiffe_id) if spiffe_id is not None else f"spiffe://{self.trust_domain}/workload"
        start = not_before or self.now
        spec = CertificateSpec(
            subject=LEAF_SUBJECT,
            not_before=start,
            not_after=not_after or start + (ttl or DEFAULT_LEAF_TTL),
            uris=[sid] if uris is None else uris,
            dns_names=dns_names,
            is_ca=is_ca,
            key_usage=key_usage,
            key_usage_critical=key_usage_critical,
            eku=eku,
            ocsp_url=ocsp_url,
            crl_url=crl_url,
            serial=serial,
            extensions=extensions,
        )
        key = generate_key(key_type)
        leaf = build_certificate(
            spec,
            _public(key),
            issuer=self.name,
            signing_key=signing_key or self.key,
            issuer_key_id=self.key_id,
        )
        return IssuedCertificate((leaf, *self.chain), key)

    @property
    def bundle_pem(self) -> bytes:
        """The root certificate of this CA's hierarchy, as PEM."""
        return self.root.certificate.public_bytes(serialization.Encoding.PEM)

    def bundle(self) -> X509Bundle:
        return X509Bundle(self.trust_domain, (self.root.certificate,))

    def bundle_set(self, *others: CA) -> BundleSet:
        """A `BundleSet` of this CA's trust domain and those of `others` (federation)."""
        return BundleSet._build([ca.bundle() for ca in (self, *others)])


# ---------------------------------------------------------------- on disk


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    """Write atomically; keys 0600. Refuse to overwrite unless `force` (ConfigError)."""
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _pem_key(key: AnyPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def revocation_url(text: str, *, what: str) -> str:
    """`text` if it is an absolute http(s) URL with a host; else `ConfigError` naming `what`."""
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ConfigError(f"{what} {text!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{what} {text!r} must be an http:// or https:// URL with a host")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ConfigError(f"{what} {text!r} holds a space or control character")
    return text


def read_crl_pem(directory: Path) -> bytes | None:
    """The current ``crl.pem`` of the CA in `directory`, or None when it has none yet.

    Read afresh at each call (``ca revoke`` rewrites it atomically); a missing directory
    is None too, any other `OSError` propagates.
    """
    try:
        return (directory / "crl.pem").read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


@dataclass(frozen=True, slots=True)
class LocalCA:
    """A development CA kept in a directory. Layout:

    ``root.pem``/``root.key``; with an intermediate, ``intermediate.pem``/``.key`` too;
    ``bundle.pem`` (the root: the trust bundle); ``ca.json`` (trust domain);
    ``issued.json`` (serial -> SPIFFE ID and expiry of each leaf ``meshtls ca issue``
    wrote: what ``ca revoke SERIAL`` may revoke); ``revoked.json`` and ``crl.pem`` once
    something is revoked. Leaf keys are never written here by ``meshtls ca issue``.
    ``ca.json`` may also name a ``crl_url`` and an ``ocsp_url``: every leaf `issue`
    signs then carries them (CRL distribution point, AIA OCSP) unless told otherwise.
    """

    directory: Path
    trust_domain: TrustDomain
    issuer_certificate: x509.Certificate
    issuer_key: PrivateKey
    chain: tuple[x509.Certificate, ...]  # what a leaf sends after itself (intermediates)
    crl_url: str | None = None  # written into each leaf's CRL distribution point
    ocsp_url: str | None = None  # written into each leaf's AIA OCSP

    @classmethod
    def init(
        cls,
        directory: Path,
        trust_domain: TrustDomain,
        *,
        intermediate: bool = False,
        now: datetime | None = None,
        lifetime: timedelta = DEFAULT_CA_TTL,
        force: bool = False,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
    ) -> LocalCA:
        """Create the CA files in `directory`; `crl_url`/`ocsp_url` go into ``ca.json``.

        Raises `ConfigError` for a bad URL (before anything is written) or a file that
        exists without `force`.
        """
        meta: dict[str, str] = {"trust_domain": str(trust_domain)}
        if crl_url is not None:
            meta["crl_url"] = revocation_url(crl_url, what="--crl-url")
        if ocsp_url is not None:
            meta["ocsp_url"] = revocation_url(ocsp_url, what="--ocsp-url")
        now = now or datetime.now(UTC)
        directory.mkdir(parents=True, exist_ok=True)
        ca = CA(
            trust_domain, now=now, not_before=now - timedelta(minutes=5), not_after=now + lifetime
        )
        files: list[tuple[str, bytes, bool]] = [
            ("root.pem", _pem([ca.certificate]), False),
            ("root.key", _pem_key(ca.key), True),
        ]
        if intermediate:
            ca = ca.intermediate(not_before=now - timedelta(minutes=5), not_after=now + lifetime)
            files += [
                ("intermediate.pem", _pem([ca.certificate]), False),
                ("intermediate.key", _pem_key(ca.key), True),
            ]
        files += [
            ("bundle.pem", ca.bundle_pem, False),
            ("ca.json", json.dumps(meta).encode(), False),
        ]
        if not force:
            for name, _, _ in files:
                if (directory / name).exists():
                    raise ConfigError(f"{directory / name} exists; pass --force to overwrite it")
        for name, data, private in files:
            _write(directory / name, data, private=private, force=True)
        # A forced re-init is a new CA: it must not sign with an old intermediate, nor
        # publish the old CA's CRL, nor revoke serials by the old CA's record.
        stale = [*_RECORDS, *(() if intermediate else ("intermediate.pem", "intermediate.key"))]
        for name in stale:
            (directory / name).unlink(missing_ok=True)
        return cls.open(directory)

    @classmethod
    def open(cls, directory: Path) -> LocalCA:
        """Load a CA directory made by `init`. Raises `ConfigError` with one clear line."""
        try:
            meta = json.loads((directory / "ca.json").read_text())
            trust_domain = TrustDomain(meta["trust_domain"])
            urls = {
                name: revocation_url(str(meta[name]), what=f"ca.json {name}")
                for name in ("crl_url", "ocsp_url")
                if meta.get(name) is not None
            }
            stem = "intermediate" if (directory / "intermediate.pem").exists() else "root"
            cert = load_pem_certificates((directory / f"{stem}.pem").read_bytes(), what=stem)[0]
            key = serialization.load_pem_private_key(
                (directory / f"{stem}.key").read_bytes(), password=None
            )
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{directory} is not a CA directory: {exc.filename} is missing"
            ) from None
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            raise ConfigError(f"{directory}: unreadable CA files ({exc})") from None
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise ConfigError(f"{directory}: unsupported CA key type {type(key).__name__}")
        chain = (cert,) if stem == "intermediate" else ()
        return cls(directory, trust_domain, cert, key, chain, **urls)

    def issue(
        self,
        spiffe_id: SpiffeId,
        *,
        ttl: timedelta = DEFAULT_LEAF_TTL,
        now: datetime | None = None,
        dns_names: Sequence[str] = (),
        ocsp_url: str | None = None,
        crl_url: str | None = None,
    ) -> X509Svid:
        """Issue a leaf SVID for `spiffe_id`, a member of this CA's trust domain.

        `ocsp_url`/`crl_url` default to the CA's own (from ``ca.json``); given, they win.
        """
        if spiffe_id.trust_domain != self.trust_domain:
            raise ConfigError(f"{spiffe_id} is not in this CA's trust domain {self.trust_domain}")
        if spiffe_id.is_root:
            raise ConfigError(f"{spiffe_id} has no path; a workload id needs one (L-3)")
        if ttl <= timedelta(0):
            raise ConfigError(f"ttl must be positive, not {ttl}")
        now = now or datetime.now(UTC)
        not_after = min(now + ttl, self.issuer_certificate.not_valid_after_utc)
        spec = CertificateSpec(
            subject=LEAF_SUBJECT,
            not_before=now,
            not_after=not_after,
            uris=[str(spiffe_id)],
            dns_names=dns_names,
            ocsp_url=ocsp_url if ocsp_url is not None else self.ocsp_url,
            crl_url=crl_url if crl_url is not None else self.crl_url,
        )
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = build_certificate(
            spec,
            _public(key),
            issuer=self.issuer_certificate.subject,
            signing_key=self.issuer_key,
            issuer_key_id=x509.SubjectKeyIdentifier.from_public_key(_public(self.issuer_key)),
        )
        return X509Svid((leaf, *self.chain), key, spiffe_id)

    def bundle(self) -> BundleSet:
        pem = (self.directory / "bundle.pem").read_bytes()
        return BundleSet.from_pem({self.trust_domain: pem})

    def write_svid(self, svid: X509Svid, prefix: Path, *, force: bool = False) -> tuple[Path, Path]:
        """Write ``PREFIX.pem`` (leaf + chain) and ``PREFIX.key`` (0600)."""
        cert_path = prefix.with_name(prefix.name + ".pem")
        key_path = prefix.with_name(prefix.name + ".key")
        if not force:
            for path in (cert_path, key_path):
                if path.exists():
                    raise ConfigError(f"{path} exists; pass --force to overwrite it")
        _write(key_path, _pem_key(svid.private_key), private=True, force=True)
        _write(cert_path, _pem(svid.chain), private=False, force=True)
        return cert_path, key_path

    def record_issued(self, svid: X509Svid) -> None:
        """Note `svid`'s serial in ``issued.json``, so that ``ca revoke SERIAL`` knows it."""
        issued = self.issued()
        issued[str(svid.leaf.serial_number)] = {
            "spiffe_id": str(svid.spiffe_id),
            "not_after": svid.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        data = json.dumps(issued, indent=1).encode()
        _write(self.directory / ISSUED, data, private=False, force=True)

    def issued(self) -> dict[str, dict[str, str]]:
        """``issued.json``: serial (decimal) -> spiffe_id and not_after. Raises `ConfigError`."""
        return cast(dict[str, dict[str, str]], self._record(ISSUED))

    def revoked(self) -> dict[str, str]:
        """``revoked.json``: serial (decimal) -> when it was revoked. Raises `ConfigError`."""
        return cast(dict[str, str], self._record(REVOKED))

    def _record(self, name: str) -> dict[str, object]:
        path = self.directory / name
        try:
            value: object = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is unreadable ({exc})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{path} is not a JSON object")
        return value

    def revoke(
        self,
        serial: int,
        *,
        now: datetime | None = None,
        next_update: timedelta = timedelta(hours=24),
    ) -> Path:
        """Add `serial` to the revoked list and write a fresh signed ``crl.pem``. Idempotent."""
        now = now or datetime.now(UTC)
        state_path = self.directory / REVOKED
        revoked = self.revoked()
        revoked.setdefault(str(serial), now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        _write(state_path, json.dumps(revoked, indent=1).encode(), private=False, force=True)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuer_certificate.subject)
            .last_update(now)
            .next_update(now + next_update)
            .add_extension(x509.CRLNumber(len(revoked)), critical=False)
        )
        for number, when in sorted(revoked.items()):
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(number))
                .revocation_date(datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self.issuer_key, _hash_for(self.issuer_key))
        crl_path = self.directory / "crl.pem"
        _write(crl_path, crl.public_bytes(serialization.Encoding.PEM), private=False, force=True)
        return crl_path
