"""What POST /v1/chat reads of a conversation for its context: no more than the budget
could use, however long the stored messages, and the same context as if every message
were read whole."""

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.appkeys import DATABASE
from relay.stores import conversation_context
from relay.stores.conversation_context import recent_exchanges
from relay.stores.conversations import ConversationStore
from tests.api_calls import client_with_token
from tests.history_calls import execute, query
from tests.test_chat_context_budget import Provider, say

BUDGET = 1_000


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def reads(monkeypatch) -> list[list[dict[str, Any]]]:
    """The pages of messages the context read fetches, as it gets them."""
    pages: list[list[dict[str, Any]]] = []

    async def fetch_all(cur, sql, args=None):
        rows = await real(cur, sql, args)
        pages.append(rows)
        return rows

    real = conversation_context.fetch_all
    monkeypatch.setattr(conversation_context, "fetch_all", fetch_all)
    return pages


@pytest.fixture
async def chat(make_client, make_settings, provider_upstream, provider, database_url):
    """A conversation opened through relay, then `messages` (role, SQL text expression,
    status) stored after it straight in PostgreSQL; returns the next turn's sender (it
    gives the context sent) and the context as every message read whole makes it."""

    async def start(messages: list[tuple[str, str, str]], budget: int = BUDGET):
        upstream = await provider_upstream(provider.answer, "scripted", models={"m": "m"})
        http = await make_client(
            make_settings(upstreams=(upstream,), rate_limits=False, chat_context_chars=budget)
        )
        client, token = await client_with_token(http)
        conversation = await say(http, token, "A first question.")
        for role, text, status in messages:
            await execute(
                database_url,
                "UPDATE history_sequences SET last_seq = last_seq + 1 WHERE client_id = %s;"
                " INSERT INTO messages (conversation_id, client_id, seq, role, content, status)"
                f" SELECT %s, %s, last_seq, %s, {text}, %s FROM history_sequences"
                " WHERE client_id = %s",
                (client["id"], conversation, client["id"], role, status, client["id"]),
            )
        whole = await query(
            database_url,
            "SELECT role, name, content FROM messages WHERE conversation_id = %s"
            " AND role IN ('user', 'assistant') AND content <> ''"
            " AND status NOT IN ('failed', 'cut') ORDER BY seq DESC",
            (conversation,),
        )
        expected = await read_whole(whole, budget)

        async def next_turn() -> list[dict[str, str]]:
            await say(http, token, "And now?", conversation)
            return provider.seen[-1][:-1]

        return next_turn, expected

    return start


async def read_whole(newest_first: list[dict[str, Any]], budget: int) -> list[dict[str, str]]:
    """The context as the messages read whole make it."""

    async def rows() -> AsyncIterator[dict[str, Any]]:
        for row in newest_first:
            yield row

    return await recent_exchanges(rows(), budget)


def read_chars(pages: list[list[dict[str, Any]]]) -> int:
    return sum(len(row["content"]) for page in pages for row in page)


async def test_of_long_messages_only_what_the_budget_can_keep_is_read(chat, reads):
    # An exchange that fits whole, then one of 1 MB messages cut to what is left (the
    # question keeps its end, the answer its beginning), and more of them before.
    huge = [
        ("user", f"repeat('question {n} ', 100000)", "complete")
        if n % 2 == 0
        else ("assistant", f"repeat('answer {n} ', 100000)", "complete")
        for n in range(30)
    ]
    short = [("user", "'a short question'", "complete"), ("assistant", "'yes'", "complete")]
    next_turn, expected = await chat(huge + short)
    reads.clear()
    sent = await next_turn()
    assert sent == expected
    assert [m["content"] for m in sent[2:]] == ["a short question", "yes"]
    assert sent[0]["content"].startswith("[…]\n") and sent[1]["content"].endswith("\n[…]")
    assert sum(len(m["content"]) for m in sent) == BUDGET
    # Each of the cut exchange's messages at most the budget and one character.
    assert read_chars(reads) <= len("a short question") + len("yes") + 2 * (BUDGET + 1)
    assert len(reads) == 1


async def test_nothing_is_read_of_questions_whose_answers_were_left_out(chat, reads):
    # A provider refusing long prompts: their failed answers are left out, and with
    # them the questions (each gives way to the one after it).
    refused = [
        (role, f"repeat('{role} ', 200000)", "complete" if role == "user" else "failed")
        for _ in range(40)
        for role in ("user", "assistant")
    ]
    next_turn, expected = await chat(refused)
    reads.clear()
    sent = await next_turn()
    assert sent == expected
    assert [m["content"] for m in sent] == ["A first question.", "ok"]
    assert read_chars(reads) == len("A first question.") + len("ok")


@pytest.mark.parametrize("budget", [1_000, 50_000])
async def test_the_context_is_the_same_across_pages(chat, reads, budget):
    # 300 short messages: the budget ends within the first page, or past the last. The
    # newest question's answer was left out: a page ends between a question and its
    # answer.
    exchanges = [
        (role, f"'{role} {n} ' || repeat('.', {n % 37})", "complete")
        for n in range(150)
        for role in ("user", "assistant")
    ]
    refused = [("user", "'refused'", "complete"), ("assistant", "'no'", "failed")]
    next_turn, expected = await chat(exchanges + refused, budget)
    reads.clear()
    sent = await next_turn()
    assert sent == expected
    # No page is read past the one where the budget ends.
    assert len(reads) == (1 if budget < 5_000 else 5)


@pytest.fixture
async def store(make_client, make_settings, database_url):
    """Stores `messages` (role, content, status) as a conversation's, replacing what it
    had, and returns its context as read, and as every message read whole makes it."""
    http = await make_client(make_settings(rate_limits=False))
    client, token = await client_with_token(http)
    conversation = await say(http, token, "first")
    reader = ConversationStore(http.app[DATABASE])

    async def contexts(messages: list[tuple[str, str, str]], budget: int, system=None):
        await execute(
            database_url,
            "DELETE FROM messages WHERE conversation_id = %s;"
            " INSERT INTO messages (conversation_id, client_id, seq, role, content, status)"
            " SELECT %s, %s, seq, role, content, status FROM unnest(%s, %s, %s)"
            " WITH ORDINALITY AS m (role, content, status, seq)",
            (conversation, conversation, client["id"], *map(list, zip(*messages, strict=True))),
        )
        whole = [
            {"role": role, "content": content, "name": None}
            for role, content, status in reversed(messages)
            if content and status not in ("failed", "cut")
        ]
        left = budget - len(system or "")
        expected = await read_whole(whole, left) if left > 0 else []
        got = await reader.context(client["id"], conversation, budget, system)
        return got, (system, expected)

    return contexts


async def test_the_context_is_the_same_as_if_every_message_were_read_whole(store):
    # Random conversations: lengths around the budget and far past it, messages of one
    # role in a row, answers left out, a system message taking part of the budget,
    # characters of 1 to 4 bytes, and enough messages for several pages.
    rng = random.Random(4)
    for _ in range(60):
        budget = rng.choice([1, 9, 50, 300, 2_000])
        lengths = [0, 1, 7, 40] * rng.choice([1, 20]) + [budget, 3 * budget]
        messages = [
            (
                rng.choice(["user", "assistant"]) if rng.random() < 0.2 else role,
                "".join(rng.choices("abcdé€😀", k=rng.choice(lengths))),
                rng.choice(["complete"] * 6 + ["failed", "cut", "cancelled"]),
            )
            for _ in range(rng.choice([3, 20, 150]))
            for role in ("user", "assistant")
        ]
        system = rng.choice([None, "", "s" * (budget // 2), "s" * budget])
        got, expected = await store(messages, budget, system)
        assert got == expected, (budget, messages, system)


async def test_a_question_is_read_after_whole_messages_of_four_byte_characters(store):
    # Whole messages after it nearly fill the budget, in 4 bytes a character, then a
    # long answer: the question it pairs with is still read, and the exchange cut.
    messages = [
        ("user", "q" * 10_000, "complete"),
        ("assistant", "a" * 10_000, "complete"),
        ("user", "😀" * 450, "complete"),
        ("assistant", "😀" * 450, "complete"),
    ]
    got, expected = await store(messages, 1_000)
    assert got == expected
    assert [m["content"][:5] for m in got[1][:2]] == ["[…]\nq", "aaaaa"]


async def test_the_walk_ends_after_so_many_messages_passed_over(store, reads):
    # Turns of a question sent as 150 user messages and 149 tool results, each then
    # answered: of each, a question and its answer can be context, the rest is passed
    # over. Past so many of those the walk ends, older turns left out: a long
    # conversation of them costs no more than a short one.
    turns = 40
    messages = [
        message
        for n in range(turns)
        for message in (
            *[("user", f"u{n}", "complete")] * 150,
            *[("tool", "result", "complete")] * 149,
            ("assistant", f"a{n}", "complete"),
        )
    ]
    reads.clear()
    got, _ = await store(messages, 50_000)
    passed_per_turn = 149 + 149  # results, then a question's first 149 messages
    kept = conversation_context._CONTEXT_PASSED_OVER // passed_per_turn
    assert got[1] == [
        {"role": role, "content": f"{role[0]}{n}"}
        for n in range(turns - kept, turns)
        for role in ("user", "assistant")
    ]
    # What the walk yields and passes over, and the rest of the page it ends in.
    read = sum(len(page) for page in reads)
    page = conversation_context._CONTEXT_PAGE
    assert read < conversation_context._CONTEXT_PASSED_OVER + 2 * (kept + 1) + page
    assert len(reads) == -(-read // page)


async def test_the_latest_system_message_is_found_without_reading_back_to_it(store, database_url):
    # A system message, then a long conversation: its index finds it, where reading
    # back by seq would pass over every message after it.
    messages = [("system", "be brief", "complete")] + [
        (role, f"{role} {n}", "complete") for n in range(2_000) for role in ("user", "assistant")
    ]
    got, _ = await store(messages, 1_000)
    assert got[0] == "be brief"
    await execute(database_url, "ANALYZE messages")
    [conversation] = await query(database_url, "SELECT id FROM conversations")
    plan = await query(
        database_url,
        "EXPLAIN " + conversation_context.LATEST_SYSTEM_SQL,
        {"conversation": conversation["id"], "client": "00000000-0000-0000-0000-000000000000"},
    )
    assert "messages_conversation_system_idx" in str(plan), plan
