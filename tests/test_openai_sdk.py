"""The official openai SDK, pointed at relay with a relay JWT, just works."""

import openai
import pytest

from relay.simulator import completion_text
from tests.api_calls import client_with_token


@pytest.fixture
async def sdk(http):
    _, token = await client_with_token(http)
    client = openai.AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key=token, max_retries=0)
    yield client
    await client.close()


async def test_sdk_completes_a_chat(sdk, simulator):
    completion = await sdk.chat.completions.create(
        model="gpt-sim", messages=[{"role": "user", "content": "hello"}]
    )
    assert completion.choices[0].message.content == completion_text(simulator.config.tokens)
    assert completion.usage.completion_tokens == simulator.config.tokens


async def test_sdk_streams_a_chat_with_usage(sdk, simulator):
    stream = await sdk.chat.completions.create(
        model="gpt-sim",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = [], None, None
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(text) == completion_text(simulator.config.tokens)
    assert finish == "stop"
    assert usage.completion_tokens == simulator.config.tokens


async def test_sdk_lists_and_retrieves_models(sdk):
    models = [model.id async for model in sdk.models.list()]
    assert sorted(models) == ["gpt-sim", "sim-large"]
    model = await sdk.models.retrieve("sim-large")
    assert (model.id, model.object, model.owned_by) == ("sim-large", "model", "simulator")
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"


async def test_sdk_raises_its_own_errors_for_relays_refusals(sdk, http):
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    bad = openai.AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key="not-a-jwt", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await bad.close()


async def test_sdk_raises_when_the_provider_breaks_off_a_stream(sdk, simulator):
    simulator.config.cut_after = 2
    stream = await sdk.chat.completions.create(
        model="gpt-sim", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
