"""relay's per-id caches stay within their bounds, dropping the least recently used."""

import hashlib
import hmac

import pytest

from relay.lru import LruCache
from relay.services import identity
from relay.services.identity import IdentityHasher


def test_a_full_cache_drops_only_its_least_recently_used_entry():
    cache: LruCache[str, int] = LruCache(3)
    for number, key in enumerate("abc"):
        cache.put(key, number)
    assert cache.get("a") == 0  # used again: "b" is now the least recent
    cache.put("d", 3)
    assert len(cache) == 3
    assert "b" not in cache
    assert [cache.get(key) for key in "acd"] == [0, 2, 3]


def test_putting_a_cached_key_again_replaces_it_without_dropping_another():
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    assert len(cache) == 2
    assert (cache.get("a"), cache.get("b")) == (10, 2)


def test_none_is_an_entry_and_a_missing_key_gives_the_default():
    # The client cache remembers a deleted client as None.
    cache: LruCache[str, int | None] = LruCache(2)
    cache.put("gone", None)
    assert "gone" in cache
    assert cache.get("gone", 7) is None
    assert cache.get("never", 7) == 7
    cache.pop("gone")
    cache.pop("never")  # popping what is not there is no error
    assert len(cache) == 0


def test_a_cache_must_hold_something():
    with pytest.raises(ValueError):
        LruCache(0)


def test_pseudonyms_stay_the_same_past_the_bound_and_the_busy_one_stays_cached():
    hasher = IdentityHasher("k" * 32)
    busy = hasher.pseudonym("client", "busy")
    for number in range(identity.MAX_KNOWN + 100):
        hasher.pseudonym("address", f"10.0.{number // 256}.{number % 256}")
        if number % 1000 == 0:
            assert hasher.pseudonym("client", "busy") == busy
    assert len(hasher._known) == identity.MAX_KNOWN
    assert ("client", "busy") in hasher._known
    # An evicted one is worked out again, the same as before.
    expected = hmac.new(b"k" * 32, b"address:10.0.0.1", hashlib.sha256).hexdigest()
    assert ("address", "10.0.0.1") not in hasher._known
    assert hasher.pseudonym("address", "10.0.0.1") == expected
