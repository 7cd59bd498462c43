"""Start-up and shutdown of each resource, a `cleanup_ctx` generator each; start-up notes first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from relay.appkeys import (
    ANSWER_HOOKS,
    ANSWER_RECORDER,
    AUTHENTICATOR,
    CLIENT_CACHE,
    CLIENTS,
    DATABASE,
    HISTORY,
    IN_FLIGHT,
    NOTIFICATIONS,
    RATE_LIMITER,
    REDIS,
    ROUTER,
    SETTINGS,
    UPSTREAM_SESSION,
)
from relay.config_notes import log_start_up
from relay.services.apikeys import BcryptPool, KeyHasher
from relay.services.auth import Authenticator
from relay.services.client_cache import ClientCache
from relay.services.clients import ClientService
from relay.services.history import HistoryService
from relay.services.history_part import HistoryPart
from relay.services.history_watch import HistoryWatch
from relay.services.ratelimit import RateLimiter
from relay.services.retention import HistoryRetention
from relay.services.tokens import TokenIssuer
from relay.stores.clients import ClientStore
from relay.stores.conversations import ConversationStore
from relay.stores.database import Database
from relay.stores.message_purge import MessagePurge
from relay.stores.messages import MessageStore
from relay.stores.migrations import prepare_schema
from relay.stores.notifications import Notifications
from relay.stores.redis_connection import open_redis
from relay.upstreams.forwarder import create_session
from relay.upstreams.routing import ModelRouter

log = logging.getLogger(__name__)


async def start_up_notes_context(app: web.Application) -> AsyncIterator[None]:
    """First of all contexts: what the settings mean (relay.config_notes), logged before
    any resource opens or says its own warnings."""
    log_start_up(app[SETTINGS])
    yield


async def database_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    applied = await prepare_schema(
        settings.database_url, apply=settings.run_migrations, timeout=settings.database_timeout
    )
    if settings.run_migrations:
        log.info("migrations checked", extra={"applied": len(applied)})
    database = await Database.open(
        settings.database_url, size=settings.database_pool_size, timeout=settings.database_timeout
    )
    app[DATABASE] = database
    yield
    await database.close()


async def redis_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = await open_redis(settings.redis_url, settings.redis_timeout)
    app[REDIS] = client
    yield
    await client.aclose()


async def rate_limit_context(app: web.Application) -> AsyncIterator[None]:
    limiter = RateLimiter.from_settings(app[SETTINGS], app[REDIS])
    app[RATE_LIMITER] = limiter
    limiter.charges.clients = app[CLIENT_CACHE]  # settlements charge by the limits in force then
    await limiter.start()  # loads the script; a missing Redis only degrades limiting
    # Each answer's real usage is charged to the tokens-per-minute bucket, settling what
    # its chat reserved there as it was admitted.
    app[ANSWER_HOOKS].after.append(
        lambda answer: limiter.charges.settle(answer.client, answer.tokens_used, answer.reservation)
    )
    yield
    await limiter.close()


async def notifications_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    notifications = Notifications(settings.database_url, timeout=settings.database_timeout)
    app[NOTIFICATIONS] = notifications
    app[CLIENT_CACHE] = ClientCache(
        ClientStore(app[DATABASE]), notifications, in_flight=app[IN_FLIGHT]
    )
    # Built here: its channel must be subscribed before the listener starts.
    app[HISTORY] = HistoryService(
        ConversationStore(app[DATABASE]), MessageStore(app[DATABASE]), HistoryWatch(notifications)
    )
    task = asyncio.create_task(notifications.run(), name="relay-notifications")
    # Until LISTEN is in place every lookup goes to the database, which is
    # correct but slower; waiting briefly means the cache works from the start.
    await notifications.wait_live(settings.database_timeout)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def history_context(app: web.Application) -> AsyncIterator[None]:
    """The group-commit writer, and the retention purge when RELAY_HISTORY_RETENTION_DAYS is set."""
    recorder = app[ANSWER_RECORDER]
    # After receipts_context's part: a pipelined batch's first statement moves the
    # receipt chain's head, waiting there for the batch before, holding nothing else.
    recorder.add_part(HistoryPart())
    await recorder.start(app[DATABASE])
    purge = None
    if (days := app[SETTINGS].history_retention_days) is not None:
        retention = HistoryRetention(MessagePurge(app[DATABASE]), days)
        purge = asyncio.create_task(retention.run(), name="relay-history-retention")
    yield
    if purge is not None:
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
    # Answers already queued are committed before the database pool closes.
    await recorder.close()


async def auth_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    loop = asyncio.get_running_loop()
    pool = BcryptPool.for_cores()  # no threads until its first check
    # Building the hasher computes a dummy bcrypt hash: keep it off the loop.
    hasher = await loop.run_in_executor(None, KeyHasher, settings.bcrypt_rounds, pool)
    clients = ClientService(
        ClientStore(app[DATABASE]), hasher, on_change=app[CLIENT_CACHE].invalidate
    )
    tokens = TokenIssuer.for_settings(settings)
    app[CLIENTS] = clients
    app[AUTHENTICATOR] = Authenticator(tokens, clients, app[CLIENT_CACHE])
    yield
    pool.shutdown()


async def upstreams_context(app: web.Application) -> AsyncIterator[None]:
    app[ROUTER] = ModelRouter(app[SETTINGS].upstreams)
    session = create_session()
    app[UPSTREAM_SESSION] = session
    yield
    await session.close()
