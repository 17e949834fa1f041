"""The verified-chain shim (meshtls._compat): fails loudly if either CPython shape changes.

3.13+: public `SSLObject.get_verified_chain()` returning DER bytes. 3.11/3.12: only the
private `SSLObject._sslobj.get_verified_chain()`, returning `_ssl.Certificate` objects.
"""

from __future__ import annotations

import ssl
import sys

from cryptography.hazmat.primitives.serialization import Encoding

from meshtls._tls import TlsContexts, TlsSession

from .meshnet import Mesh


def handshake(client: TlsSession, server: TlsSession) -> None:
    for _ in range(4):
        client_done, server_done = client.handshake(), server.handshake()
        server.feed(client.outgoing())
        client.feed(server.outgoing())
        if client_done and server_done:
            return
    raise AssertionError("the handshake did not complete")


def test_verified_and_unverified_chains_are_der_on_this_python() -> None:
    mesh = Mesh()
    server_ctx: TlsContexts = mesh.server.contexts()
    client_ctx: TlsContexts = mesh.client.contexts()
    server = server_ctx.session(server_side=True)
    client = client_ctx.session(server_side=False)
    handshake(client, server)

    root = mesh.ca.certificate.public_bytes(Encoding.DER)
    client_chain = [c.public_bytes(Encoding.DER) for c in client_ctx.svid.chain]
    # the server verified the client: leaf, intermediate, then our root
    assert server.verified_chain() == [*client_chain, root]
    assert server.unverified_chain() == client_chain
    assert client.verified_chain() == [
        server_ctx.svid.leaf.public_bytes(Encoding.DER),
        root,
    ]
    assert all(isinstance(der, bytes) for der in server.verified_chain())


def test_the_shape_the_shim_relies_on() -> None:
    if sys.version_info >= (3, 13):
        assert hasattr(ssl.SSLObject, "get_verified_chain")
        assert hasattr(ssl.SSLObject, "get_unverified_chain")
    else:
        assert not hasattr(ssl.SSLObject, "get_verified_chain")
        sslobj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
        private = sslobj._sslobj  # type: ignore[attr-defined]
        assert callable(private.get_verified_chain)
        assert callable(private.get_unverified_chain)
