"""The client cache: requests that miss together share one database lookup, and a
change the listener is told of is never hidden behind a lookup begun before it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from relay.drain import InFlight
from relay.services.client_cache import ClientCache
from relay.stores.clients import Client
from relay.stores.notifications import Notifications
from tests.client_reads import (
    CountedStore,
    Heard,
    counted_store,
    listening,
    lose_listener,
    new_client,
    notify,
)


@dataclass
class Listened:
    cache: ClientCache
    in_flight: InFlight
    heard: Heard


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[CountedStore]:
    async with counted_store(database_url) as counted:
        yield counted


@pytest.fixture
async def live(store: CountedStore, database_url: str) -> AsyncIterator[Listened]:
    """A cache fed by relay's listener, LISTENing on the test's database."""
    notifications = Notifications(database_url, timeout=5)
    in_flight = InFlight()
    cache = ClientCache(store, notifications, in_flight)
    async with listening(notifications) as heard:
        yield Listened(cache, in_flight, heard)


async def test_a_burst_of_misses_is_one_lookup(store, live):
    client = await new_client(store)
    found = await asyncio.gather(*(live.cache.get(client.id) for _ in range(200)))
    assert store.reads == 1 and all(row == client for row in found)
    assert await live.cache.get(client.id) == client and store.reads == 1  # cached


async def test_a_lookup_under_way_is_not_shared_past_a_change_of_the_client(store, live):
    client = await new_client(store)
    store.held.clear()
    before = asyncio.ensure_future(live.cache.get(client.id))
    await store.read.wait()  # its query has run, its answer is on the way
    await store.update(client.id, {"status": "disabled"})
    assert await live.heard.notice() == client.id
    after = asyncio.ensure_future(live.cache.get(client.id))
    store.held.set()
    assert (await after).status == "disabled" and store.reads == 2
    assert (await before).status == "active"  # its own, older answer, not kept
    assert (await live.cache.get(client.id)).status == "disabled" and store.reads == 2


async def test_one_caller_leaving_does_not_fail_the_others(store, live):
    client = await new_client(store)
    store.held.clear()
    leaving = asyncio.ensure_future(live.cache.get(client.id))
    staying = asyncio.ensure_future(live.cache.get(client.id))
    await store.read.wait()
    leaving.cancel()
    store.held.set()
    assert await staying == client and store.reads == 1


async def test_a_client_that_is_not_there_is_looked_up_once_until_a_notice(
    store, live, database_url
):
    # The tokens of a deleted client go on arriving until they expire.
    client = await new_client(store)
    assert await store.delete(client.id)
    assert await live.heard.notice() == client.id
    for _ in range(3):
        assert await live.cache.get(client.id) is None
    assert store.reads == 1
    await notify(database_url, client.id)
    assert await live.heard.notice() == client.id
    assert await live.cache.get(client.id) is None and store.reads == 2
    # Stored again under its id: an insert sends no notice, and the None stays...
    again = await new_client(store, id=client.id)
    assert await live.cache.get(client.id) is None and store.reads == 2
    # ...until the listener reconnects: anything may have changed meanwhile.
    await lose_listener(database_url, live.heard)
    assert await live.cache.get(client.id) == again and store.reads == 3


async def test_a_missing_client_looked_up_across_a_change_is_not_remembered(store, live):
    client_id = str(uuid.uuid4())
    store.held.clear()
    before = asyncio.ensure_future(live.cache.get(client_id))
    await store.read.wait()
    await new_client(store, id=client_id)
    changed = await store.update(client_id, {"name": "renamed"})
    assert await live.heard.notice() == client_id
    store.held.set()
    assert await before is None
    assert await live.cache.get(client_id) == changed and store.reads == 2


async def deleted(store: CountedStore, client: Client) -> None:
    assert await store.delete(client.id)


async def disabled(store: CountedStore, client: Client) -> None:
    assert await store.update(client.id, {"status": "disabled"})


async def rekeyed(store: CountedStore, client: Client) -> None:
    assert await store.replace_key(client.id, key_id=uuid.uuid4().hex[:16], key_hash="y")


@pytest.mark.parametrize("change", [deleted, disabled, rekeyed])
async def test_a_stream_that_opens_after_its_client_changed_ends_without_a_lookup(
    store, live, change: Callable[[CountedStore, Client], Awaitable[None]]
):
    # Admitted at key version 1; the change was noticed, and the new row (or its
    # absence) cached by another request, before the stream opened.
    client = await new_client(store)
    await change(store, client)
    assert await live.heard.notice() == client.id
    await live.cache.get(client.id)
    assert store.reads == 1
    with live.in_flight.revocable((client.id, client.key_version), None) as stop:
        for _ in range(3):
            await asyncio.sleep(0)
        assert stop.error is not None and stop.error.code == "token_revoked"
    assert store.reads == 1


async def test_a_stream_of_an_unchanged_client_opens_and_stays_open(store, live):
    client = await new_client(store)
    assert await live.cache.get(client.id) == client
    with live.in_flight.revocable((client.id, client.key_version), None) as stop:
        await asyncio.sleep(0.1)  # past a lookup, had one been made
        assert not stop.is_set()
    assert store.reads == 1
