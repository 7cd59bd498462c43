"""Killing relay (SIGKILL) under load loses no answer a client received complete.

relay runs as a real `relay serve` process in front of a simulated provider;
many clients stream and fetch answers at once; the process is killed without
warning mid-load. Every answer a client got whole (a 200 body, or a stream
ending in `data: [DONE]`) must then be in history, its question and its text.
"""

import asyncio
import itertools

import aiohttp
import orjson

from relay.simulator import SimulatorConfig
from tests.history_calls import CONVERSATION, query
from tests.relay_process import new_client_token, serve_with_simulator

WORKERS = 32


def streamed_text(raw: bytes) -> str:
    text = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: {"):
            for choice in orjson.loads(block[len(b"data: ") :]).get("choices") or []:
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


async def worker(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    number: int,
    received: list[tuple[str, str, str]],
    stop: asyncio.Event,
) -> int:
    """Ask until relay dies; keep (question, conversation, text) of each answer received whole."""
    failures = 0
    for n in itertools.count():
        if stop.is_set():
            return failures
        question = f"probe {number}-{n}"
        stream = (number + n) % 2 == 0
        body = {
            "model": "sim-small",
            "messages": [{"role": "user", "content": question}],
            "stream": stream,
        }
        try:
            async with session.post(
                f"{base}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    failures += 1
                    continue
                if stream:
                    if not raw.endswith(b"data: [DONE]\n\n"):
                        failures += 1
                        continue
                    text = streamed_text(raw)
                else:
                    text = orjson.loads(raw)["choices"][0]["message"]["content"]
                received.append((question, response.headers[CONVERSATION], text))
        except (aiohttp.ClientError, OSError):
            return failures + 1
    return failures


async def test_sigkill_under_load_loses_no_answer_a_client_received(
    aiohttp_server, database_url, redis_url, tmp_path
):
    relay = await serve_with_simulator(
        aiohttp_server,
        database_url,
        redis_url,
        tmp_path,
        SimulatorConfig(tokens=12, token_delay=0.002),
    )
    base = f"http://127.0.0.1:{relay.port}"
    received: list[tuple[str, str, str]] = []
    stop = asyncio.Event()
    try:
        token = await new_client_token(relay.port, "load")
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            workers = [
                asyncio.create_task(worker(session, base, token, n, received, stop))
                for n in range(WORKERS)
            ]
            # Let load build up, then kill relay without warning, answers in flight.
            for _ in range(600):
                if len(received) >= 150:
                    break
                await asyncio.sleep(0.01)
            relay.kill()
            stop.set()
            async with asyncio.timeout(30):
                failures = await asyncio.gather(*workers)
    finally:
        relay.kill()
    assert len(received) >= 50, relay.logs()[-3000:]
    assert sum(failures) > 0  # some answers were cut off by the kill: it happened under load

    rows = await query(
        database_url,
        "SELECT u.content AS question, u.conversation_id::text AS conversation,"
        " a.content AS text, a.status"
        " FROM messages u JOIN messages a"
        " ON a.conversation_id = u.conversation_id AND a.seq = u.seq + 1"
        " WHERE u.role = 'user' AND a.role = 'assistant'",
    )
    stored = {row["question"]: row for row in rows}
    missing = [question for question, _, _ in received if question not in stored]
    assert not missing, f"{len(missing)} answers received whole are not in history"
    for question, conversation, text in received:
        row = stored[question]
        assert (row["conversation"], row["text"], row["status"]) == (
            conversation,
            text,
            "complete",
        )
