"""A client whose token budget is spent, or is zero, is refused chats only: it may
still read its receipts and history, and erase its conversations."""

from __future__ import annotations

import orjson

from tests.api_calls import ADMIN, bearer, client_with_token
from tests.rate_limit_calls import token_refusal
from tests.receipt_calls import ask

READS = ("/v1/me", "/v1/models", "/v1/history", "/v1/history/search?q=hello", "/v1/conversations")


async def test_a_client_in_token_debt_still_reads_what_it_has(make_client, make_settings):
    http = await make_client(make_settings(rate_limit_chat_per_minute=100))
    _, token = await client_with_token(http, limits={"tokens_per_minute": 20})
    saved = await ask(http, token, stream=False)
    assert saved.status == 200
    assert orjson.loads(saved.response_body)["usage"]["total_tokens"] > 20

    refused = await token_refusal(http, token)
    assert "x-should-retry" not in refused.headers  # the debt is paid off within a minute

    for path in (*READS, f"/v1/receipts/{saved.receipt_id}", f"/v1/signature/{saved.receipt_id}"):
        response = await http.get(path, headers=bearer(token))
        assert response.status == 200, (path, await response.text())
        # Limited by requests, as before; tokens limit chats only, and only chats say so.
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert "x-ratelimit-limit-tokens" not in response.headers, path
        assert "x-ratelimit-remaining-tokens" not in response.headers, path
    await token_refusal(http, token)  # reading paid nothing off


async def test_a_client_allowed_no_tokens_can_still_erase_its_history(make_client, make_settings):
    http = await make_client(make_settings())
    client, token = await client_with_token(http)
    assert (await ask(http, token, stream=False)).status == 200
    response = await http.patch(
        f"/admin/clients/{client['id']}", json={"limits": {"tokens_per_minute": 0}}, headers=ADMIN
    )
    assert response.status == 200, await response.text()

    refused = await token_refusal(http, token)  # once the change has reached the cache
    assert refused.headers["x-should-retry"] == "false"

    listing = await http.get("/v1/conversations", headers=bearer(token))
    assert listing.status == 200, await listing.text()
    conversations = [conversation["id"] for conversation in (await listing.json())["data"]]
    assert conversations
    for conversation in conversations:
        erased = await http.delete(f"/v1/conversations/{conversation}", headers=bearer(token))
        assert erased.status == 204, await erased.text()
    listing = await http.get("/v1/conversations", headers=bearer(token))
    assert (await listing.json())["data"] == []
