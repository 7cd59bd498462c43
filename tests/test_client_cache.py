"""The client cache: requests that miss together share one database lookup."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from relay.drain import InFlight
from relay.services.client_cache import ClientCache
from tests.test_token_cache import CLIENT


class Store:
    """A client store whose lookups take a while, counted."""

    def __init__(self) -> None:
        self.lookups = 0
        self.row = CLIENT

    async def get(self, client_id: str):
        self.lookups += 1
        row = self.row  # as read when the lookup began
        await asyncio.sleep(0.05)
        return row


class Listener:
    live = True

    def subscribe(self, channel, callback) -> None:
        pass

    def on_reset(self, callback) -> None:
        pass


async def test_a_burst_of_misses_is_one_lookup():
    store = Store()
    cache = ClientCache(store, Listener())  # type: ignore[arg-type]
    found = await asyncio.gather(*(cache.get(CLIENT.id) for _ in range(200)))
    assert store.lookups == 1 and all(client is CLIENT for client in found)
    assert await cache.get(CLIENT.id) is CLIENT and store.lookups == 1  # cached


async def test_a_lookup_under_way_is_not_shared_past_a_change_of_the_client():
    store = Store()
    cache = ClientCache(store, Listener())  # type: ignore[arg-type]
    before = asyncio.ensure_future(cache.get(CLIENT.id))
    await asyncio.sleep(0.01)
    cache.invalidate(CLIENT.id)  # the client was disabled meanwhile
    store.row = dataclasses.replace(CLIENT, status="disabled")
    after = await cache.get(CLIENT.id)
    assert after is not None and after.status == "disabled" and store.lookups == 2
    assert (await before).status == "active"  # its own, older answer


async def test_one_caller_leaving_does_not_fail_the_others():
    store = Store()
    cache = ClientCache(store, Listener())  # type: ignore[arg-type]
    leaving = asyncio.ensure_future(cache.get(CLIENT.id))
    staying = asyncio.ensure_future(cache.get(CLIENT.id))
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert await staying is CLIENT and store.lookups == 1


async def test_a_client_that_is_not_there_is_looked_up_once_until_a_notice():
    # The tokens of a deleted client go on arriving until they expire.
    store = Store()
    store.row = None
    cache = ClientCache(store, Listener())  # type: ignore[arg-type]
    for _ in range(3):
        assert await cache.get(CLIENT.id) is None
    assert store.lookups == 1
    cache.invalidate(CLIENT.id)
    assert await cache.get(CLIENT.id) is None and store.lookups == 2
    cache.clear()  # the listener reconnected: anything may have changed meanwhile
    store.row = CLIENT
    assert await cache.get(CLIENT.id) is CLIENT and store.lookups == 3


async def test_a_missing_client_looked_up_across_a_change_is_not_remembered():
    store = Store()
    store.row = None
    cache = ClientCache(store, Listener())  # type: ignore[arg-type]
    before = asyncio.ensure_future(cache.get(CLIENT.id))
    await asyncio.sleep(0.01)
    cache.invalidate(CLIENT.id)
    store.row = CLIENT
    assert await before is None
    assert await cache.get(CLIENT.id) is CLIENT and store.lookups == 2


@pytest.mark.parametrize(
    "now",
    [
        None,
        dataclasses.replace(CLIENT, status="disabled"),
        dataclasses.replace(CLIENT, key_version=2),
    ],
)
async def test_a_stream_that_opens_after_its_client_changed_ends_without_a_lookup(now):
    # Admitted at key version 1; the change was noticed, and the new row (or its
    # absence) cached by another request, before the stream opened.
    store = Store()
    in_flight = InFlight()
    cache = ClientCache(store, Listener(), in_flight)  # type: ignore[arg-type]
    store.row = now
    assert await cache.get(CLIENT.id) is now and store.lookups == 1
    with in_flight.revocable((CLIENT.id, 1), None) as stop:
        for _ in range(3):
            await asyncio.sleep(0)
        assert stop.error is not None and stop.error.code == "token_revoked"
    assert store.lookups == 1


async def test_a_stream_of_an_unchanged_client_opens_and_stays_open():
    store = Store()
    in_flight = InFlight()
    cache = ClientCache(store, Listener(), in_flight)  # type: ignore[arg-type]
    assert await cache.get(CLIENT.id) is CLIENT
    with in_flight.revocable((CLIENT.id, CLIENT.key_version), None) as stop:
        await asyncio.sleep(0.06)  # past a lookup, had one been made
        assert not stop.is_set()
    assert store.lookups == 1
