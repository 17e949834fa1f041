"""`LruCache`: order, bounds, and use from several threads at once."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from meshtls._cache import LruCache


def test_a_hit_is_kept_and_the_least_recently_used_goes() -> None:
    cache = LruCache[str, int](2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # now the most recently used
    cache.put("c", 3)
    assert "b" not in cache
    assert cache.values() == [1, 3]
    assert cache.evictions == 1
    assert cache.peek("a") == 1
    cache.put("d", 4)  # peek did not refresh "a"
    assert "a" not in cache
    assert len(cache) == 2


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LruCache[str, int](0)


@pytest.fixture
def rapid_switching() -> Iterator[None]:
    """Threads switch every microsecond, so that a race between two steps shows at once."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("rapid_switching")
def test_threads_sharing_a_cache_never_see_an_error_and_it_stays_bounded() -> None:
    """The certificate and verdict caches are process-wide; a program may run Trio in
    several threads. Without the lock, two stores at the limit evict the same entry and
    the second raises KeyError (eight threads: seen in every run without the lock)."""
    cache = LruCache[int, int](8)
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        try:
            for i in range(40_000):
                key = (i * 7 + seed) % 20
                if cache.get(key) is None:
                    cache.put(key, i)
                if i % 97 == 0:
                    cache.discard(key)
        except BaseException as exc:  # any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 8
