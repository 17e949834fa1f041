"""ValidationPolicy construction, and the authorizers with their combinators."""

from __future__ import annotations

from datetime import timedelta

import pytest

import meshtls
from meshtls import ConfigError, SpiffeIdError, UnauthorizedPeerError, ValidationPolicy
from meshtls.testing import CA

from .conftest import T


def test_policy_defaults() -> None:
    policy = ValidationPolicy()
    assert policy.max_ttl == timedelta(hours=1)
    assert policy.max_age is None
    assert policy.clock_skew == timedelta(seconds=30)
    assert policy.revocation == "soft-fail"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_ttl": timedelta(0)},
        {"max_ttl": timedelta(seconds=-1)},
        {"max_ttl": 3600},
        {"max_age": timedelta(seconds=-5)},
        {"clock_skew": timedelta(seconds=-1)},
        {"clock_skew": timedelta(hours=2)},
        {"revocation": "maybe"},
    ],
)
def test_bad_policy_is_a_config_error_naming_the_setting(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        ValidationPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        ValidationPolicy().max_ttl = None  # type: ignore[misc]


@pytest.fixture(scope="module")
def peers(ca: CA, bundles: meshtls.BundleSet) -> dict[str, meshtls.VerifiedPeer]:
    ids = ["/ns/prod", "/ns/prod/web", "/ns/production", "/ns/pro", "/other"]
    return {
        path: meshtls.verify_svid(ca.issue("spiffe://example.org" + path).chain, bundles, now=T)
        for path in ids
    }


@pytest.fixture(scope="module")
def foreign(other_ca: CA, bundles: meshtls.BundleSet) -> meshtls.VerifiedPeer:
    return meshtls.verify_svid(other_ca.issue("spiffe://other.org/ns/prod").chain, bundles, now=T)


def accepts(authorizer: meshtls.Authorizer, peer: meshtls.VerifiedPeer) -> bool:
    try:
        authorizer(peer)
    except UnauthorizedPeerError as exc:
        assert exc.reason == "unauthorized"
        assert str(peer.spiffe_id) in str(exc)
        return False
    return True


def test_authorize_path_prefix_matches_only_at_segment_boundary(
    peers: dict[str, meshtls.VerifiedPeer], foreign: meshtls.VerifiedPeer
) -> None:
    prod = meshtls.authorize_path_prefix("example.org", "/ns/prod")
    assert {path for path, peer in peers.items() if accepts(prod, peer)} == {
        "/ns/prod",
        "/ns/prod/web",
    }
    assert not accepts(prod, foreign)


@pytest.mark.parametrize("prefix", ["", "/", "ns/prod", "/ns/prod/", "/ns//prod", "/ns/../x"])
def test_authorize_path_prefix_rejects_bad_prefixes(prefix: str) -> None:
    with pytest.raises(SpiffeIdError):
        meshtls.authorize_path_prefix("example.org", prefix)


def test_authorize_id_one_of_member_of_any(
    peers: dict[str, meshtls.VerifiedPeer], foreign: meshtls.VerifiedPeer
) -> None:
    web = peers["/ns/prod/web"]
    assert accepts(meshtls.authorize_id("spiffe://example.org/ns/prod/web"), web)
    assert not accepts(meshtls.authorize_id("spiffe://example.org/ns/prod"), web)
    one_of = meshtls.authorize_one_of("spiffe://example.org/other", "spiffe://other.org/ns/prod")
    assert accepts(one_of, foreign)
    assert not accepts(one_of, web)
    member = meshtls.authorize_member_of("example.org")
    assert all(accepts(member, p) for p in peers.values())
    assert not accepts(member, foreign)
    assert accepts(meshtls.authorize_any(), foreign)


def test_combinators(peers: dict[str, meshtls.VerifiedPeer], foreign: meshtls.VerifiedPeer) -> None:
    either = meshtls.any_of(
        meshtls.authorize_member_of("other.org"), meshtls.authorize_id("spiffe://example.org/other")
    )
    assert accepts(either, foreign)
    assert accepts(either, peers["/other"])
    assert not accepts(either, peers["/ns/prod"])
    both = meshtls.all_of(
        meshtls.authorize_member_of("example.org"),
        meshtls.authorize_path_prefix("example.org", "/ns"),
    )
    assert accepts(both, peers["/ns/production"])
    assert not accepts(both, peers["/other"])
    assert not accepts(both, foreign)
    with pytest.raises(ConfigError):
        meshtls.any_of()
    with pytest.raises(ConfigError):
        meshtls.authorize_one_of()


def test_authorizers_parse_strictly_and_have_readable_reprs() -> None:
    with pytest.raises(SpiffeIdError, match="ID-5"):
        meshtls.authorize_id("spiffe://Example.org/x")
    assert repr(meshtls.authorize_path_prefix("example.org", "/ns")) == (
        "authorize_path_prefix('example.org', '/ns')"
    )
    assert "authorize_any()" in repr(meshtls.any_of(meshtls.authorize_any()))
