"""Two clients: neither can read, search, poll, continue or erase the other's history."""

import asyncio

import pytest

from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import CONVERSATION, chat, query


@pytest.fixture
async def http(make_client, make_settings):
    return await make_client(make_settings(rate_limits=False))


@pytest.fixture
async def alice_and_bob(http):
    _, alice_token = await client_with_token(http, name="alice")
    _, bob_token = await client_with_token(http, name="bob")
    conversation = (await chat(http, alice_token, "alice's secret penguin")).headers[CONVERSATION]
    return alice_token, bob_token, conversation


async def test_history_shows_only_your_own_messages(http, alice_and_bob):
    alice, bob, _ = alice_and_bob
    await chat(http, bob, "bob's own words")
    bob_page = await (await http.get("/v1/history", headers=bearer(bob))).json()
    assert [m["content"] for m in bob_page["data"] if m["role"] == "user"] == ["bob's own words"]
    alice_page = await (await http.get("/v1/history", headers=bearer(alice))).json()
    assert [m["content"] for m in alice_page["data"] if m["role"] == "user"] == [
        "alice's secret penguin"
    ]


async def test_another_clients_conversation_is_404_everywhere(http, alice_and_bob):
    _, bob, conversation = alice_and_bob
    for response in (
        await http.get(f"/v1/conversations/{conversation}", headers=bearer(bob)),
        await http.delete(f"/v1/conversations/{conversation}", headers=bearer(bob)),
        await http.get(
            "/v1/history", params={"conversation_id": conversation}, headers=bearer(bob)
        ),
        await http.get(
            "/v1/history/search",
            params={"q": "penguin", "conversation_id": conversation},
            headers=bearer(bob),
        ),
        await chat(http, bob, conversation=conversation),
    ):
        await assert_error(response, 404, "conversation_not_found")
    listed = await (await http.get("/v1/conversations", headers=bearer(bob))).json()
    assert listed["data"] == []


async def test_bob_cannot_erase_alices_conversation(http, database_url, alice_and_bob):
    alice, bob, conversation = alice_and_bob
    await http.delete(f"/v1/conversations/{conversation}", headers=bearer(bob))
    stored = await query(
        database_url, "SELECT id FROM messages WHERE conversation_id = %s", (conversation,)
    )
    assert len(stored) == 2
    response = await http.get(f"/v1/conversations/{conversation}", headers=bearer(alice))
    assert response.status == 200


async def test_search_finds_only_your_own_messages(http, alice_and_bob):
    alice, bob, _ = alice_and_bob
    found = await (
        await http.get("/v1/history/search", params={"q": "penguin"}, headers=bearer(bob))
    ).json()
    assert found["data"] == []
    found = await (
        await http.get("/v1/history/search", params={"q": "penguin"}, headers=bearer(alice))
    ).json()
    assert len(found["data"]) == 1


async def test_a_cursor_from_another_client_shows_nothing_of_theirs(http, alice_and_bob):
    alice, bob, _ = alice_and_bob
    alice_page = await (await http.get("/v1/history", headers=bearer(alice))).json()
    first = alice_page["data"][0]
    await chat(http, bob, "bob writes")
    # Alice's cursor, used by Bob, only ever walks Bob's own messages.
    bob_page = await (
        await http.get("/v1/history", params={"after": "eyJzIjowfQ"}, headers=bearer(bob))
    ).json()
    assert first["id"] not in {m["id"] for m in bob_page["data"]}
    assert {m["content"] for m in bob_page["data"] if m["role"] == "user"} == {"bob writes"}


async def test_another_clients_commit_does_not_answer_your_long_poll(http, alice_and_bob):
    alice, bob, _ = alice_and_bob
    start = await (await http.get("/v1/history", headers=bearer(bob))).json()
    poll = asyncio.ensure_future(
        http.get(
            "/v1/history",
            params={"after": start["next_cursor"], "wait": "1"},
            headers=bearer(bob),
        )
    )
    await asyncio.sleep(0.2)
    await chat(http, alice, "alice again")
    page = await (await poll).json()
    assert page["data"] == []
