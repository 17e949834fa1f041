"""X.509-SVIDs built outside meshtls, by the openssl CLI, each with exactly one defect.

`tests/external/make_certs.sh` writes the chains and bundles; `tests/external/cases.json`
says what `meshtls.verify_svid` must answer for each. An independent tool catches the
mistakes that a test suite shares with the code when both build certificates the same way.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, TypedDict, cast

import pytest
from cryptography import x509

import meshtls

EXTERNAL = Path(__file__).parent / "external"
SCRIPT = EXTERNAL / "make_certs.sh"
MANIFEST = EXTERNAL / "cases.json"

# The fixed reason set of API.md, written out here so the manifest is checked against
# the contract and not against whatever the library happens to export.
API_REASONS = frozenset(
    [
        "malformed_certificate",
        "no_uri_san",
        "multiple_uri_sans",
        "invalid_spiffe_id",
        "root_path_id",
        "leaf_is_ca",
        "key_usage",
        "extended_key_usage",
        "bad_signing_certificate",
        "unknown_trust_domain",
        "untrusted_chain",
        "expired",
        "not_yet_valid",
        "ttl_exceeded",
        "age_exceeded",
        "revoked",
        "revocation_unknown",
        "unauthorized",
        "handshake_timeout",
        "protocol_error",
        "no_client_certificate",
    ]
)
# The rules this set must cover, at least one case each (SPIFFE-RULES.md).
COVERED_RULES = frozenset(
    [f"L-{n}" for n in range(1, 11)] + [f"S-{n}" for n in range(1, 5)] + ["P-1", "P-2", "P-3"]
)


class Policy(TypedDict):
    max_ttl_seconds: int
    max_age_seconds: int | None
    clock_skew_seconds: int


class ExpectOk(TypedDict):
    ok: Literal[True]
    spiffe_id: str


class ExpectFail(TypedDict):
    ok: Literal[False]
    reason: str


class Case(TypedDict):
    case: str
    rule: str
    chain: str
    bundles: dict[str, str]
    now: str
    policy: Policy
    expect: ExpectOk | ExpectFail
    note: str


def _load_cases() -> list[Case]:
    return cast("list[Case]", json.loads(MANIFEST.read_text(encoding="utf-8")))


CASES = _load_cases()


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs make_certs.sh once for the module. No skip: CI installs openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command-line tool is required (tests/external/make_certs.sh)")
    out = tmp_path_factory.mktemp("external-certs")
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"make_certs.sh exited {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    return out


def _policy(spec: Policy) -> meshtls.ValidationPolicy:
    max_age = spec["max_age_seconds"]
    return meshtls.ValidationPolicy(
        max_ttl=timedelta(seconds=spec["max_ttl_seconds"]),
        max_age=None if max_age is None else timedelta(seconds=max_age),
        clock_skew=timedelta(seconds=spec["clock_skew_seconds"]),
    )


@pytest.mark.openssl
@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_external_svid(case: Case, cert_dir: Path) -> None:
    chain = x509.load_pem_x509_certificates((cert_dir / case["chain"]).read_bytes())
    bundles = meshtls.BundleSet.from_pem(
        {td: (cert_dir / path).read_bytes() for td, path in case["bundles"].items()}
    )
    policy = _policy(case["policy"])
    now = datetime.fromisoformat(case["now"])
    expect = case["expect"]
    if expect["ok"]:
        peer = meshtls.verify_svid(chain, bundles, policy=policy, now=now)
        assert str(peer.spiffe_id) == expect["spiffe_id"]
        assert peer.chain[0] == chain[0]
        assert isinstance(peer.not_after, datetime)
    else:
        with pytest.raises(meshtls.VerificationError) as caught:
            meshtls.verify_svid(chain, bundles, policy=policy, now=now)
        assert caught.value.reason == expect["reason"], f"{case['rule']}: {case['note']}"


# The manifest itself: these need neither openssl nor the library.


def test_manifest_is_consistent() -> None:
    names = [c["case"] for c in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    for case in CASES:
        assert re.fullmatch(r"[a-z0-9_]+", case["case"]), case["case"]
        assert case["chain"] == f"{case['case']}/chain.pem"
        assert case["bundles"], case["case"]
        assert datetime.fromisoformat(case["now"]).utcoffset() == timedelta(0)
        expect = case["expect"]
        if not expect["ok"]:
            assert expect["reason"] in API_REASONS, case["case"]
            # well-formed certificates all: only an unhandled critical extension is malformed
            malformed = expect["reason"] == "malformed_certificate"
            assert not malformed or case["rule"] == "RFC 5280 4.2", case["case"]


def test_manifest_covers_every_rule() -> None:
    failing = {c["rule"] for c in CASES if not c["expect"]["ok"]}
    assert failing >= COVERED_RULES, sorted(COVERED_RULES - failing)


@pytest.mark.openssl
def test_every_case_has_a_chain(cert_dir: Path) -> None:
    made = {p.parent.name for p in cert_dir.glob("*/chain.pem")}
    assert made == {c["case"] for c in CASES}
    for case in CASES:
        for path in case["bundles"].values():
            assert (cert_dir / path).is_file(), path
