"""Hostile identity files: the inputs fuzzing found escaping the parsers as foreign types.

Each entry of `CORPUS` rewrites one file of a `FileSource` (our SVID ``svid.pem``, our
bundle ``bundle.pem``, or the federated bundle ``other.json``) with bytes that a parser
chokes on. They are made by hand from good certificates, so each stays one defect away
from a valid file. `write_identity` writes a good set of files for a `Files` layout.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from meshtls.testing import CA

#: RFC 5280 4.1.2.5: "no well-defined expiration date".
NO_EXPIRY: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_SPARE_OID: Final = x509.ObjectIdentifier("2.5.29.99")  # encodes as long as 2.5.29.14 (SKI)
_P256_OID: Final = bytes.fromhex("06082a8648ce3d030107")  # 1.2.840.10045.3.1.7
_V3: Final = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2: version 3


@dataclass(frozen=True)
class Files:
    """Where a test keeps a `FileSource`'s files: ours from `ca`, other.org from `other`."""

    directory: Path
    ca: CA
    other: CA

    @property
    def cert(self) -> Path:
        return self.directory / "svid.pem"

    @property
    def key(self) -> Path:
        return self.directory / "svid.key"

    @property
    def bundle(self) -> Path:
        return self.directory / "bundle.pem"

    @property
    def federated(self) -> Path:
        return self.directory / "other.json"


def replace(path: Path, data: bytes) -> None:
    """Replace `path` atomically, as a rotating agent does."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def spiffe_bundle(*roots: x509.Certificate, **extra: object) -> bytes:
    """A SPIFFE bundle (JWKS) holding `roots`, with `extra` top-level members."""
    keys = [
        {
            "use": "x509-svid",
            "kty": "EC",
            "x5c": [base64.b64encode(r.public_bytes(Encoding.DER)).decode()],
        }
        for r in roots
    ]
    return json.dumps({"keys": keys, **extra}).encode()


def write_identity(files: Files, spiffe_id: str = "spiffe://example.org/node") -> None:
    """A good SVID for `spiffe_id` from `files.ca`, both bundles, each file replaced atomically."""
    issued = files.ca.issue(spiffe_id)
    replace(files.cert, issued.chain_pem)
    replace(files.key, issued.key_pem)
    replace(files.bundle, files.ca.bundle_pem)
    replace(files.federated, spiffe_bundle(files.other.certificate))


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def _swap_once(der: bytes, old: bytes, new: bytes) -> bytes:
    assert der.count(old) >= 1, "the pattern to mutate is not in the certificate"
    return der.replace(old, new, 1)


def duplicate_extension_leaf(ca: CA) -> dict[str, bytes]:
    """Our leaf, with its key, holding two subject key identifiers (DuplicateExtension)."""
    spare = x509.UnrecognizedExtension(_SPARE_OID, b"\x04\x14" + b"\x01" * 20)
    issued = ca.issue("spiffe://example.org/node", extensions=[(spare, False)])
    der = issued.leaf.public_bytes(Encoding.DER)
    ski = ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string
    assert ski == "2.5.29.14"
    leaf = _swap_once(der, bytes.fromhex("0603551d63"), bytes.fromhex("0603551d0e"))
    return {"cert": _pem(leaf), "key": issued.key_pem}


def no_expiry_leaf(ca: CA) -> dict[str, bytes]:
    """Our leaf, with its key, valid until 99991231235959Z; properly signed."""
    issued = ca.issue("spiffe://example.org/node", not_after=NO_EXPIRY)
    return {"cert": issued.chain_pem, "key": issued.key_pem}


def no_expiry_root(files: Files) -> dict[str, bytes]:
    """Our SVID from a second root of our domain that is valid until 99991231235959Z.

    The bundle keeps the first root too, so the peers it trusted stay trusted.
    """
    forever = CA("example.org", now=files.ca.now, not_after=NO_EXPIRY, label="forever")
    issued = forever.issue("spiffe://example.org/node")
    bundle = files.ca.bundle_pem + forever.bundle_pem
    return {"key": issued.key_pem, "cert": issued.chain_pem, "bundle": bundle}


def curve_one_byte_off(ca: CA) -> bytes:
    """`ca`'s root with its EC curve OID one byte off (1.2.840.10045.3.1.8)."""
    der = ca.certificate.public_bytes(Encoding.DER)
    return _pem(_swap_once(der, _P256_OID, _P256_OID[:-1] + b"\x08"))


def version_34(ca: CA) -> bytes:
    """`ca`'s root claiming X.509 version 34."""
    der = ca.certificate.public_bytes(Encoding.DER)
    return _pem(_swap_once(der, _V3, _V3[:-1] + b"\x21"))


def _nested(depth: int) -> bytes:
    return b'{"keys": ' + b"[" * depth + b"]" * depth + b"}"


def _kty_list(other: CA) -> bytes:
    document = json.loads(spiffe_bundle(other.certificate))
    document["keys"][0]["kty"] = ["EC"]
    return json.dumps(document).encode()


def _lone_surrogate(other: CA) -> bytes:
    document = json.loads(spiffe_bundle(other.certificate))
    document["keys"][0]["x5c"] = ["\ud800"]
    return json.dumps(document).encode()  # json escapes it: "\\ud800"


def _hint(files: Files, value: bytes) -> bytes:
    document = spiffe_bundle(files.other.certificate)
    assert document.endswith(b"}")
    return document[:-1] + b', "spiffe_refresh_hint": ' + value + b"}"


Rewrite = Callable[[Files], dict[str, bytes]]

#: name -> what to write: {"cert" | "key" | "bundle" | "federated": new contents}
CORPUS: Final[dict[str, Rewrite]] = {
    "duplicate extension in our leaf": lambda f: duplicate_extension_leaf(f.ca),
    "notAfter 9999 on our leaf": lambda f: no_expiry_leaf(f.ca),
    "our SVID from a root with notAfter 9999": no_expiry_root,
    "refresh hint Infinity": lambda f: {"federated": _hint(f, b"Infinity")},
    "refresh hint NaN": lambda f: {"federated": _hint(f, b"NaN")},
    "refresh hint 1e300": lambda f: {"federated": _hint(f, b"1e300")},
    "arrays nested 100,000 deep": lambda f: {"federated": _nested(100_000)},
    'kty ["EC"]': lambda f: {"federated": _kty_list(f.other)},
    "EC curve OID one byte off": lambda f: {"bundle": curve_one_byte_off(f.ca)},
    "certificate version 34": lambda f: {"bundle": version_34(f.ca)},
    "a lone surrogate": lambda f: {"federated": _lone_surrogate(f.other)},
}


def rewrite(files: Files, case: str) -> None:
    """Rewrite the files `case` names with its hostile contents (the key before the cert)."""
    paths = {
        "key": files.key,
        "cert": files.cert,
        "bundle": files.bundle,
        "federated": files.federated,
    }
    contents = CORPUS[case](files)
    for name, path in paths.items():
        if name in contents:
            replace(path, contents[name])
