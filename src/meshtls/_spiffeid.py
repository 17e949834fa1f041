"""SPIFFE IDs and trust domain names, parsed strictly (SPIFFE-ID.md, rules ID-1..ID-15).

Theory of operation: parsing sits on the handshake path, so the common case is a
single anchored `re.fullmatch` (never ``$``, which would let a trailing newline
through). Only when that fails do we walk the text again to name the rule that
broke, for the error message.

py-spiffe's `spiffe.SpiffeId` lowercases the trust domain and accepts a trailing
newline; these types do neither. Uppercase is rejected here (ID-5); a config loader
that wants to normalise must lowercase explicitly and say so.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from ._boundary import shown
from ._errors import SpiffeIdError

SCHEME_PREFIX: Final = "spiffe://"
MAX_ID_BYTES: Final = 2048
MAX_TRUST_DOMAIN_BYTES: Final = 255

_TD_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS: Final = _TD_CHARS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

# Fast path only: a match still needs the '.'/'..' segment and length checks.
_ID_RE: Final = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[a-zA-Z0-9._-]+)*)")
_TD_RE: Final = re.compile(r"[a-z0-9._-]+")


_SHOWN: Final = 80  # characters of an id in a message: ids come from peers


def _trust_domain_error(name: str) -> SpiffeIdError:
    """Name the first rule that the trust domain `name` breaks."""
    if not name:
        return SpiffeIdError("trust domain is empty", rule="ID-2")
    if "@" in name:
        return SpiffeIdError(f"trust domain {shown(name, _SHOWN)} has userinfo", rule="ID-4")
    if ":" in name:
        return SpiffeIdError(f"trust domain {shown(name, _SHOWN)} has a port", rule="ID-4")
    if "%" in name:
        return SpiffeIdError(f"trust domain {shown(name, _SHOWN)} is percent-encoded", rule="ID-7")
    if any("A" <= ch <= "Z" for ch in name):
        return SpiffeIdError(f"trust domain {shown(name, _SHOWN)} is not lowercase", rule="ID-5")
    bad = next((ch for ch in name if ch not in _TD_CHARS), None)
    if bad is not None:
        return SpiffeIdError(
            f"trust domain {shown(name, _SHOWN)} has the character {bad!r}; allowed: a-z 0-9 . - _",
            rule="ID-6",
        )
    return SpiffeIdError(
        f"trust domain is {len(name.encode())} bytes, over {MAX_TRUST_DOMAIN_BYTES}", rule="ID-14"
    )


def _check_trust_domain_name(name: str) -> None:
    if _TD_RE.fullmatch(name) is None or len(name) > MAX_TRUST_DOMAIN_BYTES:
        raise _trust_domain_error(name)


def _path_error(path: str) -> SpiffeIdError | None:
    """The first rule that `path` (empty, or starting with '/') breaks, or None."""
    if not path:
        return None
    if not path.startswith("/"):
        return SpiffeIdError(f"path {shown(path, _SHOWN)} does not start with '/'", rule="ID-13")
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if not segment:
            if index == len(segments) - 1:
                return SpiffeIdError(f"path {shown(path, _SHOWN)} has a trailing '/'", rule="ID-12")
            return SpiffeIdError(f"path {shown(path, _SHOWN)} has an empty segment", rule="ID-10")
        if segment in (".", ".."):
            return SpiffeIdError(
                f"path {shown(path, _SHOWN)} has a {segment!r} segment", rule="ID-11"
            )
        if "%" in segment:
            return SpiffeIdError(f"path {shown(path, _SHOWN)} is percent-encoded", rule="ID-9")
        bad = next((ch for ch in segment if ch not in _PATH_CHARS), None)
        if bad is not None:
            return SpiffeIdError(
                f"path {shown(path, _SHOWN)} has the character {bad!r}; allowed: a-z A-Z 0-9 . - _",
                rule="ID-13",
            )
    return None


def _id_error(text: str) -> SpiffeIdError:
    """Name the first rule that the SPIFFE ID `text` breaks (called only on failure)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return SpiffeIdError(f"SPIFFE ID is over {MAX_ID_BYTES} bytes", rule="ID-14")
    if not text.startswith(SCHEME_PREFIX):
        return SpiffeIdError(f"{shown(text, _SHOWN)} does not start with 'spiffe://'", rule="ID-1")
    rest = text[len(SCHEME_PREFIX) :]
    if "?" in rest or "#" in rest:
        return SpiffeIdError(f"{shown(text, _SHOWN)} has a query or fragment", rule="ID-3")
    name, slash, path = rest.partition("/")
    try:
        _check_trust_domain_name(name)
    except SpiffeIdError as exc:
        return exc
    error = _path_error(slash + path)
    if error is None:  # pragma: no cover - the fast path accepts whatever gets here
        return SpiffeIdError(f"{shown(text, _SHOWN)} is not a SPIFFE ID", rule="ID-13")
    return error


@functools.total_ordering
class TrustDomain:
    """A trust domain name such as ``example.org``. Immutable, hashable, ordered by name."""

    __slots__ = ("_name",)
    _name: str

    def __init__(self, name: str) -> None:
        _check_trust_domain_name(name)
        object.__setattr__(self, "_name", name)

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Parse a bare name (``example.org``) or a SPIFFE ID, whose trust domain is taken.

        Raises `SpiffeIdError` naming the broken rule. Anything with a scheme (``:/``) is
        read as an id, so a wrong scheme is reported as one (ID-1), not as a port (ID-4).
        """
        if text.startswith(SCHEME_PREFIX) or ":/" in text:
            return SpiffeId.parse(text).trust_domain
        return cls(text)

    @property
    def name(self) -> str:
        return self._name

    def id(self) -> SpiffeId:
        """The root id of this trust domain, ``spiffe://<name>``."""
        return SpiffeId._make(self, "")

    def __str__(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"TrustDomain({self._name!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TrustDomain):
            return self._name == other._name
        return NotImplemented

    def __lt__(self, other: TrustDomain) -> bool:
        return self._name < other._name

    def __hash__(self) -> int:
        return hash(self._name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type[TrustDomain], tuple[str]]:
        return (TrustDomain, (self._name,))


@functools.total_ordering
class SpiffeId:
    """A SPIFFE ID: a trust domain and a case-sensitive path. Immutable, hashable, ordered.

    `str()` gives the canonical text, and ``SpiffeId.parse(str(sid)) == sid``.
    """

    __slots__ = ("_path", "_text", "_trust_domain")
    _trust_domain: TrustDomain
    _path: str
    _text: str

    def __init__(self, trust_domain: TrustDomain, path: str = "") -> None:
        """Build from parts; `path` is ``""`` (the root id) or ``"/seg/seg"``."""
        error = _path_error(path)
        if error is not None:
            raise error
        text = f"{SCHEME_PREFIX}{trust_domain.name}{path}"
        if len(text.encode()) > MAX_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID is over {MAX_ID_BYTES} bytes", rule="ID-14")
        self._set(trust_domain, path, text)

    def _set(self, trust_domain: TrustDomain, path: str, text: str) -> None:
        object.__setattr__(self, "_trust_domain", trust_domain)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_text", text)

    @classmethod
    def _make(cls, trust_domain: TrustDomain, path: str) -> SpiffeId:
        sid = cls.__new__(cls)
        sid._set(trust_domain, path, f"{SCHEME_PREFIX}{trust_domain.name}{path}")
        return sid

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse `text` strictly. Raises `SpiffeIdError` naming the broken rule."""
        if not isinstance(text, str):
            raise TypeError(f"SpiffeId.parse() takes a str, not {type(text).__name__}")
        match = _ID_RE.fullmatch(text)
        if match is None:
            raise _id_error(text)
        name, path = match.group(1, 2)
        if (
            len(name) > MAX_TRUST_DOMAIN_BYTES
            or len(text) > MAX_ID_BYTES
            or ("/." in path and _path_error(path) is not None)
        ):
            raise _id_error(text)
        trust_domain = TrustDomain.__new__(TrustDomain)
        object.__setattr__(trust_domain, "_name", name)
        sid = cls.__new__(cls)
        sid._set(trust_domain, path, text)
        return sid

    @classmethod
    def from_segments(cls, trust_domain: TrustDomain | str, *segments: str) -> SpiffeId:
        """``from_segments("example.org", "ns", "prod")`` is ``spiffe://example.org/ns/prod``."""
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain(trust_domain)
        return cls(td, "".join("/" + segment for segment in segments))

    @property
    def trust_domain(self) -> TrustDomain:
        return self._trust_domain

    @property
    def path(self) -> str:
        """The path: ``""`` for the root id, else ``/seg`` segments. Case-sensitive (ID-15)."""
        return self._path

    @property
    def is_root(self) -> bool:
        """True for ``spiffe://td``, which no workload may hold (L-3)."""
        return not self._path

    def is_member_of(self, trust_domain: TrustDomain) -> bool:
        return self._trust_domain == trust_domain

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"SpiffeId({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SpiffeId):
            return self._text == other._text
        return NotImplemented

    def __lt__(self, other: SpiffeId) -> bool:
        return (self._trust_domain.name, self._path) < (other._trust_domain.name, other._path)

    def __hash__(self) -> int:
        return hash(self._text)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (SpiffeId.parse, (self._text,))
