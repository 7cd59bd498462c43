"""GET /v1/history/search costs the database a bounded amount: long queries over long
messages answer, one client's searches leave the rest of relay served, and a search
the server stops for its time is told apart from a database that is down."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from relay.api.spec import build_spec
from relay.stores.messages import RANKED_MATCHES
from tests.api_calls import assert_error, bearer, client_with_token
from tests.history_calls import chat, execute, query
from tests.test_database_cancel import locked

WORDS = [f"w{n}" for n in range(32)]


def long_message(seed: int, words: int = 30_000) -> str:
    pick = random.Random(seed)
    return " ".join(pick.choice(WORDS) for _ in range(words))


async def search(http, token, q, **params):
    params = {"q": q, **{key: str(value) for key, value in params.items()}}
    return await http.get("/v1/history/search", params=params, headers=bearer(token))


async def health_status(http) -> int:
    return (await http.get("/health")).status


@pytest.fixture
async def slow_searches(database_url: str) -> AsyncIterator[None]:
    """Each search spends `seconds` (set_search_seconds) in the database from now on:
    websearch_to_tsquery, which searches call and nothing else in relay does, is
    shadowed by one that sleeps first, once a transaction. It claims to be immutable,
    so PostgreSQL calls it while it plans the query, whatever the rows."""
    await set_search_seconds(database_url, 0)
    await execute(
        database_url,
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = public, pg_catalog',"
        " current_database()); END $$",
    )
    yield


async def set_search_seconds(database_url: str, seconds: float) -> None:
    await execute(
        database_url,
        "CREATE OR REPLACE FUNCTION public.websearch_to_tsquery(config regconfig, q text)"
        " RETURNS tsquery IMMUTABLE LANGUAGE sql AS $$"
        f" SELECT pg_sleep({seconds:f}) WHERE current_setting('test.slept', true) IS NULL"
        "  OR current_setting('test.slept', true) = '';"
        " SELECT set_config('test.slept', 'yes', true);"
        " SELECT pg_catalog.websearch_to_tsquery(config, q) $$",
    )


async def sleeping_searches(database_url: str, at_least: int) -> list[int]:
    """The server processes of searches in the database now, once there are `at_least`."""
    for _ in range(500):
        rows = await query(
            database_url,
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        if len(rows) >= at_least:
            return [row["pid"] for row in rows]
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {at_least} searches ran")


async def test_a_long_query_over_long_messages_answers_best_first(make_client, make_settings):
    # 32 words that all occur, hundreds of times each, in every one of 60 long
    # messages: ranking each match by the query's word pairs took seconds a row.
    http = await make_client(make_settings(rate_limits=False))
    _, token = await client_with_token(http)
    for n in range(60):
        assert (await chat(http, token, long_message(n))).status == 200
    for limit in (1, 20, 100):
        response = await search(http, token, " ".join(WORDS), limit=limit)
        assert response.status == 200, await response.text()
        found = (await response.json())["data"]
        assert len(found) == min(limit, 60)
        ranks = [message["rank"] for message in found]
        assert ranks == sorted(ranks, reverse=True)
        assert all("<mark>w" in message["snippet"] for message in found)


async def test_a_search_the_server_stops_for_its_time_is_too_costly_not_an_outage(
    make_client, make_settings, database_url, slow_searches, caplog
):
    http = await make_client(make_settings(database_timeout=1.0))
    _, token = await client_with_token(http)
    assert (await chat(http, token, "penguin facts")).status == 200
    await set_search_seconds(database_url, 2)
    response = await search(http, token, "penguin")
    error = await assert_error(response, 422, "search_too_costly")
    assert error["param"] == "q" and error["type"] == "invalid_request_error"
    assert "narrow" in error["message"]
    # Asking again costs the same again: OpenAI's SDKs are told not to.
    assert response.headers["x-should-retry"] == "false"
    assert "Retry-After" not in response.headers
    assert await health_status(http) == 200
    # Nor does the log call it one: whoever is paged by "postgres unavailable" is not.
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("relay")]
    assert "postgres cancelled a statement" in logged and "postgres unavailable" not in logged
    await set_search_seconds(database_url, 0)
    assert (await search(http, token, "penguin")).status == 200


async def test_a_search_whose_database_process_ends_is_still_unavailable(
    make_client, make_settings, database_url, slow_searches
):
    # What a server shutting down does to the statements it runs.
    http = await make_client(make_settings())
    _, token = await client_with_token(http)
    await set_search_seconds(database_url, 3)
    answer = asyncio.ensure_future(search(http, token, "penguin"))
    (pid,) = await sleeping_searches(database_url, 1)
    await query(database_url, "SELECT pg_terminate_backend(%s)", (pid,))
    response = await answer
    await assert_error(response, 503, "dependency_unavailable")
    assert response.headers["Retry-After"] == "1"


async def test_a_search_kept_waiting_for_a_lock_is_the_database_being_unavailable(
    make_client, make_settings, database_url
):
    # A migration holding the table is not what the query costs.
    http = await make_client(make_settings(database_timeout=1.0))
    _, token = await client_with_token(http)
    async with locked(database_url, "messages"):
        response = await search(http, token, "penguin")
    await assert_error(response, 503, "dependency_unavailable")


async def test_one_clients_burst_of_searches_leaves_other_clients_served(
    make_client, make_settings, database_url, slow_searches
):
    # 24 searches at once from one client, within its rate limit, each holding a
    # pooled connection (20 of them) in the database for seconds.
    http = await make_client(make_settings())
    _, searcher = await client_with_token(http)
    _, other = await client_with_token(http)
    await set_search_seconds(database_url, 2)
    searches = [asyncio.ensure_future(search(http, searcher, "penguin")) for _ in range(24)]
    await sleeping_searches(database_url, 1)
    assert (await chat(http, other, "hello")).status == 200
    assert (await http.get("/v1/history", headers=bearer(other))).status == 200
    # Served while the searches run, not after them.
    assert not any(task.done() for task in searches)
    assert len(await sleeping_searches(database_url, 1)) <= 2  # one client's share
    responses = await asyncio.gather(*searches)
    refused = [response for response in responses if response.status != 200]
    assert refused and len(responses) - len(refused) <= 2
    for response in refused:
        await assert_error(response, 429, "too_many_searches")
        assert response.headers["Retry-After"] == "1"


async def test_searches_beyond_the_instances_share_of_the_pool_are_refused_not_queued(
    make_client, make_settings, database_url, slow_searches
):
    # A pool of 8: two searches at once on this instance, one per client.
    http = await make_client(make_settings(database_pool_size=8))
    tokens = [(await client_with_token(http))[1] for _ in range(3)]
    await set_search_seconds(database_url, 2)
    searches = [asyncio.ensure_future(search(http, token, "penguin")) for token in tokens]
    assert len(await sleeping_searches(database_url, 2)) == 2
    responses = await asyncio.gather(*searches)
    assert sorted(response.status for response in responses) == [200, 200, 503]
    [refused] = [response for response in responses if response.status == 503]
    await assert_error(refused, 503, "searches_busy")
    assert refused.headers["Retry-After"] == "1"


def test_the_api_description_states_how_many_matches_are_ranked():
    search_route = build_spec()["paths"]["/v1/history/search"]["get"]
    assert f"newest {RANKED_MATCHES} matches" in search_route["description"]
    assert {"422", "429", "503"} <= set(search_route["responses"])
