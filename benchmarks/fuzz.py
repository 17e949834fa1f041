"""Fuzz targets for every parser of outside bytes, and the long-run harness that drives them.

Each target is a Hypothesis strategy of hostile inputs and a check. The check calls one
parser and lets through only the errors that parser may raise (our own types, and
``ValueError`` where a function documents it); anything else escapes, and so does a
broken property (an accepted input that an independent oracle calls invalid, a forged
chain accepted, a message that is not one printable line). Inputs mix three sources:
Hypothesis's own values, mutations of good inputs (byte edits, inserts, cuts, copies)
and structured edge cases (9999 dates, 4,301 digits, deep nesting, lone surrogates).

``tests/test_fuzz.py`` runs every target with a small fixed budget and a fixed seed, and
stops at the first escape. A long run goes on past escapes and reports each distinct one
(exception type and where it was raised) with a sample input:

    python benchmarks/fuzz.py --target NAME --examples N [--seed S] [--json FILE]
    python benchmarks/fuzz.py --target all --examples 20000
    python benchmarks/fuzz.py --list
"""

from __future__ import annotations

import argparse
import atexit
import base64
import functools
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TypeVar, cast

import h11
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import meshtls
from meshtls import (
    BundleError,
    BundleSet,
    ConfigError,
    MeshError,
    SpiffeId,
    SpiffeIdError,
    TrustDomain,
    VerificationError,
    X509Bundle,
)
from meshtls._config import parse_config
from meshtls._crl import CrlError, judge_crl, load_crl
from meshtls._duration import parse_duration, parse_optional_duration
from meshtls._metrics import NodeMetrics, _Answers, _serve_one
from meshtls._ocsp import OcspError, judge_ocsp
from meshtls._revocation import RevocationTarget
from meshtls._status import Readiness
from meshtls._svid import verify_handshake_chain
from meshtls._workload import read_message, split_der
from meshtls.testing import CA, SVID_EKU, IssuedCertificate, KeyUsageName

T = datetime(2030, 1, 1, tzinfo=UTC)
X = TypeVar("X")

#: Bytes that make parsers take unusual branches: lengths, tags, signs, NUL, UTF-8 leads.
INTERESTING: Final = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x18)
INTERESTING_HIGH: Final = (0x30, 0x31, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xA0, 0xA3, 0xC0, 0xFF)
#: Dates at the edges of `datetime` and of the RFC 5280 encodings (UTCTime ends in 2049).
EDGE_DATES: Final = (
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(1950, 1, 1, tzinfo=UTC),
    datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2050, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),  # RFC 5280: "no well-defined expiry"
)


class EscapeError(AssertionError):
    """A check saw something no input may cause: a broken property."""


def one_line(exc: BaseException) -> str:
    """The type name of an allowed error, after checking its message is one printable line."""
    message = str(exc)
    if "\n" in message or "\r" in message or len(message) > 2000:
        raise EscapeError(f"{type(exc).__name__} message is not one short line: {message!r}")
    message.encode("utf-8")  # a lone surrogate would make the log line fail
    return type(exc).__name__


def outcome(call: Callable[[], object], allowed: tuple[type[Exception], ...]) -> str:
    """``accepted``, or the name of the allowed error `call` raised; anything else escapes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cryptography warns about odd certificates
            call()
    except allowed as exc:
        return one_line(exc)
    return "accepted"


# ---------------------------------------------------------------- mutations


_BYTE_EDITS: Final = st.sampled_from(("set", "set", "flip", "insert", "delete", "copy", "cut"))
_BYTES: Final = st.sampled_from(INTERESTING + INTERESTING_HIGH) | st.integers(0, 255)
_TEXT_EDITS: Final = st.sampled_from(("insert", "replace", "delete", "repeat"))
_CHARS: Final = st.characters(codec=None) | st.sampled_from(list("[]{}\"'=\\\n#.:0-"))


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with one to six edits: set, flip, insert, delete, copy a slice, truncate."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, max(0, len(data) - 1)))
        edit = draw(_BYTE_EDITS)
        if edit == "set" and data:
            data[where] = draw(_BYTES)
        elif edit == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif edit == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[where : where + draw(st.integers(1, 32))]
        elif edit == "copy" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[where:where] = data[start : start + draw(st.integers(1, 64))]
        elif edit == "cut":
            del data[where:]
    return bytes(data)


@st.composite
def mutated_text(draw: st.DrawFn, base: str) -> str:
    """`base` with one to four character edits, from any code point (lone surrogates too)."""
    chars = list(base)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(chars)))
        edit = draw(_TEXT_EDITS)
        char = draw(_CHARS)
        if edit == "insert":
            chars.insert(where, char)
        elif edit == "replace" and where < len(chars):
            chars[where] = char
        elif edit == "delete":
            del chars[where : where + draw(st.integers(1, 8))]
        elif edit == "repeat":
            chars[where:where] = list(char * draw(st.sampled_from((2, 300, 5000))))
    return "".join(chars)


def pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    tag = label.encode()
    return (
        b"-----BEGIN "
        + tag
        + b"-----\n"
        + base64.encodebytes(der)
        + b"-----END "
        + tag
        + b"-----\n"
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------- the material


@dataclass(frozen=True)
class Material:
    """Good inputs to mutate: CAs of three key types, an intermediate, issued leaves."""

    ca: CA
    other: CA
    ed: CA
    rsa: CA
    intermediate: CA
    bundles: BundleSet
    leaves: tuple[IssuedCertificate, ...]
    elsewhere: CA  # a root no bundle holds: where "handshake search" says OpenSSL's chain ends

    @property
    def roots(self) -> tuple[bytes, ...]:
        return tuple(der(ca.certificate) for ca in (self.ca, self.other, self.ed, self.rsa))


@functools.cache
def material() -> Material:
    ca = CA("example.org", now=T)
    other = CA("other.org", now=T)
    ed = CA("ed.example", now=T, key_type="ed25519")
    rsa = CA("rsa.example", now=T, key_type="rsa-2048")
    intermediate = ca.intermediate()
    leaves = (
        ca.issue(),
        intermediate.issue("spiffe://example.org/deep"),
        ed.issue(key_type="ed25519"),
        rsa.issue(),
        other.issue("spiffe://other.org/x", dns_names=["x.other.org"]),
    )
    bundles = ca.bundle_set(other, ed, rsa)
    elsewhere = CA("elsewhere.example", now=T)
    return Material(ca, other, ed, rsa, intermediate, bundles, leaves, elsewhere)


# ---------------------------------------------------------------- SPIFFE IDs

_ID_CHARS: Final = "abcz09.-_AZ/%:@?#~ \n\t\x00\u00e9\u0661\u212a\ud800"
_VALID_ID: Final = re.compile(r"spiffe://([a-z0-9._-]{1,255})((?:/[a-zA-Z0-9._-]+)*)", re.ASCII)


def _oracle_id(text: str) -> bool:
    """SPIFFE-ID.md's rules, written again independently: is `text` a valid SPIFFE ID?"""
    match = _VALID_ID.fullmatch(text)
    if match is None or len(text.encode("utf-8", "surrogatepass")) > 2048:
        return False
    return all(segment not in (".", "..") for segment in match.group(2).split("/")[1:])


spiffe_texts: Final = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=_ID_CHARS, max_size=40).map(lambda rest: "spiffe://" + rest),
    st.builds(
        lambda scheme, td, segments: scheme + td + "".join("/" + s for s in segments),
        st.sampled_from(("spiffe://", "SPIFFE://", "spiffe:/", "spiffe:///", "http://", "")),
        st.text(alphabet=_ID_CHARS, max_size=12) | st.integers(250, 260).map(lambda n: "a" * n),
        st.lists(
            st.text(alphabet=_ID_CHARS, max_size=8)
            | st.sampled_from((".", "..", "...", ".a", "", "x" * 2040)),
            max_size=5,
        ),
    ),
)


def check_spiffe_id(text: str) -> str:
    try:
        sid = SpiffeId.parse(text)
    except SpiffeIdError as exc:
        if _oracle_id(text):
            raise EscapeError(f"valid id {text!r} refused: {exc}") from exc
        one_line(exc)
        parsed = "SpiffeIdError"
    else:
        if not _oracle_id(text):
            raise EscapeError(f"invalid id {text!r} accepted")
        if str(sid) != text or SpiffeId.parse(str(sid)) != sid:
            raise EscapeError(f"{text!r} does not round-trip")
        parsed = "accepted"
    try:
        td = TrustDomain.parse(text)
    except SpiffeIdError as exc:
        one_line(exc)
    else:
        name_ok = re.fullmatch(r"[a-z0-9._-]{1,255}", text, re.ASCII) is not None
        if not (name_ok or _oracle_id(text)) or td.name not in text:
            raise EscapeError(f"trust domain {text!r} accepted as {td}")
    return parsed


# ---------------------------------------------------------------- bundles


@st.composite
def pem_bundles(draw: st.DrawFn) -> bytes | str:
    roots = material().roots
    ders = draw(st.lists(st.sampled_from(roots), min_size=1, max_size=3))
    ders[0] = draw(mutated(ders[0]))
    data = b"".join(pem(d) for d in ders)
    form = draw(st.sampled_from(("der-edit", "der-edit", "pem-edit", "text", "garbage")))
    if form == "pem-edit":
        return draw(mutated(b"".join(pem(d) for d in roots[:2])))
    if form == "text":
        return draw(mutated_text(data.decode()))
    if form == "garbage":
        return draw(st.binary(max_size=200) | st.text(max_size=200))
    return data


def check_pem_bundle(data: bytes | str) -> str:
    result = outcome(lambda: X509Bundle.from_pem("example.org", data), (BundleError,))
    outcome(lambda: BundleSet.from_pem({"example.org": data}), (BundleError,))
    return result


_JWKS_KEYS: Final = ("keys", "use", "kty", "x5c", "spiffe_sequence", "spiffe_refresh_hint", "kid")
_JSON_NUMBERS: Final = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e300",
    "-0",
    "1" * 4301,
    "31536001",
    "0.5",
    "true",
    "null",
)


def json_values(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """JSON text, nested, with keys from the JWKS vocabulary and hostile numbers."""
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
            st.lists(
                st.tuples(st.sampled_from(_JWKS_KEYS) | st.text(max_size=6), inner), max_size=5
            ).map(lambda pairs: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"),
        ),
        max_leaves=12,
    )


@st.composite
def x5c_entries(draw: st.DrawFn) -> str:
    root = draw(st.sampled_from(material().roots))
    data = draw(mutated(root)) if draw(st.booleans()) else root
    return json.dumps(base64.b64encode(data).decode())


_JSON_LEAVES: Final = st.one_of(
    st.sampled_from(_JSON_NUMBERS),
    st.sampled_from(('"x509-svid"', '"jwt-svid"', '"EC"', '"RSA"', '"OKP"', '"X509-SVID"')),
    st.text(max_size=10).map(json.dumps),
    st.integers().map(str),
    x5c_entries().map(lambda entry: f"[{entry}]"),
)
_JSON_FREE: Final = json_values(_JSON_LEAVES)


@st.composite
def spiffe_bundles(draw: st.DrawFn) -> str | bytes:
    leaves = _JSON_LEAVES
    form = draw(st.sampled_from(("shaped", "shaped", "free", "text-edit", "deep")))
    if form == "free":
        return draw(_JSON_FREE)
    if form == "deep":
        depth = draw(st.sampled_from((10, 500, 999, 1000, 5000, 100_000)))
        opener = draw(st.sampled_from(("[", '{"a": ')))
        closer = "]" if opener == "[" else "}"
        return '{"keys": ' + opener * depth + "1" * (opener != "[") + closer * depth + "}"
    key = {
        "use": draw(st.sampled_from(('"x509-svid"',)) | leaves),
        "kty": draw(st.sampled_from(('"EC"', '"OKP"', '"RSA"')) | leaves),
        "x5c": draw(st.lists(x5c_entries(), max_size=2).map(lambda e: "[" + ", ".join(e) + "]")),
    }
    keys = ", ".join(f'"{k}": {v}' for k, v in key.items() if draw(st.integers(0, 9)) > 0)
    extra = {
        "spiffe_sequence": draw(leaves),
        "spiffe_refresh_hint": draw(leaves),
    }
    fields = ", ".join(f'"{k}": {v}' for k, v in extra.items() if draw(st.booleans()))
    text = '{"keys": [{' + keys + "}]" + (", " + fields if fields else "") + "}"
    if form == "text-edit":
        text = draw(mutated_text(text))
    return text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else text


def check_spiffe_bundle(text: str | bytes) -> str:
    return outcome(lambda: X509Bundle.from_spiffe_bundle("example.org", text), (BundleError,))


_DOMAIN_KEYS: Final = ("example.org", "spiffe://example.org", "Example.org", "spiffe://a/b", "")


@st.composite
def federated_maps(draw: st.DrawFn) -> str | bytes:
    names = st.sampled_from(_DOMAIN_KEYS) | st.text(alphabet=_ID_CHARS, max_size=12)
    entries = draw(st.lists(st.tuples(names, spiffe_bundles()), max_size=3))
    parts = []
    for name, bundle in entries:
        body = bundle.decode("utf-8", "surrogatepass") if isinstance(bundle, bytes) else bundle
        parts.append(f"{json.dumps(name)}: {body}")
    text = "{" + ", ".join(parts) + "}"
    if draw(st.integers(0, 4)) == 0:
        text = draw(mutated_text(text))
    return text


def check_federated_bundle(text: str | bytes) -> str:
    return outcome(lambda: BundleSet.from_federated_json(text), (BundleError,))


# ---------------------------------------------------------------- config and durations

_DIGITS: Final = "0123456789\u0661\u0662\uff11\u00b2\u0967"
_UNITS: Final = ("d", "h", "m", "s", "ms", "us", "H", "", " ", "-", ".5")
_VALID_DURATION: Final = re.compile(
    r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?", re.ASCII
)

durations: Final = st.one_of(
    st.text(max_size=12),
    st.lists(
        st.tuples(
            st.text(alphabet=_DIGITS, min_size=1, max_size=4)
            | st.sampled_from(("1" * 18, "1" * 19, "9" * 4301, "0" * 30 + "1")),
            st.sampled_from(_UNITS),
        ),
        min_size=1,
        max_size=4,
    ).map(lambda parts: "".join(n + u for n, u in parts)),
    st.sampled_from(("off", "0s", "999999999d", "1000000000d", "86399999999999999ms")),
)


def _oracle_duration(text: str) -> timedelta | None:
    """The duration `text` means by the documented grammar, independently; None if none."""
    match = _VALID_DURATION.fullmatch(text)
    if not text or match is None or any(len(n) > 18 for n in match.groups() if n):
        return None
    factors = (86400_000, 3600_000, 60_000, 1000, 1)
    milliseconds = sum(int(n) * f for n, f in zip(match.groups(), factors, strict=True) if n)
    if milliseconds >= 1000 * 86400 * 1_000_000_000:  # past timedelta.max
        return None
    return timedelta(milliseconds=milliseconds)


def check_duration(text: str) -> str:
    expected = _oracle_duration(text)
    try:
        value = parse_duration(text, setting="fuzz")
    except ConfigError as exc:
        if expected is not None:
            raise EscapeError(f"{text!r} refused, means {expected}: {exc}") from exc
        result = one_line(exc)
    else:
        if value != expected:
            raise EscapeError(f"{text!r} read as {value}, means {expected}")
        result = "accepted"
    outcome(lambda: parse_optional_duration(text), (ConfigError,))
    return result


_SCHEMA: Final = {
    "identity": ("cert", "key", "bundle", "federated", "local_ca", "spiffe_id", "ttl"),
    "node": ("listen", "metrics", "handshake_timeout", "max_handshakes", "shutdown_timeout"),
    "policy": ("max_ttl", "max_age", "clock_skew"),
    "revocation": ("mode", "refresh_interval", "ocsp_cache_ttl", "crl_cache_ttl"),
    "authorize": ("member_of", "ids", "path_prefix"),
    "peers": ("id", "address"),
    "expose": ("listen", "backend", "allow", "max_connections", "unsafe_target", "proxy_protocol"),
    "forward": ("listen", "peer", "expect", "max_connections", "unsafe_listen"),
}
_STRINGS: Final = (
    "c.pem",
    "k.pem",
    "b.pem",
    "ca",
    "~/x",
    "~nosuchuser/x",
    "c\u0000.pem",
    "d" * 300 + "/c.pem",
    "env",
    "off",
    "soft-fail",
    "unix:///tmp/agent.sock",
    "tcp://127.0.0.1:1",
    "tcp://[::1]:0",
    "127.0.0.1:0",
    "[::1]:8443",
    "0.0.0.0:8443",
    "localhost:99999",
    "host:" + "1" * 4301,
    "example.org",
    "spiffe://example.org/a",
    "spiffe://Example.org/a",
    "spiffe://example.org",
    "spiffe://example.org/a/*",
    "spiffe://example.org/*",
    "999999999d",
    "1h",
)
_GOOD_CONFIG: Final = """\
[identity]
cert = "c.pem"
key = "k.pem"
bundle = "b.pem"

[node]
listen = "127.0.0.1:0"
metrics = "off"
handshake_timeout = "10s"

[policy]
max_ttl = "1h"
clock_skew = "30s"

[[forward]]
listen = "127.0.0.1:0"
peer = "127.0.0.1:8600"
expect = "spiffe://example.org/server"
"""


def _toml_values() -> st.SearchStrategy[str]:
    scalars = st.one_of(
        st.sampled_from(_STRINGS).map(json.dumps),
        durations.map(json.dumps),
        spiffe_texts.map(json.dumps),
        st.text(max_size=10).map(json.dumps),
        st.integers().map(str),
        st.sampled_from(("1" * 4301, "0x7fffffffffffffffffff", "inf", "nan", "1.5", "true")),
        st.sampled_from(("2030-01-01", "2030-01-01T00:00:00Z", "00:00:00")),
        st.sampled_from((10, 999, 1000, 5000)).map(lambda n: "[" * n + "]" * n),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]")
            | st.lists(st.tuples(st.sampled_from(("a", "b", "x")), inner), max_size=2).map(
                lambda pairs: "{" + ", ".join(f"{k} = {v}" for k, v in pairs) + "}"
            )
        ),
        max_leaves=6,
    )


_TOML_VALUES: Final = _toml_values()


@st.composite
def configs(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 3)) == 0:
        return draw(mutated_text(_GOOD_CONFIG))
    lines = []
    for table in draw(st.lists(st.sampled_from([*_SCHEMA, "nodes"]), max_size=4, unique=True)):
        header = f"[[{table}]]" if table in ("peers", "expose", "forward") else f"[{table}]"
        lines.append(header)
        keys = _SCHEMA.get(table, ("listen",))
        for key in draw(st.lists(st.sampled_from(keys) | st.just("bogus"), max_size=5)):
            lines.append(f"{key} = {draw(_TOML_VALUES)}")
    return "\n".join(lines) + "\n"


@functools.cache
def config_dir() -> Path:
    """A directory with the files that configs name, so checks get past 'no such file'."""
    directory = Path(tempfile.mkdtemp(prefix="meshtls-fuzz-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    for name in ("c.pem", "k.pem", "b.pem"):
        (directory / name).write_text("not read at load\n")
    (directory / "ca").mkdir()
    return directory


def check_config(text: str) -> str:
    return outcome(lambda: parse_config(text, base_dir=config_dir()), (ConfigError,))


# ---------------------------------------------------------------- Workload API


@st.composite
def der_streams(draw: st.DrawFn) -> bytes:
    ders = draw(st.lists(st.sampled_from(material().roots), max_size=3))
    data = b"".join(ders)
    if draw(st.booleans()):
        data = draw(mutated(data)) if data else draw(st.binary(max_size=64))
    return data


def check_split_der(data: bytes) -> str:
    try:
        items = split_der(data, what="fuzz")
    except ValueError as exc:
        if type(exc) is not ValueError or not str(exc).startswith("fuzz: "):
            raise
        return one_line(exc)
    if b"".join(items) != data or any(not item.startswith(b"\x30") for item in items):
        raise EscapeError(f"split_der({data[:40]!r}...) gave pieces that are not the input")
    return "accepted"


@functools.cache
def good_message() -> bytes:
    from spiffe._proto import workload_pb2  # noqa: PLC0415 - loads the protobufs on use

    found = material()
    leaf = found.leaves[1]  # through the intermediate
    key = leaf.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    entry = workload_pb2.X509SVID(
        spiffe_id="spiffe://example.org/deep",
        x509_svid=b"".join(der(cert) for cert in leaf.chain),
        x509_svid_key=key,
        bundle=der(found.ca.certificate),
    )
    message = workload_pb2.X509SVIDResponse(
        svids=[entry], federated_bundles={"spiffe://other.org": der(found.other.certificate)}
    )
    return cast(bytes, message.SerializeToString())


@st.composite
def workload_messages(draw: st.DrawFn) -> bytes:
    """The good message's bytes mutated, or one of its fields mutated and re-encoded."""
    from spiffe._proto import workload_pb2  # noqa: PLC0415

    good = good_message()
    if draw(st.booleans()):
        return draw(mutated(good))
    message = workload_pb2.X509SVIDResponse.FromString(good)
    entry = message.svids[0]
    which = draw(st.sampled_from(("chain", "chain", "key", "bundle", "federated", "id", "twice")))
    if which == "chain":
        certs = split_der(entry.x509_svid, what="chain")
        index = draw(st.integers(0, len(certs) - 1))
        certs[index] = draw(mutated(certs[index]))
        entry.x509_svid = b"".join(certs)
    elif which == "key":
        entry.x509_svid_key = draw(mutated(entry.x509_svid_key))
    elif which == "bundle":
        entry.bundle = draw(mutated(entry.bundle))
    elif which == "federated":
        name = draw(st.sampled_from(_DOMAIN_KEYS) | st.text(alphabet=_ID_CHARS[:-1], max_size=12))
        message.federated_bundles[name] = draw(mutated(bytes(entry.bundle)))
    elif which == "id":
        entry.spiffe_id = draw(spiffe_texts.filter(_encodable))
    else:
        message.svids.add().CopyFrom(entry)
        message.svids[0].spiffe_id = draw(spiffe_texts.filter(_encodable))
    return cast(bytes, message.SerializeToString())


def _encodable(text: str) -> bool:
    """Protobuf strings are UTF-8: a lone surrogate cannot be sent."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_workload_message(data: bytes) -> str:
    from spiffe._proto import workload_pb2  # noqa: PLC0415

    try:
        message = workload_pb2.X509SVIDResponse.FromString(data)
    except Exception as exc:  # protobuf's DecodeError: grpc would refuse it before us
        if type(exc).__name__ != "DecodeError":
            raise
        return "not protobuf"
    want = SpiffeId.parse("spiffe://example.org/deep")
    item = read_message(message, want if data[-1:] < b"\x80" else None)  # must never raise
    reason = getattr(item, "reason", None)
    return f"invalid: {reason}" if reason is not None else type(item).__name__


# ---------------------------------------------------------------- our own SVID from PEM


@st.composite
def svid_files(draw: st.DrawFn) -> tuple[bytes, bytes]:
    issued = draw(st.sampled_from(material().leaves))
    chain = [der(cert) for cert in issued.chain]
    index = draw(st.integers(0, len(chain) - 1))
    key = issued.key_pem
    what = draw(st.sampled_from(("cert", "cert", "key", "both")))
    if what in ("cert", "both"):
        chain[index] = draw(mutated(chain[index]))
    if what in ("key", "both"):
        key = draw(mutated(key))
    return b"".join(pem(d) for d in chain), key


def check_svid_load(files: tuple[bytes, bytes]) -> str:
    return outcome(lambda: meshtls.X509Svid.load(*files), (MeshError, ValueError))


# ---------------------------------------------------------------- the metrics endpoint

_GOOD_REQUEST: Final = b"GET /metrics HTTP/1.1\r\nHost: node\r\nAccept: */*\r\n\r\n"
_STATUSES: Final = frozenset({200, 400, 404, 405, 408, 413, 414, 431, 501, 503, 505})

requests: Final = st.one_of(
    mutated(_GOOD_REQUEST),
    st.binary(max_size=300),
    st.builds(
        lambda method, target, version, headers: (
            method
            + b" "
            + target
            + b" "
            + version
            + b"\r\n"
            + b"".join(h + b"\r\n" for h in headers)
            + b"\r\n"
        ),
        st.sampled_from((b"GET", b"HEAD", b"POST", b"get", b"", b"G\x00T", b"PRI")),
        st.sampled_from((b"/metrics", b"/healthz", b"/readyz?x", b"*", b"/", b"//x", b"/%00"))
        | st.binary(max_size=20),
        st.sampled_from((b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1", b"")),
        st.lists(
            st.sampled_from(
                (
                    b"Host: a",
                    b"Host: a\r\nHost: b",
                    b"Content-Length: 5",
                    b"Content-Length: -1",
                    b"Transfer-Encoding: chunked",
                    b"X: " + b"y" * 9000,
                    b" folded",
                    b"Bad Header: x",
                )
            )
            | st.binary(max_size=30),
            max_size=4,
        ),
    ),
)


@functools.cache
def metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    NodeMetrics(registry, clock=lambda: T)
    return registry


async def _exchange(data: bytes) -> bytes:
    """Send `data` to one metrics connection, half-close, and read the whole answer."""
    client, server = trio.testing.memory_stream_pair()

    async def serve() -> None:
        async with server:
            stream = cast(trio.SocketStream, server)  # only the Stream methods are used
            answers = _Answers(metrics_registry(), lambda: Readiness(True), None)
            await _serve_one(stream, answers, 30.0, lambda: None)

    answer = b""
    with trio.move_on_after(30):  # Trio time: autojumped
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                await client.send_all(data)
                await client.send_eof()
            except trio.BrokenResourceError:
                pass  # the server answered and closed before reading it all
            while chunk := await client.receive_some():
                answer += chunk
    await client.aclose()
    return answer


def check_http(data: bytes) -> str:
    answer = trio.run(_exchange, data, clock=trio.testing.MockClock(autojump_threshold=0))
    if not answer:
        return "no answer"
    reader = h11.Connection(h11.CLIENT)
    reader.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    reader.receive_data(answer)
    event = reader.next_event()
    if not isinstance(event, h11.Response) or event.status_code not in _STATUSES:
        raise EscapeError(f"answer to {data[:60]!r} is not an HTTP answer: {answer[:80]!r}")
    if data == _GOOD_REQUEST and event.status_code != 200:
        raise EscapeError(f"a good request got {event.status_code}")
    return str(event.status_code)


# ---------------------------------------------------------------- verify_svid

#: A SAN with an EDIPartyName beside the URI: cryptography cannot read it (issue 7, item 1).
_EDI_PARTY: Final = bytes.fromhex("a507a1050c03616263")
_CRITICAL_UNKNOWN: Final = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")


def _san(uri: str, extra: bytes) -> x509.UnrecognizedExtension:
    encoded = uri.encode()
    inner = bytes([0x86, len(encoded)]) + encoded + extra
    return x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, bytes([0x30, len(inner)]) + inner
    )


_NEAR_T: Final = st.datetimes(
    min_value=datetime(2029, 12, 31), max_value=datetime(2030, 1, 2), timezones=st.just(UTC)
)
_DATES: Final = st.sampled_from(EDGE_DATES) | _NEAR_T
_LEAF_URIS: Final = st.lists(
    st.sampled_from(("spiffe://example.org/w", "spiffe://ed.example/w")) | spiffe_texts,
    max_size=2,
).filter(lambda items: all(item.isascii() and len(item) < 120 for item in items))
_USAGES: Final[tuple[KeyUsageName, ...]] = ("digital_signature", "key_cert_sign", "key_agreement")
_KEY_USAGES: Final = st.none() | st.sets(st.sampled_from(_USAGES))
_EKUS: Final = st.none() | st.lists(
    st.sampled_from(
        (
            ExtendedKeyUsageOID.CLIENT_AUTH,
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CODE_SIGNING,
        )
    ),
    max_size=2,
    unique=True,
)


#: What a re-signed leaf may get wrong; each draw picks a few, the rest stay good.
_DEFECTS: Final = ("dates", "uris", "critical", "edi", "key_usage", "is_ca", "eku", "key_type")


@st.composite
def signed_leaves(draw: st.DrawFn) -> tuple[list[x509.Certificate], bool]:
    """A leaf re-signed by a trusted CA: a good SVID with zero to three drawn defects, so
    every rule is reached and good leaves are accepted. No forgery: the CA signs it.

    Dates include `datetime`'s edges and RFC 5280's "no well-defined expiry"; a SAN may
    hold an EDIPartyName. Returns the chain and True (re-signed).
    """
    found = material()
    issuer = draw(st.sampled_from((found.ca, found.intermediate, found.ed)))
    defects = draw(st.sets(st.sampled_from(_DEFECTS), max_size=3))
    not_before, not_after = T - timedelta(minutes=5), T + timedelta(minutes=20)
    if "dates" in defects:
        not_before, not_after = draw(_DATES), draw(_DATES)
    uris = [f"spiffe://{issuer.trust_domain}/w"]
    if "uris" in defects:
        uris = draw(_LEAF_URIS)
    extensions: list[tuple[x509.ExtensionType, bool]] = []
    if "critical" in defects:
        extensions.append((x509.UnrecognizedExtension(_CRITICAL_UNKNOWN, b"\x05\x00"), True))
    if "edi" in defects:
        extensions.append((_san(uris[0] if uris else "spiffe://example.org/w", _EDI_PARTY), False))
        uris = []
    try:
        issued = issuer.issue(
            not_before=not_before,
            not_after=not_after,
            uris=uris,
            is_ca=draw(st.sampled_from((None, True))) if "is_ca" in defects else False,
            key_usage=draw(_KEY_USAGES) if "key_usage" in defects else {"digital_signature"},
            key_usage_critical="key_usage" not in defects or draw(st.booleans()),
            eku=draw(_EKUS) if "eku" in defects else SVID_EKU,
            key_type=draw(st.sampled_from(("ed25519", "ec-p384")))
            if "key_type" in defects
            else "ec-p256",
            extensions=extensions,
        )
    except ValueError:
        assume(False)  # the builder refused the combination: not an input
        raise
    return list(issued.chain), True


@st.composite
def mutated_chains(draw: st.DrawFn) -> tuple[list[x509.Certificate], bool]:
    """A good chain with one certificate's DER edited, or its order and members changed."""
    found = material()
    chain = list(draw(st.sampled_from(found.leaves)).chain)
    form = draw(st.sampled_from(("der", "der", "der", "order")))
    if form == "order":
        extra = (found.ca.certificate, found.other.certificate, found.intermediate.certificate)
        chain = draw(st.permutations(chain + list(draw(st.lists(st.sampled_from(extra))))))
        return chain[:9] or [found.ca.certificate], False
    index = draw(st.integers(0, len(chain) - 1))
    data = draw(mutated(der(chain[index])))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chain[index] = x509.load_der_x509_certificate(data)
    except Exception:
        assume(False)
    return chain, False


def _check_accepted(
    peer: meshtls.VerifiedPeer,
    chain: Sequence[x509.Certificate],
    *,
    resigned: bool,
    signatures: bool = True,
) -> None:
    """What must hold of any chain an entry point accepts, checked without meshtls's code.

    With `signatures` False (the handshake's entry for a chain OpenSSL has verified, where
    OpenSSL checks the signatures, not meshtls), edited signed content is no finding.
    """
    found = material()
    originals = {c.tbs_certificate_bytes for i in found.leaves for c in i.chain}
    originals |= {c.tbs_certificate_bytes for b in found.bundles.values() for c in b.authorities}
    leaf = peer.chain[0]
    if leaf != chain[0]:
        raise EscapeError("the verified path does not start at the leaf sent")
    uris = [
        name.value
        for ext in leaf.extensions
        if isinstance(ext.value, x509.SubjectAlternativeName)
        for name in ext.value
        if isinstance(name, x509.UniformResourceIdentifier)
    ]
    if uris != [str(peer.spiffe_id)] or not _oracle_id(uris[0]):
        raise EscapeError(f"accepted a leaf whose URI SANs are {uris}")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise EscapeError("accepted a leaf without key usage (L-5)") from None
    if not usage.critical or not usage.value.digital_signature or usage.value.key_cert_sign:
        raise EscapeError("accepted a leaf with a bad key usage (L-5..L-7)")
    skew = timedelta(seconds=30)
    for cert in peer.chain:
        if not cert.not_valid_before_utc - skew <= T <= cert.not_valid_after_utc + skew:
            raise EscapeError(f"accepted a certificate outside its validity: {cert.subject}")
    if leaf.not_valid_after_utc - leaf.not_valid_before_utc > timedelta(hours=1):
        raise EscapeError("accepted a leaf over the 1 h max TTL (P-1)")
    if not signatures:
        return
    for cert in peer.chain[1:]:
        if cert.tbs_certificate_bytes not in originals:
            raise EscapeError(f"a signing certificate no CA issued: {cert.subject}")
    if not resigned and leaf.tbs_certificate_bytes not in originals:
        raise EscapeError("accepted a leaf whose signed content was edited: a forgery")


def verify_inputs() -> st.SearchStrategy[tuple[list[x509.Certificate], bool]]:
    """Chains for `check_verify`, and whether each was re-signed."""
    return st.one_of(mutated_chains(), signed_leaves())


_POLICY: Final = meshtls.ValidationPolicy()
#: The three ways a chain reaches the verifier: `verify_svid`; the handshake with a chain
#: OpenSSL verified (it checked the signatures, so meshtls does not); and the handshake when
#: OpenSSL's chain ends at another domain's root, so meshtls searches what the peer sent.
VERIFY_ENTRIES: Final = ("verify_svid", "handshake verified", "handshake search")


def _enter(entry: str, chain: Sequence[x509.Certificate]) -> meshtls.VerifiedPeer:
    found = material()
    if entry == "verify_svid":
        return meshtls.verify_svid(chain, found.bundles, now=T)
    ders = [der(cert) for cert in chain]
    if entry == "handshake verified":
        roots = [ca.certificate for ca in (found.ca, found.other, found.ed, found.rsa)]
        issuer: x509.Name | None = None  # the harness's guess at the root, read quietly: a
        with warnings.catch_warnings():  # hostile name may warn or not read at all, and
            warnings.simplefilter("ignore")  # the harness must not be what warns or fails
            try:
                issuer = chain[-1].issuer
            except Exception:  # then any root will do
                issuer = None
        root = next((r for r in roots if r.subject == issuer), found.ca.certificate)
        openssl = [*ders, der(root)]
    else:
        openssl = [ders[0], der(found.elsewhere.certificate)]
    return verify_handshake_chain(
        openssl, found.bundles, policy=_POLICY, now=T, role="client", sent_chain=lambda: ders
    )


def check_verify(drawn: tuple[list[x509.Certificate], bool]) -> str:
    """Every way into the verifier, on one chain: only `VerificationError` may leave, with a
    one-line message; nothing may warn (a peer must not fill logs, or break a program that
    makes warnings errors); and whatever is accepted must pass `_check_accepted`.

    Returns the verdict of `verify_svid` (a reason, or "accepted")."""
    chain, resigned = drawn
    verdicts: list[str] = []
    for entry in VERIFY_ENTRIES:
        peer: meshtls.VerifiedPeer | None = None
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            try:
                peer = _enter(entry, chain)
            except VerificationError as exc:
                one_line(exc)
                verdicts.append(exc.reason)
        if warned:
            raise EscapeError(f"{entry} warned: {warned[0].category.__name__}: {warned[0].message}")
        if peer is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the oracle reads hostile certificates too
                _check_accepted(
                    peer, chain, resigned=resigned, signatures=entry != "handshake verified"
                )
            verdicts.append("accepted")
    return verdicts[0]


# ---------------------------------------------------------------- the harness


@dataclass(frozen=True)
class Target:
    """One fuzz target: what it reads, and `make`, which binds a check to its strategy."""

    name: str
    parser: str
    make: Callable[[Callable[[str], None], bool], Callable[[], None]]


def _bind(
    strategy: st.SearchStrategy[X], check: Callable[[X], str]
) -> Callable[[Callable[[str], None], bool], Callable[[], None]]:
    """`make(record, collect)`: a Hypothesis test that runs `check`, counting outcomes with
    `record`; with `collect`, an escape is recorded (``!`` + its signature) instead of raised."""

    def make(record: Callable[[str], None], collect: bool) -> Callable[[], None]:
        @given(strategy)
        def run(value: X) -> None:
            try:
                record(check(value))
            except Exception as exc:
                if not collect:
                    raise
                record("!" + signature(exc, value))

        return run

    return make


def signature(exc: BaseException, value: object) -> str:
    """An escape's identity, its type and the innermost meshtls frame (else the innermost),
    then after a tab its message and a sample of the input: one finding, many inputs."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/meshtls/" in f.filename and "/benchmarks/" not in f.filename]
    where = "?"
    if ours or frames:
        frame = (ours or frames)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    sample = _sample(value)
    sample = sample if len(sample) < 6000 else sample[:6000] + "..."
    message = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__} at {where}\t{message} <- {sample}"


def _sample(value: object) -> str:
    """An input as text to reproduce it: certificates as base64 DER, the rest as repr."""
    if isinstance(value, tuple) and value and isinstance(value[0], list):
        certs = [c for c in value[0] if isinstance(c, x509.Certificate)]
        return "chain (base64 DER, leaf first): " + " ".join(
            base64.b64encode(der(cert)).decode() for cert in certs
        )
    return repr(value)


# ---------------------------------------------------------------- CRLs


@functools.cache
def _crls() -> tuple[bytes, ...]:
    """DER CRLs from two of the material's CAs (EC and RSA), each revoking serial 7."""
    found = material()
    out = []
    for ca in (found.ca, found.rsa):
        entry = x509.RevokedCertificateBuilder().serial_number(7).revocation_date(T).build()
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.certificate.subject)
            .last_update(T)
            .next_update(T + timedelta(hours=1))
            .add_revoked_certificate(entry)
            .sign(ca.key, hashes.SHA256())
        )
        out.append(crl.public_bytes(serialization.Encoding.DER))
    return tuple(out)


@st.composite
def crls(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(_crls()))
    form = draw(st.sampled_from(("der-edit", "der-edit", "der-edit", "pem", "garbage")))
    if form == "pem":
        return draw(mutated(pem(data, "X509 CRL")))
    if form == "garbage":
        return draw(st.binary(max_size=200))
    return draw(mutated(data))


def check_crl(data: bytes) -> str:
    """load_crl, then judge_crl against each CA: a refusal is a `CrlError`; a CRL judged
    good must be signed by that issuer's key, byte for byte the CRL it was built from
    but for unsigned parts: its serial 7 must read as revoked."""
    found = material()

    def judge_all() -> None:
        crl = load_crl(data)
        for ca in (found.ca, found.rsa):
            try:
                judged = judge_crl(crl, ca.certificate, now=T, skew=timedelta(seconds=30))
            except CrlError:
                continue
            if not crl.is_signature_valid(ca.key.public_key()):
                raise EscapeError("a CRL the issuer did not sign was judged good")
            if judged.status(7) != "revoked" and 7 in {e.serial_number for e in crl}:
                raise EscapeError("a revoked serial read as good")

    return outcome(judge_all, (CrlError,))


# ---------------------------------------------------------------- OCSP responses


@functools.cache
def _ocsp_cases() -> tuple[tuple[bytes, RevocationTarget], ...]:
    """DER OCSP responses with the target each is about: a good one signed by the issuer
    (EC), a revoked one (RSA), and a good one signed by a delegated responder it includes."""
    found = material()
    delegate = found.ca.issue(uris=(), eku=(ExtendedKeyUsageOID.OCSP_SIGNING,))
    cases = (
        (found.leaves[0], found.ca, found.ca.certificate, found.ca.key, ocsp.OCSPCertStatus.GOOD),
        (found.leaves[3], found.rsa, found.rsa.certificate, found.rsa.key,
         ocsp.OCSPCertStatus.REVOKED),
        (found.leaves[0], found.ca, delegate.leaf, delegate.private_key, ocsp.OCSPCertStatus.GOOD),
    )  # fmt: skip
    out = []
    for leaf, ca, signer, key, status in cases:
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=leaf.leaf,
                issuer=ca.certificate,
                algorithm=hashes.SHA1(),  # noqa: S303 - the CertID hash
                cert_status=status,
                this_update=T,
                next_update=T + timedelta(hours=1),
                revocation_time=T if revoked else None,
                revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
        )
        if signer is not ca.certificate:
            builder = builder.certificates([signer])
        response = builder.sign(cast("CertificateIssuerPrivateKeyTypes", key), hashes.SHA256())
        target = RevocationTarget.of(leaf.leaf, ca.certificate)
        out.append((response.public_bytes(serialization.Encoding.DER), target))
    return tuple(out)


@st.composite
def ocsp_responses(draw: st.DrawFn) -> bytes:
    data, _ = draw(st.sampled_from(_ocsp_cases()))
    form = draw(st.sampled_from(("der-edit", "der-edit", "der-edit", "garbage")))
    if form == "garbage":
        return draw(st.binary(max_size=200))
    return draw(mutated(data))


def check_ocsp(data: bytes) -> str:
    """judge_ocsp against each case's target: a refusal is an `OcspError`; an answer judged
    good must carry, byte for byte, the signed part (tbsResponseData) it was built with."""
    cases = _ocsp_cases()
    signed = {
        ocsp.load_der_ocsp_response(good).tbs_response_bytes: target for good, target in cases
    }

    def judge_all() -> None:
        refusal: OcspError | None = None
        accepted = False
        for _, target in cases:
            try:
                judge_ocsp(data, target, now=T, skew=timedelta(seconds=30))
            except OcspError as exc:
                refusal = exc
                continue
            tbs = ocsp.load_der_ocsp_response(data).tbs_response_bytes
            if signed.get(tbs) != target:
                raise EscapeError("an OCSP answer whose signed part was changed was accepted")
            accepted = True
        if (
            not accepted and refusal is not None
        ):  # refused for every target: the outcome is a refusal
            raise refusal

    return outcome(judge_all, (OcspError,))


TARGETS: Final = {
    target.name: target
    for target in (
        Target(
            "spiffe-id", "SpiffeId.parse, TrustDomain.parse", _bind(spiffe_texts, check_spiffe_id)
        ),
        Target(
            "duration", "parse_duration, parse_optional_duration", _bind(durations, check_duration)
        ),
        Target("config", "parse_config (TOML text)", _bind(configs(), check_config)),
        Target(
            "pem-bundle",
            "X509Bundle.from_pem, BundleSet.from_pem",
            _bind(pem_bundles(), check_pem_bundle),
        ),
        Target(
            "spiffe-bundle",
            "X509Bundle.from_spiffe_bundle (JWKS)",
            _bind(spiffe_bundles(), check_spiffe_bundle),
        ),
        Target(
            "federated-bundle",
            "BundleSet.from_federated_json",
            _bind(federated_maps(), check_federated_bundle),
        ),
        Target("split-der", "_workload.split_der", _bind(der_streams(), check_split_der)),
        Target("crl", "load_crl, judge_crl", _bind(crls(), check_crl)),
        Target("ocsp", "judge_ocsp", _bind(ocsp_responses(), check_ocsp)),
        Target(
            "workload-message",
            "_workload.read_message (mutated protobuf bytes)",
            _bind(workload_messages(), check_workload_message),
        ),
        Target(
            "svid-load", "X509Svid.load (PEM chain and key)", _bind(svid_files(), check_svid_load)
        ),
        Target(
            "http",
            "the metrics endpoint's request handling (_metrics._serve_one)",
            _bind(requests, check_http),
        ),
        Target(
            "verify-svid",
            "verify_svid and the handshake's two entries, on mutated and re-signed chains",
            _bind(verify_inputs(), check_verify),
        ),
    )
}


@dataclass
class Report:
    """What one run of one target did: inputs, outcomes, and each distinct escape."""

    target: str
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    escapes: dict[str, tuple[int, str]] = field(default_factory=dict)  # where -> count, sample

    def record(self, result: str) -> None:
        self.inputs += 1
        if result.startswith("!"):
            where, _, sample = result[1:].partition("\t")
            count, first = self.escapes.get(where, (0, sample))
            self.escapes[where] = (count + 1, first)
            self.outcomes["ESCAPED"] += 1
        else:
            self.outcomes[result] += 1


#: A long run is cut into runs of this many inputs, each with its own seed: Hypothesis's
#: record of what it has tried grows with a run, and slows each input down as it does.
CHUNK: Final = 2000


def run(
    name: str,
    examples: int,
    *,
    seed_value: int | None = None,
    collect: bool = True,
    make: Callable[[Callable[[str], None], bool], Callable[[], None]] | None = None,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Run target `name` for `examples` inputs (`make` replaces its strategy and check).

    With `collect` False, the first escape raises, shrunk by Hypothesis. `seed_value` None
    means derandomized, in one run: the same inputs every time (what CI runs). A seeded
    run is cut into chunks of `CHUNK` inputs, seeded `seed_value`, `seed_value` + 1, ...;
    `progress` is called with the report so far after each.
    """
    report = Report(name)
    bound = make or TARGETS[name].make
    chunks = [examples] if seed_value is None else [CHUNK] * (examples // CHUNK)
    if seed_value is not None and examples % CHUNK:
        chunks.append(examples % CHUNK)
    start = time.perf_counter()
    for index, size in enumerate(chunks):
        test = settings(
            max_examples=size,
            deadline=None,
            database=None,
            derandomize=seed_value is None,
            phases=[Phase.generate] if collect else [Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )(bound(report.record, collect))
        if seed_value is not None:
            test = seed(seed_value + index)(test)
        test()
        report.seconds = time.perf_counter() - start
        if progress is not None:
            progress(report)
    return report


def _print(report: Report) -> None:
    rate = report.inputs / report.seconds if report.seconds else 0.0
    print(
        f"{report.target}: {report.inputs} inputs in {report.seconds:.1f} s ({rate:.0f}/s),"
        f" {len(report.escapes)} distinct escapes"
    )
    for result, count in report.outcomes.most_common():
        print(f"    {count:8d}  {result}")
    for where, (count, sample) in sorted(report.escapes.items()):
        shown = sample if len(sample) < 300 else sample[:300] + "..."
        print(f"  ESCAPE x{count}: {where}\n      e.g. {shown}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--target", default="all", help="a target name, or all")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None, help="default: a fixed derandomized run")
    parser.add_argument("--json", type=Path, default=None, help="write the reports here")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)
    if args.list:
        for target in TARGETS.values():
            print(f"{target.name:18} {target.parser}")
        return 0
    names = list(TARGETS) if args.target == "all" else [args.target]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}; known: {', '.join(TARGETS)}")
    reports: list[Report] = []

    def save(report: Report) -> None:
        """After each chunk: one progress line, and the JSON so far (a long run may be cut)."""
        print(f"  ... {report.target}: {report.inputs} inputs, {report.seconds:.0f} s", flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps([_as_json(r) for r in [*reports, report]], indent=1))

    for name in names:
        report = run(name, args.examples, seed_value=args.seed, progress=save)
        _print(report)
        reports.append(report)
    return 1 if any(r.escapes for r in reports) else 0


def _as_json(report: Report) -> dict[str, object]:
    return {
        "target": report.target,
        "inputs": report.inputs,
        "seconds": round(report.seconds, 2),
        "outcomes": dict(report.outcomes),
        "escapes": {w: {"count": c, "sample": s} for w, (c, s) in report.escapes.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
