"""The boundary (foreign exceptions become ours) and the one bounded cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio

from meshtls import BundleError, MeshError, VerificationError
from meshtls._boundary import EARLIEST, LATEST, clamp_time, describe_error, mapped
from meshtls._cache import LruCache


def _malformed(text: str) -> VerificationError:
    return VerificationError("malformed_certificate", text)


@pytest.mark.parametrize(
    "foreign",
    [
        OverflowError("date value out of range"),
        RecursionError("maximum recursion depth exceeded"),
        TypeError("unhashable type: 'list'"),
        UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed"),
        KeyError("kty"),
        ValueError("bad"),
        RuntimeError("anything at all"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_any_foreign_exception_becomes_ours(foreign: Exception) -> None:
    with pytest.raises(VerificationError) as info, mapped(_malformed):
        raise foreign
    assert info.value.reason == "malformed_certificate"
    assert info.value.__cause__ is foreign
    assert type(foreign).__name__ in str(info.value)


def test_our_errors_and_base_exceptions_pass_unchanged() -> None:
    ours = BundleError("a bundle problem")
    with pytest.raises(BundleError) as info, mapped(_malformed):
        raise ours
    assert info.value is ours
    with pytest.raises(KeyboardInterrupt), mapped(_malformed):
        raise KeyboardInterrupt
    assert issubclass(trio.Cancelled, BaseException)
    assert not issubclass(trio.Cancelled, Exception)  # so `mapped` lets cancellation through


def test_description_is_printable_ascii_and_bounded() -> None:
    text = describe_error(ValueError("\udc80\x00" + "x" * 1000))
    assert text.isascii()
    assert text.isprintable()
    assert len(text) < 400
    assert text.startswith("ValueError: \\udc80\\x00")


def test_description_survives_a_hostile_str() -> None:
    class HostileError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe_error(HostileError()) == "HostileError: unprintable"


def test_clamp_time_keeps_room_for_arithmetic() -> None:
    no_expiry = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # RFC 5280 4.1.2.5
    assert clamp_time(no_expiry) == LATEST
    assert clamp_time(datetime(1, 1, 1, tzinfo=UTC)) == EARLIEST
    ordinary = datetime(2030, 1, 1, tzinfo=UTC)
    assert clamp_time(ordinary) is ordinary
    # the arithmetic meshtls does on certificate dates fits, with room to spare
    assert LATEST + timedelta(days=300) > LATEST
    assert EARLIEST - timedelta(days=300) < EARLIEST


def test_mesh_error_is_the_root() -> None:
    assert issubclass(VerificationError, MeshError)


def test_cache_evicts_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)  # evicts "b"
    assert "b" not in cache
    assert cache.get("a") == 1
    assert cache.get("c") == 3
    assert len(cache) == 2
    assert cache.evictions == 1
    cache.put("a", 10)  # replacing is not an eviction
    assert cache.evictions == 1
    assert cache.get("a") == 10
    assert cache.get("missing") is None


def test_cache_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LruCache[str, int](0)
