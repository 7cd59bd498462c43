"""Revoking a client ends its open streams and held polls on every instance, at once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.api_calls import ADMIN, assert_error, bearer, client_with_token
from tests.client_reads import lose_relay_listener
from tests.history_calls import assistant_statuses, execute

# NOTIFY reaches the other instance within milliseconds; the stream ends soon after.
PROMPTLY = 5.0

BOTH_CHAT_APIS = pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "gpt-sim", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/v1/chat", {"model": "gpt-sim", "stream": True, "message": "x"}),
    ],
    ids=["completions", "relay's own chat"],
)


def last_data(raw: bytes) -> bytes:
    return [line for line in raw.split(b"\n") if line.startswith(b"data: ")][-1][6:]


async def revoke(http: Any, client_id: str, how: str) -> None:
    path = f"/admin/clients/{client_id}"
    if how == "disabled":
        response = await http.patch(path, json={"status": "disabled"}, headers=ADMIN)
    elif how == "deleted":
        response = await http.delete(path, headers=ADMIN)
    else:
        response = await http.post(f"{path}/regenerate-key", headers=ADMIN)
    assert response.status == 200, await response.text()


async def eventually_statuses(database_url: str, client_id: str) -> list[str]:
    statuses: list[str] = []
    for _ in range(100):
        statuses = await assistant_statuses(database_url, client_id)
        if statuses:
            break
        await asyncio.sleep(0.05)
    return statuses


@BOTH_CHAT_APIS
async def test_a_stream_of_a_client_disabled_on_another_instance_ends_with_token_revoked(
    make_client, settings, simulator, database_url, path, body
):
    simulator.config.tokens = 2000
    simulator.config.token_delay = 0.02  # 40 s, were it let run
    a, b = await make_client(settings), await make_client(settings)
    client, token = await client_with_token(a)
    response = await b.post(path, json=body, headers=bearer(token))
    assert response.status == 200
    first = await response.content.readany()
    await revoke(a, client["id"], "disabled")
    async with asyncio.timeout(PROMPTLY):
        rest = await response.content.read()
    raw = first + rest
    assert b"[DONE]" not in raw and b"message.done" not in raw
    error = orjson.loads(last_data(raw))["error"]
    assert error["code"] == "token_revoked"
    # The provider's request was closed: no more tokens are generated, and paid.
    await simulator.state.wait_for(lambda state: state.streams_disconnected == 1, timeout=5)
    assert simulator.state.streams_completed == 0
    # Ended by relay, as a drain's deadline ends one.
    assert await eventually_statuses(database_url, client["id"]) == ["cut"]


@pytest.mark.parametrize("how", ["disabled", "deleted", "regenerated"])
async def test_a_held_history_poll_of_a_revoked_client_answers_401(make_client, settings, how):
    a, b = await make_client(settings), await make_client(settings)
    client, token = await client_with_token(a)
    poll = asyncio.create_task(b.get("/v1/history?wait=20", headers=bearer(token)))
    await asyncio.sleep(0.3)  # held now: nothing new to answer with
    assert not poll.done()
    await revoke(a, client["id"], how)
    async with asyncio.timeout(PROMPTLY):
        response = await poll
    await assert_error(response, 401, "token_revoked")


async def test_a_stream_of_a_client_whose_name_changed_goes_on(make_client, settings, simulator):
    simulator.config.tokens = 40
    simulator.config.token_delay = 0.03
    a, b = await make_client(settings), await make_client(settings)
    client, token = await client_with_token(a)
    response = await b.post(
        "/v1/chat",
        json={"model": "gpt-sim", "stream": True, "message": "x"},
        headers=bearer(token),
    )
    first = await response.content.readany()
    patched = await a.patch(
        f"/admin/clients/{client['id']}", json={"name": "renamed"}, headers=ADMIN
    )
    assert patched.status == 200
    raw = first + await response.content.read()
    assert b"event: message.done" in raw and b"token_revoked" not in raw
    assert simulator.state.streams_completed == 1
    assert simulator.state.streams_disconnected == 0


WHOLE_OR_WAITING = pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "gpt-sim", "messages": [{"role": "user", "content": "x"}]},
        ),
        (
            "/v1/chat/completions",
            {"model": "gpt-sim", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/v1/chat", {"model": "gpt-sim", "message": "x"}),
    ],
    ids=["whole answer", "stream before its first byte", "relay's own chat, whole"],
)


@WHOLE_OR_WAITING
async def test_an_answer_awaited_when_its_client_is_disabled_ends_with_token_revoked(
    make_client, settings, simulator, database_url, path, body
):
    # Admitted while the client was active; disabled while relay waits for the
    # provider (which would answer only after 30 s).
    simulator.config.first_byte_delay = 30.0
    a, b = await make_client(settings), await make_client(settings)
    client, token = await client_with_token(a)
    request = asyncio.create_task(b.post(path, json=body, headers=bearer(token)))
    await asyncio.sleep(0.4)
    await revoke(a, client["id"], "disabled")
    async with asyncio.timeout(PROMPTLY):
        response = await request
    # What its next request would get, rather than an answer relay goes on paying for.
    await assert_error(response, 401, "token_revoked")
    await simulator.state.wait_for(lambda state: state.abandoned == 1, timeout=5)
    assert await eventually_statuses(database_url, client["id"]) == ["failed"]


async def test_a_client_disabled_while_no_notice_could_come_is_found_when_listening_again(
    make_client, settings, simulator, database_url
):
    simulator.config.tokens = 2000
    simulator.config.token_delay = 0.02
    http = await make_client(settings)
    client, token = await client_with_token(http)
    body = {"model": "gpt-sim", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(token))
    first = await response.content.readany()
    # Disabled with its trigger off: no notice, as while the listener was gone.
    await execute(
        database_url,
        "SET session_replication_role = replica;"
        " UPDATE clients SET status = 'disabled' WHERE id = %s",
        (client["id"],),
    )
    await lose_relay_listener(http)  # and it comes back: whatever changed meanwhile is read
    async with asyncio.timeout(PROMPTLY):
        raw = first + await response.content.read()
    assert orjson.loads(last_data(raw))["error"]["code"] == "token_revoked"
