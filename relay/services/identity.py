"""Pseudonyms for identities (client ids, addresses) kept outside PostgreSQL: HMAC-SHA256."""

from __future__ import annotations

import hashlib
import hmac

from relay.lru import LruCache

# Some 220 bytes each: 2 MiB at most.
MAX_KNOWN = 10_000


class IdentityHasher:
    """Keyed hashes, so Redis never holds a raw client id or address.

    Every relay instance sharing a Redis must share the key
    (RELAY_IDENTITY_HASH_KEY), or they would not find each other's buckets.
    """

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("an identity hash key is required")
        self._key = key.encode()
        # Every request needs its client's pseudonym; an HMAC each time is waste.
        self._known: LruCache[tuple[str, str], str] = LruCache(MAX_KNOWN)

    def __repr__(self) -> str:
        return "IdentityHasher(key='***')"

    def pseudonym(self, kind: str, value: str) -> str:
        known = self._known.get((kind, value))
        if known is None:
            # The kind keeps a client id and an address that happen to match apart.
            known = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
            self._known.put((kind, value), known)
        return known
