"""How log lines reach their stream: JSON lines, written together once per event-loop turn."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import orjson

from relay.logs import JsonFormatter, TurnBufferedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def logger_to(stream: io.StringIO) -> tuple[logging.Logger, TurnBufferedHandler]:
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"relay.test.output.{id(stream)}")
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    return log, handler


async def test_lines_of_one_loop_turn_are_written_together_in_order_at_its_end():
    stream = CountingStream()
    log, _ = logger_to(stream)
    for n in range(5):
        log.info("request", extra={"n": n})
    assert stream.getvalue() == ""  # still this turn
    await asyncio.sleep(0)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2, 3, 4]
    assert stream.writes == 1
    log.info("next turn")
    await asyncio.sleep(0)
    assert stream.getvalue().splitlines()[-1].startswith('{"ts"')
    assert stream.writes == 2


def test_outside_an_event_loop_each_line_is_written_at_once():
    stream = CountingStream()
    log, _ = logger_to(stream)
    log.warning("starting", extra={"port": 8080})
    line = orjson.loads(stream.getvalue())
    assert line["msg"] == "starting" and line["port"] == 8080 and line["level"] == "warning"


async def test_lines_still_buffered_are_written_when_the_handler_is_flushed():
    stream = CountingStream()
    log, handler = logger_to(stream)
    log.info("last words")
    handler.flush()  # as logging.shutdown does at exit
    assert "last words" in stream.getvalue()


def test_json_lines_carry_a_utc_timestamp_with_milliseconds_and_no_code_location():
    stream = io.StringIO()
    log, _ = logger_to(stream)
    log.info("stamped")
    line = orjson.loads(stream.getvalue())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert set(line) == {"ts", "level", "logger", "msg"}
