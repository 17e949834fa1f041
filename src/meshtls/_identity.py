"""Our identity as a value: the SVID we present and the bundles we trust. No trio, no I/O.

An identity source publishes `Identity` values and nothing more (go-spiffe's
``x509svid.Source`` hands over an ``*SVID`` the same way). Who decides which one is
*active* is not the source's business: for a node it is the rotation task
(`meshtls._rotation`), which checks each value before it swaps it in; `connect` and
`serve` without a node use whatever the source holds.

The TLS contexts of an identity are built once, on first use, and kept with the value
(`Identity.contexts`): every handshake that uses one identity shares one context pair,
and no handshake builds any when rotation has built them before the swap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ._boundary import mapped
from ._bundle import BundleSet
from ._errors import MeshError, VerificationError
from ._svid import X509Svid
from ._tls import DEFAULT_GROUPS, TlsContexts


class NoIdentityError(MeshError):
    """A live source has no identity yet (its `run` task has not loaded one)."""


def _refused_by_tls(description: str) -> VerificationError:
    return VerificationError(
        "malformed_certificate", f"the TLS library refused this identity ({description})"
    )


@dataclass(frozen=True, slots=True, eq=False)
class Identity:
    """Our SVID and the bundles we trust, as one immutable value.

    Equality is identity: each publication is its own value, and a node compares the
    parts it cares about (the SVID's chain, the bundles' contents) itself.
    `crls` are DER CRLs the source delivered with it (the Workload API's ``crl`` field),
    each one readable as a CRL; they are not judged here (signature, freshness).
    """

    svid: X509Svid
    bundles: BundleSet
    crls: tuple[bytes, ...] = ()
    _built: dict[str, TlsContexts] = field(default_factory=dict, init=False, repr=False)

    def contexts(self, groups: str | None = None) -> TlsContexts:
        """The TLS context pair of this identity offering `groups` (None: the default,
        ``X25519MLKEM768:X25519``): built on the first call, then shared.

        Raises `VerificationError` (``malformed_certificate``) when the TLS library refuses
        the SVID, its key or a root, and `GroupsError` (a ValueError) for a groups list
        OpenSSL refuses; nothing is kept then, and the next call tries again.
        """
        key = DEFAULT_GROUPS if groups is None else groups
        built = self._built.get(key)
        if built is not None:
            return built
        with mapped(_refused_by_tls):  # GroupsError (a MeshError) passes through
            built = TlsContexts.build(self.svid, self.bundles, groups=key)
        self._built[key] = built
        return built

    def __repr__(self) -> str:
        return f"Identity({self.svid.spiffe_id}, {self.bundles!r})"


class IdentitySource(Protocol):
    """Where `connect`, `serve` and the node's listeners get our identity from.

    `identity` gives the current value; it must not block or do I/O. A fixed value
    (`StaticSource`), a live source and a node all satisfy it.
    """

    def identity(self) -> Identity: ...
