"""Lines logged while serving a request carry its id; lines of other work do not."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson

from relay.logs import JsonFormatter, RequestIdFilter, TurnBufferedHandler, served, serving
from tests.api_calls import client_with_token
from tests.history_calls import chat


def lines_of(logger_name: str) -> tuple[io.StringIO, logging.Handler]:
    """relay's own handler (filter included) on `logger_name`, writing to a string."""
    stream = io.StringIO()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return stream, handler


def logged(stream: io.StringIO, handler: logging.Handler) -> dict[str, dict]:
    handler.flush()
    return {line["msg"]: line for line in map(orjson.loads, stream.getvalue().splitlines())}


async def test_a_providers_refusal_is_logged_with_the_request_id_its_client_was_given(
    http, simulator
):
    _, token = await client_with_token(http)
    stream, handler = lines_of("relay.upstreams")
    try:
        simulator.config.error_status = 503
        answer = await chat(http, token)
        await answer.read()
    finally:
        logging.getLogger("relay.upstreams").removeHandler(handler)
    assert answer.status == 502
    line = logged(stream, handler)["provider refused"]
    assert line["request_id"] == answer.headers["X-Request-Id"]
    assert line["upstream"] == "simulator"


async def test_only_the_serving_task_marks_its_lines():
    stream, handler = lines_of("relay.test.request_id")
    log = logging.getLogger("relay.test.request_id")
    try:
        mark = serving("req-1")
        log.info("while serving")
        log.info("naming its own", extra={"request_id": "other"})
        # A task started meanwhile inherits the context, but may serve others.
        await asyncio.create_task(_log_later(log))
        await asyncio.to_thread(log.info, "from a thread")
        served(mark)
        log.info("after serving")
    finally:
        log.removeHandler(handler)
    lines = logged(stream, handler)
    assert lines["while serving"]["request_id"] == "req-1"
    assert lines["naming its own"]["request_id"] == "other"
    assert "request_id" not in lines["from another task"]
    assert "request_id" not in lines["from a thread"]
    assert "request_id" not in lines["after serving"]


async def _log_later(log: logging.Logger) -> None:
    log.info("from another task")
