"""A revocation on one relay instance is seen at once by another sharing the database."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.appkeys import DATABASE
from tests.api_calls import ADMIN, bearer, client_with_token, exchange
from tests.client_reads import lose_relay_listener

# NOTIFY is asynchronous: a second instance learns of a change within milliseconds,
# not synchronously with the admin call. Poll for it rather than sleep blindly.
PROPAGATION = 2.0


async def me_status(http, token: str) -> int:
    response = await http.get("/v1/me", headers=bearer(token))
    await response.read()
    return response.status


async def eventually_status(http, token: str, expected: int) -> int:
    status = 0
    async with asyncio.timeout(PROPAGATION + 1):
        for _ in range(int(PROPAGATION / 0.02)):
            status = await me_status(http, token)
            if status == expected:
                break
            await asyncio.sleep(0.02)
    return status


async def two_instances(make_client, settings) -> tuple[Any, Any]:
    return await make_client(settings), await make_client(settings)


async def test_disable_on_a_is_refused_on_b_and_enable_lets_it_back(make_client, settings):
    a, b = await two_instances(make_client, settings)
    client, token = await client_with_token(a)
    assert await me_status(b, token) == 200  # b now holds the client in its cache

    response = await a.patch(
        f"/admin/clients/{client['id']}", json={"status": "disabled"}, headers=ADMIN
    )
    assert response.status == 200
    assert await eventually_status(b, token, 401) == 401

    response = await a.patch(
        f"/admin/clients/{client['id']}", json={"status": "active"}, headers=ADMIN
    )
    assert response.status == 200
    assert await eventually_status(b, token, 200) == 200


async def test_regenerate_on_a_revokes_old_tokens_on_b(make_client, settings):
    a, b = await two_instances(make_client, settings)
    client, token = await client_with_token(a)
    assert await me_status(b, token) == 200

    response = await a.post(f"/admin/clients/{client['id']}/regenerate-key", headers=ADMIN)
    assert response.status == 200
    new_key = (await response.json())["api_key"]
    assert await eventually_status(b, token, 401) == 401

    new_token = await exchange(b, new_key)
    assert await me_status(b, new_token) == 200
    assert await me_status(a, new_token) == 200


async def test_delete_on_a_is_refused_on_b(make_client, settings):
    a, b = await two_instances(make_client, settings)
    client, token = await client_with_token(a)
    assert await me_status(b, token) == 200

    assert (await a.delete(f"/admin/clients/{client['id']}", headers=ADMIN)).status == 200
    assert await eventually_status(b, token, 401) == 401


async def sql(http, statement: str, *args: Any) -> None:
    async with http.app[DATABASE].cursor() as cur:
        await cur.execute(statement, args or None)


async def test_losing_the_listener_drops_the_cache(make_client, settings):
    http = await make_client(settings)
    client, token = await client_with_token(http)
    assert await me_status(http, token) == 200  # cached

    # Disable the client behind relay's back, without the trigger's NOTIFY:
    # the cached row is now stale, and relay still accepts the token.
    await sql(http, "ALTER TABLE clients DISABLE TRIGGER clients_notify_change")
    try:
        await sql(http, "UPDATE clients SET status = 'disabled' WHERE id = %s", client["id"])
    finally:
        await sql(http, "ALTER TABLE clients ENABLE TRIGGER clients_notify_change")
    assert await me_status(http, token) == 200

    # Kill the LISTEN connection: notifications may have been missed, so the
    # whole cache must go, and the stale row with it.
    await lose_relay_listener(http)

    assert await me_status(http, token) == 401


async def test_the_instance_making_the_change_refuses_without_waiting_for_notify(
    make_client, settings
):
    http = await make_client(settings)
    client, token = await client_with_token(http)
    assert await me_status(http, token) == 200  # cached

    # With the trigger off no NOTIFY is sent: only the local invalidation can refuse.
    await sql(http, "ALTER TABLE clients DISABLE TRIGGER clients_notify_change")
    try:
        response = await http.patch(
            f"/admin/clients/{client['id']}", json={"status": "disabled"}, headers=ADMIN
        )
        assert response.status == 200
        assert await me_status(http, token) == 401

        response = await http.patch(
            f"/admin/clients/{client['id']}", json={"status": "active"}, headers=ADMIN
        )
        assert await me_status(http, token) == 200
        response = await http.post(f"/admin/clients/{client['id']}/regenerate-key", headers=ADMIN)
        assert response.status == 200
        assert await me_status(http, token) == 401
    finally:
        await sql(http, "ALTER TABLE clients ENABLE TRIGGER clients_notify_change")
