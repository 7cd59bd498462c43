"""POST /v1/chat's request: which conversation (body or Relay-Conversation-Id header)
and which model (named, or a default this client may use)."""

import orjson
import pytest

from relay.config import ConfigError, Settings
from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import CONVERSATION


@pytest.fixture
async def http(make_client, make_settings):
    return await make_client(make_settings(rate_limits=False))


async def native(http, token, headers=None, **fields):
    body = {"message": "And then?", **fields}
    return await http.post("/v1/chat", json=body, headers={**bearer(token), **(headers or {})})


async def test_the_conversation_header_continues_a_conversation_as_the_body_field_does(
    http, simulator
):
    _, token = await client_with_token(http)
    first = await native(http, token, system="Be brief.")
    conversation = first.headers[CONVERSATION]
    continued = await native(http, token, headers={CONVERSATION: conversation})
    assert continued.status == 200, await continued.text()
    assert continued.headers[CONVERSATION] == conversation
    assert (await continued.json())["conversation_id"] == conversation
    # The provider got the conversation so far, its system message (stored once) first.
    sent = simulator.state.requests[-1].json()["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    stored = await (
        await http.get(f"/v1/conversations/{conversation}", headers=bearer(token))
    ).json()
    assert [m["role"] for m in stored["messages"]].count("system") == 1


async def test_a_header_and_a_body_naming_different_conversations_are_refused(http, simulator):
    _, token = await client_with_token(http)
    one = (await native(http, token)).headers[CONVERSATION]
    two = (await native(http, token)).headers[CONVERSATION]
    asked = len(simulator.state.requests)
    refused = await native(http, token, headers={CONVERSATION: two}, conversation_id=one)
    error = await assert_error(refused, 400, "invalid_request")
    assert error["param"] == "conversation_id"
    # The same one, spelled differently, is one conversation.
    same = await native(http, token, headers={CONVERSATION: one.upper()}, conversation_id=one)
    assert same.status == 200
    assert len(simulator.state.requests) == asked + 1


async def test_the_header_naming_another_clients_conversation_is_a_404(http, simulator):
    _, owner = await client_with_token(http)
    theirs = (await native(http, owner)).headers[CONVERSATION]
    _, stranger = await client_with_token(http)
    asked = len(simulator.state.requests)
    refused = await native(http, stranger, headers={CONVERSATION: theirs})
    await assert_error(refused, 404, "conversation_not_found")
    assert len(simulator.state.requests) == asked


async def test_a_request_naming_no_model_gets_one_its_client_may_use(
    make_client, make_settings, simulator
):
    http = await make_client(make_settings(rate_limits=False, default_model="gpt-sim"))
    _, scoped = await client_with_token(http, scopes=["model:sim-large"])
    response = await native(http, scoped)
    assert response.status == 200, await response.text()
    assert simulator.state.requests[-1].json()["model"] == "sim-large"
    _, everyone = await client_with_token(http)
    assert (await native(http, everyone)).status == 200
    assert simulator.state.requests[-1].json()["model"] == "sim-small"  # gpt-sim, renamed


def test_a_default_model_no_upstream_serves_stops_start_up(simulator):
    upstreams = orjson.dumps(
        [
            {
                "name": "p",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "k",
                "models": {"gpt-4o-mini": "gpt-4o-mini"},
            }
        ]
    )
    env = {"RELAY_UPSTREAMS": upstreams.decode(), "RELAY_DEFAULT_MODEL": "gpt-4o"}
    with pytest.raises(ConfigError, match="RELAY_DEFAULT_MODEL"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "RELAY_DEFAULT_MODEL": "gpt-4o-mini"}).default_model


def test_a_default_model_without_upstreams_stops_start_up():
    with pytest.raises(ConfigError, match=r"RELAY_DEFAULT_MODEL .* which configures none"):
        Settings.from_env({"RELAY_DEFAULT_MODEL": "gpt-4o"})


async def test_a_body_opening_with_a_byte_order_mark_is_read(http, simulator):
    _, token = await client_with_token(http)
    response = await http.post(
        "/v1/chat",
        data=b"\xef\xbb\xbf" + orjson.dumps({"message": "hi", "model": "gpt-sim"}),
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["message"]["role"] == "assistant"
