"""`LruCache`: the one bounded cache of meshtls (parsed certificates, verdicts, statuses).

Pure: no trio, no I/O, no clock. A plain dict keeps insertion order, so the least
recently used entry is the first one: a hit moves its key to the end, and a store at
the limit drops the first. Thread-safe: meshtls's caches are process-wide (a program
may run Trio in several threads, each with its own connections), so each operation
holds the cache's lock; none calls out while holding it.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most `limit` entries; storing one more evicts the least recently used.

    ``evictions`` counts the entries dropped for room, for tests and metrics.
    """

    __slots__ = ("_entries", "_lock", "evictions", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a cache limit must be at least 1, not {limit}")
        self.limit = limit
        self.evictions = 0
        self._entries: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value for `key`, now the most recently used; None when absent."""
        with self._lock:
            entries = self._entries
            value = entries.pop(key, None)
            if value is not None:
                entries[key] = value
            return value

    def put(self, key: K, value: V) -> None:
        """Store `value` as the most recently used, evicting the least recently used if full."""
        with self._lock:
            entries = self._entries
            entries.pop(key, None)
            if len(entries) >= self.limit:
                del entries[next(iter(entries))]
                self.evictions += 1
            entries[key] = value

    def peek(self, key: K) -> V | None:
        """The value for `key` without making it the most recently used; None when absent."""
        with self._lock:
            return self._entries.get(key)

    def values(self) -> list[V]:
        """Every value, least recently used first (a copy: safe to change the cache after)."""
        with self._lock:
            return list(self._entries.values())

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
