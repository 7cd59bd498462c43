"""GET /metrics: how answers ended, what history could not keep, tokens and upstream errors."""

from __future__ import annotations

import asyncio
import logging

from relay.appkeys import ANSWER_HOOKS, ANSWER_RECORDER, DATABASE
from relay.stores.clients import ClientStore
from tests.api_calls import client_with_token
from tests.history_calls import chat, recorded_answer, refuse_history_writes
from tests.test_metrics import samples, scrape, value


async def settled(http, name: str, before: float, **labels: str) -> float:
    """The counter's value once it passed `before` (after-hooks run as a handler ends)."""
    for _ in range(100):
        now = value(await scrape(http), name, **labels)
        if now > before:
            return now
        await asyncio.sleep(0.05)
    return now


async def test_a_stream_history_could_not_keep_is_counted(http, database_url):
    _, token = await client_with_token(http)
    text = await scrape(http)
    failures = value(text, "relay_history_commit_failures_total")
    failed = value(text, "relay_answers_total", outcome="failed")
    await refuse_history_writes(database_url)
    response = await chat(http, token, stream=True)
    assert response.status == 200
    assert b"history_unavailable" in await response.read()
    assert await settled(http, "relay_history_commit_failures_total", failures) == failures + 1
    # Its client was sent an error instead of the end: the answer ended failed.
    assert await settled(http, "relay_answers_total", failed, outcome="failed") == failed + 1


async def test_answers_are_counted_by_how_they_ended(http, simulator):
    _, token = await client_with_token(http)
    text = await scrape(http)
    failed = value(text, "relay_answers_total", outcome="failed")
    cut = value(text, "relay_answers_total", outcome="cut")
    simulator.config.error_status = 500
    await (await chat(http, token, stream=True)).read()
    assert await settled(http, "relay_answers_total", failed, outcome="failed") == failed + 1
    simulator.config.error_status = None
    simulator.config.cut_after = 2
    await (await chat(http, token, stream=True)).read()
    assert await settled(http, "relay_answers_total", cut, outcome="cut") == cut + 1


async def test_tokens_without_the_providers_usage_are_counted_as_estimated(http, simulator):
    _, token = await client_with_token(http)
    out = {"model": "gpt-sim", "direction": "out"}

    async def tokens(estimated: str, before: float = -1) -> float:
        return await settled(http, "relay_tokens_total", before, **out, estimated=estimated)

    estimated, reported = await tokens("true"), await tokens("false")
    await (await chat(http, token, stream=True)).read()  # no stream_options.include_usage
    estimated_now = await tokens("true", estimated)
    assert estimated_now > estimated
    assert await tokens("false") == reported
    usage = {"stream_options": {"include_usage": True}}
    await (await chat(http, token, stream=True, **usage)).read()
    assert await tokens("false", reported) > reported
    assert await tokens("true") == estimated_now
    simulator.config.cut_after = 2  # a cut stream carries no usage
    await (await chat(http, token, stream=True, **usage)).read()
    assert await tokens("true", estimated_now) > estimated_now


async def test_provider_failures_are_counted_by_upstream_and_kind(http, simulator, caplog):
    caplog.set_level(logging.INFO, logger="relay.upstreams")
    _, token = await client_with_token(http)

    def errors(text: str, kind: str) -> float:
        return value(text, "relay_upstream_errors_total", upstream="simulator", kind=kind)

    before = await scrape(http)
    simulator.config.error_status = 503
    await (await chat(http, token, stream=True)).read()
    simulator.config.error_status = None
    simulator.config.cut_after = 2
    await (await chat(http, token, stream=True)).read()
    after = await scrape(http)
    assert errors(after, "status_5xx") == errors(before, "status_5xx") + 1
    assert errors(after, "cut") == errors(before, "cut") + 1
    logged = {record.message: record for record in caplog.records}
    assert logged["provider refused"].upstream == "simulator"
    assert logged["provider broke off a stream"].upstream == "simulator"


async def test_histogram_buckets_span_what_they_measure(http):
    _, token = await client_with_token(http)
    await (await chat(http, token)).read()
    text = await scrape(http)

    def bounds(name: str) -> list[float]:
        return sorted(
            float(labels["le"])
            for (sample, labels_) in samples(text)
            if sample == name + "_bucket"
            for labels in [dict(labels_)]
        )

    requests = bounds("relay_http_request_duration_seconds")
    assert requests[0] == 0.0005
    assert 30 in bounds("relay_history_commit_seconds")
    assert 600 in bounds("relay_upstream_response_seconds")
    for name in ("relay_http_request_duration_seconds", "relay_history_commit_seconds"):
        assert len(set(bounds(name))) <= 17  # 16 and +Inf


async def test_no_created_series(http):
    _, token = await client_with_token(http)
    await (await chat(http, token)).read()
    assert "_created" not in await scrape(http)


async def test_an_answer_that_did_not_complete_is_no_commit_failure_however_often_tried(http):
    # Its client is not told anything of history (it has its cut or error already), and a
    # stopping recorder, refusing it, is asked twice (the answer, then its receipt alone).
    recorder = http.app[ANSWER_RECORDER]
    client = await ClientStore(http.app[DATABASE]).get((await client_with_token(http))[0]["id"])
    answer = recorded_answer(http.app, client, "cut short", status="cut")
    before = value(await scrape(http), "relay_history_commit_failures_total")
    await recorder.close()
    assert await http.app[ANSWER_HOOKS].commit_end(answer) is None
    assert value(await scrape(http), "relay_history_commit_failures_total") == before
