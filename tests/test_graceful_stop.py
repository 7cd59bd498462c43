"""`relay serve` under SIGTERM and systemd: drain, notify, exit 0 (a real subprocess)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg2.extensions
import pytest
from aiohttp import web

from relay.appkeys import IN_FLIGHT as IN_FLIGHT_KEY
from relay.commands.serve import YOUNG_COLLECTION_THRESHOLD, StopSignals, tune_collector
from relay.drain import InFlight
from relay.metrics import OPEN_STREAMS
from relay.simulator.app import create_simulator_app
from relay.simulator.config import SimulatorConfig
from relay.stores.database import connect
from relay.stores.migrations import LOCK_ID as MIGRATION_LOCK_ID
from relay.stores.migrations import load_migrations
from relay.systemd import Notifier
from tests.api_calls import ADMIN, assert_error, bearer, client_with_token
from tests.history_calls import execute
from tests.receipt_calls import fetch_receipt
from tests.relay_process import (
    NotifySocket,
    RelayProcess,
    connection_refused,
    exchange,
    read_answer,
    start_slow_upload,
)


def to_both_chat_apis(model: str) -> dict[str, Any]:
    """Parameters of a test run once per chat API, asking `model` a one-word question."""
    return {
        "argvalues": [
            (
                "/v1/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": "x"}]},
            ),
            ("/v1/chat", {"model": model, "message": "x"}),
        ],
        "ids": ["completions", "relay's own chat"],
    }


@pytest.fixture
async def relay_process(
    database_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def make(**settings: str) -> RelayProcess:
        relay = RelayProcess(database_url, redis_url, tmp_path, settings)
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.kill()


async def create_api_key(port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{port}/admin/clients", json={"name": "drain"}, headers=ADMIN
        ) as response:
            assert response.status == 201, await response.text()
            return (await response.json())["api_key"]


async def test_sigterm_lets_a_request_in_flight_finish(relay_process):
    notify = NotifySocket.abstract()
    relay = relay_process(NOTIFY_SOCKET=notify.address, RELAY_DRAIN_TIMEOUT="20")
    relay.start()
    try:
        await notify.wait_for("READY=1")
        # `relay serve` runs relay's own connection handler: what aiohttp cannot
        # parse is answered in relay's error shape too.
        garbage = await asyncio.open_connection("127.0.0.1", relay.port)
        garbage[1].write(b"NOT-HTTP AT ALL\r\n\r\n")
        refused = await read_answer(garbage[0])
        garbage[1].close()
        assert refused.status == 400 and refused.headers["server"] == "relay"
        assert refused.json()["error"]["code"] == "malformed_request"

        api_key = await create_api_key(relay.port)
        kept_alive = await asyncio.open_connection("127.0.0.1", relay.port)
        assert (await exchange(*kept_alive, "GET", "/health")).status == 200
        upload = await start_slow_upload(relay.port, "/auth/token", {"api_key": api_key})
        await asyncio.sleep(0.3)  # the handler is now reading the body

        relay.terminate()
        await notify.wait_for("STOPPING=1")
        assert await connection_refused(relay.port)
        health = await exchange(*kept_alive, "GET", "/health")
        assert health.status == 503
        assert health.json()["status"] == "draining"
        assert health.headers["connection"] == "close"
        assert relay.running, "relay must wait for the request in flight"

        answer = await upload.finish()
        assert answer.status == 200, answer.body
        assert answer.json()["token_type"] == "Bearer"
        assert await relay.wait(15) == 0, relay.logs()
    finally:
        notify.close()
    assert "relay stopped" in relay.logs()


async def test_sighup_is_ignored_and_said_so(relay_process):
    notify = NotifySocket.abstract()
    relay = relay_process(NOTIFY_SOCKET=notify.address)
    relay.start()
    try:
        await notify.wait_for("READY=1")
        kept_alive = await asyncio.open_connection("127.0.0.1", relay.port)
        assert relay.process is not None
        relay.process.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "SIGHUP ignored" in relay.logs():
                break
            await asyncio.sleep(0.05)
        assert "SIGHUP ignored" in relay.logs()
        assert relay.running
        assert (await exchange(*kept_alive, "GET", "/health")).status == 200
        kept_alive[1].close()
        relay.terminate()
        assert await relay.wait(15) == 0, relay.logs()
    finally:
        notify.close()


async def test_drain_ends_after_the_timeout(relay_process):
    notify = NotifySocket.abstract()
    relay = relay_process(NOTIFY_SOCKET=notify.address, RELAY_DRAIN_TIMEOUT="0.5")
    relay.start()
    try:
        await notify.wait_for("READY=1")
        upload = await start_slow_upload(relay.port, "/auth/token", {"api_key": "rk_x_y"})
        await asyncio.sleep(0.3)
        relay.terminate()
        # The upload never finishes; relay still stops, soon after the drain timeout.
        assert await relay.wait(10) == 0, relay.logs()
        upload.writer.close()
    finally:
        notify.close()
    assert "drain timeout passed" in relay.logs()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="relay-") as name:
        yield Path(name)


async def test_unix_socket_and_watchdog(relay_process, short_dir):
    directory = short_dir
    notify = NotifySocket(str(directory / "notify"))
    socket_path = directory / "relay.sock"
    relay = relay_process(
        NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="200000", RELAY_UNIX_SOCKET=str(socket_path)
    )
    umask = os.umask(0o027)  # the unit's: the socket must still admit its group
    try:
        relay.start()
    finally:
        os.umask(umask)
    try:
        lines = await notify.wait_for("READY=1")
        # Start-up asks for more time than TimeoutStartSec as it goes (migrations).
        extend = [line for line in lines if line.startswith("EXTEND_TIMEOUT_USEC=")]
        assert extend and lines.index(extend[0]) < lines.index("READY=1")
        assert socket_path.stat().st_mode & 0o777 == 0o660
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path))
        ) as session:
            async with session.get("http://relay/health") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "ok"
        notify.received.clear()
        lines = await notify.wait_for("WATCHDOG=1", timeout=2)
        assert "WATCHDOG=1" in lines
        relay.terminate()
        await notify.wait_for("STOPPING=1")
        assert await relay.wait(15) == 0, relay.logs()
    finally:
        notify.close()


async def test_health_says_draining(http):
    in_flight = http.app[IN_FLIGHT_KEY]
    in_flight.draining.set()
    response = await http.get("/health")
    assert response.status == 503
    assert (await response.json())["status"] == "draining"


@pytest.fixture
async def stalled_relay(make_settings, make_client, provider_upstream):
    """relay in front of a provider that takes a request and never answers it (or,
    for a stream, answers its head and never a byte more)."""
    received = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        received.set()
        if (await request.json()).get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
        await asyncio.sleep(3600)
        raise AssertionError("never answered")

    upstream = await provider_upstream(stall, "stalled", models={"stalled": "stalled"})
    http = await make_client(make_settings(upstreams=(upstream,), rate_limits=False))
    _, token = await client_with_token(http)
    return http, token, received


@pytest.mark.parametrize(("path", "body"), **to_both_chat_apis("stalled"))
async def test_an_answer_still_awaited_at_the_drain_deadline_gets_a_503(stalled_relay, path, body):
    """Not a dropped connection: a 503 the client may retry elsewhere at once."""
    http, token, received = stalled_relay
    answer = asyncio.create_task(http.post(path, json=body, headers=bearer(token)))
    await received.wait()
    http.app[IN_FLIGHT_KEY].end_now()
    response = await answer
    await assert_error(response, 503, "shutting_down")
    assert response.headers["Retry-After"] == "1"


def test_the_deadline_reaches_what_is_open_and_what_begins_after_it():
    in_flight = InFlight()
    called: list[str] = []
    with in_flight.watch(lambda: called.append("open")):
        in_flight.end_now()
        in_flight.end_now()  # once
        with in_flight.track(on_deadline=lambda: called.append("later")):
            pass
    with in_flight.watch(lambda: called.append("closed")):
        pass
    assert called == ["open", "later", "closed"]


async def test_in_flight_counts_streams_and_waits():
    in_flight = InFlight()
    before = OPEN_STREAMS._value.get()
    with in_flight.request(), in_flight.track() as deadline:
        assert in_flight.streams == 1
        assert OPEN_STREAMS._value.get() == before + 1
        assert not deadline.is_set()
        assert not await in_flight.wait_idle(0.01)
    assert OPEN_STREAMS._value.get() == before
    assert await in_flight.wait_idle(0.01)


async def test_the_first_signal_asks_to_stop_and_another_ends_open_streams_at_once():
    # What `relay serve` and `relay dev` both stop by (a real signal, to this process).
    in_flight = InFlight()
    signals = StopSignals(in_flight)
    loop = asyncio.get_running_loop()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(signals.requested.wait(), 5)
        assert not in_flight.deadline.is_set()  # the drain waits for what is open
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(in_flight.deadline.wait(), 5)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)


async def test_sighup_is_logged_and_ignored_by_what_serve_and_dev_both_listen_with(caplog):
    # `relay dev` let SIGHUP kill it (and leave its servers running), unlike `relay serve`.
    signals = StopSignals(InFlight())
    loop = asyncio.get_running_loop()
    try:
        # Else the signal below would end this test's process.
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if "SIGHUP ignored" in caplog.text:
                break
            await asyncio.sleep(0.01)
        assert "SIGHUP ignored" in caplog.text
        assert not signals.requested.is_set()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def test_serving_tunes_the_collector_for_short_lived_objects():
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0  # start-up's objects are left out of collections
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_notifier_respects_watchdog_pid():
    mine = Notifier.from_env(
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_seconds == 30
    assert mine.address == "\0x"
    other = Notifier.from_env(
        {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "0"}
    )
    assert other.watchdog_seconds is None  # another process is the one watched
    assert not Notifier.from_env({}).notify("READY=1")


async def start_with_simulator(relay_process, aiohttp_server, tokens: int, **settings: str):
    """relay serve in front of an in-process simulator pacing tokens 50 ms apart."""
    simulator = await aiohttp_server(
        create_simulator_app(SimulatorConfig(tokens=tokens, token_delay=0.05))
    )
    upstreams = [
        {
            "name": "simulator",
            "base_url": f"http://127.0.0.1:{simulator.port}/v1",
            "models": {"sim-small": "sim-small"},
        }
    ]
    notify = NotifySocket.abstract()
    relay = relay_process(
        NOTIFY_SOCKET=notify.address, RELAY_UPSTREAMS=orjson.dumps(upstreams).decode(), **settings
    )
    relay.start()
    await notify.wait_for("READY=1")
    return relay, notify


async def exchange_token(session: aiohttp.ClientSession, port: int) -> str:
    api_key = await create_api_key(port)
    async with session.post(
        f"http://127.0.0.1:{port}/auth/token", json={"api_key": api_key}
    ) as response:
        return (await response.json())["access_token"]


STREAM = {
    "model": "sim-small",
    "stream": True,
    "messages": [{"role": "user", "content": "count"}],
}


async def stream_through(session: aiohttp.ClientSession, relay: RelayProcess) -> Any:
    """A streamed chat completion through `relay`, with a fresh client's token."""
    token = await exchange_token(session, relay.port)
    return session.post(
        f"http://127.0.0.1:{relay.port}/v1/chat/completions",
        json=STREAM,
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_a_stream_in_flight_at_sigterm_completes(relay_process, aiohttp_server):
    relay, notify = await start_with_simulator(
        relay_process, aiohttp_server, tokens=30, RELAY_DRAIN_TIMEOUT="20"
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with await stream_through(session, relay) as response:
                assert response.status == 200
                first = await response.content.readline()
                assert first.startswith(b"data: ")
                relay.terminate()
                await notify.wait_for("STOPPING=1")
                assert await connection_refused(relay.port)
                rest = await response.content.read()
        events = [line for line in (first + rest).split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]"
        assert len(events) >= 30  # every token arrived
        assert b'"error"' not in rest
        assert await relay.wait(15) == 0, relay.logs()
    finally:
        notify.close()


async def test_a_stream_past_the_drain_timeout_gets_a_final_error(relay_process, aiohttp_server):
    relay, notify = await start_with_simulator(
        relay_process, aiohttp_server, tokens=400, RELAY_DRAIN_TIMEOUT="0.5"
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with await stream_through(session, relay) as response:
                assert response.status == 200
                await response.content.readline()
                relay.terminate()
                rest = await response.content.read()
        events = [line for line in rest.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] != b"data: [DONE]"
        final = orjson.loads(events[-1].removeprefix(b"data: "))
        assert final["error"]["code"] == "shutting_down"
        assert await relay.wait(15) == 0, relay.logs()
        # relay ended it: its log must not blame the provider.
        assert "stream stopped by relay" in relay.logs()
        assert "provider broke off" not in relay.logs()
    finally:
        notify.close()


async def test_a_second_signal_ends_open_streams_at_once(relay_process, aiohttp_server):
    relay, notify = await start_with_simulator(
        relay_process, aiohttp_server, tokens=400, RELAY_DRAIN_TIMEOUT="60"
    )
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession() as session:
            async with await stream_through(session, relay) as response:
                await response.content.readline()
                relay.terminate()
                await notify.wait_for("STOPPING=1")
                second = loop.time()
                relay.terminate()
                rest = await response.content.read()
        events = [line for line in rest.split(b"\n") if line.startswith(b"data: ")]
        final = orjson.loads(events[-1].removeprefix(b"data: "))
        assert final["error"]["code"] == "shutting_down"
        assert await relay.wait(15) == 0, relay.logs()
        assert loop.time() - second < 10  # not the 60 s drain
    finally:
        notify.close()


async def test_a_schema_behind_the_code_stops_start_up_when_relay_may_not_migrate(
    relay_process, database_url
):
    """During a rolling upgrade (RELAY_RUN_MIGRATIONS=false) a new relay started before
    `relay migrate` would fail request after request; it refuses to start instead."""
    latest = load_migrations()[-1]
    await execute(
        database_url, "DELETE FROM schema_migrations WHERE version = %s", (latest.version,)
    )
    relay = relay_process(RELAY_RUN_MIGRATIONS="false")
    relay.start()
    assert await relay.wait(60) == 1
    logs = relay.logs()
    assert f"lacks 1 migration(s) this relay needs ({latest.name})" in logs
    assert "relay migrate" in logs and "Traceback" not in logs


async def test_sigterm_while_start_up_waits_for_another_migration_stops_at_once(
    relay_process, database_url
):
    """Start-up may wait minutes for another instance's migration; systemd's stop
    (or ^C) ends that wait at once, rather than once start-up is done."""
    holder = await connect(database_url, timeout=10)
    try:
        async with holder.cursor() as cur:
            await cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
            relay = relay_process()
            relay.start()
            await wait_for_a_migration_lock_waiter(cur)
            relay.terminate()
            assert await relay.wait(10) == 0
            await cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
            # Its server process, left waiting, takes the lock and finds relay gone:
            # the next start does not find the lock held.
            for _ in range(100):
                await cur.execute(MIGRATION_LOCKS, (MIGRATION_LOCK_ID,))
                if not (await cur.fetchone())[0]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the migration lock stayed taken")
    finally:
        await holder.close()
    logs = relay.logs()
    assert "relay stopped during start-up" in logs, logs
    assert "Traceback" not in logs and "relay listening" not in logs


MIGRATION_LOCKS = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND (classid::bigint << 32) | objid::bigint = %s
"""
WAITING_FOR_MIGRATION_LOCK = MIGRATION_LOCKS + " AND NOT granted"


async def wait_for_a_migration_lock_waiter(cur: Any) -> None:
    for _ in range(300):
        await cur.execute(WAITING_FOR_MIGRATION_LOCK, (MIGRATION_LOCK_ID,))
        if (await cur.fetchone())[0]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("relay never waited for the migration lock")


@pytest.mark.parametrize(
    "failure", ["database down", "port taken", "redis url", "socket directory missing"]
)
async def test_a_failed_start_is_one_line_and_no_traceback(relay_process, failure):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = {
            "database down": {"RELAY_DATABASE_URL": "postgresql://relay@127.0.0.1:1/relay"},
            "port taken": {"RELAY_PORT": str(taken.getsockname()[1])},
            "redis url": {"RELAY_REDIS_URL": "http://127.0.0.1:6379"},
            "socket directory missing": {"RELAY_UNIX_SOCKET": "/nonexistent/relay.sock"},
        }[failure]
        relay = relay_process(**settings)
        relay.start()
        code = await relay.wait(60)
    logs = relay.logs()
    assert "Traceback" not in logs
    if failure == "redis url":  # a setting relay refuses as it reads it: exit 2
        assert code == 2 and "relay: RELAY_REDIS_URL is invalid" in logs, logs
        return
    assert code == 1, logs
    assert "relay serve:" in logs
    if failure == "port taken":
        assert f"cannot listen on 127.0.0.1:{settings['RELAY_PORT']}" in logs
    if failure == "socket directory missing":
        assert "cannot listen on /nonexistent/relay.sock" in logs


@pytest.mark.parametrize("wrong", ["sslmode", "database", "role"])
async def test_database_settings_that_cannot_work_are_exit_2_not_try_again(
    relay_process, database_url, wrong
):
    # Restarting will not help until they change: systemd's RestartPreventExitStatus=2.
    changed = {
        "sslmode": psycopg2.extensions.make_dsn(database_url, sslmode="bogus"),
        "database": psycopg2.extensions.make_dsn(database_url, dbname="relay_no_such_db"),
        "role": psycopg2.extensions.make_dsn(database_url, user="relay_no_such_role"),
    }[wrong]
    relay = relay_process(RELAY_DATABASE_URL=changed)
    relay.start()
    code = await relay.wait(60)
    logs = relay.logs()
    assert code == 2, logs
    assert "relay serve: RELAY_DATABASE_URL: " in logs and "try again" not in logs
    assert "Traceback" not in logs


@pytest.mark.parametrize(("path", "body"), **to_both_chat_apis("gpt-sim"))
async def test_an_answer_committing_at_the_drain_deadline_is_delivered_as_recorded(
    http, database_url, path, body
):
    """Its history row and receipt are on their way as a complete answer: the client
    gets that answer, not a 503 that would have it asked (and recorded) twice."""
    _, token = await client_with_token(http)
    locker = await connect(database_url, timeout=10)
    try:
        async with locker.cursor() as cur:
            await cur.execute("BEGIN")
            await cur.execute("LOCK TABLE receipts IN ACCESS EXCLUSIVE MODE")
            answer = asyncio.create_task(http.post(path, json=body, headers=bearer(token)))
            # Its batch waits for the lock: the answer is queued and committing.
            for _ in range(500):
                if await _waiting_for_a_lock(database_url):
                    break
                await asyncio.sleep(0.02)
            http.app[IN_FLIGHT_KEY].end_now()
            await asyncio.sleep(0.1)  # a handler given up on would answer now
            assert not answer.done()
            await cur.execute("COMMIT")
    finally:
        await locker.close()
    response = await answer
    assert response.status == 200, await response.text()
    received = await response.read()
    receipt = await fetch_receipt(http, token, response.headers["x-receipt-id"])
    assert receipt["status"] == "complete"
    assert receipt["response_sha256"] == hashlib.sha256(received).hexdigest()


async def _waiting_for_a_lock(database_url: str) -> bool:
    conn = await connect(database_url, timeout=10)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            row = await cur.fetchone()
    finally:
        await conn.close()
    return bool(row and row[0])
