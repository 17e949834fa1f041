"""X509-SVIDs: verifying a peer's chain, and holding our own chain and key.

Theory of operation for `verify_svid`: the cheap, certificate-local SPIFFE rules
run first (L-1..L-8 on the leaf, S-1..S-3 on every other certificate), then the
trust domain is looked up, then the time rules with their skew (P-1..P-3), and
only then RFC 5280 path validation by pyca/cryptography against the roots of the
leaf's *own* trust domain (L-9, L-10). docs/verification-order.md has the table.

cryptography's verifier compares validity windows with no tolerance, while P-3
wants a skew. So we check every window ourselves against ``now`` with the skew,
and ask cryptography to validate the path at ``now`` clamped into the windows of
the certificates involved. A certificate inside the skew is then valid at that
instant, and nothing outside the skew gets that far.

Relaxations of cryptography's web-PKI profile, and why (docs/decisions.md):
- extension policies: ``permit_all`` for leaves and CAs (SPIFFE leaves have no
  DNS subject, AKI or clientAuth requirement); the SPIFFE extension rules are
  enforced here instead, which is stricter where it matters (key usage);
- the client verifier is used for both roles, because SPIFFE authenticates by URI
  SAN, not by a server name; EKU is checked here per role (L-8).
What it keeps: signatures, the issuer/subject chaining, basic constraints, path
length, validity, and its allowed algorithms (so Ed25519 CAs are refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from ._bundle import BundleSet, X509Bundle, load_pem_certificates
from ._certs import (
    Extensions,
    Signer,
    describe,
    extensions,
    fail,
    read_signer,
    uri_sans,
    webpki_algorithm,
)
from ._duration import format_duration
from ._errors import MeshError, SpiffeIdError, VerificationError
from ._policy import DEFAULT_POLICY, ValidationPolicy
from ._spiffeid import SpiffeId

Role = Literal["client", "server"]
PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

_CA_POLICY = verification.ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
)
_EE_POLICY = verification.ExtensionPolicy.permit_all()
_ROLE_EKU = {
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
}
_ANY_EKU = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE
MAX_CHAIN_LENGTH: Final = 8


@dataclass(frozen=True, slots=True)
class VerifiedPeer:
    """A peer whose X509-SVID passed `verify_svid`. Made only by meshtls.

    ``chain`` is the verified path, leaf first, ending at a root of the peer's own
    trust domain. ``not_after`` is the earliest expiry in that path: the peer is no
    longer verified after it.
    """

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    not_after: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def leaf_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a leaf SVID (L-1..L-3). Raises `VerificationError`."""
    return _leaf_spiffe_id(leaf, extensions(leaf, 0))


def _leaf_spiffe_id(leaf: x509.Certificate, exts: Extensions) -> SpiffeId:
    uris = uri_sans(exts)
    if not uris:
        raise fail("no_uri_san", leaf, 0, "has no URI SAN", "L-1")
    if len(uris) > 1:
        raise fail("multiple_uri_sans", leaf, 0, f"has {len(uris)} URI SANs", "L-1")
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise fail(
            "invalid_spiffe_id", leaf, 0, f"URI SAN {uris[0][:200]!r}: {exc}", "L-2"
        ) from None
    if spiffe_id.is_root:
        raise fail("root_path_id", leaf, 0, f"{spiffe_id} has no path", "L-3")
    return spiffe_id


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A leaf that passed the role-independent rules L-1..L-7, and its EKU for L-8."""

    certificate: x509.Certificate
    spiffe_id: SpiffeId
    ekus: frozenset[x509.ObjectIdentifier] | None  # None: no EKU extension
    window: Window


def _read_leaf(leaf: x509.Certificate) -> _Leaf:
    """L-1..L-7 on a leaf SVID. Raises `VerificationError`."""
    exts = extensions(leaf, 0)
    spiffe_id = _leaf_spiffe_id(leaf, exts)
    bc = exts.get(ExtensionOID.BASIC_CONSTRAINTS)
    if bc is not None and cast(x509.BasicConstraints, bc.value).ca:
        raise fail("leaf_is_ca", leaf, 0, "basic constraints say cA=true", "L-4")
    ku = exts.get(ExtensionOID.KEY_USAGE)
    if ku is None:
        raise fail("key_usage", leaf, 0, "has no key usage extension", "L-5")
    if not ku.critical:
        raise fail("key_usage", leaf, 0, "key usage extension is not critical", "L-5")
    usage = cast(x509.KeyUsage, ku.value)
    if not usage.digital_signature:
        raise fail("key_usage", leaf, 0, "key usage lacks digitalSignature", "L-6")
    if usage.key_cert_sign or usage.crl_sign:
        raise fail("key_usage", leaf, 0, "key usage has keyCertSign or cRLSign", "L-7")
    eku = exts.get(ExtensionOID.EXTENDED_KEY_USAGE)
    ekus = None if eku is None else frozenset(cast(x509.ExtendedKeyUsage, eku.value))
    return _Leaf(leaf, spiffe_id, ekus, _window(leaf))


def _check_eku(leaf: _Leaf, role: Role | None) -> None:
    """L-8: an EKU, if present, allows the role (either role when `role` is None)."""
    if leaf.ekus is None or _ANY_EKU in leaf.ekus:
        return
    wanted = [_ROLE_EKU[role]] if role is not None else list(_ROLE_EKU.values())
    if leaf.ekus.isdisjoint(wanted):
        names = " or ".join(f"{r}Auth" for r in ([role] if role else _ROLE_EKU))
        raise fail(
            "extended_key_usage",
            leaf.certificate,
            0,
            f"extended key usage does not allow {names}",
            "L-8",
        )


Window = tuple[datetime, datetime]  # (not_before, not_after), read once per certificate


def _window(cert: x509.Certificate) -> Window:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def _check_window(
    cert: x509.Certificate, index: int, now: datetime, skew: timedelta, window: Window | None = None
) -> None:
    not_before, not_after = window or _window(cert)
    if now > not_after + skew:
        raise fail("expired", cert, index, f"expired at {not_after:%Y-%m-%dT%H:%M:%SZ}", "L-9")
    if now < not_before - skew:
        raise fail(
            "not_yet_valid", cert, index, f"not valid before {not_before:%Y-%m-%dT%H:%M:%SZ}", "L-9"
        )


def _check_lifetime(
    leaf: x509.Certificate, now: datetime, policy: ValidationPolicy, window: Window | None = None
) -> None:
    """P-1 and P-2 on a leaf."""
    not_before, not_after = window or _window(leaf)
    if policy.max_ttl is not None:
        lifetime = not_after - not_before
        if lifetime > policy.max_ttl:
            raise fail(
                "ttl_exceeded",
                leaf,
                0,
                f"lifetime {format_duration(lifetime)} is over"
                f" max_ttl {format_duration(policy.max_ttl)}",
                "P-1",
            )
    if policy.max_age is not None and now - not_before > policy.max_age:
        raise fail(
            "age_exceeded",
            leaf,
            0,
            f"age {format_duration(now - not_before)} is over"
            f" max_age {format_duration(policy.max_age)}",
            "P-2",
        )


def _constraint_violation(signers: Sequence[Signer], spiffe_id: SpiffeId) -> str | None:
    """S-4 over the ordered signers (nearest the leaf first): path length, URI name constraints."""
    below = 0  # non-self-issued intermediates between the leaf and the signer
    host = spiffe_id.trust_domain.name
    for position, signer in enumerate(signers, start=1):
        if signer.path_length is not None and below > signer.path_length:
            return (
                f"certificate {position} allows {signer.path_length}"
                f" intermediates below it, has {below}"
            )
        if signer.uri_permitted and not any(
            _uri_host_matches(host, c) for c in signer.uri_permitted
        ):
            return f"{spiffe_id} is outside permitted URI constraints {list(signer.uri_permitted)}"
        if any(_uri_host_matches(host, c) for c in signer.uri_excluded):
            return f"{spiffe_id} is inside excluded URI constraints {list(signer.uri_excluded)}"
        if not signer.self_issued:
            below += 1
    return None


def _uri_host_matches(host: str, constraint: str) -> bool:
    """RFC 5280 4.2.1.10: ``.example.org`` matches subdomains; ``example.org`` only itself."""
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint


def _check_signers(chain: Sequence[x509.Certificate], signers: Sequence[Signer]) -> None:
    """S-1..S-3 on every certificate after the leaf (their facts are in `signers`)."""
    for index, signer in enumerate(signers, start=1):
        if signer.problem is not None:
            raise fail("bad_signing_certificate", chain[index], index, *signer.problem)


def _own_bundle(bundles: BundleSet, spiffe_id: SpiffeId) -> X509Bundle:
    """The bundle of the id's own trust domain (L-10), or `unknown_trust_domain`."""
    bundle = bundles.get(spiffe_id.trust_domain)
    if bundle is None:
        raise VerificationError(
            "unknown_trust_domain",
            f"no bundle for {spiffe_id.trust_domain}, the trust domain of {spiffe_id}",
            rule="L-10",
        )
    return bundle


def _certificate_rules(
    chain: Sequence[x509.Certificate], role: Role | None
) -> tuple[SpiffeId, list[Signer]]:
    """Steps 1-8 of docs/verification-order.md: L-1..L-8 on the leaf, S-1..S-3 on the rest."""
    leaf = _read_leaf(chain[0])
    _check_eku(leaf, role)
    spiffe_id = leaf.spiffe_id
    signers = [read_signer(chain[index], index) for index in range(1, len(chain))]
    _check_signers(chain, signers)
    return spiffe_id, signers


def _time_rules(
    chain: Sequence[x509.Certificate],
    now: datetime,
    policy: ValidationPolicy,
    windows: Sequence[Window] | None = None,
) -> None:
    """Steps 10-11: every validity window with the skew (L-9, P-3), then P-1 and P-2."""
    windows = windows or [_window(cert) for cert in chain]
    skew = policy.clock_skew
    for index, cert in enumerate(chain):
        _check_window(cert, index, now, skew, windows[index])
    _check_lifetime(chain[0], now, policy, windows[0])


def check_svid_offline(
    chain: Sequence[x509.Certificate],
    *,
    policy: ValidationPolicy | None = None,
    now: datetime | None = None,
    role: Role | None = None,
) -> SpiffeId:
    """Every rule of `verify_svid` that needs no bundle, in the same order; for `inspect`.

    Returns the leaf's SPIFFE ID. This does NOT establish trust: no path is validated.
    """
    policy = policy or DEFAULT_POLICY
    now = _resolve_now(now)
    _check_chain_length(chain)
    try:
        spiffe_id, _ = _certificate_rules(chain, role)
        _time_rules(chain, now, policy)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _unreadable(exc) from None
    return spiffe_id


def _resolve_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _check_chain_length(chain: Sequence[x509.Certificate]) -> None:
    if not chain:
        raise VerificationError("malformed_certificate", "the peer sent no certificate")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise VerificationError(
            "malformed_certificate",
            f"the peer sent {len(chain)} certificates, over {MAX_CHAIN_LENGTH}",
        )


def _unreadable(exc: Exception) -> Exception:
    """Map what cryptography raises for a certificate it cannot read; ours pass through."""
    if isinstance(exc, MeshError):
        return exc
    return VerificationError("malformed_certificate", f"unreadable certificate ({exc})")


def verify_svid(
    chain: Sequence[x509.Certificate],
    bundles: BundleSet,
    *,
    policy: ValidationPolicy | None = None,
    now: datetime | None = None,
    role: Role | None = None,
) -> VerifiedPeer:
    """Verify a peer's X509-SVID chain (leaf first, as sent) and return the verified peer.

    `role` is the peer's TLS role, for the extended-key-usage rule (L-8); with None, an
    EKU must allow clientAuth or serverAuth. `now` defaults to the wall clock and must be
    timezone-aware. Raises `VerificationError` whose ``reason`` is one of `REASONS`; the
    message names the certificate and the rule. Never does I/O.
    """
    policy = policy or DEFAULT_POLICY
    now = _resolve_now(now)
    _check_chain_length(chain)
    try:
        return _verify(chain, bundles, policy, now, role)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # cryptography could not read it
        raise _unreadable(exc) from None


def _verify(
    chain: Sequence[x509.Certificate],
    bundles: BundleSet,
    policy: ValidationPolicy,
    now: datetime,
    role: Role | None,
) -> VerifiedPeer:
    leaf = chain[0]
    spiffe_id, signers = _certificate_rules(chain, role)
    td = spiffe_id.trust_domain
    bundle = _own_bundle(bundles, spiffe_id)

    _time_rules(chain, now, policy)
    skew = policy.clock_skew

    # Roots of the leaf's own trust domain that issued the last certificate sent (L-10).
    last = chain[-1]
    issuer = last.issuer
    anchors = [a for a in bundle.anchors if a.certificate.subject == issuer]
    if not anchors:
        raise VerificationError(
            "untrusted_chain",
            f"no root in the bundle of {td} issued {describe(last, len(chain) - 1)}"
            + (" (an intermediate may be missing)" if last.issuer != last.subject else ""),
            rule="L-10" if last.issuer == last.subject or len(chain) > 1 else "L-9",
        )
    usable = [a for a in anchors if a.not_before - skew <= now <= a.not_after + skew]
    if not usable:
        _check_window(anchors[0].certificate, len(chain), now, skew)  # raises
    signing = [a for a in usable if a.problem is None]
    if not signing:
        raise fail("bad_signing_certificate", usable[0].certificate, len(chain), *usable[0].problem)  # type: ignore[misc]
    problems = [
        _constraint_violation(signers if a.certificate == last else [*signers, a], spiffe_id)
        for a in signing
    ]
    if None not in problems:
        raise VerificationError("bad_signing_certificate", str(problems[0]), rule="S-4")
    signing = [a for a, problem in zip(signing, problems, strict=True) if problem is None]

    if all(
        s.webpki_algorithm and not s.uri_permitted and not s.uri_excluded
        for s in [*signers, *signing]
    ) and webpki_algorithm(leaf):
        path = _webpki_path(
            leaf, chain, anchors=signing, bundle=bundle, now=now, spiffe_id=spiffe_id
        )
    else:
        path = _ordered_path(chain, signers, signing, spiffe_id)
    return VerifiedPeer(spiffe_id, path, min(cert.not_valid_after_utc for cert in path))


def _webpki_path(
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    *,
    anchors: Sequence[Signer],
    bundle: X509Bundle,
    now: datetime,
    spiffe_id: SpiffeId,
) -> tuple[x509.Certificate, ...]:
    """RFC 5280 path validation by cryptography, at `now` moved into every window involved."""
    start = max([cert.not_valid_before_utc for cert in chain] + [a.not_before for a in anchors])
    end = min([cert.not_valid_after_utc for cert in chain] + [a.not_after for a in anchors])
    at = min(max(now, start), end) if start <= end else now
    everything = len(anchors) == len(bundle.authorities)
    store = bundle.store if everything else verification.Store([a.certificate for a in anchors])
    assert store is not None
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(at)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        return tuple(verifier.verify(leaf, list(chain[1:])).chain)
    except verification.VerificationError as exc:
        text = str(exc)
        if "constraint" in text:  # path length or name constraints, seen by cryptography
            raise VerificationError(
                "bad_signing_certificate", f"chain of {spiffe_id}: {text}", rule="S-4"
            ) from None
        raise VerificationError(
            "untrusted_chain",
            f"chain of {spiffe_id} does not verify against the roots of"
            f" {spiffe_id.trust_domain}: {text}",
            rule="L-9",
        ) from None


def _ordered_path(
    chain: Sequence[x509.Certificate],
    signers: Sequence[Signer],
    anchors: Sequence[Signer],
    spiffe_id: SpiffeId,
) -> tuple[x509.Certificate, ...]:
    """Validation for what cryptography's web-PKI profile refuses (URI name constraints,
    Ed25519/Ed448): the chain must be in order, leaf first, each certificate signed by the
    next, ending at an anchor. Every other rule (S-1..S-4, windows) was checked by the caller.
    """
    if any(s.other_constraints for s in [*signers, *anchors]):
        raise VerificationError(
            "bad_signing_certificate",
            f"chain of {spiffe_id}: URI and other name constraints together are not supported",
            rule="S-4",
        )
    for index in range(len(chain) - 1):
        _check_issued_by(chain[index], chain[index + 1], index, spiffe_id)
    last = chain[-1]
    for anchor in anchors:
        if anchor.certificate == last:
            return tuple(chain)
        try:
            _check_issued_by(last, anchor.certificate, len(chain) - 1, spiffe_id)
        except VerificationError:
            continue
        return (*chain, anchor.certificate)
    raise VerificationError(
        "untrusted_chain",
        f"chain of {spiffe_id}: no root of {spiffe_id.trust_domain} signed it",
        rule="L-9",
    )


def _check_issued_by(
    child: x509.Certificate, parent: x509.Certificate, index: int, spiffe_id: SpiffeId
) -> None:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise fail(
            "untrusted_chain",
            child,
            index,
            f"not signed by the next certificate ({str(exc) or 'bad signature'})",
            "L-9",
        ) from None


# The handshake path: OpenSSL has already validated signatures and the path (without
# time); what is left is the SPIFFE layer. Certificates other than the leaf recur on
# every handshake, so they are parsed once, by DER, in a small bounded cache.
_PARSED: dict[bytes, tuple[x509.Certificate, Signer]] = {}
_PARSED_MAX: Final = 256


_LEAVES: dict[bytes, _Leaf] = {}
_LEAVES_MAX: Final = 1024


def _cached_leaf(der: bytes) -> _Leaf:
    """Parse a leaf and apply L-1..L-7, once per distinct leaf: peers reconnect with the
    same SVID until it rotates. Only leaves that pass are kept; the cache is bounded."""
    found = _LEAVES.get(der)
    if found is None:
        found = _read_leaf(x509.load_der_x509_certificate(der))
        if len(_LEAVES) >= _LEAVES_MAX:
            _LEAVES.pop(next(iter(_LEAVES)))
        _LEAVES[der] = found
    return found


def _parse_signer(der: bytes, index: int) -> tuple[x509.Certificate, Signer]:
    found = _PARSED.get(der)
    if found is None:
        cert = x509.load_der_x509_certificate(der)
        found = (cert, read_signer(cert, index))
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[der] = found
    return found


def verify_handshake_chain(
    verified: Sequence[bytes],
    bundles: BundleSet,
    *,
    policy: ValidationPolicy,
    now: datetime,
    role: Role,
    sent: int = 0,
) -> VerifiedPeer:
    """The SPIFFE checks on a chain OpenSSL verified in a handshake (DER, leaf first, root last).

    `sent` is how many certificates the peer sent, held to the same limit as `verify_svid`.

    Same rules and reasons as `verify_svid`, without repeating OpenSSL's signature and
    path checks: the root must be an authority of the leaf's *own* trust domain (L-10),
    then L-1..L-8, S-1..S-4, the windows with skew and P-1..P-2. Raises `VerificationError`.
    """
    if not verified:
        raise VerificationError("no_client_certificate", "the peer sent no certificate")
    if sent > MAX_CHAIN_LENGTH:
        raise VerificationError(
            "malformed_certificate", f"the peer sent {sent} certificates, over {MAX_CHAIN_LENGTH}"
        )
    try:
        leaf_facts = _cached_leaf(verified[0])
        _check_eku(leaf_facts, role)
        leaf, spiffe_id = leaf_facts.certificate, leaf_facts.spiffe_id
        parsed = [_parse_signer(der, index) for index, der in enumerate(verified[1:], start=1)]
        chain = [leaf, *(cert for cert, _ in parsed)]
        signers = [signer for _, signer in parsed]
        _check_signers(chain, signers)
        td = spiffe_id.trust_domain
        bundle = _own_bundle(bundles, spiffe_id)
        if verified[-1] not in bundle.authority_ders:
            raise VerificationError(
                "untrusted_chain",
                f"chain of {spiffe_id} ends at a root that is not in the bundle of {td}",
                rule="L-10",
            )
        windows = [leaf_facts.window, *((sig.not_before, sig.not_after) for sig in signers)]
        _time_rules(chain, now, policy, windows)
        problem = _constraint_violation(signers, spiffe_id)
        if problem is not None:
            raise VerificationError("bad_signing_certificate", problem, rule="S-4")
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _unreadable(exc) from None
    return VerifiedPeer(spiffe_id, tuple(chain), min(end for _, end in windows))


@dataclass(frozen=True, slots=True)
class X509Svid:
    """Our own X509-SVID: the chain we present (leaf first) and the leaf's private key.

    Owned by an identity source; TLS contexts are built from it. Holding one does not mean
    it is valid now: `check` applies the SPIFFE leaf rules and the policy to it.
    """

    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey
    spiffe_id: SpiffeId

    @classmethod
    def load(
        cls, cert_pem: bytes | str, key_pem: bytes | str, *, password: bytes | None = None
    ) -> X509Svid:
        """From PEM: the leaf then its intermediates, and the leaf's key (PKCS#8 or traditional).

        Raises `VerificationError` (reason from REASONS) if the leaf is no SVID, or `BundleError` /
        `ValueError` for unreadable PEM or a key that does not match the leaf.
        """
        chain = load_pem_certificates(cert_pem, what="SVID certificate")
        data = key_pem.encode() if isinstance(key_pem, str) else key_pem
        try:
            key = load_pem_private_key(data, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"SVID key: not a readable PEM private key ({exc})") from None
        if not isinstance(key, PrivateKey):
            raise ValueError(f"SVID key: unsupported key type {type(key).__name__}")
        return cls.from_parts(chain, key)

    @classmethod
    def from_parts(cls, chain: Sequence[x509.Certificate], private_key: PrivateKey) -> X509Svid:
        """Check that the key matches the leaf and that the leaf names a SPIFFE ID (L-1..L-3)."""
        if not chain:
            raise ValueError("SVID chain is empty")
        if chain[0].public_key() != private_key.public_key():
            raise ValueError("SVID key does not match the leaf certificate's public key")
        return cls(tuple(chain), private_key, leaf_spiffe_id(chain[0]))

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def check(
        self,
        bundles: BundleSet,
        *,
        policy: ValidationPolicy | None = None,
        now: datetime | None = None,
    ) -> VerifiedPeer:
        """Verify our own SVID as a peer would, against `bundles`. Raises `VerificationError`."""
        return verify_svid(self.chain, bundles, policy=policy, now=now)
