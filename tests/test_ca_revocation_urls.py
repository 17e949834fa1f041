"""``meshtls ca init --crl-url/--ocsp-url``: kept in ca.json, written into every later leaf.

The CLI runs in-process through `main`; `LocalCASource` is the node's ``local_ca``
identity, so its SVIDs must carry the CA's URLs as ``ca issue`` leaves do.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from meshtls._ca import LocalCA
from meshtls._cli import main
from meshtls._errors import ConfigError
from meshtls._sources import LocalCASource
from meshtls._spiffeid import SpiffeId, TrustDomain

TD = "example.org"
WEB = "spiffe://example.org/ns/web"
CRL = "http://127.0.0.1:9090/crl.pem"
OCSP = "https://ocsp.example.org/"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def urls(leaf: x509.Certificate) -> tuple[list[str], list[str]]:
    """(CRL distribution point URIs, AIA OCSP URIs) of `leaf`; empty when absent."""
    ext = x509.ExtensionNotFound
    try:
        points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        crl = [str(name.value) for point in points for name in point.full_name or ()]
    except ext:
        crl = []
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        ocsp = [
            str(a.access_location.value)
            for a in aia
            if a.access_method == AuthorityInformationAccessOID.OCSP
        ]
    except ext:
        ocsp = []
    return crl, ocsp


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "ca"
    argv = ("ca", "init", "--trust-domain", TD, "--dir", directory)
    code, _, err = run(capsys, *argv, "--crl-url", CRL, "--ocsp-url", OCSP)
    assert code == 0, err
    return directory


def issue_leaf(
    capsys: pytest.CaptureFixture[str], ca_dir: Path, out: Path, *extra: str
) -> x509.Certificate:
    code, _, err = run(capsys, "ca", "issue", WEB, "--dir", ca_dir, "--out", out, *extra)
    assert code == 0, err
    return x509.load_pem_x509_certificates(out.with_name(out.name + ".pem").read_bytes())[0]


def test_P_4_ca_init_urls_are_kept_in_ca_json(ca_dir: Path) -> None:
    meta = json.loads((ca_dir / "ca.json").read_text())
    assert meta == {"trust_domain": TD, "crl_url": CRL, "ocsp_url": OCSP}
    ca = LocalCA.open(ca_dir)
    assert (ca.crl_url, ca.ocsp_url) == (CRL, OCSP)


def test_P_4_ca_issue_writes_the_ca_urls(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = issue_leaf(capsys, ca_dir, tmp_path / "web")
    assert urls(leaf) == ([CRL], [OCSP])


def test_P_4_ca_issue_flag_wins_over_the_ca_url(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "http://crl.example.org/other.crl"
    leaf = issue_leaf(capsys, ca_dir, tmp_path / "web", "--crl-url", other)
    assert urls(leaf) == ([other], [OCSP])


def test_P_4_ca_without_urls_issues_leaves_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "plain"
    assert run(capsys, "ca", "init", "--trust-domain", TD, "--dir", directory)[0] == 0
    assert json.loads((directory / "ca.json").read_text()) == {"trust_domain": TD}
    leaf = issue_leaf(capsys, directory, tmp_path / "web")
    assert urls(leaf) == ([], [])


def test_P_4_local_ca_source_svids_carry_the_ca_urls(ca_dir: Path) -> None:
    source = LocalCASource(ca_dir, WEB, clock=lambda: datetime.now(UTC))
    assert urls(source.identity().svid.leaf) == ([CRL], [OCSP])


def test_P_4_local_ca_init_in_python_keeps_urls(tmp_path: Path) -> None:
    ca = LocalCA.init(tmp_path / "ca", TrustDomain(TD), crl_url=CRL)
    assert (ca.crl_url, ca.ocsp_url) == (CRL, None)
    svid = ca.issue(SpiffeId.parse(WEB))
    assert urls(svid.leaf) == ([CRL], [])


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://crl.example.org/ca.crl",
        "ldap://ldap.example.org/cn=ca",
        "crl.example.org/ca.crl",
        "http://",
        "http://[::1/crl",
        "http://host:99999/crl",
        "http://host/a b",
        "",
    ],
)
@pytest.mark.parametrize("flag", ["--crl-url", "--ocsp-url"])
def test_P_4_ca_init_refuses_a_bad_url(
    bad: str, flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "ca"
    code, out, err = run(capsys, "ca", "init", "--trust-domain", TD, "--dir", directory, flag, bad)
    assert code == 2
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("meshtls: error: ")
    assert flag in line
    assert "Traceback" not in err
    assert not (directory / "ca.json").exists()  # refused before anything is written


@pytest.mark.parametrize("flag", ["--crl-url", "--ocsp-url"])
def test_P_4_ca_issue_refuses_a_bad_url(
    flag: str, ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("ca", "issue", WEB, "--dir", ca_dir, "--out", tmp_path / "web")
    code, _, err = run(capsys, *argv, flag, "file:///etc/passwd")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("meshtls: error: ")
    assert flag in line
    assert not (tmp_path / "web.pem").exists()


def test_P_4_open_refuses_a_bad_url_in_ca_json(ca_dir: Path) -> None:
    meta = json.loads((ca_dir / "ca.json").read_text())
    (ca_dir / "ca.json").write_text(json.dumps({**meta, "crl_url": "gopher://x/"}))
    with pytest.raises(ConfigError, match="crl_url"):
        LocalCA.open(ca_dir)
