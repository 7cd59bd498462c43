"""A key stored at another bcrypt cost than RELAY_BCRYPT_ROUNDS is stored again at the
current one when it is next used, so that checking it costs what checking an unknown
key costs (the dummy hash is made at the current cost)."""

from __future__ import annotations

from relay.appkeys import CLIENTS
from tests.api_calls import ADMIN, bearer, client_with_token, exchange


def cost(key_hash: str) -> int:
    return int(key_hash.split("$")[2])


async def test_an_exchange_stores_the_keys_hash_at_the_current_cost(make_client, make_settings):
    before = await make_client(make_settings(bcrypt_rounds=4))
    client, token = await client_with_token(before)
    assert cost((await before.app[CLIENTS].get(client["id"])).key_hash) == 4

    http = await make_client(make_settings(bcrypt_rounds=5))  # RELAY_BCRYPT_ROUNDS raised
    fresh = await exchange(http, client["api_key"])

    row = await http.app[CLIENTS].get(client["id"])
    assert cost(row.key_hash) == 5
    # The same key: its version, and so every token issued for it, is still good.
    assert row.key_version == client["key_version"] == 1
    for issued in (token, fresh):
        assert (await http.get("/v1/me", headers=bearer(issued))).status == 200
    await exchange(http, client["api_key"])
    assert (await http.app[CLIENTS].get(client["id"])).key_hash == row.key_hash  # once


async def test_a_key_checked_at_the_current_cost_is_left_as_it_is(http):
    client, _ = await client_with_token(http)
    stored = (await http.app[CLIENTS].get(client["id"])).key_hash
    await exchange(http, client["api_key"])
    assert (await http.app[CLIENTS].get(client["id"])).key_hash == stored


async def test_a_key_replaced_while_its_old_one_was_checked_stays_replaced(http):
    client, _ = await client_with_token(http)
    checked = await http.app[CLIENTS].get(client["id"])
    response = await http.post(f"/admin/clients/{client['id']}/regenerate-key", headers=ADMIN)
    assert response.status == 200, await response.text()
    replaced = await http.app[CLIENTS].get(client["id"])

    # What the exchange of the old key, checked before the regeneration, stores after it.
    stored = await http.app[CLIENTS].store.rehash_key(
        checked.id, key_id=checked.key_id, old_hash=checked.key_hash, new_hash="$2b$04$x"
    )

    assert not stored
    assert await http.app[CLIENTS].get(client["id"]) == replaced
