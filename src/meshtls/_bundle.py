"""Trust bundles, one per trust domain, never merged (SPIFFE_Trust_Domain_and_Bundle.md).

A `BundleSet` maps each trust domain to its own `X509Bundle`. Verification looks
up the bundle of the leaf's *own* trust domain and builds its path against those
roots alone, so a federated CA can never vouch for another domain's ids (L-10).

Loading checks rules B-1..B-6. Applying an update checks B-4 (no rollback of
``spiffe_sequence``). Every value here is immutable; an update makes a new set.

Bundles come from files, bundle endpoints and the Workload API, so every public loader
is a boundary (`_boundary.mapped`): whatever the input, it returns a value or raises
`BundleError` with one line. Roots are read in full when a bundle is built, so a root
that cryptography parses lazily cannot fail later, during a handshake. JSON is read
strictly: no duplicate keys (B-6), no ``NaN``/``Infinity`` (they are not JSON, though
Python's `json` accepts them), and a refresh hint must be a sane number of seconds (B-5).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final, Literal, TypeAlias, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ._boundary import describe_error, mapped, shown
from ._certs import CertFacts, read_signer
from ._errors import BundleError, MeshError, SpiffeIdError
from ._spiffeid import TrustDomain

DEFAULT_REFRESH_HINT: Final = timedelta(minutes=5)
#: The longest refresh hint accepted (B-5). A longer one is refused, not clamped: a
#: publisher that asks to be fetched again in a century is broken, and saying so beats
#: quietly fetching on our own schedule.
MAX_REFRESH_HINT: Final = timedelta(days=365)
_KNOWN_KTY: Final = frozenset({"EC", "RSA", "OKP"})

_Json: TypeAlias = "bool | int | float | str | list[_Json] | dict[str, _Json] | None"


def _as_trust_domain(value: TrustDomain | str, *, where: str = "") -> TrustDomain:
    """`value` as a trust domain (a name or ``spiffe://name``); raises `BundleError`."""
    if isinstance(value, TrustDomain):
        return value
    try:
        return TrustDomain.parse(value)
    except SpiffeIdError as exc:
        raise BundleError(f"{where}trust domain {shown(value)}: {exc}") from exc


_PEM_BEGIN: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_PEM_BLOCK: Final = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]{1,40})-----(.*?)-----END \1-----", re.DOTALL
)
_FAQ_LINK: Final = re.compile(r"\s*See https://cryptography\.io/\S* for more details\.")
PemKind = Literal["certificate", "private key"]


def _is_kind(label: bytes, kind: PemKind) -> bool:
    if kind == "certificate":
        return label in (b"CERTIFICATE", b"X509 CERTIFICATE")
    return label.endswith(b"PRIVATE KEY")


def pem_problem(data: bytes, kind: PemKind, exc: BaseException) -> str:
    """Why `data` gave no readable PEM `kind`, in our words: empty, DER, the wrong kind of
    block, truncated, damaged base64. When the blocks look whole, the parser's own
    complaint (`exc`), without the FAQ link cryptography appends to it."""
    if not data.strip():
        return "it is empty"
    labels = _PEM_BEGIN.findall(data)
    if not labels:
        if data[:1] == b"\x30":  # a DER SEQUENCE: the binary form of a certificate or a key
            tool = "x509" if kind == "certificate" else "pkey"
            return f"it is DER, not PEM; convert it with: openssl {tool} -inform DER -outform PEM"
        return f"no '-----BEGIN ...-----' line: not PEM text holding a {kind}"
    if not any(_is_kind(label, kind) for label in labels):
        found = labels[0].decode().lower()
        return f"it holds a {found}, not a {kind}"
    whole = {label for label, _ in _PEM_BLOCK.findall(data)}
    for label in labels:
        if _is_kind(label, kind) and label not in whole:
            return f"truncated: '-----BEGIN {label.decode()}-----' has no END line"
    for label, body in _PEM_BLOCK.findall(data):
        if _is_kind(label, kind):
            try:
                base64.b64decode(b"".join(body.split()), validate=True)
            except binascii.Error:
                return f"damaged: the base64 inside '-----BEGIN {label.decode()}-----' is broken"
    return _FAQ_LINK.sub("", describe_error(exc))


def load_pem_certificates(pem: bytes | str, *, what: str) -> tuple[x509.Certificate, ...]:
    """Every certificate in `pem`. Raises `BundleError` naming `what` if there are none,
    or if `pem` cannot be read at all (a str that is not text, a certificate whose
    outer structure is broken), saying why in our words (`pem_problem`). Certificates
    are parsed lazily: the caller reads them."""
    with mapped(lambda problem: BundleError(f"{what}: no readable PEM certificate ({problem})")):
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            return tuple(x509.load_pem_x509_certificates(data))
        except Exception as exc:  # cryptography's words end in a link to its FAQ
            problem = pem_problem(data, "certificate", exc)
            raise BundleError(f"{what}: no readable PEM certificate ({problem})") from exc


@dataclass(frozen=True, slots=True)
class X509Bundle:
    """The X.509 authorities of one trust domain, with the bundle's sequence and refresh hint.

    ``authorities`` may be empty: ``{"keys": []}`` is a valid bundle that trusts nothing (B-1).
    """

    trust_domain: TrustDomain
    authorities: tuple[x509.Certificate, ...]
    sequence: int | None = None
    refresh_hint: timedelta | None = None
    _anchors: tuple[CertFacts, ...] = field(default=(), init=False, repr=False, compare=False)
    _ders: frozenset[bytes] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Read every root once, in full: verification then costs no per-root parsing, and
        a root that cryptography cannot read fails here, as a `BundleError`, not later."""
        anchors = []
        ders = set()
        for index, root in enumerate(self.authorities):
            try:
                with mapped(BundleError):
                    anchors.append(read_signer(root, -1))
                    ders.add(root.public_bytes(serialization.Encoding.DER))
            except MeshError as exc:
                raise BundleError(
                    f"bundle for {self.trust_domain}: authority {index} is unreadable ({exc})"
                ) from exc
        object.__setattr__(self, "_anchors", tuple(anchors))
        object.__setattr__(self, "_ders", frozenset(ders))

    @classmethod
    def from_pem(cls, trust_domain: TrustDomain | str, pem: bytes | str) -> X509Bundle:
        """Roots from PEM text. Raises `BundleError` if it holds no certificate, or any
        that cannot be read in full."""
        td = _as_trust_domain(trust_domain)
        with mapped(lambda problem: BundleError(f"bundle for {td}: unreadable ({problem})")):
            return cls(td, load_pem_certificates(pem, what=f"bundle for {td}"))

    @classmethod
    def from_spiffe_bundle(cls, trust_domain: TrustDomain | str, text: str | bytes) -> X509Bundle:
        """Parse a SPIFFE bundle (a JWKS document). Raises `BundleError` naming the rule."""
        td = _as_trust_domain(trust_domain)
        what = f"SPIFFE bundle for {td}"
        with mapped(lambda problem: BundleError(f"{what}: unreadable ({problem})")):
            return cls._from_jwks(td, _loads_strict(text, what=what))

    @classmethod
    def _from_jwks(cls, td: TrustDomain, document: _Json) -> X509Bundle:
        if not isinstance(document, dict):
            raise BundleError(f"SPIFFE bundle for {td} is not a JSON object", rule="B-1")
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise BundleError(f"SPIFFE bundle for {td} has no 'keys' array", rule="B-1")
        authorities: list[x509.Certificate] = []
        for index, key in enumerate(keys):
            if not isinstance(key, dict):
                raise BundleError(f"SPIFFE bundle for {td}: keys[{index}] is not an object")
            for member in ("use", "kty"):  # RFC 7517: strings; anything else is corrupt
                if member in key and not isinstance(key[member], str):
                    raise BundleError(
                        f"SPIFFE bundle for {td}: keys[{index}].{member} is not a string"
                    )
            # B-2: an unknown kty or use, or a JWT authority, is skipped on its own.
            if key.get("use") != "x509-svid" or key.get("kty") not in _KNOWN_KTY:
                continue
            x5c = key.get("x5c")
            if x5c is None:  # B-3: an x509-svid entry without x5c is ignored
                continue
            authorities.append(_authority_from_x5c(td, index, x5c))
        return cls(
            td,
            tuple(authorities),
            sequence=_sequence(td, document.get("spiffe_sequence")),
            refresh_hint=_refresh_hint(td, document.get("spiffe_refresh_hint")),
        )

    @property
    def refresh_interval(self) -> timedelta:
        """How soon to fetch this bundle again: its hint, else about 5 minutes (B-5)."""
        return self.refresh_hint if self.refresh_hint is not None else DEFAULT_REFRESH_HINT

    def check_update(self, new: X509Bundle) -> None:
        """Raise `BundleError` if `new` may not replace this bundle (B-4 rollback, wrong domain)."""
        if new.trust_domain != self.trust_domain:
            raise BundleError(f"bundle for {new.trust_domain} cannot replace {self.trust_domain}")
        if self.sequence is not None and new.sequence is not None and new.sequence < self.sequence:
            raise BundleError(
                f"bundle for {self.trust_domain} goes back from spiffe_sequence"
                f" {self.sequence} to {new.sequence}",
                rule="B-4",
            )

    @property
    def anchors(self) -> tuple[CertFacts, ...]:
        """The authorities with their signing facts (S-1..S-4), in bundle order."""
        return self._anchors

    @property
    def authority_ders(self) -> frozenset[bytes]:
        """The DER of each authority: how a handshake's verified root is matched (L-10)."""
        return self._ders

    @property
    def pem(self) -> bytes:
        """All authorities as PEM, for a TLS library's trust store."""
        return b"".join(a.public_bytes(serialization.Encoding.PEM) for a in self.authorities)


def _authority_from_x5c(td: TrustDomain, index: int, x5c: _Json) -> x509.Certificate:
    if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
        raise BundleError(f"SPIFFE bundle for {td}: keys[{index}].x5c is not a list of base64 DER")
    try:
        with mapped(BundleError):
            return x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except (MeshError, binascii.Error) as exc:
        raise BundleError(
            f"SPIFFE bundle for {td}: keys[{index}].x5c[0] is not a DER certificate ({exc})",
            rule="B-3",
        ) from exc


def _sequence(td: TrustDomain, value: _Json) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BundleError(
            f"SPIFFE bundle for {td}: spiffe_sequence {shown(repr(value))} is not a count"
        )
    return value


def _refresh_hint(td: TrustDomain, value: _Json) -> timedelta | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise BundleError(
            f"SPIFFE bundle for {td}: spiffe_refresh_hint {shown(repr(value))} is not a"
            " number of seconds",
            rule="B-5",
        )
    if value > MAX_REFRESH_HINT.total_seconds():
        raise BundleError(
            f"SPIFFE bundle for {td}: spiffe_refresh_hint {shown(repr(value))[1:-1]} is over"
            f" {MAX_REFRESH_HINT.days} days",
            rule="B-5",
        )
    return timedelta(seconds=value)


class _RefusedJsonError(Exception):
    """Raised by the `json.loads` hooks; `_loads_strict` turns it into a `BundleError`."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.message, self.rule = message, rule


def _reject_duplicates(pairs: list[tuple[str, _Json]]) -> dict[str, _Json]:
    """`json.loads` hook: a repeated key is an error, not "last one wins" (B-6)."""
    result: dict[str, _Json] = {}
    for key, value in pairs:
        if key in result:
            raise _RefusedJsonError(f"duplicate key {shown(key)} in JSON", rule="B-6")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    """`json.loads` hook: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259)."""
    raise _RefusedJsonError(f"{name} is not a JSON number")


def _loads_strict(text: str | bytes, *, what: str) -> _Json:
    try:
        return cast(
            _Json,
            json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant),
        )
    except _RefusedJsonError as exc:
        if exc.rule is None:
            raise BundleError(f"{what} is not valid JSON ({exc.message})") from None
        raise BundleError(f"{what}: {exc.message}", rule=exc.rule) from None
    except json.JSONDecodeError as exc:  # in words, not the exception's type name
        where = f"line {exc.lineno}, column {exc.colno}"
        raise BundleError(f"{what} is not valid JSON ({exc.msg} at {where})") from exc
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{what} is not valid JSON ({describe_error(exc)})") from exc


class BundleSet(Mapping[TrustDomain, X509Bundle]):
    """Bundles by trust domain: ours plus any federated ones. Immutable.

    Lookups accept a `TrustDomain`. Building one from a mapping whose keys name the
    same trust domain twice is a `BundleError` (B-6).
    """

    __slots__ = ("_bundles",)

    def __init__(self, bundles: Mapping[TrustDomain, X509Bundle] | None = None) -> None:
        self._bundles: dict[TrustDomain, X509Bundle] = {}
        for td, bundle in (bundles or {}).items():
            if bundle.trust_domain != td:
                raise BundleError(f"bundle for {bundle.trust_domain} filed under {td}")
            self._bundles[td] = bundle

    @classmethod
    def from_pem(
        cls, pems: Mapping[str, bytes | str] | Mapping[TrustDomain, bytes | str]
    ) -> BundleSet:
        """``{"example.org": pem_bytes, ...}``: the roots of each trust domain, as PEM.

        Raises `BundleError`, naming the trust domain, for any that cannot be read."""
        with mapped(lambda problem: BundleError(f"PEM bundles: unreadable ({problem})")):
            return cls._build(
                X509Bundle.from_pem(_as_trust_domain(td), pem) for td, pem in pems.items()
            )

    @classmethod
    def from_spiffe_bundles(
        cls, documents: Mapping[str, str | bytes] | Mapping[TrustDomain, str | bytes]
    ) -> BundleSet:
        """``{"example.org": jwks_json_text, ...}``: one SPIFFE bundle document per trust domain.

        Raises `BundleError`, naming the trust domain, for any that cannot be read."""
        with mapped(lambda problem: BundleError(f"SPIFFE bundles: unreadable ({problem})")):
            return cls._build(
                X509Bundle.from_spiffe_bundle(_as_trust_domain(td), text)
                for td, text in documents.items()
            )

    @classmethod
    def from_federated_json(cls, text: str | bytes) -> BundleSet:
        """A bundle map ``{"<trust domain or spiffe://td>": <SPIFFE bundle>, ...}`` as JSON text.

        A trust domain named twice is an error, even though plain `json.loads` keeps the last
        one silently (B-6).
        """
        what = "federated bundle map"
        with mapped(lambda problem: BundleError(f"{what}: unreadable ({problem})")):
            document = _loads_strict(text, what=what)
            if not isinstance(document, dict):
                raise BundleError(f"{what} is not a JSON object")
            return cls._build(
                X509Bundle._from_jwks(_as_trust_domain(key, where=f"{what}: "), value)
                for key, value in document.items()
            )

    @classmethod
    def _build(cls, bundles: Iterator[X509Bundle] | list[X509Bundle]) -> BundleSet:
        result: dict[TrustDomain, X509Bundle] = {}
        for bundle in bundles:
            if bundle.trust_domain in result:
                raise BundleError(f"trust domain {bundle.trust_domain} appears twice", rule="B-6")
            result[bundle.trust_domain] = bundle
        return cls(result)

    def with_bundle(self, bundle: X509Bundle) -> BundleSet:
        """A new set with `bundle` added or replacing its domain's. Raises on rollback (B-4)."""
        current = self._bundles.get(bundle.trust_domain)
        if current is not None:
            current.check_update(bundle)
        return BundleSet({**self._bundles, bundle.trust_domain: bundle})

    def replaced_by(self, new: BundleSet) -> BundleSet:
        """Apply a full-state update (B-7): domains absent from `new` are dropped.

        Raises `BundleError` if any domain's sequence goes backwards (B-4); then nothing changes.
        """
        for td, bundle in new.items():
            current = self._bundles.get(td)
            if current is not None:
                current.check_update(bundle)
        return new

    def __getitem__(self, trust_domain: TrustDomain) -> X509Bundle:
        return self._bundles[trust_domain]

    def __iter__(self) -> Iterator[TrustDomain]:
        return iter(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)

    def __repr__(self) -> str:
        inner = ", ".join(f"{td}: {len(b.authorities)} roots" for td, b in self._bundles.items())
        return f"BundleSet({{{inner}}})"
