"""verify_svid: one row per X509-SVID rule (L-1..L-10, S-1..S-4, P-1..P-3), plus properties.

Every certificate comes from `meshtls.testing.CA` with explicit times around `T`.
tests/test_external_certs.py runs a second, independent set built by the openssl CLI.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meshtls
from meshtls import ValidationPolicy, VerificationError, verify_svid
from meshtls.testing import CA, IssuedCertificate

from .conftest import T, World, assert_verifies

MIN = timedelta(minutes=1)


Case = Callable[[World], IssuedCertificate]


def uri_nc(
    permitted: list[str] | None = None, excluded: list[str] | None = None
) -> x509.NameConstraints:
    return x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier(u) for u in permitted]
        if permitted
        else None,
        excluded_subtrees=[x509.UniformResourceIdentifier(u) for u in excluded]
        if excluded
        else None,
    )


def without_intermediates(issued: IssuedCertificate) -> IssuedCertificate:
    return IssuedCertificate(issued.chain[:1], issued.private_key)


REJECTED: list[tuple[str, Case, str]] = [
    ("L-1 no SAN", lambda w: w.ca.issue(uris=[]), "no_uri_san"),
    ("L-1 DNS SAN only", lambda w: w.ca.issue(uris=[], dns_names=["a.example.org"]), "no_uri_san"),
    (
        "L-1 two URI SANs",
        lambda w: w.ca.issue(uris=["spiffe://example.org/a", "spiffe://example.org/b"]),
        "multiple_uri_sans",
    ),
    ("L-2 not spiffe", lambda w: w.ca.issue(uris=["https://example.org/a"]), "invalid_spiffe_id"),
    (
        "L-2 uppercase td",
        lambda w: w.ca.issue(uris=["spiffe://EXAMPLE.org/a"]),
        "invalid_spiffe_id",
    ),
    (
        "L-2 dot segment",
        lambda w: w.ca.issue(uris=["spiffe://example.org/a/../b"]),
        "invalid_spiffe_id",
    ),
    ("L-3 root id", lambda w: w.ca.issue("spiffe://example.org"), "root_path_id"),
    ("L-4 leaf is CA", lambda w: w.ca.issue(is_ca=True), "leaf_is_ca"),
    ("L-5 no key usage", lambda w: w.ca.issue(key_usage=None), "key_usage"),
    ("L-5 key usage not critical", lambda w: w.ca.issue(key_usage_critical=False), "key_usage"),
    ("L-6 no digitalSignature", lambda w: w.ca.issue(key_usage={"key_encipherment"}), "key_usage"),
    (
        "L-7 keyCertSign",
        lambda w: w.ca.issue(key_usage={"digital_signature", "key_cert_sign"}),
        "key_usage",
    ),
    ("L-7 cRLSign", lambda w: w.ca.issue(key_usage={"digital_signature", "crl_sign"}), "key_usage"),
    (
        "L-8 EKU codeSigning only",
        lambda w: w.ca.issue(eku=[ExtendedKeyUsageOID.CODE_SIGNING]),
        "extended_key_usage",
    ),
    ("L-9 bad signature", lambda w: w.ca.issue(signing_key=w.other.key), "untrusted_chain"),
    ("L-9 expired", lambda w: w.ca.issue(not_before=T - 40 * MIN, ttl=5 * MIN), "expired"),
    ("L-9 not yet valid", lambda w: w.ca.issue(not_before=T + 5 * MIN), "not_yet_valid"),
    (
        "L-9 intermediate expired",
        lambda w: w.ca.intermediate(not_before=T - 60 * MIN, not_after=T - 10 * MIN).issue(),
        "expired",
    ),
    (
        "L-9 missing intermediate",
        lambda w: without_intermediates(w.ca.intermediate().issue()),
        "untrusted_chain",
    ),
    (
        "L-10 other trust domain's root vouches",
        lambda w: w.other.issue("spiffe://example.org/workload"),
        "untrusted_chain",
    ),
    (
        "L-10 other trust domain's intermediate vouches",
        lambda w: w.other.intermediate().issue("spiffe://example.org/workload"),
        "untrusted_chain",
    ),
    ("L-10 unknown trust domain", lambda w: CA("third.org", now=T).issue(), "unknown_trust_domain"),
    (
        "S-1 intermediate not CA",
        lambda w: w.ca.intermediate(is_ca=False).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-1 intermediate no basic constraints",
        lambda w: w.ca.intermediate(is_ca=None).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-2 intermediate lacks keyCertSign",
        lambda w: w.ca.intermediate(key_usage={"crl_sign"}).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-3 intermediate SPIFFE ID with path",
        lambda w: w.ca.intermediate(uris=["spiffe://example.org/ca"]).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 pathLen 0 exceeded",
        lambda w: w.ca.intermediate(path_length=0).intermediate().issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 URI name constraint excludes",
        lambda w: w.ca.intermediate(name_constraints=uri_nc(permitted=["other.org"])).issue(),
        "bad_signing_certificate",
    ),
    (
        "S-4 URI excluded subtree",
        lambda w: w.ca.intermediate(name_constraints=uri_nc(excluded=["example.org"])).issue(),
        "bad_signing_certificate",
    ),
    ("P-1 lifetime 2h", lambda w: w.ca.issue(ttl=timedelta(hours=2)), "ttl_exceeded"),
    (
        "P-1 lifetime 1h and 1s",
        lambda w: w.ca.issue(ttl=timedelta(hours=1, seconds=1)),
        "ttl_exceeded",
    ),
    (
        "P-3 expired beyond skew",
        lambda w: w.ca.issue(not_before=T - 30 * MIN, not_after=T - timedelta(seconds=31)),
        "expired",
    ),
    (
        "P-3 not yet valid beyond skew",
        lambda w: w.ca.issue(not_before=T + timedelta(seconds=31)),
        "not_yet_valid",
    ),
]

ACCEPTED: list[tuple[str, Case]] = [
    ("L-1 URI SAN plus DNS SAN", lambda w: w.ca.issue(dns_names=["web.example.org"])),
    ("L-4 no basic constraints", lambda w: w.ca.issue(is_ca=None)),
    ("L-8 no EKU", lambda w: w.ca.issue(eku=None)),
    ("L-9 RSA-2048 leaf", lambda w: w.ca.issue(key_type="rsa-2048")),
    ("L-9 two intermediates", lambda w: w.ca.intermediate().intermediate().issue()),
    ("L-10 federated domain", lambda w: w.other.issue("spiffe://other.org/x")),
    (
        "S-3 intermediate with root id",
        lambda w: w.ca.intermediate(uris=["spiffe://example.org"]).issue(),
    ),
    ("S-4 pathLen 0 honoured", lambda w: w.ca.intermediate(path_length=0).issue()),
    (
        "S-4 URI name constraint permits",
        lambda w: w.ca.intermediate(name_constraints=uri_nc(permitted=["example.org"])).issue(),
    ),
    ("P-1 lifetime exactly 1h", lambda w: w.ca.issue(ttl=timedelta(hours=1))),
    (
        "P-3 expired within skew",
        lambda w: w.ca.issue(not_before=T - 30 * MIN, not_after=T - timedelta(seconds=29)),
    ),
    ("P-3 not yet valid within skew", lambda w: w.ca.issue(not_before=T + timedelta(seconds=29))),
    (
        "L-9 Ed25519 CA and leaf",
        lambda w: w.ed.intermediate(key_type="ed25519").issue(key_type="ed25519"),
    ),
]


def leaf_uri(cert: x509.Certificate) -> str:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)[0]


@pytest.mark.parametrize(("case", "reason"), [pytest.param(c, r, id=i) for i, c, r in REJECTED])
def test_rejected(world: World, case: Case, reason: str) -> None:
    issued = case(world)
    with pytest.raises(VerificationError) as info:
        verify_svid(issued.chain, world.bundles, now=T)
    assert info.value.reason == reason
    assert info.value.reason in meshtls.REASONS


@pytest.mark.parametrize("case", [pytest.param(c, id=i) for i, c in ACCEPTED])
def test_accepted(world: World, case: Case) -> None:
    issued = case(world)
    peer = verify_svid(issued.chain, world.bundles, now=T)
    assert peer.chain[: len(issued.chain)] == issued.chain
    assert str(peer.spiffe_id) == leaf_uri(issued.leaf)
    assert peer.not_after == min(c.not_valid_after_utc for c in peer.chain)
    root = peer.chain[-1]
    assert root in world.bundles[peer.spiffe_id.trust_domain].authorities


def test_L_8_eku_must_allow_the_role(world: World) -> None:
    server_only = world.ca.issue(eku=[ExtendedKeyUsageOID.SERVER_AUTH]).chain
    assert_verifies(server_only, world.bundles, now=T, role="server")
    assert_verifies(server_only, world.bundles, now=T)  # no role: either is enough
    with pytest.raises(VerificationError) as info:
        verify_svid(server_only, world.bundles, now=T, role="client")
    assert info.value.reason == "extended_key_usage"
    any_eku = world.ca.issue(eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]).chain
    assert_verifies(any_eku, world.bundles, now=T, role="client")


def test_P_2_max_age(world: World) -> None:
    leaf = world.ca.issue(not_before=T - 50 * MIN, ttl=55 * MIN).chain
    assert_verifies(leaf, world.bundles, now=T)  # max_age is off by default
    policy = ValidationPolicy(max_age=timedelta(minutes=30))
    with pytest.raises(VerificationError) as info:
        verify_svid(leaf, world.bundles, now=T, policy=policy)
    assert info.value.reason == "age_exceeded"
    assert_verifies(leaf, world.bundles, now=T, policy=ValidationPolicy(max_age=timedelta(hours=1)))


def test_P_1_max_ttl_is_policy(world: World) -> None:
    long_lived = world.ca.issue(ttl=timedelta(hours=24)).chain
    assert_verifies(long_lived, world.bundles, now=T, policy=ValidationPolicy(max_ttl=None))
    assert_verifies(
        long_lived, world.bundles, now=T, policy=ValidationPolicy(max_ttl=timedelta(days=1))
    )


def test_P_3_skew_is_policy(world: World) -> None:
    late = world.ca.issue(not_before=T - 30 * MIN, not_after=T - 2 * MIN).chain
    with pytest.raises(VerificationError, match="expired"):
        verify_svid(late, world.bundles, now=T)
    policy = ValidationPolicy(clock_skew=timedelta(minutes=3))
    assert_verifies(late, world.bundles, now=T, policy=policy)


def test_L_9_root_outside_its_window_is_expired() -> None:
    old = CA(
        "example.org", now=T, not_before=T - timedelta(days=30), not_after=T - timedelta(days=1)
    )
    issued = old.issue(not_before=T - 5 * MIN)
    with pytest.raises(VerificationError) as info:
        verify_svid(issued.chain, old.bundle_set(), now=T)
    assert info.value.reason == "expired"


def test_L_10_root_rotation_two_roots_same_domain(world: World) -> None:
    new_root = CA("example.org", now=T, label="root 2")
    bundle = meshtls.X509Bundle(world.ca.trust_domain, (world.ca.certificate, new_root.certificate))
    bundles = meshtls.BundleSet({world.ca.trust_domain: bundle})
    for issuer in (world.ca, new_root, new_root.intermediate()):
        assert_verifies(issuer.issue().chain, bundles, now=T)


def test_error_message_names_certificate_and_rule(world: World) -> None:
    with pytest.raises(VerificationError) as info:
        verify_svid(world.ca.issue(key_usage_critical=False).chain, world.bundles, now=T)
    message = str(info.value)
    assert message.startswith("key_usage: leaf (O=meshtls, serial 0x")
    assert message.endswith("(L-5)")
    assert info.value.rule == "L-5"


def test_empty_chain_and_naive_now(world: World) -> None:
    with pytest.raises(VerificationError) as info:
        verify_svid([], world.bundles, now=T)
    assert info.value.reason == "malformed_certificate"
    with pytest.raises(ValueError, match="timezone"):
        verify_svid(world.ca.issue().chain, world.bundles, now=T.replace(tzinfo=None))


def test_own_svid_loads_and_checks(world: World) -> None:
    issued = world.ca.intermediate().issue("spiffe://example.org/me")
    svid = meshtls.X509Svid.load(issued.chain_pem, issued.key_pem)
    assert str(svid.spiffe_id) == "spiffe://example.org/me"
    assert len(svid.chain) == 2
    assert svid.check(world.bundles, now=T).spiffe_id == svid.spiffe_id
    other_key = world.ca.issue().key_pem
    with pytest.raises(ValueError, match="does not match"):
        meshtls.X509Svid.load(issued.chain_pem, other_key)
    with pytest.raises(ValueError, match="key"):
        meshtls.X509Svid.load(issued.chain_pem, b"garbage")


# --- the property: arbitrary damage to a valid certificate only ever gives VerificationError ----


@pytest.fixture(scope="module")
def good_der(world: World) -> tuple[bytes, meshtls.BundleSet]:
    from cryptography.hazmat.primitives.serialization import Encoding

    return world.ca.issue().leaf.public_bytes(Encoding.DER), world.bundles


@settings(
    max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=40),
)
def test_mutated_der_only_raises_verification_error(
    good_der: tuple[bytes, meshtls.BundleSet], edits: list[tuple[int, int]], cut: int
) -> None:
    der, bundles = good_der
    data = bytearray(der)
    for position, value in edits:
        data[position % len(data)] = value
    if cut:
        del data[-cut:]
    try:
        with warnings.catch_warnings():  # cryptography warns about e.g. negative serials
            warnings.simplefilter("ignore")
            cert = x509.load_der_x509_certificate(bytes(data))
    except Exception:
        return
    try:
        verify_svid([cert], bundles, now=T)
    except VerificationError as exc:
        assert exc.reason in meshtls.REASONS


@pytest.mark.parametrize(
    "root_options",
    [
        pytest.param({"key_usage": {"crl_sign"}}, id="S-2 root lacks keyCertSign"),
        pytest.param(
            {"uris": ["spiffe://example.org/root"]}, id="S-3 root carries an id with a path"
        ),
    ],
)
def test_bundle_root_that_breaks_signing_rules_anchors_nothing(
    root_options: dict[str, object],
) -> None:
    root = CA("example.org", now=T, **root_options)  # type: ignore[arg-type]
    with pytest.raises(VerificationError) as info:
        verify_svid(root.issue().chain, root.bundle_set(), now=T)
    assert info.value.reason == "bad_signing_certificate"


def test_L_9_chain_that_includes_its_root(world: World) -> None:
    issued = world.ca.intermediate().issue()
    peer = assert_verifies((*issued.chain, world.ca.certificate), world.bundles)
    assert peer.chain[-1] == world.ca.certificate
    assert len(peer.chain) == 3


def test_L_10_own_root_sent_by_a_forger_does_not_help(world: World) -> None:
    """A look-alike root with the real root's name, sent in the chain, vouches for nothing."""
    fake = CA("example.org", now=T)  # same subject name as world.ca's root, another key
    forged = fake.issue()
    with pytest.raises(VerificationError) as info:
        verify_svid((*forged.chain, fake.certificate), world.bundles, now=T)
    assert info.value.reason == "untrusted_chain"


def test_negative_serial_gives_a_verification_error_not_a_warning(world: World) -> None:
    """Found by the DER-mutation property: describing such a certificate used to warn, and a
    warning is an error under `filterwarnings = error` (and in strict applications)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    issued = world.ca.issue(serial=0x42, key_usage=None)  # also defective: so it is described
    der = issued.leaf.public_bytes(Encoding.DER)
    assert der.count(b"\x02\x01\x42") == 1
    negative = der.replace(b"\x02\x01\x42", b"\x02\x01\xc2")  # INTEGER -62
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography also warns while parsing it
        cert = x509.load_der_x509_certificate(negative)
    with pytest.raises(VerificationError) as info:
        verify_svid([cert], world.bundles, now=T)
    assert info.value.reason == "key_usage"
    assert "serial -0x3e" in str(info.value)
