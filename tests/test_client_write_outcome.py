"""Creating a client or giving it a new key shows the key once, in the answer: such a
write never happens behind a 503 that says "try again" (it would leave a client, or a
key, nobody holds), and one whose COMMIT relay lost is answered as what PostgreSQL
holds. (tests.test_commit_outcome holds COMMITs past their point of no return.)"""

from __future__ import annotations

import asyncio

from relay.stores import lost_commits
from tests.api_calls import ADMIN, assert_error, create_client, exchange
from tests.history_calls import query
from tests.test_commit_outcome import (
    TIMEOUT,
    commits_wait_for_a_standby,
    make_durable,
    standby_arrives_once_relay_gave_up,
    waiting_for_the_standby,
)
from tests.test_database_cancel import locked


async def test_a_create_relay_gave_up_on_is_never_applied_later(
    make_settings, make_client, database_url
):
    http = await make_client(make_settings(database_timeout=TIMEOUT))
    async with locked(database_url, "clients"):  # the INSERT waits past relay's timeout
        response = await http.post("/admin/clients", json={"name": "ghost"}, headers=ADMIN)
        await assert_error(response, 503, "dependency_unavailable")
        assert response.headers["Retry-After"] == "1"
    await asyncio.sleep(0.3)  # the lock is free: a statement left running would commit now
    assert await query(database_url, "SELECT id FROM clients WHERE name = 'ghost'") == []

    # Asked again, as the 503 invites: one client.
    created = await create_client(http, name="ghost")
    rows = await query(database_url, "SELECT id::text FROM clients WHERE name = 'ghost'")
    assert rows == [{"id": created["id"]}]


async def test_a_new_key_relay_gave_up_on_is_never_applied_later(
    make_settings, make_client, database_url
):
    http = await make_client(make_settings(database_timeout=TIMEOUT))
    client = await create_client(http)
    token = await exchange(http, client["api_key"])
    async with locked(database_url, "clients"):
        path = f"/admin/clients/{client['id']}/regenerate-key"
        await assert_error(await http.post(path, headers=ADMIN), 503, "dependency_unavailable")
    await asyncio.sleep(0.3)
    version = "SELECT key_version FROM clients WHERE id = %s"
    assert await query(database_url, version, (client["id"],)) == [{"key_version": 1}]
    # The key and token nobody was told to give up still work.
    assert await exchange(http, client["api_key"])
    assert (await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})).status == 200


async def test_a_create_whose_commit_relay_lost_is_answered_as_committed(
    make_settings, make_client, postgres_url, database_url
):
    await make_durable(database_url)
    http = await make_client(make_settings(database_timeout=TIMEOUT))

    async with (
        commits_wait_for_a_standby(postgres_url, database_url),
        standby_arrives_once_relay_gave_up(postgres_url, database_url),
    ):
        response = await http.post("/admin/clients", json={"name": "held"}, headers=ADMIN)

    # Committed, and as durably as any commit: it exists, so its key is shown, once.
    assert response.status == 201, await response.text()
    created = await response.json()
    rows = await query(database_url, "SELECT id::text FROM clients WHERE name = 'held'")
    assert rows == [{"id": created["id"]}]
    assert await exchange(http, created["api_key"])


async def test_a_create_committed_on_the_primary_alone_is_an_unknown_outcome(
    make_settings, make_client, postgres_url, database_url
):
    # relay's terminating the server process that held the COMMIT ends its wait for the
    # standby: the client is stored on this server alone, which a failover loses.
    await make_durable(database_url)
    http = await make_client(make_settings(database_timeout=TIMEOUT))

    async with commits_wait_for_a_standby(postgres_url, database_url):
        response = await http.post("/admin/clients", json={"name": "local"}, headers=ADMIN)
        assert await waiting_for_the_standby(database_url) == 0

    error = await assert_error(response, 503, "outcome_unknown")
    (row,) = await query(database_url, "SELECT key_id FROM clients WHERE name = 'local'")
    assert f"look for key_id {row['key_id']} among the clients" in error["message"]
    assert response.headers["x-should-retry"] == "false"


async def test_a_create_whose_outcome_cannot_be_told_says_so_and_is_not_retried(
    make_settings, make_client, postgres_url, database_url, monkeypatch
):
    await make_durable(database_url)
    http = await make_client(make_settings(database_timeout=TIMEOUT))

    async def outlived(db, process):  # its server process still there when the wait ends
        return False

    monkeypatch.setattr(lost_commits, "stop_backend", outlived)
    async with commits_wait_for_a_standby(postgres_url, database_url):
        response = await http.post("/admin/clients", json={"name": "unknown"}, headers=ADMIN)

    error = await assert_error(response, 503, "outcome_unknown")
    assert "among the clients before trying again" in error["message"]
    # OpenAI's SDKs would ask again, making a second client; a load balancer likewise.
    assert response.headers["x-should-retry"] == "false"
    assert "Retry-After" not in response.headers
