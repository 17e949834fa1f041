"""Identity sources: where our SVID and the trust bundles come from.

A source answers one question, `contexts()`: the TLS contexts of the current
identity, built once per identity. Fixed values and live sources satisfy the same
one-method protocol (go-spiffe's model), so `connect` and `serve` take either.
Watching files, the local CA and the Workload API arrive with the node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from ._bundle import BundleSet, X509Bundle
from ._errors import BundleError, ConfigError, VerificationError
from ._svid import X509Svid
from ._tls import TlsContexts


class IdentitySource(Protocol):
    """Gives the TLS contexts of the current identity. Must not block or do I/O."""

    def contexts(self) -> TlsContexts: ...


class StaticSource:
    """A fixed SVID and bundle set, for tests and for programs that manage rotation."""

    __slots__ = ("_contexts",)

    def __init__(self, svid: X509Svid, bundles: BundleSet) -> None:
        self._contexts = TlsContexts.build(svid, bundles)

    def contexts(self) -> TlsContexts:
        return self._contexts

    def __repr__(self) -> str:
        return f"StaticSource({self._contexts.svid.spiffe_id})"


def load_bundle_file(path: Path, trust_domain: str) -> X509Bundle:
    """A bundle file: PEM roots, or a SPIFFE bundle (JSON, starts with ``{``)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        return X509Bundle.from_spiffe_bundle(trust_domain, data)
    return X509Bundle.from_pem(trust_domain, data)


class FileSource:
    """Our SVID and bundles from files, loaded when constructed.

    - `cert`: our leaf then its intermediates (PEM); `key`: the leaf's key (PEM).
    - `bundle`: the roots of our own trust domain (PEM, or a SPIFFE bundle JSON).
    - `federated`: ``{"other.org": "other-bundle.pem", ...}``, other trusted domains.

    Raises `ConfigError` with one line that names the file and what is wrong with it.
    """

    __slots__ = ("_contexts", "bundle", "cert", "federated", "key")

    def __init__(
        self,
        *,
        cert: str | Path,
        key: str | Path,
        bundle: str | Path,
        federated: dict[str, str | Path] | None = None,
    ) -> None:
        self.cert, self.key, self.bundle = Path(cert), Path(key), Path(bundle)
        self.federated = {td: Path(p) for td, p in (federated or {}).items()}
        self._contexts = self._load()

    def _load(self) -> TlsContexts:
        try:
            svid = X509Svid.load(self.cert.read_bytes(), self.key.read_bytes())
        except OSError as exc:
            raise ConfigError(f"{exc.filename}: {exc.strerror}") from None
        except (ValueError, VerificationError) as exc:
            raise ConfigError(f"{self.cert} / {self.key}: {exc}") from None
        own = str(svid.spiffe_id.trust_domain)
        bundles: list[X509Bundle] = []
        for td, path in [(own, self.bundle), *self.federated.items()]:
            try:
                bundles.append(load_bundle_file(path, td))
            except OSError as exc:
                raise ConfigError(f"{exc.filename}: {exc.strerror}") from None
            except (BundleError, json.JSONDecodeError, ValueError) as exc:
                raise ConfigError(f"{path}: {exc}") from None
        try:
            bundle_set = BundleSet._build(bundles)
        except BundleError as exc:
            raise ConfigError(f"bundles: {exc}") from None
        return TlsContexts.build(svid, bundle_set)

    def contexts(self) -> TlsContexts:
        return self._contexts

    def __repr__(self) -> str:
        files = f"cert={str(self.cert)!r}, key={str(self.key)!r}, bundle={str(self.bundle)!r}"
        return f"FileSource({files})"
