"""The one place that knows how each CPython exposes a TLS peer's certificate chains.

Python 3.13 has public `ssl.SSLObject.get_verified_chain()` and
`get_unverified_chain()`, returning DER `bytes`. On 3.11 and 3.12 the same
OpenSSL calls exist only on the private `SSLObject._sslobj`, and return
`_ssl.Certificate` objects whose `public_bytes(ENCODING_DER)` gives the DER.
tests/test_compat.py fails loudly if either shape changes.
"""

from __future__ import annotations

import _ssl
import ssl
import sys
from typing import Final, Protocol, cast

_ENCODING_DER: Final[int] = _ssl.ENCODING_DER


class _PrivateCertificate(Protocol):
    def public_bytes(self, format: int = ..., /) -> bytes | str: ...


def _der(items: list[bytes] | list[_PrivateCertificate] | None) -> list[bytes]:
    if not items:
        return []
    result: list[bytes] = []
    for item in items:
        if isinstance(item, bytes):
            result.append(item)
        else:
            data = item.public_bytes(_ENCODING_DER)
            result.append(data if isinstance(data, bytes) else data.encode())
    return result


if sys.version_info >= (3, 13):

    def verified_chain(tls: ssl.SSLObject) -> list[bytes]:
        """DER of the chain OpenSSL verified for the peer, leaf first, root last."""
        return _der(tls.get_verified_chain())

    def unverified_chain(tls: ssl.SSLObject) -> list[bytes]:
        """DER of the chain the peer sent, leaf first; [] if it sent none."""
        return _der(tls.get_unverified_chain())

    def unverified_chain_length(tls: ssl.SSLObject) -> int:
        """How many certificates the peer sent."""
        return len(tls.get_unverified_chain() or ())

else:

    def verified_chain(tls: ssl.SSLObject) -> list[bytes]:
        """DER of the chain OpenSSL verified for the peer, leaf first, root last."""
        private = cast(_PrivateSslObject, tls._sslobj)  # type: ignore[attr-defined]
        return _der(private.get_verified_chain())

    def unverified_chain(tls: ssl.SSLObject) -> list[bytes]:
        """DER of the chain the peer sent, leaf first; [] if it sent none."""
        private = cast(_PrivateSslObject, tls._sslobj)  # type: ignore[attr-defined]
        return _der(private.get_unverified_chain())

    def unverified_chain_length(tls: ssl.SSLObject) -> int:
        """How many certificates the peer sent."""
        private = cast(_PrivateSslObject, tls._sslobj)  # type: ignore[attr-defined]
        return len(private.get_unverified_chain() or ())


class _PrivateSslObject(Protocol):
    def get_verified_chain(self) -> list[_PrivateCertificate] | None: ...
    def get_unverified_chain(self) -> list[_PrivateCertificate] | None: ...
