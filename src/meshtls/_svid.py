"""X509-SVIDs: one verification pipeline for a peer's chain, and our own chain and key.

Theory of operation
-------------------
A peer's chain is judged by one ordered list of steps, `STEPS`, written once and run by
both entry points: `verify_svid` (a chain in hand) and `verify_handshake_chain` (after
OpenSSL's TLS 1.3 handshake). Each step is a small function over a `Judgement`: the
facts of the leaf and of the path (`CertFacts`, read once per certificate by `_certs`),
the bundles, the policy, the clock and the peer's role. A step returns, or raises
`VerificationError` with the reason and rule of the first thing wrong.
docs/verification-order.md lists the steps as they run.

Only the *path* step differs between the entry points:

- `verify_svid` builds the path itself (`_PathSearch`): leaf first, then the rest of what
  was sent as an unordered pool, up to an authority of the leaf's *own* trust domain
  (L-10). Issuers are matched by name and key identifier as OpenSSL matches them, and
  every signature is checked. Like OpenSSL, the search looks among the bundle's
  authorities first ("trusted first"), and a path ends at the first authority it reaches
  (``X509_V_FLAG_PARTIAL_CHAIN``). A path is accepted only if every step after it passes;
  otherwise the next candidate is tried, and the first candidate's error is reported.
- The handshake takes the chain OpenSSL verified when its root is an authority of the
  leaf's own trust domain. When it is not, or when that chain fails a step, the handshake
  searches what the peer sent exactly as `verify_svid` does. So whenever OpenSSL accepts
  a chain, the handshake's verdict is `verify_svid`'s by construction.

Every RFC 5280 check is an explicit step, run on both paths: basic constraints, path
length, name constraints (DNS, IP, email, URI, DN; other types fail closed), key usage,
purpose (EKU), validity with the policy's skew, critical extensions, key and signature
strength. Where RFC 5280 leaves room the steps follow OpenSSL 3, so that OpenSSL, which
checks first in the handshake, refuses nothing the steps accept.

The boundary: every public entry point that reads certificate bytes runs inside
`_boundary.mapped`, so only `VerificationError` (``malformed_certificate`` for anything
unreadable) or our own ``ValueError`` subclasses leave it. Dates are clamped as read.

The handshake path caches the facts of each leaf and signing certificate by DER, in
bounded `LruCache`s: peers reconnect with the same SVID until it rotates. Facts never
depend on time, role, bundles or policy, so every step still runs on every handshake.

Revocation (P-4, `revocation_is_not_known_bad`) runs once on the path that passed, after
the steps and before the authorizer, reading a `RevocationView` (a cache, never the
network); it is never cached with the facts. Our own SVID's checks never run it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ._boundary import clamp_time, mapped
from ._bundle import BundleSet, X509Bundle, load_pem_certificates, pem_problem
from ._cache import LruCache
from ._certs import (
    BOTH_ROLES,
    CertFacts,
    Role,
    describe,
    fail,
    malformed,
    names_of,
    quiet,
    read_facts,
    signed_by,
)
from ._duration import format_duration
from ._errors import ConfigError, SpiffeIdError, VerificationError
from ._policy import DEFAULT_POLICY, ValidationPolicy
from ._revocation import RevocationPendingError, RevocationView
from ._spiffeid import SpiffeId

__all__ = [
    "MAX_CHAIN_LENGTH",
    "STEPS",
    "PrivateKey",
    "Role",
    "VerifiedPeer",
    "X509Svid",
    "check_svid_offline",
    "leaf_spiffe_id",
    "verify_handshake_chain",
    "verify_svid",
]

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

#: The most certificates a peer may send (leaf included), on both paths.
MAX_CHAIN_LENGTH: Final = 8
#: The most signatures one path search checks, and the most partial paths it extends: a
#: hostile pool (certificates that all issue each other) cannot make it expensive.
MAX_SIGNATURE_CHECKS: Final = 32
MAX_SEARCH_STEPS: Final = 64
#: The handshake's caches of certificate facts, by DER.
LEAF_CACHE_SIZE: Final = 1024
SIGNER_CACHE_SIZE: Final = 256
VERDICT_CACHE_SIZE: Final = 1024


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


@dataclass(slots=True, eq=False)
class Judgement:
    """One verification in progress: the facts, what we trust, the policy, time and role.

    Made and owned by one call of an entry point; the steps fill in ``spiffe_id``,
    ``bundle`` and ``path`` as they go.
    """

    leaf: CertFacts
    role: Role | None  # the PEER's TLS role; None: either will do
    bundles: BundleSet | None
    policy: ValidationPolicy
    now: datetime
    spiffe_id: SpiffeId | None = None
    bundle: X509Bundle | None = None
    path: tuple[CertFacts, ...] = ()  # the issuers, nearest the leaf first; the last is trusted

    def chain(self) -> tuple[CertFacts, ...]:
        return (self.leaf, *self.path)

    def verified(self) -> VerifiedPeer:
        assert self.spiffe_id is not None
        chain = self.chain()
        return VerifiedPeer(
            self.spiffe_id,
            tuple(f.certificate for f in chain),
            min(f.not_after for f in chain),
        )


Step = Callable[[Judgement], None]
_WANTED: Final[dict[Role | None, frozenset[Role]]] = {
    None: BOTH_ROLES,
    "client": frozenset({"client"}),
    "server": frozenset({"server"}),
}


# ---------------------------------------------------------------- steps on the leaf


def _check_extensions(facts: CertFacts, index: int) -> None:
    cert = facts.certificate
    if facts.unreadable is not None:
        raise fail("malformed_certificate", cert, index, facts.unreadable, None)
    if facts.unhandled_critical:
        raise fail(
            "malformed_certificate",
            cert,
            index,
            f"has unhandled critical extension {', '.join(facts.unhandled_critical)}"
            " (RFC 5280 4.2)",
            None,
        )
    if facts.refused_extension is not None:
        raise fail("malformed_certificate", cert, index, facts.refused_extension, None)
    if facts.serial_problem is not None:
        raise fail("malformed_certificate", cert, index, facts.serial_problem, None)


def leaf_is_readable(j: Judgement) -> None:
    """Its extensions parse; no critical extension is unknown; no refused extension; a
    positive serial of at most 20 octets (RFC 5280 4.1.2.2)."""
    _check_extensions(j.leaf, 0)


def _spiffe_id_of(leaf: CertFacts) -> SpiffeId:
    """L-1..L-3 on a leaf's facts. The id is kept in the facts once parsed: it depends on
    the certificate alone, and a cached leaf comes back on every handshake."""
    if leaf.spiffe_id is not None:
        return leaf.spiffe_id
    cert, uris = leaf.certificate, leaf.uris
    if not uris:
        raise fail("no_uri_san", cert, 0, "has no URI SAN", "L-1")
    if len(uris) > 1:
        raise fail("multiple_uri_sans", cert, 0, f"has {len(uris)} URI SANs", "L-1")
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise fail(
            "invalid_spiffe_id", cert, 0, f"URI SAN {uris[0][:200]!r}: {exc}", "L-2"
        ) from None
    if spiffe_id.is_root:
        raise fail("root_path_id", cert, 0, f"{spiffe_id} has no path", "L-3")
    leaf.spiffe_id = spiffe_id
    return spiffe_id


def leaf_names_one_spiffe_id(j: Judgement) -> None:
    """L-1..L-3: exactly one URI SAN, a strict SPIFFE ID with a path."""
    j.spiffe_id = _spiffe_id_of(j.leaf)


def leaf_is_not_a_ca(j: Judgement) -> None:
    """L-4: basic constraints, if present, say cA=false."""
    if j.leaf.ca:
        raise fail("leaf_is_ca", j.leaf.certificate, 0, "basic constraints say cA=true", "L-4")


def leaf_key_usage(j: Judgement) -> None:
    """L-5..L-7: key usage present and critical, digitalSignature, no keyCertSign/cRLSign."""
    cert, usage = j.leaf.certificate, j.leaf.key_usage
    if usage is None:
        raise fail("key_usage", cert, 0, "has no key usage extension", "L-5")
    if not j.leaf.key_usage_critical:
        raise fail("key_usage", cert, 0, "key usage extension is not critical", "L-5")
    if not usage.digital_signature:
        raise fail("key_usage", cert, 0, "key usage lacks digitalSignature", "L-6")
    if usage.key_cert_sign or usage.crl_sign:
        raise fail("key_usage", cert, 0, "key usage has keyCertSign or cRLSign", "L-7")


def _role_names(roles: frozenset[Role]) -> str:
    return " or ".join(f"{r}Auth" for r in sorted(roles))


def leaf_allows_the_role(j: Judgement) -> None:
    """L-8: an EKU (and a Netscape certificate type), if present, allow the peer's role."""
    wanted = _WANTED[j.role]
    if not j.leaf.leaf_roles & wanted:
        what = "extended key usage" if not j.leaf.roles & wanted else "Netscape cert type"
        raise fail(
            "extended_key_usage",
            j.leaf.certificate,
            0,
            f"{what} does not allow {_role_names(wanted)}",
            "L-8",
        )


def leaf_key_is_strong(j: Judgement) -> None:
    """The leaf's key: RSA >= 2048, EC P-256/384/521, Ed25519 or Ed448."""
    if j.leaf.key_problem is not None:
        raise fail("untrusted_chain", j.leaf.certificate, 0, j.leaf.key_problem, "L-9")


def trust_domain_is_known(j: Judgement) -> None:
    """L-10: the leaf's own trust domain has a bundle in the set."""
    spiffe_id = j.spiffe_id
    assert spiffe_id is not None
    assert j.bundles is not None
    bundle = j.bundles.get(spiffe_id.trust_domain)
    if bundle is None:
        raise VerificationError(
            "unknown_trust_domain",
            f"no bundle for {spiffe_id.trust_domain}, the trust domain of {spiffe_id}",
            rule="L-10",
        )
    j.bundle = bundle


def path_to_own_root(j: Judgement) -> None:
    """L-9, L-10: a path from the leaf to an authority of its own trust domain, every
    signature checked. Run by `_judge`, which gets the candidates from the entry point."""
    raise AssertionError("the path step is run by _judge")  # pragma: no cover


# ---------------------------------------------------------------- steps on the path


def path_is_readable(j: Judgement) -> None:
    """Every issuer on the path: readable, as `leaf_is_readable` asks of the leaf."""
    for index, facts in enumerate(j.path, start=1):
        _check_extensions(facts, index)


def anchor_is_not_the_leaf(j: Judgement) -> None:
    """S-1: the path ends at a CA, not at a leaf that is itself in the bundle."""
    if not j.path:
        raise fail(
            "bad_signing_certificate",
            j.leaf.certificate,
            0,
            "is itself a bundle authority; an authority must be a CA",
            "S-1",
        )


def signers_may_sign(j: Judgement) -> None:
    """S-1..S-3 on every issuer, the bundle authority included; and a CA's subject is not
    empty (RFC 5280 4.1.2.6)."""
    for index, facts in enumerate(j.path, start=1):
        if facts.signing_problem is not None:
            what, rule = facts.signing_problem
            raise fail("bad_signing_certificate", facts.certificate, index, what, rule)


def signers_allow_the_role(j: Judgement) -> None:
    """Purpose: an EKU on any issuer must allow the peer's role too (as OpenSSL requires)."""
    allowed = j.leaf.leaf_roles & (_WANTED[j.role])
    for index, facts in enumerate(j.path, start=1):
        allowed &= facts.roles
        if not allowed:
            raise fail(
                "extended_key_usage",
                facts.certificate,
                index,
                "extended key usage does not allow the role the leaf is used in",
                None,
            )


def signer_keys_are_strong(j: Judgement) -> None:
    """Every issuer's key: RSA >= 2048, EC P-256/384/521, Ed25519 or Ed448."""
    for index, facts in enumerate(j.path, start=1):
        if facts.key_problem is not None:
            raise fail("untrusted_chain", facts.certificate, index, facts.key_problem, "L-9")


def signatures_are_strong(j: Judgement) -> None:
    """Every signature on the path (the authority's own excepted): SHA-2 or EdDSA."""
    for index, facts in enumerate(j.chain()[:-1]):
        if facts.signature_problem is not None:
            raise fail("untrusted_chain", facts.certificate, index, facts.signature_problem, "L-9")


def path_length_is_honoured(j: Judgement) -> None:
    """S-4: each pathLenConstraint counts the non-self-issued intermediates below it."""
    below = 0
    for index, facts in enumerate(j.path, start=1):
        if facts.path_length is not None and below > facts.path_length:
            raise fail(
                "bad_signing_certificate",
                facts.certificate,
                index,
                f"allows {facts.path_length} intermediates below it, has {below}",
                "S-4",
            )
        if not facts.self_issued:
            below += 1


def name_constraints_are_honoured(j: Judgement) -> None:
    """S-4: every certificate's names (the leaf's, and each non-self-issued intermediate's)
    are within the name constraints of every certificate above it, the authority's too."""
    chain = j.chain()
    if all(facts.constraints is None for facts in j.path):
        return
    for index in range(len(chain) - 1, -1, -1):
        subject = chain[index]
        if index > 0 and subject.self_issued:
            continue
        for above in range(len(chain) - 1, index, -1):
            constraints = chain[above].constraints
            if constraints is None:
                continue
            problem = constraints.violation(names_of(subject), leaf=index == 0)
            if problem is not None:
                raise fail(
                    "bad_signing_certificate",
                    subject.certificate,
                    index,
                    f"{problem}, under the name constraints of"
                    f" {describe(chain[above].certificate, above)}",
                    "S-4",
                )


def validity_with_skew(j: Judgement) -> None:
    """L-9, P-3: every certificate of the path is within its window, give or take the skew."""
    skew, now = j.policy.clock_skew, j.now
    for index, facts in enumerate(j.chain()):
        if now > facts.not_after + skew:
            raise fail(
                "expired",
                facts.certificate,
                index,
                f"expired at {facts.not_after:%Y-%m-%dT%H:%M:%SZ}",
                "L-9",
            )
        if now < facts.not_before - skew:
            raise fail(
                "not_yet_valid",
                facts.certificate,
                index,
                f"not valid before {facts.not_before:%Y-%m-%dT%H:%M:%SZ}",
                "L-9",
            )


def leaf_lifetime(j: Judgement) -> None:
    """P-1 and P-2: the leaf's lifetime is at most max_ttl, its age at most max_age."""
    policy, leaf = j.policy, j.leaf
    if policy.max_ttl is not None:
        lifetime = leaf.not_after - leaf.not_before
        if lifetime > policy.max_ttl:
            raise fail(
                "ttl_exceeded",
                leaf.certificate,
                0,
                f"lifetime {format_duration(lifetime)} is over"
                f" max_ttl {format_duration(policy.max_ttl)}",
                "P-1",
            )
    if policy.max_age is not None and j.now - leaf.not_before > policy.max_age:
        raise fail(
            "age_exceeded",
            leaf.certificate,
            0,
            f"age {format_duration(j.now - leaf.not_before)} is over"
            f" max_age {format_duration(policy.max_age)}",
            "P-2",
        )


#: Steps 1-6: the leaf's own rules, which need no bundle.
_ON_LEAF: Final[tuple[Step, ...]] = (
    leaf_is_readable,
    leaf_names_one_spiffe_id,
    leaf_is_not_a_ca,
    leaf_key_usage,
    leaf_allows_the_role,
    leaf_key_is_strong,
)
_BEFORE_PATH: Final[tuple[Step, ...]] = (*_ON_LEAF, trust_domain_is_known)
_ON_PATH: Final[tuple[Step, ...]] = (
    path_is_readable,
    anchor_is_not_the_leaf,
    signers_may_sign,
    signers_allow_the_role,
    signer_keys_are_strong,
    signatures_are_strong,
    path_length_is_honoured,
    name_constraints_are_honoured,
    validity_with_skew,
    leaf_lifetime,
)
#: The pipeline, in order. `path_to_own_root` stands for the entry point's path step.
STEPS: Final[tuple[Step, ...]] = (*_BEFORE_PATH, path_to_own_root, *_ON_PATH)
#: What `check_svid_offline` runs (no bundle: no trust domain, no path), on the chain as sent.
_OFFLINE: Final[tuple[Step, ...]] = (
    *_ON_LEAF,
    path_is_readable,
    signers_may_sign,
    signer_keys_are_strong,
    validity_with_skew,
    leaf_lifetime,
)


class _PathStep(Protocol):
    """The one step that differs between the entry points: where candidate paths come from."""

    def candidates(self, j: Judgement) -> Iterator[tuple[CertFacts, ...]]: ...

    def none_found(self, j: Judgement) -> VerificationError: ...


def _judge(j: Judgement, path_step: _PathStep) -> VerifiedPeer:
    """Run `STEPS`: the steps before the path, then the steps on each candidate path until
    one passes. Raises the first candidate's error, or ``none_found``'s when there was none."""
    for step in _BEFORE_PATH:
        step(j)
    first: VerificationError | None = None
    for path in path_step.candidates(j):
        j.path = path
        try:
            for step in _ON_PATH:
                step(j)
        except VerificationError as exc:
            if first is None:
                first = exc
            continue
        return j.verified()
    raise first or path_step.none_found(j)


def revocation_is_not_known_bad(
    peer: VerifiedPeer,
    policy: ValidationPolicy,
    now: datetime,
    revocation: RevocationView | None,
) -> None:
    """P-4, run once on the chosen path (after time and policy, before the authorizer).

    Mode ``off`` does not look. Without a view nothing is known: hard-fail refuses
    (``revocation_unknown``), soft-fail accepts. With a view, only its cache is read
    (`RevocationView.lookup` never blocks): ``revoked`` refuses with ``revoked``, naming
    the certificate, its source and reason; ``unknown`` under hard-fail raises
    `RevocationPendingError` (the handshake may wait for a fetch and judge again),
    under soft-fail it is accepted (the view counted it and queued the fetch).
    """
    mode = policy.revocation
    if mode == "off":
        return
    if revocation is None:
        if mode == "hard-fail":
            raise VerificationError(
                "revocation_unknown",
                f"{describe(peer.leaf, 0)}: hard-fail and no revocation status source",
                rule="P-4",
            )
        return
    status = revocation.lookup(peer.chain, now)
    if status.revoked is not None:
        target, record = status.revoked
        index = next((i for i, cert in enumerate(peer.chain) if cert == target.certificate), 0)
        reason = f" ({record.reason})" if record.reason else ""
        when = f" at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if record.revoked_at else ""
        raise fail(
            "revoked",
            target.certificate,
            index,
            f"revoked{when}{reason}, says {record.source} from {record.origin}",
            "P-4",
        )
    if status.unknown and mode == "hard-fail":
        names = ", ".join(
            describe(t.certificate, peer.chain.index(t.certificate)) for t in status.unknown
        )
        raise RevocationPendingError(
            f"hard-fail and no revocation status known for {names}", status.unknown
        )


# ---------------------------------------------------------------- the path search


def _usable_first(j: Judgement) -> list[CertFacts]:
    """The authorities of the leaf's own trust domain, those that could anchor a valid
    path now (readable, may sign, within their window) first, in bundle order."""
    assert j.bundle is not None
    skew, now = j.policy.clock_skew, j.now

    def unusable(anchor: CertFacts) -> bool:
        return (
            anchor.unreadable is not None
            or anchor.signing_problem is not None
            or now > anchor.not_after + skew
            or now < anchor.not_before - skew
        )

    anchors = j.bundle.anchors
    return list(anchors) if len(anchors) < 2 else sorted(anchors, key=unusable)


def _among(facts: CertFacts, others: Sequence[CertFacts]) -> bool:
    """Whether the same certificate is in `others` (equality compares DER, without hashing)."""
    cert = facts.certificate
    return any(cert == other.certificate for other in others)


class _PathSearch:
    """Candidate paths from a leaf to an authority of its own trust domain (depth first).

    Owned by one verification. ``pool`` is what the peer sent after the leaf, in any
    order. At each certificate the issuer is sought among the authorities first, then in
    the pool, and a path ends at the first authority it reaches: OpenSSL with
    ``X509_V_FLAG_PARTIAL_CHAIN`` stops there too. At most `MAX_SIGNATURE_CHECKS`
    signatures are checked.
    """

    __slots__ = (
        "_anchors",
        "_checked",
        "_leaf",
        "_pool",
        "deepest",
        "exhausted",
        "steps",
    )

    def __init__(self, j: Judgement, pool: Sequence[CertFacts]) -> None:
        self._leaf = j.leaf
        self._anchors = _usable_first(j)
        self._pool = [c for c in pool if not _among(c, self._anchors)]
        self._checked: dict[tuple[int, int], bool] = {}
        self.exhausted = False
        self.steps = 0
        self.deepest: tuple[CertFacts, ...] = ()  # the longest path any search reached

    def paths(self) -> Iterator[tuple[CertFacts, ...]]:
        found = False
        for path in self._extend((), self._leaf):
            found = True
            yield path
        if not found and _among(self._leaf, self._anchors):
            yield ()  # as OpenSSL's partial chain: the leaf itself is an authority

    def _issued(self, child: CertFacts, parent: CertFacts) -> bool:
        if not parent.issued(child):
            return False
        key = (id(child), id(parent))
        verdict = self._checked.get(key)
        if verdict is None:
            if len(self._checked) >= MAX_SIGNATURE_CHECKS:
                self.exhausted = True
                return False
            verdict = signed_by(child.certificate, parent.public_key)
            self._checked[key] = verdict
        return verdict

    def _extend(
        self, path: tuple[CertFacts, ...], top: CertFacts
    ) -> Iterator[tuple[CertFacts, ...]]:
        self.steps += 1
        if self.steps > MAX_SEARCH_STEPS:
            self.exhausted = True
            return
        if len(path) > len(self.deepest):
            self.deepest = path
        for anchor in self._anchors:
            if self._issued(top, anchor):
                yield (*path, anchor)
        if len(path) >= MAX_CHAIN_LENGTH - 1:
            return
        on_path = {id(c) for c in path}
        for cert in self._pool:
            if self.exhausted:
                return
            if id(cert) not in on_path and self._issued(top, cert):
                yield from self._extend((*path, cert), cert)

    def no_path(self, j: Judgement, unreadable: Sequence[VerificationError]) -> VerificationError:
        """Why there is no candidate: an unreadable certificate sent, or no issuer."""
        if unreadable:
            return unreadable[0]
        assert j.spiffe_id is not None
        td = j.spiffe_id.trust_domain
        chain = (self._leaf, *self.deepest)
        top = chain[-1]
        why = (
            "gave up: the certificates sent offer too many candidate paths"
            if self.exhausted
            else f"neither a root of {td} nor a certificate sent issued"
            f" {describe(top.certificate, len(chain) - 1)}"
        )
        return VerificationError(
            "untrusted_chain",
            f"no path from the leaf of {j.spiffe_id} to a root of {td}: {why}",
            rule="L-10" if len(chain) > 1 or top.self_issued else "L-9",
        )


_Sent = TypeVar("_Sent", x509.Certificate, bytes)


def _pool(
    sent: Sequence[_Sent], read: Callable[[_Sent, int], CertFacts]
) -> tuple[list[CertFacts], list[VerificationError]]:
    """The facts of what was sent after the leaf (duplicates dropped), and the errors of
    those that could not be read at all (they can be on no path)."""
    facts: list[CertFacts] = []
    unreadable: list[VerificationError] = []
    seen: set[x509.Certificate] = set()
    for index, item in enumerate(sent, start=1):
        try:
            found = read(item, index)
        except VerificationError as exc:
            unreadable.append(exc)
            continue
        if found.certificate not in seen:
            seen.add(found.certificate)
            facts.append(found)
    return facts, unreadable


class _BuiltPaths:
    """`verify_svid`'s path step: search the pool that was sent."""

    __slots__ = ("_pool", "_search", "_unreadable")

    def __init__(self, sent: Sequence[x509.Certificate]) -> None:
        self._pool, self._unreadable = _pool(sent, lambda cert, i: read_facts(cert, index=i))
        self._search: _PathSearch | None = None

    def candidates(self, j: Judgement) -> Iterator[tuple[CertFacts, ...]]:
        self._search = _PathSearch(j, self._pool)
        return self._search.paths()

    def none_found(self, j: Judgement) -> VerificationError:
        assert self._search is not None
        return self._search.no_path(j, self._unreadable)


def _leaf_fails_alone(j: Judgement) -> bool:
    """Whether the leaf by itself fails a time-dependent step (L-9 with the skew, P-1,
    P-2): then every path through it fails, whatever else the peer sent."""
    path = j.path
    j.path = ()
    try:
        validity_with_skew(j)
        leaf_lifetime(j)
    except VerificationError:
        return True
    finally:
        j.path = path
    return False


class _HandshakePaths:
    """The handshake's path step: OpenSSL's verified chain if it ends at an authority of
    the leaf's own trust domain; then (if that fails) a search of what the peer sent."""

    __slots__ = (
        "_after_failure",
        "_openssl",
        "_root",
        "_search",
        "_sent_chain",
        "_unreadable",
        "searched",
    )

    def __init__(
        self,
        openssl: tuple[CertFacts, ...],
        root: bytes,
        sent_chain: Callable[[], Sequence[bytes]] | None,
        after_failure: bool = True,
    ) -> None:
        self._openssl = openssl
        self._root = root
        self._sent_chain = sent_chain
        self._after_failure = after_failure
        self._search: _PathSearch | None = None
        self._unreadable: list[VerificationError] = []
        #: whether candidates went past OpenSSL's chain (read what the peer sent)
        self.searched = False

    def candidates(self, j: Judgement) -> Iterator[tuple[CertFacts, ...]]:
        assert j.bundle is not None
        if self._root in j.bundle.authority_ders:
            yield self._openssl
            if not self._after_failure and _leaf_fails_alone(j):
                return  # no other path can mend the leaf: OpenSSL's path's error stands
        if self._sent_chain is None:
            return
        self.searched = True
        presented = self._sent_chain()[1:MAX_CHAIN_LENGTH]
        pool, self._unreadable = _pool(presented, lambda der, i: _cached(_SIGNERS, der, i))
        self._search = _PathSearch(j, pool)
        openssl = [c.certificate for c in self._openssl]
        for path in self._search.paths():
            if [c.certificate for c in path] != openssl:
                yield path

    def none_found(self, j: Judgement) -> VerificationError:
        if self._search is not None:
            return self._search.no_path(j, self._unreadable)
        assert j.spiffe_id is not None
        td = j.spiffe_id.trust_domain
        return VerificationError(
            "untrusted_chain",
            f"chain of {j.spiffe_id} ends at a root that is not in the bundle of {td}",
            rule="L-10",
        )


def _check_chain_length(count: int) -> None:
    if not count:
        raise VerificationError("malformed_certificate", "the peer sent no certificate")
    if count > MAX_CHAIN_LENGTH:
        raise VerificationError(
            "malformed_certificate",
            f"the peer sent {count} certificates, over {MAX_CHAIN_LENGTH}",
        )


def _resolve_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


# ---------------------------------------------------------------- entry points


def verify_svid(
    chain: Sequence[x509.Certificate],
    bundles: BundleSet,
    *,
    policy: ValidationPolicy | None = None,
    now: datetime | None = None,
    role: Role | None = None,
    revocation: RevocationView | None = None,
) -> VerifiedPeer:
    """Verify a peer's X509-SVID chain (leaf first, the rest in any order) and return the peer.

    `role` is the peer's TLS role, for the extended-key-usage rule (L-8); with None, an
    EKU must allow clientAuth or serverAuth. `now` defaults to the wall clock and must be
    timezone-aware (else ``ValueError``). Raises `VerificationError` whose ``reason`` is one
    of `REASONS`; the message names the certificate and the rule. `revocation` is read for
    P-4 (`revocation_is_not_known_bad`; a `RevocationPendingError` under hard-fail when a
    status is unknown). Never does I/O.
    """
    policy = policy or DEFAULT_POLICY
    now = _resolve_now(now)
    peer = _verify_without_revocation(chain, bundles, policy, now, role)
    revocation_is_not_known_bad(peer, policy, now, revocation)
    return peer


def _verify_without_revocation(
    chain: Sequence[x509.Certificate],
    bundles: BundleSet,
    policy: ValidationPolicy,
    now: datetime,
    role: Role | None,
) -> VerifiedPeer:
    """`STEPS` on a chain in hand, without P-4: `verify_svid`'s pipeline, and our own
    SVID's check (which never looks up revocation)."""
    with mapped(malformed("chain")), quiet():
        _check_chain_length(len(chain))
        j = Judgement(read_facts(chain[0], leaf=True), role, bundles, policy, now)
        return _judge(j, _BuiltPaths(chain[1:]))


def check_svid_offline(
    chain: Sequence[x509.Certificate],
    *,
    policy: ValidationPolicy | None = None,
    now: datetime | None = None,
    role: Role | None = None,
) -> SpiffeId:
    """The steps of `verify_svid` that need no bundle, on the chain as sent; for `inspect`.

    Returns the leaf's SPIFFE ID. This does NOT establish trust: no path is validated.
    Raises `VerificationError`.
    """
    policy = policy or DEFAULT_POLICY
    now = _resolve_now(now)
    with mapped(malformed("chain")), quiet():
        _check_chain_length(len(chain))
        j = Judgement(read_facts(chain[0], leaf=True), role, None, policy, now)
        j.path = tuple(read_facts(cert, index=i) for i, cert in enumerate(chain[1:], start=1))
        for step in _OFFLINE:
            step(j)
        assert j.spiffe_id is not None
        return j.spiffe_id


def leaf_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a leaf SVID (L-1..L-3). Raises `VerificationError`."""
    with mapped(malformed("leaf")), quiet():
        facts = read_facts(leaf, leaf=True)
        _check_extensions(facts, 0)
        return _spiffe_id_of(facts)


# The handshake path: certificates recur on every handshake (peers reconnect with the same
# SVID until it rotates), so their facts are read once, by DER, into bounded caches.
_LEAVES: Final[LruCache[bytes, CertFacts]] = LruCache(LEAF_CACHE_SIZE)
_SIGNERS: Final[LruCache[bytes, CertFacts]] = LruCache(SIGNER_CACHE_SIZE)


def _cached(cache: LruCache[bytes, CertFacts], der: bytes, index: int) -> CertFacts:
    """The facts of the certificate `der` (`index` 0: the leaf), read once. Raises
    `VerificationError`."""
    found = cache.get(der)
    if found is None:
        with mapped(malformed(f"certificate {index}")), quiet():
            cert = x509.load_der_x509_certificate(der)  # a negative serial warns
            found = read_facts(cert, index=index, leaf=index == 0)
        cache.put(der, found)
    return found


def verify_handshake_chain(
    verified: Sequence[bytes],
    bundles: BundleSet,
    *,
    policy: ValidationPolicy,
    now: datetime,
    role: Role,
    sent: int = 0,
    sent_chain: Callable[[], Sequence[bytes]] | None = None,
    revocation: RevocationView | None = None,
    search_after_failure: bool = True,
) -> VerifiedPeer:
    """`STEPS` on a chain OpenSSL verified in a handshake (DER, leaf first, root last).

    `sent` is how many certificates the peer sent, held to the same limit as `verify_svid`.
    `sent_chain` gives what the peer sent (DER, leaf first), read only when OpenSSL's chain
    does not end at an authority of the leaf's own trust domain or fails a step: the path
    is then searched as `verify_svid` searches it. P-4 then runs on the chosen path on
    every handshake (the facts caches never skip it), reading `revocation`. Raises
    `VerificationError` (`RevocationPendingError`: hard-fail, a status unknown). Without
    `search_after_failure`, a chain that ends at an authority of the leaf's own trust
    domain and fails a step while its leaf alone fails one too (expired, not yet valid,
    over max_ttl or max_age) is refused with that chain's reason, without searching what
    the peer sent (a server inside the handshake, which cannot read it yet): no other path
    could pass.
    """
    if not verified:
        raise VerificationError("no_client_certificate", "the peer sent no certificate")
    if sent > MAX_CHAIN_LENGTH:
        raise VerificationError(
            "malformed_certificate", f"the peer sent {sent} certificates, over {MAX_CHAIN_LENGTH}"
        )
    key = (role, *verified)
    memo = _VERDICTS.get(key)
    if memo is not None and memo.holds(bundles, policy, now):
        peer = memo.peer
    else:
        with mapped(malformed("chain")):
            j = Judgement(_cached(_LEAVES, verified[0], 0), role, bundles, policy, now)
            openssl = tuple(
                _cached(_SIGNERS, der, i) for i, der in enumerate(verified[1:], start=1)
            )
            paths = _HandshakePaths(openssl, verified[-1], sent_chain, search_after_failure)
            peer = _judge(j, paths)
        if not paths.searched:  # the path is OpenSSL's chain itself: nothing else was read
            _VERDICTS.put(key, _Verdict.of(j, peer))
    revocation_is_not_known_bad(peer, policy, now, revocation)
    return peer


@dataclass(frozen=True, slots=True, eq=False)
class _Verdict:
    """A chain that passed `STEPS` (role, bundles and policy as given), and the window of
    times for which every time-dependent step (L-9's windows with the skew, P-2's age)
    passes as well: within it, with the same bundle set and policy, `STEPS` would give
    the same verified peer again. P-4 and the authorizer are never remembered."""

    peer: VerifiedPeer
    bundles: BundleSet
    policy: ValidationPolicy
    valid_from: datetime
    valid_until: datetime

    @classmethod
    def of(cls, j: Judgement, peer: VerifiedPeer) -> _Verdict:
        assert j.bundles is not None
        path, skew = j.chain(), j.policy.clock_skew
        valid_from = max(f.not_before for f in path) - skew
        valid_until = min(f.not_after for f in path) + skew
        if j.policy.max_age is not None:
            valid_until = min(valid_until, j.leaf.not_before + j.policy.max_age)
        return cls(peer, j.bundles, j.policy, valid_from, valid_until)

    def holds(self, bundles: BundleSet, policy: ValidationPolicy, now: datetime) -> bool:
        return (
            bundles is self.bundles
            and (policy is self.policy or policy == self.policy)
            and self.valid_from <= now <= self.valid_until
        )


#: Verdicts of handshake chains, by (role, chain DER): a chain seen again (the same peer
#: reconnecting) skips `STEPS` within its window (see `_Verdict`).
_VERDICTS: Final[LruCache[tuple[str | bytes, ...], _Verdict]] = LruCache(VERDICT_CACHE_SIZE)


# ---------------------------------------------------------------- our own SVID


def _unreadable_svid(description: str) -> VerificationError:
    return VerificationError("malformed_certificate", f"SVID: unreadable ({description})")


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

        Raises `VerificationError` if the leaf is no SVID or is unreadable, `BundleError` for
        PEM with no certificate, `ConfigError` for a key that is unreadable or does not match.
        """
        with mapped(_unreadable_svid):
            chain = load_pem_certificates(cert_pem, what="SVID certificate")
            data = key_pem.encode() if isinstance(key_pem, str) else key_pem
            try:
                key = load_pem_private_key(data, password=password)
            except Exception as exc:  # cryptography raises several types for bad keys
                problem = pem_problem(data, "private key", exc)
                raise ConfigError(f"SVID key: not a readable PEM private key ({problem})") from None
            if not isinstance(key, PrivateKey):
                raise ConfigError(f"SVID key: unsupported key type {type(key).__name__}")
            return cls.from_parts(chain, key)

    @classmethod
    def from_parts(cls, chain: Sequence[x509.Certificate], private_key: PrivateKey) -> X509Svid:
        """Check that the key matches the leaf and that the leaf names a SPIFFE ID (L-1..L-3).

        Raises `VerificationError` for the leaf, `ConfigError` for an empty chain or a key
        that does not match the leaf.
        """
        with mapped(_unreadable_svid):
            if not chain:
                raise ConfigError("SVID chain is empty")
            if chain[0].public_key() != private_key.public_key():
                raise ConfigError("SVID key does not match the leaf certificate's public key")
            return cls(tuple(chain), private_key, leaf_spiffe_id(chain[0]))

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> datetime:
        return clamp_time(self.leaf.not_valid_before_utc)

    @property
    def not_after(self) -> datetime:
        """The leaf's expiry, clamped to `_boundary.LATEST` (so it can be computed with)."""
        return clamp_time(self.leaf.not_valid_after_utc)

    def check(
        self,
        bundles: BundleSet,
        *,
        policy: ValidationPolicy | None = None,
        now: datetime | None = None,
    ) -> VerifiedPeer:
        """Verify our own SVID as a peer would, against `bundles`, but without P-4 (our own
        certificate's revocation is not looked up). Raises `VerificationError`."""
        return _verify_without_revocation(
            self.chain, bundles, policy or DEFAULT_POLICY, _resolve_now(now), None
        )
