"""Trust bundles: PEM and SPIFFE bundle (JWKS) loading, rules B-1..B-7."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from meshtls import BundleError, BundleSet, TrustDomain, X509Bundle, verify_svid
from meshtls.testing import CA

from .conftest import T, assert_verifies

EXAMPLE = TrustDomain("example.org")


def x509_key(ca: CA, **extra: object) -> dict[str, object]:
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    return {
        "use": "x509-svid",
        "kty": "EC",
        "crv": "P-256",
        "x5c": [base64.b64encode(der).decode()],
        **extra,
    }


def document(*keys: dict[str, object], **extra: object) -> str:
    return json.dumps({"keys": list(keys), **extra})


def test_B_1_keys_required(ca: CA) -> None:
    with pytest.raises(BundleError, match="B-1"):
        X509Bundle.from_spiffe_bundle("example.org", json.dumps({"spiffe_sequence": 1}))
    with pytest.raises(BundleError, match="B-1"):
        X509Bundle.from_spiffe_bundle("example.org", "[]")


def test_B_1_empty_keys_is_valid_and_trusts_nothing(ca: CA) -> None:
    bundles = BundleSet.from_spiffe_bundles({"example.org": document()})
    assert bundles[EXAMPLE].authorities == ()
    with pytest.raises(Exception, match="untrusted_chain"):
        verify_svid(ca.issue().chain, bundles, now=T)


def test_B_2_unknown_kty_or_use_is_ignored_alone(ca: CA) -> None:
    text = document(
        {"use": "x509-svid", "kty": "WAT", "x5c": ["AAAA"]},
        {"use": "X509-SVID", "kty": "EC", "x5c": ["AAAA"]},  # use is case-sensitive: unknown
        {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"},
        {"use": "something-new", "kty": "EC"},
        x509_key(ca),
    )
    bundle = X509Bundle.from_spiffe_bundle("example.org", text)
    assert bundle.authorities == (ca.certificate,)
    assert_verifies(ca.issue().chain, BundleSet({EXAMPLE: bundle}), now=T)


def test_B_3_first_x5c_certificate_is_the_authority_and_missing_x5c_is_ignored(
    ca: CA, other_ca: CA
) -> None:
    first = x509_key(ca)
    second = x509_key(other_ca)
    key = {**first, "x5c": [*first["x5c"], *second["x5c"]]}  # type: ignore[misc]
    text = document(key, {"use": "x509-svid", "kty": "EC"})
    assert X509Bundle.from_spiffe_bundle("example.org", text).authorities == (ca.certificate,)


def test_B_3_corrupt_x5c_is_an_error(ca: CA) -> None:
    with pytest.raises(BundleError, match="x5c"):
        X509Bundle.from_spiffe_bundle("example.org", document({**x509_key(ca), "x5c": ["%%%"]}))
    with pytest.raises(BundleError, match="x5c"):
        X509Bundle.from_spiffe_bundle("example.org", document({**x509_key(ca), "x5c": "AAAA"}))


def test_B_4_sequence_must_not_go_backwards(ca: CA) -> None:
    old = X509Bundle.from_spiffe_bundle("example.org", document(x509_key(ca), spiffe_sequence=5))
    newer = X509Bundle.from_spiffe_bundle("example.org", document(x509_key(ca), spiffe_sequence=6))
    older = X509Bundle.from_spiffe_bundle("example.org", document(spiffe_sequence=4))
    current = BundleSet({EXAMPLE: old})
    assert current.with_bundle(newer)[EXAMPLE].sequence == 6
    assert current.with_bundle(old)[EXAMPLE].sequence == 5  # same sequence: a refresh
    with pytest.raises(BundleError, match="B-4"):
        current.with_bundle(older)
    with pytest.raises(BundleError, match="B-4"):
        current.replaced_by(BundleSet({EXAMPLE: older}))
    with pytest.raises(BundleError):
        X509Bundle.from_spiffe_bundle("example.org", document(spiffe_sequence=-1))


def test_B_5_refresh_hint_in_seconds_default_five_minutes(ca: CA) -> None:
    hinted = X509Bundle.from_spiffe_bundle("example.org", document(spiffe_refresh_hint=90))
    assert hinted.refresh_interval == timedelta(seconds=90)
    plain = X509Bundle.from_spiffe_bundle("example.org", document())
    assert plain.refresh_hint is None
    assert plain.refresh_interval == timedelta(minutes=5)
    with pytest.raises(BundleError, match="B-5"):
        X509Bundle.from_spiffe_bundle("example.org", document(spiffe_refresh_hint="soon"))


def test_B_6_duplicate_trust_domain_in_federated_map_is_an_error(ca: CA) -> None:
    inner = document(x509_key(ca))
    duplicated = f'{{"example.org": {inner}, "example.org": {inner}}}'
    assert len(json.loads(duplicated)) == 1  # what plain json.loads would silently do
    with pytest.raises(BundleError, match="B-6"):
        BundleSet.from_federated_json(duplicated)
    with pytest.raises(BundleError, match="B-6"):
        BundleSet.from_federated_json(
            f'{{"example.org": {inner}, "spiffe://example.org": {inner}}}'
        )
    with pytest.raises(BundleError, match="B-6"):
        X509Bundle.from_spiffe_bundle("example.org", '{"keys": [], "keys": []}')
    good = BundleSet.from_federated_json(f'{{"example.org": {inner}, "other.org": {{"keys": []}}}}')
    assert sorted(map(str, good)) == ["example.org", "other.org"]


def test_B_6_same_trust_domain_twice_in_pem_mapping(ca: CA) -> None:
    with pytest.raises(BundleError, match="B-6"):
        BundleSet.from_pem({"example.org": ca.bundle_pem, "spiffe://example.org": ca.bundle_pem})


def test_B_7_full_state_update_drops_missing_domains(ca: CA, other_ca: CA) -> None:
    both = ca.bundle_set(other_ca)
    only_ours = ca.bundle_set()
    updated = both.replaced_by(only_ours)
    assert list(updated) == [EXAMPLE]
    with pytest.raises(Exception, match="unknown_trust_domain"):
        verify_svid(other_ca.issue("spiffe://other.org/x").chain, updated, now=T)


def test_pem_bundle_errors_are_clear(ca: CA) -> None:
    with pytest.raises(BundleError, match=r"bundle for example\.org: no readable PEM"):
        BundleSet.from_pem({"example.org": b"not a certificate"})
    with pytest.raises(BundleError, match="not valid JSON"):
        BundleSet.from_spiffe_bundles({"example.org": "{"})
    with pytest.raises(ValueError, match="ID-5"):
        BundleSet.from_pem({"Example.org": ca.bundle_pem})


def test_bundles_are_per_trust_domain_never_merged(ca: CA, other_ca: CA) -> None:
    bundles = BundleSet.from_pem({"example.org": ca.bundle_pem, "other.org": other_ca.bundle_pem})
    assert bundles[EXAMPLE].authorities == (ca.certificate,)
    assert bundles[TrustDomain("other.org")].authorities == (other_ca.certificate,)
    assert "2 roots" not in repr(bundles)


def test_B_5_refresh_hint_is_finite_and_at_most_a_year() -> None:
    """NaN and Infinity are not JSON; a hint over a year is refused, not clamped."""
    year = 365 * 86400
    assert X509Bundle.from_spiffe_bundle(
        "example.org", document(spiffe_refresh_hint=year)
    ).refresh_interval == timedelta(days=365)
    for hint in (str(year + 1), "1e+300", "NaN", "Infinity", "-Infinity"):
        with pytest.raises(BundleError) as info:
            X509Bundle.from_spiffe_bundle(
                "example.org", f'{{"keys": [], "spiffe_refresh_hint": {hint}}}'
            )
        assert type(info.value) is BundleError
        assert hint.lstrip("-") in str(info.value)


def test_B_2_kty_or_use_that_is_not_a_string_is_a_corrupt_bundle(ca: CA) -> None:
    for member in ("kty", "use"):
        with pytest.raises(BundleError, match=rf"keys\[0\]\.{member} is not a string"):
            X509Bundle.from_spiffe_bundle("example.org", document(x509_key(ca, **{member: ["EC"]})))
