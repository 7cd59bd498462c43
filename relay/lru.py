"""LruCache: an in-process cache holding at most a fixed number of entries."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING: object = object()


class LruCache(Generic[K, V]):
    """A dict that, once full, drops its least recently used entry for each new one.

    relay's per-id caches (tokens, client rows, pseudonyms, rate-limit plans) fill
    with every id seen and none expires on its own: each needs a bound. Emptied
    whole when full, a cache sent every active id to its slow path at once; this
    way only the entry unused for longest goes.
    """

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an LruCache holds at least one entry")
        self.limit = limit
        self._entries: dict[K, V] = {}  # in order of use: the least recent first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K, default: V | None = None) -> V | None:
        """The entry for `key` (now the most recently used), else `default`."""
        entries = self._entries
        value = entries.pop(key, _MISSING)
        if value is _MISSING:
            return default
        entries[key] = value  # type: ignore[assignment]
        return value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> None:
        entries = self._entries
        if entries.pop(key, _MISSING) is _MISSING and len(entries) >= self.limit:
            del entries[next(iter(entries))]
        entries[key] = value

    def values(self) -> list[V]:
        """Every entry, the least recently used first; none counts as used."""
        return list(self._entries.values())

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
