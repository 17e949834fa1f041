"""The regression corpus of issue 7's fuzzing, and a short run of every fuzz target.

The corpus: each input the fuzzers found, with the exact error type meshtls must raise
for it and a fragment of its one-line message. Files live in ``tests/corpus/`` (made by
``tests/corpus/make.py``); inputs too large or not UTF-8 are rows here. Rows whose parser
reach the verifier (`verify_svid`, `X509Svid.load`) assert its one error type too.

The fuzz targets live in ``benchmarks/fuzz.py``; here each runs with a small fixed budget
and a fixed seed (``derandomize``), so CI is repeatable. Long runs:
``python benchmarks/fuzz.py --target NAME --examples N``.
"""

from __future__ import annotations

import base64
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from benchmarks import fuzz
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import strategies as st

import meshtls
from meshtls import (
    BundleError,
    BundleSet,
    ConfigError,
    MeshError,
    SpiffeId,
    SpiffeIdError,
    TrustDomain,
    X509Bundle,
)
from meshtls._bundle import load_pem_certificates
from meshtls._config import load_config, parse_config
from meshtls._duration import parse_duration
from meshtls.testing import CA

from .conftest import T

CORPUS = Path(__file__).parent / "corpus"
#: RFC 5280 4.1.2.5: "no well-defined expiration date".
NO_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def assert_one_line(exc: BaseException, expected: type[MeshError], pattern: str) -> None:
    """`exc` is exactly `expected`, its message one printable line matching `pattern`."""
    assert type(exc) is expected, f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert "\n" not in message
    assert "\r" not in message
    message.encode("utf-8")  # a log line or stderr must be able to carry it
    assert len(message) < 1000, message
    assert re.search(pattern, message), message


# ---------------------------------------------------------------- bundles


#: tests/corpus/spiffe-bundle/*.json: SPIFFE bundles (JWKS) for example.org.
SPIFFE_BUNDLES = {
    "refresh-hint-infinity": r"not valid JSON.*Infinity",
    "refresh-hint-minus-infinity": r"not valid JSON.*-Infinity",
    "refresh-hint-nan": r"not valid JSON.*NaN",
    "refresh-hint-1e300": r"spiffe_refresh_hint 1e\+300 is over .* \(B-5\)",
    "refresh-hint-10e30": r"spiffe_refresh_hint 1000000000000000000000000000000 is over .*\(B-5\)",
    "kty-list": r"keys\[0\]\.kty is not a string",
    "use-object": r"keys\[0\]\.use is not a string",
    "root-curve-oid-off-by-one": r"authority 0 is unreadable \(.*UnsupportedAlgorithm: Curve",
    "root-ou-bit-string": r"authority 0 is unreadable \(.*TypeError: .*BitString",
    "root-version-34": r"keys\[0\]\.x5c\[0\] is not a DER certificate \(InvalidVersion: 33",
    "root-duplicate-extension": r"authority 0 is unreadable \(.*DuplicateExtension: ",
}

#: tests/corpus/pem-bundle/*.pem: PEM roots for example.org.
PEM_BUNDLES = {
    "root-curve-oid-off-by-one": r"authority 0 is unreadable \(.*UnsupportedAlgorithm: Curve",
    "root-ou-bit-string": r"authority 0 is unreadable \(.*TypeError: .*BitString",
    "root-version-34": r"no readable PEM certificate \(InvalidVersion: 33",
    "root-duplicate-extension": r"authority 0 is unreadable \(.*DuplicateExtension: ",
}


def test_corpus_files_are_all_listed() -> None:
    """Every corpus file has a row, and every row a file: none is silently skipped."""
    for folder, rows in (("spiffe-bundle", SPIFFE_BUNDLES), ("pem-bundle", PEM_BUNDLES)):
        assert {p.stem for p in (CORPUS / folder).iterdir()} == set(rows), folder
    assert {p.stem for p in (CORPUS / "config").iterdir()} == set(CONFIGS)


@pytest.mark.parametrize(("name", "pattern"), SPIFFE_BUNDLES.items(), ids=list(SPIFFE_BUNDLES))
def test_corpus_spiffe_bundle(name: str, pattern: str) -> None:
    text = (CORPUS / "spiffe-bundle" / f"{name}.json").read_text()
    loaders: list[Callable[[], object]] = [
        lambda: X509Bundle.from_spiffe_bundle("example.org", text),
        lambda: X509Bundle.from_spiffe_bundle("example.org", text.encode()),
        lambda: BundleSet.from_spiffe_bundles({"example.org": text}),
        lambda: BundleSet.from_federated_json(f'{{"example.org": {text}}}'),
        lambda: BundleSet.from_federated_json(f'{{"spiffe://example.org": {text}}}'.encode()),
    ]
    for load in loaders:
        with pytest.raises(MeshError) as info:
            load()
        assert_one_line(info.value, BundleError, pattern)


@pytest.mark.parametrize(("name", "pattern"), PEM_BUNDLES.items(), ids=list(PEM_BUNDLES))
def test_corpus_pem_bundle(name: str, pattern: str) -> None:
    pem = (CORPUS / "pem-bundle" / f"{name}.pem").read_bytes()
    loaders: list[Callable[[], object]] = [
        lambda: X509Bundle.from_pem("example.org", pem),
        lambda: X509Bundle.from_pem("example.org", pem.decode()),
        lambda: BundleSet.from_pem({"example.org": pem}),
    ]
    for load in loaders:
        with pytest.raises(MeshError) as info:
            load()
        assert_one_line(info.value, BundleError, pattern)


DEEP = 100_000


@dataclass(frozen=True)
class Row:
    """One corpus input made in code: what to call, the error it must raise, its message."""

    call: Callable[[], object]
    error: type[MeshError]
    pattern: str


#: SPIFFE IDs found by the spiffe-id target: their messages held the whole input.
ID_ROWS = {
    "a trust domain of 300 characters with userinfo": Row(
        lambda: TrustDomain.parse("a" * 300 + "@x"),
        SpiffeIdError,
        r"^trust domain 'a{80}\.\.\.' has userinfo \(ID-4\)$",
    ),
    "a path of 2,000 characters with a bad segment": Row(
        lambda: SpiffeId(TrustDomain("example.org"), "/" + "p" * 2000 + "/%41"),
        SpiffeIdError,
        r"^path '/p{79}\.\.\.' is percent-encoded \(ID-9\)$",
    ),
    "a scheme-less id of 300 characters": Row(
        lambda: TrustDomain.parse("SPIFFE://" + "a" * 300),
        SpiffeIdError,
        r"^'SPIFFE://a{71}\.\.\.' does not start with 'spiffe://' \(ID-1\)$",
    ),
}

#: Bundle inputs too large for a file or not UTF-8.
BUNDLE_ROWS = {
    "arrays nested 100,000 deep": Row(
        lambda: X509Bundle.from_spiffe_bundle(
            "example.org", '{"keys": ' + "[" * DEEP + "]" * DEEP + "}"
        ),
        BundleError,
        r"not valid JSON \(RecursionError",
    ),
    "objects nested 100,000 deep in a federated map": Row(
        lambda: BundleSet.from_federated_json('{"a": ' * DEEP + "1" + "}" * DEEP),
        BundleError,
        r"federated bundle map is not valid JSON \(RecursionError",
    ),
    "a PEM str with a lone surrogate": Row(
        lambda: X509Bundle.from_pem("example.org", "\udc80"),
        BundleError,
        r"no readable PEM certificate \(UnicodeEncodeError",
    ),
    "load_pem_certificates of a lone surrogate": Row(
        lambda: load_pem_certificates("-----BEGIN CERTIFICATE-----\ud800", what="roots.pem"),
        BundleError,
        r"^roots\.pem: no readable PEM certificate \(UnicodeEncodeError",
    ),
    "a federated key with a lone surrogate": Row(
        lambda: BundleSet.from_federated_json('{"\\ud800": {"keys": []}}'),
        BundleError,
        r"federated bundle map: trust domain '\\ud800': .*\(ID-6\)",
    ),
    "an x5c with a lone surrogate": Row(
        lambda: X509Bundle.from_spiffe_bundle(
            "example.org", '{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["\\udc80"]}]}'
        ),
        BundleError,
        r"keys\[0\]\.x5c\[0\] is not a DER certificate",
    ),
    "a spiffe_sequence holding a long array (found by the spiffe-bundle target)": Row(
        lambda: X509Bundle.from_spiffe_bundle(
            "example.org", '{"keys": [], "spiffe_sequence": ["' + "M" * 5000 + '"]}'
        ),
        BundleError,
        r"spiffe_sequence \"\['M+\.\.\.\" is not a count$",
    ),
    "a PEM mapping keyed by a bad trust domain": Row(
        lambda: BundleSet.from_pem({"Example.org": b""}),
        BundleError,
        r"trust domain 'Example\.org': .*\(ID-5\)",
    ),
}


# ---------------------------------------------------------------- config and durations


#: tests/corpus/config/*.toml: node configs, loaded with `load_config`.
CONFIGS = {
    "toml-nested-5000": r"^{file}: line 2: bad TOML: nested too deeply",
    "duration-4301-digits": r"^{file}: \[policy\] max_ttl: bad duration '1+\.\.\.",
    "integer-4301-digits": r"^{file}: line 2: bad TOML: a number of more than 4300 digits",
    "port-4301-digits": r"^{file}: \[node\] listen: bad address '127\.0\.0\.1:1+\.\.\.",
    "path-component-300-bytes": r"^{file}: \[identity\] cert: cannot use '.*c\.\.\.': "
    r"File name too long",
    "path-nul-byte": r"^{file}: \[identity\] local_ca: 'ca\\x00dir' has a NUL character",
    "local-ca-ttl-overflow": r"^{file}: \[identity\] ttl: 999999999d is over 365d, the local CA's"
    r" own lifetime",
    "duration-arabic-indic-digits": r"^{file}: \[node\] handshake_timeout: bad duration "
    r"'\u0661\u0662s'",
}


@pytest.mark.parametrize(("name", "pattern"), CONFIGS.items(), ids=list(CONFIGS))
def test_corpus_config(name: str, pattern: str) -> None:
    path = CORPUS / "config" / f"{name}.toml"
    expected = pattern.format(file=re.escape(str(path)))
    with pytest.raises(MeshError) as info:
        load_config(path)
    assert_one_line(info.value, ConfigError, expected)
    with pytest.raises(MeshError) as info:
        parse_config(path.read_text(), base_dir=path.parent, source="node.toml")
    assert_one_line(info.value, ConfigError, pattern.format(file="node\\.toml"))


CONFIG_ROWS = {
    "a duration of 4,301 digits": Row(
        lambda: parse_duration("1" * 4301 + "s", setting="ttl"),
        ConfigError,
        r"^ttl: bad duration '1+\.\.\.': a number has more than 18 digits",
    ),
    "a duration in Arabic-Indic digits": Row(
        lambda: parse_duration("\u0661\u0662s"), ConfigError, r"^bad duration '\u0661\u0662s'"
    ),
    "a duration in fullwidth digits": Row(
        lambda: parse_duration("\uff11h"), ConfigError, r"^bad duration '\uff11h'"
    ),
    "an unknown key of 5,000 characters": Row(
        lambda: parse_config(
            '[identity]\nworkload_api = "env"\n[node]\n' + "k" * 5000 + " = 1\n",
            base_dir=Path("."),
        ),
        ConfigError,
        r"^<string>: \[node\] k+\.\.\.: unknown key",
    ),
    "a trust domain of 5,000 characters": Row(
        lambda: parse_config(
            '[identity]\nworkload_api = "env"\n[authorize]\nmember_of = "' + "a" * 5000 + '@"\n',
            base_dir=Path("."),
        ),
        ConfigError,
        r"^<string>: \[authorize\] member_of: bad trust domain 'a+\.\.\.': .*\(ID-4\)",
    ),
    "a config str with a lone surrogate": Row(
        lambda: parse_config(
            '[identity]\nworkload_api = "env"\n[node]\nlisten = "\udc80:1"\n', base_dir=Path(".")
        ),
        ConfigError,
        r"\[node\] listen: bad address '\\udc80' is not a host name",
    ),
}


@pytest.mark.parametrize(
    "row",
    [*ID_ROWS.values(), *BUNDLE_ROWS.values(), *CONFIG_ROWS.values()],
    ids=[*ID_ROWS, *BUNDLE_ROWS, *CONFIG_ROWS],
)
def test_corpus_row(row: Row) -> None:
    with pytest.raises(MeshError) as info:
        row.call()
    assert_one_line(info.value, row.error, row.pattern)


# ---------------------------------------------------------------- other owners' parsers


@pytest.fixture(scope="module")
def no_expiry_ca() -> CA:
    """A root with RFC 5280's "no well-defined expiration", as some real roots have."""
    return CA("example.org", now=T, not_after=NO_EXPIRY)


def test_corpus_untrusted_leaf_with_no_expiry_is_refused(ca: CA, no_expiry_ca: CA) -> None:
    """connect() re-runs verify_svid on a server's chain OpenSSL refused: no trusted CA needed."""
    chain = no_expiry_ca.issue(not_after=NO_EXPIRY).chain
    with pytest.raises(MeshError) as info:
        meshtls.verify_svid(chain, ca.bundle_set(), now=T)
    assert_one_line(info.value, meshtls.VerificationError, r"^[a-z_]+: ")


def test_corpus_trusted_leaf_with_no_expiry_is_refused(no_expiry_ca: CA) -> None:
    """A Workload API SVID with that date: rotation checks it as a peer would (P-1)."""
    issued = no_expiry_ca.issue(not_after=NO_EXPIRY)
    with pytest.raises(MeshError) as info:
        issued.svid().check(no_expiry_ca.bundle_set(), now=T)
    assert_one_line(info.value, meshtls.VerificationError, r"^ttl_exceeded: ")


def test_corpus_root_with_no_expiry_anchors_a_good_leaf(no_expiry_ca: CA) -> None:
    """A bundle root dated 9999 is a valid anchor: its leaf verifies, expiring as itself."""
    issued = no_expiry_ca.issue()
    peer = meshtls.verify_svid(issued.chain, no_expiry_ca.bundle_set(), now=T)
    assert peer.not_after == issued.leaf.not_valid_after_utc


def test_corpus_root_with_no_expiry_loads_as_a_bundle(no_expiry_ca: CA) -> None:
    bundles = BundleSet.from_pem({"example.org": no_expiry_ca.bundle_pem})
    der = no_expiry_ca.certificate.public_bytes(Encoding.DER)
    jwks = {"keys": [{"use": "x509-svid", "kty": "EC", "x5c": [base64.b64encode(der).decode()]}]}
    assert X509Bundle.from_spiffe_bundle("example.org", json.dumps(jwks)) == next(
        iter(bundles.values())
    )


@pytest.mark.parametrize(
    "bundle_file",
    sorted([*(CORPUS / "spiffe-bundle").iterdir(), *(CORPUS / "pem-bundle").iterdir()]),
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_corpus_federated_bundle_file_rewritten_keeps_the_identity(
    tmp_path: Path, ca: CA, other_ca: CA, bundle_file: Path
) -> None:
    """A running node's file source meets each hostile bundle: it reports and keeps going."""
    issued = ca.issue()
    files = {name: tmp_path / name for name in ("svid.pem", "svid.key", "bundle.pem", "fed.pem")}
    files["svid.pem"].write_bytes(issued.chain_pem)
    files["svid.key"].write_bytes(issued.key_pem)
    files["bundle.pem"].write_bytes(ca.bundle_pem)
    files["fed.pem"].write_bytes(other_ca.bundle_pem)
    reports: list[tuple[str, str]] = []
    source = meshtls.FileSource(
        cert=files["svid.pem"],
        key=files["svid.key"],
        bundle=files["bundle.pem"],
        federated={"other.org": files["fed.pem"]},
        on_invalid=lambda reason, detail: reports.append((reason, detail)),
    )
    before = source.contexts()
    files["fed.pem"].write_bytes(bundle_file.read_bytes() + b"\n\n")  # a new size: seen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography may warn while parsing these
        assert source.reload() is False
    assert source.contexts() is before
    assert len(reports) == 1
    assert str(files["fed.pem"]) in reports[0][1]


def _leaf_with(ca: CA, *, edi_party: bool) -> x509.Certificate:
    """A leaf cryptography cannot read in full: a SAN holding an EDIPartyName, or (edited
    after signing) two subject key identifiers."""
    if edi_party:
        san = fuzz._san("spiffe://example.org/w", fuzz._EDI_PARTY)
        return ca.issue(uris=(), extensions=[(san, False)]).leaf
    data = fuzz.der(ca.issue().leaf)
    key_usage_oid = bytes.fromhex("0603551d0f")
    assert data.count(key_usage_oid) == 1
    return x509.load_der_x509_certificate(data.replace(key_usage_oid, bytes.fromhex("0603551d0e")))


@pytest.mark.parametrize("edi_party", [True, False], ids=["EDIPartyName SAN", "duplicate SKI"])
def test_corpus_unreadable_leaf_is_malformed(ca: CA, edi_party: bool) -> None:
    """Found by the verify-svid target; the same certificates reach X509Svid.load."""
    leaf = _leaf_with(ca, edi_party=edi_party)
    with pytest.raises(MeshError) as info:
        meshtls.verify_svid([leaf], ca.bundle_set(), now=T)
    assert_one_line(info.value, meshtls.VerificationError, r"^malformed_certificate: ")
    with pytest.raises(MeshError):
        meshtls.X509Svid.load(fuzz.pem(fuzz.der(leaf)), ca.issue().key_pem)


def test_corpus_svid_whose_key_algorithm_is_unknown(ca: CA) -> None:
    """Found by the svid-load target: the leaf's curve OID one byte off, our key beside it."""
    issued = ca.issue()
    data = fuzz.der(issued.leaf)
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert data.count(p256) == 1
    leaf = fuzz.pem(data.replace(p256, bytes.fromhex("06082a8648ce3d030108")))
    with pytest.raises((MeshError, ValueError)):  # X509Svid.load documents ValueError
        meshtls.X509Svid.load(leaf, issued.key_pem)


# ---------------------------------------------------------------- the fuzz targets, briefly

#: Inputs per target in the default suite: the whole set runs in a few seconds.
BUDGET = {
    "spiffe-id": 60,
    "duration": 60,
    "config": 20,
    "pem-bundle": 20,
    "spiffe-bundle": 20,
    "federated-bundle": 15,
    "split-der": 30,
    "crl": 25,
    "ocsp": 25,
    "workload-message": 20,
    "svid-load": 20,
    "http": 25,
    "verify-svid": 15,
}


def test_every_target_has_a_budget() -> None:
    assert set(BUDGET) == set(fuzz.TARGETS)


@pytest.mark.parametrize("name", list(BUDGET))
def test_fuzz_target(name: str) -> None:
    """A derandomized run: the same inputs every time; the first escape fails the test."""
    report = fuzz.run(name, BUDGET[name], collect=False)
    assert report.inputs >= BUDGET[name] // 2  # Hypothesis may stop early, not by much
    assert report.outcomes["ESCAPED"] == 0


def test_every_check_accepts_its_good_input(ca: CA) -> None:
    """The checks are not vacuous: the inputs the targets mutate are accepted as good."""
    good_leaf = fuzz.material().leaves[0]
    jwks = {
        "keys": [
            {
                "use": "x509-svid",
                "kty": "EC",
                "x5c": [base64.b64encode(fuzz.der(ca.certificate)).decode()],
            }
        ]
    }
    assert fuzz.check_spiffe_id("spiffe://example.org/a/b") == "accepted"
    assert fuzz.check_duration("2h30m") == "accepted"
    assert fuzz.check_config(fuzz._GOOD_CONFIG) == "accepted"
    assert fuzz.check_pem_bundle(ca.bundle_pem) == "accepted"
    assert fuzz.check_spiffe_bundle(json.dumps(jwks)) == "accepted"
    assert fuzz.check_federated_bundle(json.dumps({"example.org": jwks})) == "accepted"
    assert fuzz.check_split_der(b"".join(fuzz.material().roots)) == "accepted"
    assert fuzz.check_workload_message(fuzz.good_message()) == "_Message"
    assert fuzz.check_svid_load((good_leaf.chain_pem, good_leaf.key_pem)) == "accepted"
    assert fuzz.check_http(fuzz._GOOD_REQUEST) == "200"
    assert fuzz.check_verify((list(good_leaf.chain), False)) == "accepted"
    assert all(fuzz.check_ocsp(good) == "accepted" for good, _ in fuzz._ocsp_cases())


def test_an_escape_is_reported_not_hidden() -> None:
    """The harness itself: a check that lets a foreign error through fails the run, and a
    collecting run records it with its place and a sample."""

    def leaky(text: str) -> str:
        if "x" in text:
            raise OverflowError("from the parser")
        return "accepted"

    make = fuzz._bind(st.text(alphabet="abx", min_size=1), leaky)
    with pytest.raises(OverflowError):
        fuzz.run("leaky", 50, collect=False, make=make)
    report = fuzz.run("leaky", 50, collect=True, make=make)
    assert report.outcomes["ESCAPED"] > 0
    ((where, (count, sample)),) = report.escapes.items()
    assert where.startswith("OverflowError at test_fuzz.py:")
    assert count == report.outcomes["ESCAPED"]
    assert sample.startswith("from the parser <- '")
