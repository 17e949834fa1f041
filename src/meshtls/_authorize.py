"""Authorizers: who, among verified peers, may talk to us.

An authorizer is a plain callable that takes a `VerifiedPeer` and returns None, or
raises `UnauthorizedPeerError` (reason ``unauthorized``) naming the peer. Every place
that accepts a peer requires one, so "anyone verified" must be written out as
`authorize_any()`. Each is a frozen value with a readable repr for logs and config.

`IdPattern` is the one text syntax for a set of ids, used by ``allow``/``expect`` in the
config and ``--allow``/``--expect`` on the command line; each form is one of the
authorizers below:

- ``spiffe://td/path``: exactly that id (`authorize_id`);
- ``spiffe://td/ns/prod/*``: ``/ns/prod`` and every id below it, whole segments only
  (`authorize_path_prefix`; ``/ns/production`` does not match);
- ``spiffe://td``: any member of ``td`` (`authorize_member_of`).

Anything else with a ``*`` (``spiffe://td/*``, ``/ns/prod*``, ``/ns/*/web``), and a bare
``td`` without the scheme, is refused: each could be read two ways.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._boundary import shown
from ._errors import ConfigError, SpiffeIdError, UnauthorizedPeerError
from ._spiffeid import SCHEME_PREFIX, SpiffeId, TrustDomain, _path_error
from ._svid import VerifiedPeer

Authorizer = Callable[[VerifiedPeer], None]


def _as_id(value: SpiffeId | str) -> SpiffeId:
    return value if isinstance(value, SpiffeId) else SpiffeId.parse(value)


def _as_td(value: TrustDomain | str) -> TrustDomain:
    return value if isinstance(value, TrustDomain) else TrustDomain.parse(value)


@dataclass(frozen=True, slots=True)
class _Any:
    def __call__(self, peer: VerifiedPeer) -> None:
        return None

    def __repr__(self) -> str:
        return "authorize_any()"


@dataclass(frozen=True, slots=True)
class _OneOf:
    ids: frozenset[SpiffeId]

    def __call__(self, peer: VerifiedPeer) -> None:
        if peer.spiffe_id not in self.ids:
            expected = ", ".join(sorted(map(str, self.ids)))
            raise UnauthorizedPeerError(f"peer {peer.spiffe_id} is not {expected}")

    def __repr__(self) -> str:
        return f"authorize_one_of({', '.join(sorted(map(repr, map(str, self.ids))))})"


@dataclass(frozen=True, slots=True)
class _MemberOf:
    trust_domain: TrustDomain

    def __call__(self, peer: VerifiedPeer) -> None:
        if peer.spiffe_id.trust_domain != self.trust_domain:
            raise UnauthorizedPeerError(
                f"peer {peer.spiffe_id} is not a member of trust domain {self.trust_domain}"
            )

    def __repr__(self) -> str:
        return f"authorize_member_of({str(self.trust_domain)!r})"


@dataclass(frozen=True, slots=True)
class _PathPrefix:
    trust_domain: TrustDomain
    prefix: str

    def __call__(self, peer: VerifiedPeer) -> None:
        sid = peer.spiffe_id
        path = sid.path
        if sid.trust_domain == self.trust_domain and (
            path == self.prefix or path.startswith(self.prefix + "/")
        ):
            return
        raise UnauthorizedPeerError(
            f"peer {sid} is not under spiffe://{self.trust_domain}{self.prefix}"
        )

    def __repr__(self) -> str:
        return f"authorize_path_prefix({str(self.trust_domain)!r}, {self.prefix!r})"


@dataclass(frozen=True, slots=True)
class _AnyOf:
    authorizers: tuple[Authorizer, ...]

    def __call__(self, peer: VerifiedPeer) -> None:
        refusals: list[str] = []
        for authorizer in self.authorizers:
            try:
                authorizer(peer)
            except UnauthorizedPeerError as exc:
                refusals.append(str(exc).removeprefix("unauthorized: "))
            else:
                return
        raise UnauthorizedPeerError("; ".join(refusals) or f"peer {peer.spiffe_id}: no authorizer")

    def __repr__(self) -> str:
        return f"any_of({', '.join(map(repr, self.authorizers))})"


@dataclass(frozen=True, slots=True)
class _AllOf:
    authorizers: tuple[Authorizer, ...]

    def __call__(self, peer: VerifiedPeer) -> None:
        for authorizer in self.authorizers:
            authorizer(peer)

    def __repr__(self) -> str:
        return f"all_of({', '.join(map(repr, self.authorizers))})"


def authorize_any() -> Authorizer:
    """Accept every peer that passed verification, from any trusted trust domain."""
    return _Any()


def authorize_id(spiffe_id: SpiffeId | str) -> Authorizer:
    """Accept exactly one SPIFFE ID. A string is parsed strictly (`SpiffeIdError`)."""
    return _OneOf(frozenset({_as_id(spiffe_id)}))


def authorize_one_of(*spiffe_ids: SpiffeId | str) -> Authorizer:
    """Accept any of the given SPIFFE IDs. At least one is required (`ConfigError`)."""
    if not spiffe_ids:
        raise ConfigError("authorize_one_of() needs at least one SPIFFE ID")
    return _OneOf(frozenset(map(_as_id, spiffe_ids)))


def authorize_member_of(trust_domain: TrustDomain | str) -> Authorizer:
    """Accept any id in `trust_domain`."""
    return _MemberOf(_as_td(trust_domain))


def authorize_path_prefix(trust_domain: TrustDomain | str, prefix: str) -> Authorizer:
    """Accept ids in `trust_domain` whose path is `prefix` or lies below it.

    The prefix matches whole segments only: ``/ns/prod`` accepts ``/ns/prod`` and
    ``/ns/prod/web`` but not ``/ns/production``. It must be a valid, non-empty path.
    """
    error = _path_error(prefix)
    if not prefix or error is not None:
        raise SpiffeIdError(
            f"path prefix {prefix!r} is not a SPIFFE ID path"
            + (f": {str(error).rsplit(' (', 1)[0]}" if error else ""),
            rule=error.rule if error else "ID-12",
        )
    return _PathPrefix(_as_td(trust_domain), prefix)


WILDCARD = "/*"


def split_pattern(text: str) -> tuple[str, bool]:
    """`text` as (the SPIFFE ID it is built on, whether it ends in ``/*``).

    Raises `ConfigError` for the forms that could be read two ways (see the module).
    The caller parses the id, so that config input can be normalised as config does.
    """
    if not text.startswith(SCHEME_PREFIX):
        hint = (
            f"; for any member of a trust domain write {SCHEME_PREFIX}{text}"
            if "/" not in text and ":" not in text and text
            else ""
        )
        raise ConfigError(
            f"{shown(text)} is not a SPIFFE ID pattern: write spiffe://td/path (one id),"
            f" spiffe://td/path/* (that path and below) or spiffe://td (any member){hint}"
        )
    subtree = text.endswith(WILDCARD)
    base = text.removesuffix(WILDCARD) if subtree else text
    if "*" in base:
        raise ConfigError(
            f"{shown(text)}: '*' goes only at the very end, as a whole segment after '/'"
            " (spiffe://td/ns/prod/*); partial segments and inner wildcards are not patterns"
        )
    if subtree and "/" not in base.removeprefix(SCHEME_PREFIX):
        raise ConfigError(
            f"{shown(text)}: for any member of a trust domain write {shown(base)}, without '/*'"
        )
    return base, subtree


@dataclass(frozen=True, slots=True)
class IdPattern:
    """One ``allow``/``expect`` entry: an exact id, a path and everything below it, or a
    whole trust domain (the forms are in the module docstring). ``str()`` gives it back
    as written canonically; `authorizer` gives the authorizer it stands for."""

    trust_domain: TrustDomain
    path: str = ""  # "" with subtree False: any member of trust_domain
    subtree: bool = False

    @classmethod
    def parse(cls, text: str) -> IdPattern:
        """Parse the pattern syntax strictly (`ConfigError`, or `SpiffeIdError` for the id)."""
        base, subtree = split_pattern(text)
        return cls.of(SpiffeId.parse(base), subtree=subtree)

    @classmethod
    def of(cls, spiffe_id: SpiffeId, *, subtree: bool = False) -> IdPattern:
        """The pattern for `spiffe_id` (a root id: the whole trust domain), or its subtree."""
        if subtree and spiffe_id.is_root:
            raise ConfigError(f"write {spiffe_id} for any member, without '/*'")
        return cls(spiffe_id.trust_domain, spiffe_id.path, subtree)

    @property
    def is_member_of(self) -> bool:
        return not self.path

    def authorizer(self) -> Authorizer:
        if self.is_member_of:
            return authorize_member_of(self.trust_domain)
        if self.subtree:
            return authorize_path_prefix(self.trust_domain, self.path)
        return authorize_id(SpiffeId(self.trust_domain, self.path))

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}{WILDCARD if self.subtree else ''}"


def authorize_patterns(*patterns: IdPattern | SpiffeId) -> Authorizer:
    """Accept a peer that any of `patterns` matches (a `SpiffeId` is its exact pattern).

    Exact ids are gathered into one `authorize_one_of`, so a list of plain ids refuses
    with the same message as before patterns existed. At least one (`ConfigError`).
    """
    if not patterns:
        raise ConfigError("authorize_patterns() needs at least one pattern")
    exact: list[SpiffeId] = []
    others: list[Authorizer] = []
    for pattern in patterns:
        if isinstance(pattern, SpiffeId):
            exact.append(pattern)
        elif not pattern.is_member_of and not pattern.subtree:
            exact.append(SpiffeId(pattern.trust_domain, pattern.path))
        else:
            others.append(pattern.authorizer())
    authorizers = ([authorize_one_of(*exact)] if exact else []) + others
    return authorizers[0] if len(authorizers) == 1 else any_of(*authorizers)


def any_of(*authorizers: Authorizer) -> Authorizer:
    """Accept a peer that at least one of `authorizers` accepts."""
    if not authorizers:
        raise ConfigError("any_of() needs at least one authorizer")
    return _AnyOf(tuple(authorizers))


def all_of(*authorizers: Authorizer) -> Authorizer:
    """Accept a peer only if every one of `authorizers` accepts it."""
    if not authorizers:
        raise ConfigError("all_of() needs at least one authorizer")
    return _AllOf(tuple(authorizers))
