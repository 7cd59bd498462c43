"""Test harness: real PostgreSQL and Redis, a fresh database per test, relay over HTTP.

Servers come from RELAY_TEST_DATABASE_URL / RELAY_TEST_REDIS_URL when given,
otherwise the session starts private ones from the machine's server binaries
(see relay.devservers). A missing server fails the run; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis as redis_sync
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from relay.api.server import RelayAppRunner
from relay.app import create_app
from relay.config import Secret, Settings
from relay.devservers import PostgresServer, RedisServer
from relay.simulator import SIMULATOR_STATE, SimulatorConfig, SimulatorState, create_simulator_app
from relay.stores.database_admin import create_database, drop_database, with_database
from relay.stores.migrations import migrate
from relay.upstreams.config import Upstream


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on uvloop, the loop `relay serve` runs on: some failures
    (a connection refused, say) take another path there than on asyncio's own loop."""
    return {"uvloop": uvloop.new_event_loop}


# relay's development state dir when RELAY_STATE_DIR is not set, relative to the working
# directory: the checkout, for tests. A test that lets relay make it there leaves secrets
# (a JWT secret, the admin token) beside the code, which later runs of relay then use.
_CHECKOUT_STATE = Path(__file__).resolve().parents[1] / ".relay-state"


@pytest.fixture(autouse=True)
def _keeps_no_state_in_the_checkout() -> Iterator[None]:
    there = _CHECKOUT_STATE.exists()  # `make dev`'s own, say
    yield
    assert there or not _CHECKOUT_STATE.exists(), (
        ".relay-state appeared in the checkout during this test (or one another worker ran"
        " meanwhile): give relay a RELAY_STATE_DIR"
    )


ADMIN_TOKEN = "test-admin-token-" + "a" * 32
JWT_SECRET = "test-jwt-secret-" + "s" * 32


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL of a PostgreSQL server that may create databases."""
    given = os.environ.get("RELAY_TEST_DATABASE_URL")
    if given:
        yield given
        return
    # Not under pytest's temp tree: that is private to root (postgres could not
    # reach it) and pruned by concurrent pytest runs.
    with tempfile.TemporaryDirectory(prefix="relay-test-pg-", dir=_memory_dir()) as scratch:
        with PostgresServer(Path(scratch) / "data", fast=True) as server:
            yield server.url


@pytest.fixture
def postgres_tmp_path() -> Iterator[Path]:
    """A temporary directory for a test's own PostgreSQL (or `relay dev`), outside
    pytest's temp tree: that tree is private to root, so relay lets postgres search
    it, and any pytest session starting on this machine makes its root private again,
    locking out a postgres about to start there (seen with two test runs at once)."""
    with tempfile.TemporaryDirectory(prefix="relay-test-") as scratch:
        yield Path(scratch)


# Free memory asked of /dev/shm: a worker's cluster peaks under 100 MB in a whole run
# (each test's database is dropped after it), and its WAL may grow to 1 GB (max_wal_size).
CLUSTER_ROOM = 1 << 30


def _memory_dir() -> str | None:
    """/dev/shm (RAM) when it has room for a cluster, else the usual temp directory.

    A database is created and dropped for every test (files made, copied and deleted,
    a checkpoint each time): on this machine's disk that took 2 to 15 times as long as
    in memory, the more the busier the disk (350 ms a test in a loaded `make test`).
    """
    try:
        shm = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if shm.f_bavail * shm.f_frsize >= CLUSTER_ROOM else None


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("RELAY_TEST_REDIS_URL")
    if given:
        yield _worker_database(given)
        return
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def _worker_database(url: str) -> str:
    """A given Redis, shared by the workers of `pytest -n`: each flushes a database of
    its own (the URL's, then the next ones), not the others'."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, … under pytest -n
    if not worker:
        return url
    parts = urlsplit(url)
    first = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{first + int(worker.removeprefix('gw'))}"))


@pytest.fixture(scope="session")
def template_database(postgres_url: str) -> Iterator[str]:
    """A database migrated once per session; each test copies it (fast)."""
    name = f"relay_template_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        await create_database(postgres_url, name)
        await migrate(with_database(postgres_url, name))

    asyncio.run(build())
    yield name
    asyncio.run(drop_database(postgres_url, name))


@pytest.fixture
async def database_url(postgres_url: str, template_database: str) -> AsyncIterator[str]:
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    await create_database(postgres_url, name, template=template_database)
    yield with_database(postgres_url, name)
    await drop_database(postgres_url, name)


@pytest.fixture
async def empty_database_url(postgres_url: str) -> AsyncIterator[str]:
    name = f"relay_empty_{uuid.uuid4().hex[:12]}"
    await create_database(postgres_url, name)
    yield with_database(postgres_url, name)
    await drop_database(postgres_url, name)


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    with redis_sync.Redis.from_url(redis_server_url) as connection:
        connection.flushdb()
    return redis_server_url


SIMULATOR_KEY = "sim-provider-key"


@dataclass
class Simulator:
    """relay's OpenAI-compatible simulator, served for real: the one party tests fake."""

    server: TestServer
    config: SimulatorConfig
    state: SimulatorState

    def upstream(self, **changes: Any) -> Upstream:
        fields: dict[str, Any] = {
            "name": "simulator",
            "base_url": str(self.server.make_url("/v1")),
            "api_key": SIMULATOR_KEY,
            # gpt-sim is renamed on the way (body rewritten); sim-large passes as sent.
            "models": {"gpt-sim": "sim-small", "sim-large": "sim-large"},
            "timeout_s": 5.0,
            "connect_timeout_s": 2.0,
        }
        return Upstream(**{**fields, **changes})


@pytest.fixture
async def simulator(aiohttp_server: Callable[..., Any]) -> Simulator:
    config = SimulatorConfig(api_key=SIMULATOR_KEY)
    app = create_simulator_app(config)
    server = await aiohttp_server(app)
    return Simulator(server, config, app[SIMULATOR_STATE])


ChatHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ProviderUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
def provider_upstream(aiohttp_server: Callable[..., Any], simulator: Simulator) -> ProviderUpstream:
    """`await provider_upstream(handler, name, **upstream_fields)`: an upstream whose chat
    completions `handler` answers, for a provider behaving as no simulator setting
    makes it (stalling, breaking its protocol)."""

    async def start(handler: ChatHandler, name: str, **changes: Any) -> Upstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        server = await aiohttp_server(app)
        return simulator.upstream(name=name, base_url=str(server.make_url("/v1")), **changes)

    return start


@pytest.fixture
def make_settings(
    database_url: str, redis_url: str, tmp_path: Path, simulator: Simulator
) -> Callable[..., Settings]:
    def make(**changes: Any) -> Settings:
        base = Settings(
            env="development",
            database_url=database_url,
            redis_url=redis_url,
            jwt_secret=Secret(JWT_SECRET),
            admin_token=Secret(ADMIN_TOKEN),
            bcrypt_rounds=4,
            state_dir=str(tmp_path / "state"),
            log_level="DEBUG",
            upstreams=(simulator.upstream(),),
        )
        return base.replace(**changes)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class RelayTestServer(TestServer):
    """TestServer on relay's own runner, as `relay serve` runs it."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return RelayAppRunner(self.app, **kwargs)


@pytest.fixture
def make_client(
    database_url: str,
    aiohttp_client: Callable[..., Any],
) -> Callable[..., Any]:
    """Start a relay app for `settings` and return an HTTP test client for it.

    Asking for database_url first makes pytest close the apps before it drops
    their database, not the other way round.
    """

    async def make(settings: Settings, app: web.Application | None = None) -> TestClient:
        # As in production (relay.commands.serve): a client hanging up cancels its
        # handler (TestServer always does), and aiohttp's own access log, which
        # writes raw paths and query strings, is off. aiohttp_client would drop
        # these runner options, so the server is started here.
        server = RelayTestServer(app or create_app(settings))
        await server.start_server(access_log=None)
        return await aiohttp_client(server)

    return make


@pytest.fixture
async def http(make_client: Callable[..., Any], settings: Settings) -> TestClient:
    return await make_client(settings)
