"""The client cache: requests that miss together share one database lookup."""

from __future__ import annotations

import asyncio
import dataclasses

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


async def test_without_the_listener_every_lookup_reads_afresh():
    store = Store()
    listener = Listener()
    listener.live = False
    cache = ClientCache(store, listener)  # type: ignore[arg-type]
    await asyncio.gather(*(cache.get(CLIENT.id) for _ in range(3)))
    assert store.lookups == 3
