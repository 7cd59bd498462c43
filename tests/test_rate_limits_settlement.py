"""An answer's usage settles its chat's reservation by the limits in force as it ends."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.api_calls import ADMIN, bearer, client_with_token
from tests.rate_limit_calls import completion_body, token_gate

USED = 5_000


async def test_a_limit_lowered_while_an_answer_runs_charges_it_by_the_new_limit(
    make_client, make_settings, provider_upstream
):
    """By the old limit of 60,000 a minute its usage of 5,000 left plenty; by the new one
    of 100 it is some fifty minutes' debt, and the next chat is refused."""
    release = asyncio.Event()

    async def respond(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.Response(body=completion_body(USED), content_type="application/json")

    upstream = await provider_upstream(respond, "held")
    settings = make_settings(rate_limit_tokens_per_minute=60_000, upstreams=(upstream,))
    http = await make_client(settings)
    client, token = await client_with_token(http)
    chat = {"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]}
    held = asyncio.ensure_future(
        http.post("/v1/chat/completions", json=chat, headers=bearer(token))
    )
    await asyncio.sleep(0.2)
    assert not held.done()
    patched = await http.patch(
        f"/admin/clients/{client['id']}", json={"limits": {"tokens_per_minute": 100}}, headers=ADMIN
    )
    assert patched.status == 200, await patched.text()
    await asyncio.sleep(0.1)  # the change is notified
    release.set()
    assert (await held).status == 200

    for _ in range(50):  # the debit follows the answer
        refused = await token_gate(http, token)
        if refused.status == 429:
            break
        await asyncio.sleep(0.02)
    assert refused.status == 429, await refused.text()
    assert refused.headers["x-ratelimit-limit-tokens"] == "100"
    assert int(refused.headers["Retry-After"]) > 45 * 60
