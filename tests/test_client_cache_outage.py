"""Without the LISTEN connection, lookups of one client share reads, never a stale one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relay.errors import DependencyUnavailableError
from relay.services.client_cache import ClientCache
from relay.stores.notifications import Notifications
from tests.client_reads import CountedStore, counted_store, new_client


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[CountedStore]:
    async with counted_store(database_url) as counted:
        yield counted


@pytest.fixture
def cache(store: CountedStore, database_url: str) -> ClientCache:
    notifications = Notifications(database_url, timeout=5)  # never run: not listening
    assert not notifications.live
    return ClientCache(store, notifications)


async def test_lookups_of_one_client_that_come_together_make_one_query(store, cache):
    client = await new_client(store)
    found = await asyncio.gather(*(cache.get(client.id) for _ in range(50)))
    assert store.reads == 1 and all(row == client for row in found)


async def test_a_change_committed_before_a_lookup_is_seen_though_a_read_is_under_way(store, cache):
    client = await new_client(store)
    store.held.clear()
    before = asyncio.ensure_future(cache.get(client.id))
    await store.read.wait()  # its query has run, its answer is on the way
    await store.update(client.id, {"status": "disabled"})
    after = [asyncio.ensure_future(cache.get(client.id)) for _ in range(20)]
    await asyncio.sleep(0)
    store.held.set()
    assert (await before).status == "active"  # read before the change
    assert {row.status for row in await asyncio.gather(*after)} == {"disabled"}
    assert store.reads == 2  # the twenty that came during the first read share the next


async def test_a_deleted_client_is_seen_gone_by_lookups_that_come_after(store, cache):
    client = await new_client(store)
    store.held.clear()
    before = asyncio.ensure_future(cache.get(client.id))
    await store.read.wait()
    assert await store.delete(client.id)
    after = asyncio.ensure_future(cache.get(client.id))
    store.held.set()
    assert await before == client
    assert await after is None


async def test_a_lookup_that_leaves_does_not_end_the_read_of_the_others(store, cache):
    client = await new_client(store)
    store.held.clear()
    leaving = asyncio.ensure_future(cache.get(client.id))
    staying = asyncio.ensure_future(cache.get(client.id))
    await store.read.wait()
    leaving.cancel()
    store.held.set()
    assert await staying == client and store.reads == 1


async def test_a_failed_read_fails_its_lookups_and_the_next_lookup_reads_again(store, cache):
    client = await new_client(store)
    await store.db.close()
    failed = await asyncio.gather(*(cache.get(client.id) for _ in range(5)), return_exceptions=True)
    assert store.reads == 1
    assert all(isinstance(error, DependencyUnavailableError) for error in failed)
    with pytest.raises(DependencyUnavailableError):
        await cache.get(client.id)
    assert store.reads == 2
