"""POST /v1/chat's context budget: the most recent exchange is never silently lost, a
message past what is left goes cut to fit, and the new message is sent whole."""

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from relay.stores.conversation_context import fit_exchange, recent_exchanges
from tests.api_calls import bearer, client_with_token
from tests.history_calls import CONVERSATION

ESSAY = "".join(f"Paragraph {n}: " + "words " * 200 + "\n" for n in range(21))


class Provider:
    """A provider answering each request with the next of `replies` ("ok" once they
    are used up), and keeping the messages relay sent it."""

    def __init__(self) -> None:
        self.replies: list[str] = []
        self.seen: list[list[dict[str, str]]] = []

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((await request.json())["messages"])
        reply = self.replies.pop(0) if self.replies else "ok"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta, finish in (({"content": reply}, None), ({}, "stop")):
            chunk = {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def relay(make_client, make_settings, provider_upstream, provider):
    async def start(**settings):
        upstream = await provider_upstream(provider.answer, "scripted", models={"m": "m"})
        http = await make_client(
            make_settings(upstreams=(upstream,), rate_limits=False, **settings)
        )
        _, token = await client_with_token(http)
        return http, token

    return start


async def say(http, token, message, conversation=None):
    body = {"message": message, **({"conversation_id": conversation} if conversation else {})}
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    assert response.status == 200, await response.text()
    return response.headers[CONVERSATION]


def chars(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


async def test_a_long_answer_goes_cut_to_the_budget_with_its_question(relay, provider):
    # The reviewer's case, with the default budget (24000): a 25,004-character essay,
    # then a turn about it.
    http, token = await relay()
    assert len(ESSAY) > 24_000
    provider.replies = [ESSAY]
    conversation = await say(http, token, "Write an essay on rivers.")
    await say(http, token, "Now shorten it to one paragraph.", conversation)
    question, answer, new = provider.seen[-1]
    assert (question["role"], question["content"]) == ("user", "Write an essay on rivers.")
    # The answer keeps its beginning, and says where the rest was taken out.
    assert answer["role"] == "assistant"
    assert answer["content"].endswith("\n[…]")
    assert ESSAY.startswith(answer["content"].removesuffix("\n[…]"))
    assert chars([question, answer]) == 24_000
    assert new == {"role": "user", "content": "Now shorten it to one paragraph."}


async def test_a_long_question_keeps_its_end(relay, provider):
    # A pasted text with what is asked of it last.
    http, token = await relay(chat_context_chars=1_000)
    pasted = "line of a log\n" * 500 + "Why does it fail?"
    provider.replies = ["Because of the disk."]
    conversation = await say(http, token, pasted)
    await say(http, token, "And how do I fix it?", conversation)
    question, answer, _ = provider.seen[-1]
    assert question["content"].startswith("[…]\n")
    assert pasted.endswith(question["content"].removeprefix("[…]\n"))
    assert question["content"].endswith("Why does it fail?")
    assert answer["content"] == "Because of the disk."
    assert chars([question, answer]) == 1_000


async def test_newer_exchanges_go_whole_then_one_is_cut_and_older_ones_are_left_out(
    relay, provider
):
    http, token = await relay(chat_context_chars=500)
    provider.replies = ["first answer", "x" * 1_000, "third answer"]
    conversation = await say(http, token, "first question")
    await say(http, token, "second question", conversation)
    await say(http, token, "third question", conversation)
    await say(http, token, "fourth question", conversation)
    sent = provider.seen[-1]
    assert [(m["role"], m["content"][:6]) for m in sent] == [
        ("user", "second"),
        ("assistant", "xxxxxx"),
        ("user", "third "),
        ("assistant", "third "),
        ("user", "fourth"),
    ]
    assert sent[0]["content"] == "second question"  # short: whole, the answer cut
    assert chars(sent[:-1]) == 500


async def test_what_the_system_message_leaves_is_the_budget(relay, provider):
    http, token = await relay(chat_context_chars=300)
    provider.replies = ["y" * 1_000]
    first = await http.post(
        "/v1/chat", json={"message": "question", "system": "s" * 100}, headers=bearer(token)
    )
    await say(http, token, "next", first.headers[CONVERSATION])
    system, question, answer, _ = provider.seen[-1]
    assert system["content"] == "s" * 100 and question["content"] == "question"
    assert chars([system, question, answer]) == 300


async def test_a_question_whose_answer_was_left_out_takes_none_of_the_budget(
    make_client, make_settings, simulator
):
    # A long question the provider refused, then a short retry: the exchange before
    # is still sent whole (the refused question would only give way to the retry).
    http = await make_client(make_settings(rate_limits=False, chat_context_chars=1_000))
    _, token = await client_with_token(http)
    simulator.config.tokens = 4
    conversation = await say(http, token, "a short question")
    simulator.config.error_status = 500
    long = await http.post(
        "/v1/chat",
        json={"message": "z" * 5_000, "conversation_id": conversation},
        headers=bearer(token),
    )
    assert long.status == 502
    simulator.config.error_status = None
    await say(http, token, "a short retry", conversation)
    sent = simulator.state.requests[-1].json()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "a short question" and sent[-1]["content"] == "a short retry"


async def test_the_new_message_is_sent_whole_whatever_the_budget(relay, provider):
    http, token = await relay(chat_context_chars=200)
    conversation = await say(http, token, "hello")
    message = "long message " * 10_000
    await say(http, token, message, conversation)
    assert provider.seen[-1] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": message},
    ]


async def _rows(*messages: tuple[str, str]) -> AsyncIterator[dict[str, str]]:
    for role, content in messages:
        yield {"role": role, "content": content, "name": None}


async def test_an_exchange_cut_to_nothing_is_left_out():
    newest_first = [
        ("assistant", "a2"),
        ("user", "q2"),
        ("assistant", "a" * 50),
        ("user", "q" * 50),
    ]
    assert await recent_exchanges(_rows(*newest_first), 4 + 9) == [
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert await recent_exchanges(_rows(*newest_first), 0) == []


def test_an_exchange_shares_the_room_it_is_cut_to():
    # The question has half the room, or what the answer does not need; its end is kept.
    assert fit_exchange("q" * 100, "a" * 100, 50) == ("[…]\n" + "q" * 21, "a" * 21 + "\n[…]")
    assert fit_exchange("q" * 10, "a" * 100, 50) == ("q" * 10, "a" * 36 + "\n[…]")
    assert fit_exchange("q" * 100, "a" * 10, 50) == ("[…]\n" + "q" * 36, "a" * 10)
    assert fit_exchange("q" * 100, "a" * 100, 9) is None  # nothing of one of them


async def test_the_budget_counts_the_system_message_that_is_sent(relay, provider):
    """A request's `system` replaces the stored one for its turn: that one is counted,
    not the stored one it replaces."""
    http, token = await relay(chat_context_chars=300)
    long_stored = "You are a careful assistant. " * 9  # 261 characters, kept
    body = {"message": "First question?", "system": long_stored}
    first = await http.post("/v1/chat", json=body, headers=bearer(token))
    conversation = first.headers[CONVERSATION]
    provider.replies = ["A" * 20]
    await say(http, token, "Second question?", conversation)
    # The stored system message leaves 39 characters: the exchange does not fit whole.
    assert chars(provider.seen[-1][1:-1]) <= 300 - len(long_stored)
    body = {"message": "Third?", "conversation_id": conversation, "system": "Be brief."}
    assert (await http.post("/v1/chat", json=body, headers=bearer(token))).status == 200
    system, *context, new = provider.seen[-1]
    assert system == {"role": "system", "content": "Be brief."}
    # With the short one, the earlier exchanges fit whole.
    assert [m["content"] for m in context] == [
        "First question?",
        "ok",
        "Second question?",
        "A" * 20,
    ]
    assert new["content"] == "Third?"


async def test_a_budget_past_what_32_bits_hold_still_builds_the_context(relay, provider):
    http, token = await relay(chat_context_chars=300_000_000)
    conversation = await say(http, token, "First?")
    await say(http, token, "Second?", conversation)
    assert [m["content"] for m in provider.seen[-1]] == ["First?", "ok", "Second?"]
