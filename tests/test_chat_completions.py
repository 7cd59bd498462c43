"""POST /v1/chat/completions, not streamed: routing, forwarding, errors."""

import gzip
import socket

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from relay.simulator import completion_text
from tests.api_calls import assert_error, bearer, client_with_token
from tests.conftest import SIMULATOR_KEY

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def token(http):
    _, token = await client_with_token(http)
    return token


async def post_chat(http, token, body, **kwargs):
    return await http.post("/v1/chat/completions", json=body, headers=bearer(token), **kwargs)


async def test_answer_comes_back_as_the_provider_sent_it(http, token, simulator):
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == completion_text(simulator.config.tokens)
    assert body["usage"]["completion_tokens"] == simulator.config.tokens


async def test_only_model_and_provider_auth_change_on_the_way(http, token, simulator):
    sent = {
        "model": "gpt-sim",
        "messages": MESSAGES,
        "temperature": 0.25,
        "seed": 7,
        "user": "u-1",
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "response_format": {"type": "json_object"},
        "metadata": {"nested": [1, 2.5, None, "é"]},
    }
    response = await post_chat(http, token, sent)
    assert response.status == 200
    received = simulator.state.requests[-1]
    assert received.json() == {**sent, "model": "sim-small"}
    assert list(received.json()) == list(sent)  # key order kept
    assert received.headers["Authorization"] == f"Bearer {SIMULATOR_KEY}"


async def test_bytes_are_forwarded_untouched_when_the_model_id_needs_no_rewrite(
    http, token, simulator
):
    raw = (
        b'{"messages": [{"role":"user","content":"hi \\u00e9"}],   "model":"sim-large", "x": 1.50}'
    )
    response = await http.post(
        "/v1/chat/completions",
        data=raw,
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status == 200, await response.text()
    assert simulator.state.requests[-1].body == raw


@pytest.mark.parametrize(
    "raw",
    [
        # A number past 64 bits (decoded and written again it came back a rounded float).
        b'{"messages": [{"role":"user","content":"hi \\u00e9"}],  "model" :"gpt-sim",'
        b' "seed": 18446744073709551616, "x": 1.50}',
        # The key spelt with an escape, and "model" inside a message.
        b'{"messages":[{"role":"user","content":"\\"model\\": \\"gpt-sim\\""}],'
        b'"mod\\u0065l":"gpt-sim"}',
        # Nested past the 254 levels orjson writes (it was a 500).
        b'{"metadata":' + b"[" * 260 + b"]" * 260 + b',"model":"gpt-sim",'
        b'"messages":[{"role":"user","content":"hi"}]}',
    ],
    ids=["big number", "escaped key", "deep nesting"],
)
async def test_a_renamed_model_changes_only_the_model_ids_bytes(http, token, simulator, raw):
    response = await http.post(
        "/v1/chat/completions",
        data=raw,
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status == 200, await response.text()
    received = simulator.state.requests[-1].body
    model_at = raw.rindex(b'"gpt-sim"')
    assert received == raw[:model_at] + b'"sim-small"' + raw[model_at + len(b'"gpt-sim"') :]


async def test_unknown_model_is_404_model_not_found(http, token):
    response = await post_chat(http, token, {"model": "gpt-nope", "messages": MESSAGES})
    error = await assert_error(response, 404, "model_not_found")
    assert error["param"] == "model"


async def test_a_model_outside_the_clients_scopes_is_403(http, simulator):
    _, token = await client_with_token(http, scopes=["model:sim-large"])
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    await assert_error(response, 403, "model_not_allowed")
    # RFC 6750 section 3.1: the token lacks a scope, and the challenge says which.
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="relay", error="insufficient_scope", scope="model:gpt-sim"'
    )
    assert not simulator.state.requests
    allowed = await post_chat(http, token, {"model": "sim-large", "messages": MESSAGES})
    assert allowed.status == 200


@pytest.mark.parametrize("scopes", [["model:sim-large"], []], ids=["scoped", "unscoped"])
async def test_a_body_forwarded_as_sent_cannot_name_the_model_twice(http, simulator, scopes):
    # sim-large goes to the provider as the client's bytes. relay reads the last
    # `model`; a provider reading the first would serve a model relay does not
    # route (or the client's scopes leave out).
    _, token = await client_with_token(http, scopes=scopes)
    twice = b'{"model":"unlisted","model":"sim-large","messages":[{"role":"user","content":"Hi"}]}'
    headers = {**bearer(token), "Content-Type": "application/json"}
    response = await http.post("/v1/chat/completions", data=twice, headers=headers)
    await assert_error(response, 400, "invalid_request")
    escaped = twice.replace(b'"model":"sim-large"', b'"mod\\u0065l":"sim-large"')
    response = await http.post("/v1/chat/completions", data=escaped, headers=headers)
    await assert_error(response, 400, "invalid_request")
    assert not simulator.state.requests
    # Repeated keys inside the messages are the provider's business.
    nested = b'{"model":"sim-large","messages":[{"role":"user","content":"a","content":"b"}]}'
    assert (await http.post("/v1/chat/completions", data=nested, headers=headers)).status == 200
    # Deeper than the standard library's parser goes (orjson reads 1,024 levels).
    deep = b'{"model":"sim-large","note":"model","messages":[' + b"[" * 1000 + b"]" * 1000 + b"]}"
    response = await http.post("/v1/chat/completions", data=deep, headers=headers)
    await assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "repeated",
    [
        b'"store":false,"store":true',  # kept, or not?
        b'"stream":false,"stream":true',
        b'"n":1,"n":2',  # relay waits for as many choices as it reads
        b'"messages":[{"role":"user","content":"one"}],"messages":[{"role":"user","content":"b"}]',
    ],
)
async def test_a_field_relay_reads_given_twice_is_refused(http, simulator, repeated):
    _, token = await client_with_token(http)
    body = b'{"model":"sim-large",' + repeated
    if b'"messages"' not in repeated:
        body += b',"messages":[{"role":"user","content":"Hi"}]'
    headers = {**bearer(token), "Content-Type": "application/json"}
    response = await http.post("/v1/chat/completions", data=body + b"}", headers=headers)
    await assert_error(response, 400, "invalid_request")
    assert not simulator.state.requests


@pytest.mark.parametrize(
    ("encodings", "packed"),
    [
        (["gzip"], True),
        (["identity", "gzip"], True),
        (["identity, gzip"], True),
        # Codings aiohttp's parser would have tried (and failed) to set up a decoder for,
        # and a body that is no gzip at all: refused alike, never decoded.
        (["br"], False),
        (["zstd"], False),
        (["gzip"], False),
    ],
    ids=["gzip", "identity then gzip", "a list", "br", "zstd", "not gzip at all"],
)
async def test_a_compressed_request_body_is_refused(http, token, simulator, encodings, packed):
    # A receipt's request_sha256 is over the bytes the client sent, not unpacked ones.
    body = orjson.dumps({"model": "gpt-sim", "messages": MESSAGES})
    body = gzip.compress(body) if packed else b"\x1f\x8b not really " + body
    headers = CIMultiDict({**bearer(token), "Content-Type": "application/json"})
    for encoding in encodings:
        headers.add("Content-Encoding", encoding)
    response = await http.post("/v1/chat/completions", data=body, headers=headers)
    await assert_error(response, 415, "unsupported_media_type")
    assert response.headers["Accept-Encoding"] == "identity"
    assert not simulator.state.requests


async def test_models_lists_what_the_client_may_use(http):
    _, everything = await client_with_token(http)
    _, limited = await client_with_token(http, scopes=["chat", "model:sim-large"])
    response = await http.get("/v1/models", headers=bearer(everything))
    body = await response.json()
    assert body["object"] == "list"
    assert sorted(model["id"] for model in body["data"]) == ["gpt-sim", "sim-large"]
    for model in body["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}
        assert model["object"] == "model" and isinstance(model["created"], int)
    response = await http.get("/v1/models", headers=bearer(limited))
    assert [model["id"] for model in (await response.json())["data"]] == ["sim-large"]


async def test_a_model_is_retrieved_only_by_a_client_that_may_use_it(http):
    _, everything = await client_with_token(http)
    _, limited = await client_with_token(http, scopes=["chat", "model:sim-large"])
    listed = (await (await http.get("/v1/models", headers=bearer(everything))).json())["data"]
    response = await http.get("/v1/models/gpt-sim", headers=bearer(everything))
    assert response.status == 200
    assert await response.json() == next(model for model in listed if model["id"] == "gpt-sim")
    # Not listed for this client, so as unknown to it as a model that does not exist.
    for model, token in (("gpt-sim", limited), ("gpt-9", everything)):
        error = await assert_error(
            await http.get(f"/v1/models/{model}", headers=bearer(token)), 404, "model_not_found"
        )
        assert error["param"] == "model"
    await assert_error(await http.get("/v1/models/gpt-sim"), 401)


async def test_a_model_id_with_slashes_is_retrieved(make_client, make_settings, simulator):
    upstream = simulator.upstream(models={"meta/llama-3.1": "sim-small"})
    http = await make_client(make_settings(upstreams=(upstream,)))
    _, token = await client_with_token(http)
    response = await http.get("/v1/models/meta/llama-3.1", headers=bearer(token))
    assert response.status == 200
    assert (await response.json())["id"] == "meta/llama-3.1"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": 3, "messages": MESSAGES}, "model"),
        ({"model": "gpt-sim"}, "messages"),
        ({"model": "gpt-sim", "messages": []}, "messages"),
        ({"model": "gpt-sim", "messages": "hi"}, "messages"),
        ({"model": "gpt-sim", "messages": MESSAGES, "stream": "yes"}, "stream"),
        # A client opting out with a string must hear so, not have its content kept.
        ({"model": "gpt-sim", "messages": MESSAGES, "store": "false"}, "store"),
        ({"model": "gpt-sim", "messages": MESSAGES, "store": 0}, "store"),
    ],
)
async def test_malformed_requests_are_400_and_never_forwarded(http, token, simulator, body, param):
    response = await post_chat(http, token, body)
    error = await assert_error(response, 400)
    assert error["param"] == param
    assert not simulator.state.requests


async def test_a_body_in_utf16_is_refused_for_its_charset_before_the_provider(
    http, token, simulator
):
    raw = '{"model":"gpt-sim","messages":[{"role":"user","content":"hi"}]}'.encode("utf-16")
    response = await http.post(
        "/v1/chat/completions",
        data=raw,
        headers={**bearer(token), "Content-Type": "application/json; Charset=UTF-16"},
    )
    error = await assert_error(response, 415, "unsupported_media_type")
    assert "charset=UTF-16" in error["message"]
    assert not simulator.state.requests


async def test_a_body_opening_with_a_byte_order_mark_is_read_and_forwarded_without_it(
    http, token, simulator
):
    # .NET's and Python's UTF-8 encoders with a signature, and Windows editors, write one;
    # JSON parsers may ignore it (RFC 8259 section 8.1) and Python's do. It was a 400.
    raw = b'{"model":"sim-large","messages":[{"role":"user","content":"hi"}]}'
    response = await http.post(
        "/v1/chat/completions",
        data=b"\xef\xbb\xbf" + raw,
        headers={**bearer(token), "Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status == 200, await response.text()
    assert simulator.state.requests[-1].body == raw  # JSON sent on carries no BOM
    renamed = await http.post(
        "/v1/chat/completions",
        data=b"\xef\xbb\xbf" + raw.replace(b"sim-large", b"gpt-sim"),
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert renamed.status == 200, await renamed.text()
    assert simulator.state.requests[-1].body == raw.replace(b"sim-large", b"sim-small")


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"model=gpt-sim", "application/x-www-form-urlencoded", 415),
    ],
)
async def test_bodies_that_are_not_a_json_object(http, token, data, content_type, status):
    response = await http.post(
        "/v1/chat/completions", data=data, headers={**bearer(token), "Content-Type": content_type}
    )
    await assert_error(response, status)


@pytest.mark.parametrize("status", [400, 409, 422, 429])
async def test_provider_4xx_passes_through_in_the_error_shape(http, token, simulator, status):
    simulator.config.error_status = status
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    error = await assert_error(response, status)
    assert error["message"]


async def test_provider_rejecting_relays_own_key_is_a_502_not_the_clients_401(
    http, token, simulator
):
    simulator.config.api_key = "some-other-key"
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    error = await assert_error(response, 502, "upstream_auth")
    assert error["message"] == "The provider rejected relay's credentials."
    # OpenAI's SDKs retry a 502; asking again would meet the same refusal.
    assert response.headers["x-should-retry"] == "false"


async def test_provider_refusing_relay_access_is_a_502_in_the_providers_words(
    http, token, simulator
):
    simulator.config.error_status = 403  # OpenAI's "Country, region, or territory not supported"
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    error = await assert_error(response, 502, "upstream_auth")
    assert error["message"] == (
        "The provider refused relay access: Country, region, or territory not supported"
    )
    assert response.headers["x-should-retry"] == "false"


async def test_a_model_the_provider_does_not_have_is_a_502_not_the_clients_404(
    make_settings, make_client, simulator
):
    # Relay lists the model; the provider has no such model (or base_url's path is
    # wrong): relay's configuration, not the client's request.
    upstream = simulator.upstream(models={"gpt-sim": "sim-retired"})
    http = await make_client(make_settings(upstreams=(upstream,)))
    _, token = await client_with_token(http)
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    error = await assert_error(response, 502, "upstream_not_found")
    # The provider's words, its model id renamed to the one the client knows.
    assert error["message"] == (
        "The provider has no such model or endpoint:"
        " The model `gpt-sim` does not exist or you do not have access to it."
    )
    assert response.headers["x-should-retry"] == "false"
    wrong_path = simulator.upstream(base_url=str(simulator.server.make_url("/")))
    http = await make_client(make_settings(upstreams=(wrong_path,)))
    _, token = await client_with_token(http)
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    await assert_error(response, 502, "upstream_not_found")


async def test_a_provider_account_out_of_quota_is_a_502_not_the_clients_429(http, token, simulator):
    simulator.config.out_of_quota = True  # OpenAI's 429 insufficient_quota
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    error = await assert_error(response, 502, "upstream_quota")
    # Relay's plan and billing, not the client's, and no wait helps: not asked again.
    assert "billing" not in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert "retry-after" not in response.headers


async def test_a_provider_asking_for_payment_is_a_502_the_client_cannot_fix(
    make_settings, make_client, simulator, aiohttp_server
):
    async def insufficient_balance(request: web.Request) -> web.Response:
        await request.read()  # DeepSeek's answer once the account's balance is spent
        error = {"message": "Insufficient Balance", "type": "unknown_error", "param": None}
        return web.json_response({"error": {**error, "code": "invalid_request_error"}}, status=402)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", insufficient_balance)
    provider = await aiohttp_server(app)
    upstream = simulator.upstream(name="broke", base_url=str(provider.make_url("/v1")))
    http = await make_client(make_settings(upstreams=(upstream,)))
    _, token = await client_with_token(http)
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    await assert_error(response, 502, "upstream_quota")
    assert response.headers["x-should-retry"] == "false"
    metrics = await (await http.get("/metrics")).text()
    assert 'relay_upstream_errors_total{kind="quota",upstream="broke"} 1.0' in metrics


@pytest.mark.parametrize("status", [500, 503])
async def test_provider_5xx_is_a_502(http, token, simulator, status):
    simulator.config.error_status = status
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    await assert_error(response, 502)
    assert "x-should-retry" not in response.headers  # the SDKs may ask again


async def test_provider_5xx_passes_on_when_to_ask_again(
    make_settings, make_client, provider_upstream
):
    async def overloaded(request: web.Request) -> web.Response:
        headers = {"Retry-After": "7", "retry-after-ms": "7000", "x-should-retry": "true"}
        return web.json_response(
            {"error": {"message": "overloaded", "type": "server_error"}},
            status=503,
            headers=headers,
        )

    upstream = await provider_upstream(overloaded, "overloaded")
    http = await make_client(make_settings(upstreams=(upstream,)))
    _, token = await client_with_token(http)
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    await assert_error(response, 502, "upstream_error")
    # What OpenAI's SDKs read to pace their retries, as the provider said it.
    assert response.headers["Retry-After"] == "7"
    assert response.headers["retry-after-ms"] == "7000"
    assert response.headers["x-should-retry"] == "true"


async def test_provider_too_slow_is_a_504(make_settings, make_client, simulator):
    settings = make_settings(upstreams=(simulator.upstream(timeout_s=0.2),))
    http = await make_client(settings)
    _, token = await client_with_token(http)
    simulator.config.first_byte_delay = 2
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    await assert_error(response, 504, "upstream_timeout")
    assert "x-should-retry" not in response.headers  # the SDKs may ask again


async def test_provider_refusing_connections_is_a_502(make_settings, make_client, simulator):
    # Bound and never listening: connections are refused, and while it is held no
    # server started meanwhile (relay's own test server, say) can be given the port.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        dead = simulator.upstream(base_url=f"http://127.0.0.1:{held.getsockname()[1]}/v1")
        http = await make_client(make_settings(upstreams=(dead,)))
        _, token = await client_with_token(http)
        response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
        await assert_error(response, 502, "upstream_unreachable")
        assert "x-should-retry" not in response.headers  # the SDKs may ask again


async def test_provider_hanging_up_without_answer_is_a_502(http, token, simulator):
    simulator.config.cut_after = 1
    response = await post_chat(http, token, {"model": "gpt-sim", "messages": MESSAGES})
    # Reached, then gone: not "could not be reached" (it may have taken the request).
    await assert_error(response, 502, "upstream_closed")
    assert "x-should-retry" not in response.headers  # the SDKs may ask again


async def test_max_tokens_and_finish_reason_come_from_the_provider(http, token):
    response = await post_chat(
        http, token, {"model": "gpt-sim", "messages": MESSAGES, "max_tokens": 3}
    )
    body = orjson.loads(await response.read())
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
