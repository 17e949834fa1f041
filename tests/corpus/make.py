"""Write the regression corpus: the inputs issue 7's fuzzing found, as files.

Run from the repository root: ``.venv/bin/python -m tests.corpus.make``. The files are
committed; this script only says how each was made, and remakes them if the format of
one must change. Inputs too large or not UTF-8 (100,000-deep arrays, 4,301 digits, a
lone surrogate) are made in ``tests/test_fuzz.py`` itself, as table rows.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from meshtls.testing import CA

HERE = Path(__file__).parent
T = datetime(2030, 1, 1, tzinfo=UTC)

#: DER edits of a good P-256 root, each (what it finds, bytes to find, replacement).
ROOT_EDITS = {
    # the EC curve OID 1.2.840.10045.3.1.7 (P-256) one byte off: UnsupportedAlgorithm
    "root-curve-oid-off-by-one": ("06082a8648ce3d030107", "06082a8648ce3d030108"),
    # the OU attribute's UTF8String tagged as a BIT STRING: TypeError in cryptography
    "root-ou-bit-string": ("060355040b0c", "060355040b03"),
    # version v3 (2) made 33, "version 34": InvalidVersion
    "root-version-34": ("a003020102", "a003020121"),
    # the key usage extension's OID made the subject key identifier's: DuplicateExtension
    "root-duplicate-extension": ("0603551d0f", "0603551d0e"),
}


def _pem(der: bytes) -> bytes:
    return (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )


def _jwks(der: bytes) -> str:
    key = {"use": "x509-svid", "kty": "EC", "x5c": [base64.b64encode(der).decode()]}
    return json.dumps({"keys": [key]}, indent=1) + "\n"


def main() -> None:
    good = CA("example.org", now=T).certificate.public_bytes(Encoding.DER)
    for name, (old, new) in ROOT_EDITS.items():
        find, replace = bytes.fromhex(old), bytes.fromhex(new)
        assert good.count(find) >= 1, name  # the OU is in the issuer and the subject
        der = good.replace(find, replace)
        (HERE / "pem-bundle" / f"{name}.pem").write_bytes(_pem(der))
        (HERE / "spiffe-bundle" / f"{name}.json").write_text(_jwks(der))
    bundles = {
        "refresh-hint-infinity": '{"keys": [], "spiffe_refresh_hint": Infinity}',
        "refresh-hint-minus-infinity": '{"keys": [], "spiffe_refresh_hint": -Infinity}',
        "refresh-hint-nan": '{"keys": [], "spiffe_refresh_hint": NaN}',
        "refresh-hint-1e300": '{"keys": [], "spiffe_refresh_hint": 1e300}',
        "refresh-hint-10e30": '{"keys": [], "spiffe_refresh_hint": 1' + "0" * 30 + "}",
        "kty-list": '{"keys": [{"use": "x509-svid", "kty": ["EC"], "x5c": []}]}',
        "use-object": '{"keys": [{"use": {"x509-svid": 1}, "kty": "EC"}]}',
    }
    for name, text in bundles.items():
        (HERE / "spiffe-bundle" / f"{name}.json").write_text(text + "\n")
    api = '[identity]\nworkload_api = "env"\n\n'
    configs = {
        "toml-nested-5000": "[node]\nlisten = " + "[" * 5000 + "]" * 5000 + "\n",
        "duration-4301-digits": api + '[policy]\nmax_ttl = "' + "1" * 4301 + 's"\n',
        "integer-4301-digits": "[node]\nmax_handshakes = " + "1" * 4301 + "\n",
        "port-4301-digits": api + '[node]\nlisten = "127.0.0.1:' + "1" * 4301 + '"\n',
        "path-component-300-bytes": (
            '[identity]\ncert = "' + "c" * 300 + '/svid.pem"\nkey = "k.pem"\nbundle = "b.pem"\n'
        ),
        "path-nul-byte": '[identity]\nlocal_ca = "ca\\u0000dir"\nspiffe_id = "spiffe://example.org/a"\n',
        "local-ca-ttl-overflow": (
            '[identity]\nlocal_ca = "ca"\nspiffe_id = "spiffe://example.org/a"\n'
            'ttl = "999999999d"\n\n[policy]\nmax_ttl = "off"\n'
        ),
        "duration-arabic-indic-digits": api + '[node]\nhandshake_timeout = "\u0661\u0662s"\n',
    }
    for name, text in configs.items():
        (HERE / "config" / f"{name}.toml").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
