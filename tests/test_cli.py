"""The ``meshtls`` command, run in-process through `main` (plus one real subprocess).

Each error case checks the contract of API.md: its exit code, and exactly one line on
stderr with the ``meshtls: error:`` prefix and no traceback.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

import meshtls
import meshtls.testing
from meshtls import _entry as meshtls_entry
from meshtls._cli import main
from meshtls._duration import format_duration, parse_duration, parse_optional_duration

TD = "example.org"
WEB = "spiffe://example.org/ns/web"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fields(out: str) -> dict[str, str]:
    """``key: value`` lines as a dict."""
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def assert_one_error(err: str, *needles: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("meshtls: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def issuer_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own directory: ``ca issue`` writes there by default."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "ca"
    assert run(capsys, "ca", "init", "--trust-domain", TD, "--dir", directory)[0] == 0
    return directory


@pytest.fixture
def intermediate_ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "ica"
    code, _, _ = run(
        capsys, "ca", "init", "--trust-domain", TD, "--dir", directory, "--intermediate"
    )
    assert code == 0
    return directory


def issue(capsys: pytest.CaptureFixture[str], ca: Path, *extra: str | Path) -> Path:
    """Issue WEB from `ca`; return PREFIX.pem."""
    code, out, err = run(capsys, "ca", "issue", WEB, "--dir", ca, *extra)
    assert code == 0, err
    return Path(out.splitlines()[0].removeprefix("wrote "))


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("1h", timedelta(hours=1)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("365d", timedelta(days=365)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("500ms", timedelta(milliseconds=500)),
        ("90m", timedelta(minutes=90)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "5", "5x", "1.5h", "-1h", "30m1h", "1h 30m", " 1h", "1H", "h", "off", "1hh"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(meshtls.ConfigError, match=r"policy\.max_ttl: bad duration") as info:
        parse_duration(text, setting="policy.max_ttl")
    assert repr(text) in str(info.value)


def test_parse_duration_too_large() -> None:
    with pytest.raises(meshtls.ConfigError, match="too large"):
        parse_duration("99999999999d")


def test_parse_optional_duration() -> None:
    assert parse_optional_duration("off") is None
    assert parse_optional_duration("1h") == timedelta(hours=1)


@pytest.mark.parametrize(
    "text", ["30s", "1h", "2h30m", "365d", "1d2h3m4s", "0s", "400ms", "1s500ms", "1d1ms"]
)
def test_format_duration_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_format_duration_negative() -> None:
    assert format_duration(-timedelta(minutes=5)) == "-5m"


# ---------------------------------------------------------------- ca init


def test_init_writes_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "ca"
    code, out, err = run(capsys, "ca", "init", "--trust-domain", TD, "--dir", directory)
    assert (code, err) == (0, "")
    written = [Path(line.removeprefix("wrote ")) for line in out.splitlines()]
    assert {p.name for p in written} == {"root.pem", "root.key", "bundle.pem", "ca.json"}
    assert all(p.is_file() for p in written)
    assert mode(directory / "root.key") == 0o600
    assert load_chain(directory / "bundle.pem") == load_chain(directory / "root.pem")


def test_init_intermediate(intermediate_ca_dir: Path) -> None:
    assert mode(intermediate_ca_dir / "root.key") == 0o600
    assert mode(intermediate_ca_dir / "intermediate.key") == 0o600
    (root,) = load_chain(intermediate_ca_dir / "bundle.pem")
    (intermediate,) = load_chain(intermediate_ca_dir / "intermediate.pem")
    assert intermediate.issuer == root.subject


def test_init_refuses_to_overwrite(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (ca_dir / "root.pem").read_bytes()
    code, _, err = run(capsys, "ca", "init", "--trust-domain", TD, "--dir", ca_dir)
    assert code == 2
    assert_one_error(err, str(ca_dir / "root.pem"), "--force")
    assert (ca_dir / "root.pem").read_bytes() == before

    code, _, err = run(capsys, "ca", "init", "--trust-domain", TD, "--dir", ca_dir, "--force")
    assert (code, err) == (0, "")
    assert (ca_dir / "root.pem").read_bytes() != before


def test_init_force_drops_a_stale_intermediate(
    intermediate_ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "ca", "init", "--trust-domain", TD, "--dir", intermediate_ca_dir, "--force"
    )
    assert (code, err) == (0, "")
    assert not (intermediate_ca_dir / "intermediate.pem").exists()
    assert not (intermediate_ca_dir / "intermediate.key").exists()
    assert run(capsys, "ca", "issue", WEB, "--dir", intermediate_ca_dir)[0] == 0
    bundle = intermediate_ca_dir / "bundle.pem"
    code, out, _ = run(capsys, "inspect", "web.pem", "--bundle", bundle)
    assert code == 0, out
    assert "verdict: ok" in out


def test_init_bad_trust_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ca", "init", "--trust-domain", "Example.org", "--dir", tmp_path)
    assert code == 2
    assert_one_error(err, "Example.org")


# ---------------------------------------------------------------- ca issue


def test_issue_writes_leaf_and_key(
    ca_dir: Path, in_tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default in the current directory, never beside the CA's keys."""
    code, out, err = run(capsys, "ca", "issue", WEB, "--dir", ca_dir)
    assert (code, err) == (0, "")
    cert, key = Path("web.pem"), Path("web.key")
    assert (in_tmp_path / "web.key").is_file()
    assert not (ca_dir / "web.key").exists()
    assert out.splitlines()[:2] == [f"wrote {cert}", f"wrote {key}"]
    (leaf,) = load_chain(cert)
    info = fields(out)
    assert info["spiffe_id"] == WEB
    assert info["serial"] == f"{leaf.serial_number:#x}"
    assert info["not_after"] == f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(minutes=30)
    assert mode(key) == 0o600
    svid = meshtls.X509Svid.load(cert.read_bytes(), key.read_bytes())
    assert str(svid.spiffe_id) == WEB


def test_issue_with_intermediate(
    intermediate_ca_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cert = issue(capsys, intermediate_ca_dir, "--out", tmp_path / "svid")
    assert cert == tmp_path / "svid.pem"
    leaf, intermediate = load_chain(cert)
    assert intermediate == load_chain(intermediate_ca_dir / "intermediate.pem")[0]
    assert leaf.issuer == intermediate.subject
    assert mode(tmp_path / "svid.key") == 0o600


def test_issue_refuses_to_overwrite(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = issue(capsys, ca_dir)
    before = cert.read_bytes()
    code, _, err = run(capsys, "ca", "issue", WEB, "--dir", ca_dir)
    assert code == 2
    assert_one_error(err, str(cert), "--force")
    assert cert.read_bytes() == before
    issue(capsys, ca_dir, "--force")
    assert cert.read_bytes() != before


def test_issue_extensions(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ocsp, crl = "http://ocsp.example.org/", "http://crl.example.org/ca.crl"
    cert = issue(
        capsys, ca_dir, "--ocsp-url", ocsp, "--crl-url", crl, "--dns", "web", "--dns", "web.local"
    )
    (leaf,) = load_chain(cert)
    aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method, a.access_location.value) for a in aia] == [
        (AuthorityInformationAccessOID.OCSP, ocsp)
    ]
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [name.value for point in points for name in point.full_name or ()] == [crl]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web", "web.local"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]


def test_issue_long_ttl_warns(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ca", "issue", WEB, "--dir", ca_dir, "--ttl", "2h")
    assert code == 0
    (line,) = err.splitlines()
    assert line.startswith("meshtls: warning: ")
    assert "max_ttl 1h" in line


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["ca", "issue", "spiffe://Example.org/x"], "Example.org"),
        (["ca", "issue", "spiffe://other.org/x"], "other.org"),
        (["ca", "issue", "spiffe://example.org"], "no path"),
        (["ca", "issue", WEB, "--ttl", "5x"], "'5x'"),
        (["ca", "issue", WEB, "--ttl", "0s"], "positive"),
        (["ca", "issue", WEB, "--out", "/nonexistent/dir/web"], "/nonexistent/dir"),
        (["ca", "issue", WEB, "--bogus"], "--bogus"),
        (["inspect", "missing.pem"], "missing.pem"),
        (["inspect", "{garbage}"], "no readable PEM certificate"),
        (["inspect", "{ca}/bundle.pem", "--bundle", "{garbage}"], "no readable PEM"),
        (["inspect", "{ca}/bundle.pem", "--max-ttl", "soon"], "'soon'"),
        (["inspect", "{ca}/bundle.pem", "--at", "tomorrow"], "'tomorrow'"),
        (["ca", "revoke", "nothing-here"], "neither a serial"),
        (["node", "--config", "{ca}/node.toml", "--state-dir", "{ca}"], "give one or the other"),
    ],
)
def test_usage_and_config_errors(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    argv = [arg.format(ca=ca_dir, garbage=garbage) for arg in argv]
    if argv[0] == "ca":
        argv += ["--dir", str(ca_dir)]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert_one_error(err, needle)
    assert out == ""


def test_missing_ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ca", "issue", WEB, "--dir", tmp_path / "nope")
    assert code == 2
    assert_one_error(err, "not a CA directory")


def test_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert_one_error(err, "COMMAND")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"meshtls {meshtls.__version__}\n", "")


# ---------------------------------------------------------------- inspect


def test_inspect_ok(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = issue(capsys, ca_dir)
    (leaf,) = load_chain(cert)
    code, out, err = run(capsys, "inspect", cert, "--bundle", ca_dir / "bundle.pem")
    assert (code, err) == (0, "")
    info = fields(out)
    assert list(info) == [
        "spiffe_id",
        "serial",
        "not_before",
        "not_after",
        "lifetime",
        "time_left",
        "chain",
        "verdict",
    ]
    assert info["spiffe_id"] == WEB
    assert info["serial"] == f"{leaf.serial_number:#x}"
    assert info["lifetime"] == "30m"
    assert info["chain"] == "1"
    assert info["verdict"] == "ok"


def test_inspect_intermediate_chain(
    intermediate_ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = issue(capsys, intermediate_ca_dir)
    code, out, _ = run(capsys, "inspect", cert, "--bundle", intermediate_ca_dir / "bundle.pem")
    assert code == 0
    assert fields(out)["chain"] == "2"
    assert fields(out)["verdict"] == "ok"


def test_inspect_federated_bundles(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    run(capsys, "ca", "init", "--trust-domain", "other.org", "--dir", other)
    cert = issue(capsys, ca_dir)
    bundles = ["--bundle", f"other.org={other / 'bundle.pem'}"]
    code, out, _ = run(capsys, "inspect", cert, *bundles, "--bundle", f"{TD}={ca_dir}/bundle.pem")
    assert (code, fields(out)["verdict"]) == (0, "ok")
    code, out, _ = run(capsys, "inspect", cert, *bundles)
    assert (code, fields(out)["verdict"]) == (1, "rejected reason=unknown_trust_domain")


def test_inspect_without_bundle(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = issue(capsys, ca_dir)
    code, out, _ = run(capsys, "inspect", cert)
    assert code == 0
    assert fields(out)["verdict"] == "ok (chain not verified: no --bundle)"
    code, out, _ = run(capsys, "inspect", cert, "--at", "2100-01-01T00:00:00Z")
    assert code == 1
    assert fields(out)["verdict"] == "rejected reason=expired"


def test_inspect_ttl_exceeded(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = issue(capsys, ca_dir, "--ttl", "2h")
    bundle = ca_dir / "bundle.pem"
    code, out, err = run(capsys, "inspect", cert, "--bundle", bundle)
    assert (code, err) == (1, "")
    info = fields(out)
    assert info["verdict"] == "rejected reason=ttl_exceeded"
    assert "max_ttl" in info["detail"]
    assert run(capsys, "inspect", cert, "--bundle", bundle, "--max-ttl", "3h")[0] == 0
    assert run(capsys, "inspect", cert, "--bundle", bundle, "--max-ttl", "off")[0] == 0
    # Without a bundle the leaf-local checks still apply the policy.
    assert fields(run(capsys, "inspect", cert)[1])["verdict"] == "rejected reason=ttl_exceeded"


def test_inspect_max_age(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = issue(capsys, ca_dir)
    (leaf,) = load_chain(cert)
    made = leaf.not_valid_before_utc
    at_5m, at_20m = (made + timedelta(minutes=5)).isoformat(), (made + timedelta(minutes=20))
    assert run(capsys, "inspect", cert, "--max-age", "10m", "--at", at_5m)[0] == 0
    # The same instant written with another offset.
    at = at_20m.astimezone(timezone(timedelta(hours=2))).isoformat()
    code, out, _ = run(capsys, "inspect", cert, "--max-age", "10m", "--at", at)
    assert code == 1
    assert fields(out)["verdict"] == "rejected reason=age_exceeded"
    assert fields(out)["time_left"] == "10m"


def test_inspect_untrusted(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    run(capsys, "ca", "init", "--trust-domain", TD, "--dir", other)
    cert = issue(capsys, other)
    code, out, err = run(capsys, "inspect", cert, "--bundle", ca_dir / "bundle.pem")
    assert (code, err) == (1, "")
    info = fields(out)
    assert info["spiffe_id"] == WEB
    assert info["verdict"] == "rejected reason=untrusted_chain"
    assert info["detail"]


def test_inspect_expired(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = issue(capsys, ca_dir)
    (leaf,) = load_chain(cert)
    day_later = (leaf.not_valid_before_utc + timedelta(days=1)).isoformat()
    code, out, _ = run(
        capsys, "inspect", cert, "--bundle", ca_dir / "bundle.pem", "--at", day_later
    )
    assert code == 1
    info = fields(out)
    assert info["verdict"] == "rejected reason=expired"
    assert info["time_left"] == "-23h30m (expired)"


def test_inspect_bad_leaf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshtls.testing import CA

    ca = CA(TD, now=datetime(2030, 1, 1, tzinfo=UTC))
    cert = tmp_path / "no-uri.pem"
    cert.write_bytes(ca.issue(uris=[]).chain_pem)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem)
    for extra in ([], ["--bundle", str(bundle)]):
        code, out, _ = run(capsys, "inspect", cert, "--at", "2030-01-01T00:01:00Z", *extra)
        assert code == 1
        info = fields(out)
        assert info["spiffe_id"] == "-"
        assert info["verdict"] == "rejected reason=no_uri_san"


def _edi_party_san_leaf(ca: meshtls.testing.CA) -> bytes:
    """A leaf whose SAN holds a SPIFFE URI and an EDIPartyName (UnsupportedGeneralNameType)."""
    uri = WEB.encode()
    edi_party = bytes.fromhex("a507a1050c03616263")  # [5] { partyName [1] UTF8String "abc" }
    names = bytes([0x86, len(uri)]) + uri + edi_party
    san = x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, bytes([0x30, len(names)]) + names
    )
    return ca.issue(uris=(), extensions=[(san, False)]).chain_pem


@pytest.mark.parametrize("defect", ["duplicate extension", "EDIPartyName in the SAN"])
def test_inspect_of_a_certificate_cryptography_cannot_read_is_a_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], defect: str
) -> None:
    from meshtls.testing import CA

    from .hostile_identity import duplicate_extension_leaf

    ca = CA(TD, now=datetime(2030, 1, 1, tzinfo=UTC))
    cert = tmp_path / "hostile.pem"
    if defect == "duplicate extension":
        cert.write_bytes(duplicate_extension_leaf(ca)["cert"])
    else:
        cert.write_bytes(_edi_party_san_leaf(ca))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem)
    for extra in ([], ["--bundle", str(bundle)]):
        code, out, err = run(capsys, "inspect", cert, "--at", "2030-01-01T00:01:00Z", *extra)
        assert (code, err) == (1, "")
        info = fields(out)
        assert info["spiffe_id"] == "-"
        assert info["verdict"] == "rejected reason=malformed_certificate"
        assert "\n" not in info["detail"]


def test_inspect_of_a_file_no_certificate_parser_reads_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshtls.testing import CA

    from .hostile_identity import version_34

    cert = tmp_path / "v34.pem"
    cert.write_bytes(version_34(CA(TD, now=datetime(2030, 1, 1, tzinfo=UTC))))
    code, out, err = run(capsys, "inspect", cert)
    assert (code, out) == (2, "")
    assert_one_error(err, "v34.pem")


# ---------------------------------------------------------------- ca revoke


@pytest.mark.parametrize("by", ["cert", "hex", "decimal"])
def test_revoke(intermediate_ca_dir: Path, capsys: pytest.CaptureFixture[str], by: str) -> None:
    cert = issue(capsys, intermediate_ca_dir)
    leaf = load_chain(cert)[0]
    target = {
        "cert": str(cert),
        "hex": f"{leaf.serial_number:#x}",
        "decimal": str(leaf.serial_number),
    }[by]
    code, out, err = run(capsys, "ca", "revoke", target, "--dir", intermediate_ca_dir)
    assert (code, err) == (0, "")
    crl_path = intermediate_ca_dir / "crl.pem"
    assert f"wrote {crl_path}" in out.splitlines()
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    (intermediate,) = load_chain(intermediate_ca_dir / "intermediate.pem")
    assert crl.issuer == intermediate.subject
    assert crl.is_signature_valid(issuer_public_key(intermediate))
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None


def test_revoke_cert_of_another_ca(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    run(capsys, "ca", "init", "--trust-domain", TD, "--dir", other)
    cert = issue(capsys, other)
    code, _, err = run(capsys, "ca", "revoke", cert, "--dir", ca_dir)
    assert code == 2
    assert_one_error(err, "not issued by")
    assert not (ca_dir / "crl.pem").exists()


# ---------------------------------------------------------------- outside the process


@pytest.mark.openssl
def test_openssl_verifies_an_issued_leaf(
    intermediate_ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = issue(capsys, intermediate_ca_dir)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(
        cert.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    )
    done = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(intermediate_ca_dir / "bundle.pem"),
            "-untrusted",
            str(intermediate_ca_dir / "intermediate.pem"),
            str(leaf),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{leaf}: OK"


def test_entry_point(tmp_path: Path) -> None:
    (script,) = entry_points(group="console_scripts", name="meshtls")
    assert script.load() is meshtls_entry.main  # holds signals, then runs _cli.main

    def meshtls_cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshtls", *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    done = meshtls_cli("--version")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"meshtls {meshtls.__version__}\n",
        "",
    )
    done = meshtls_cli("inspect", str(tmp_path / "missing.pem"))
    assert done.returncode == 2
    assert_one_error(done.stderr, "missing.pem")
