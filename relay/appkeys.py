"""Typed keys for everything the application and its requests carry."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from relay.config import Settings
from relay.drain import InFlight
from relay.services.answers import AnswerHooks
from relay.services.attestation import Attestation
from relay.services.auth import Authenticator, Caller
from relay.services.client_cache import ClientCache
from relay.services.clients import ClientService
from relay.services.health import SharedProbes
from relay.services.history import HistoryService
from relay.services.rate_verdicts import Verdict
from relay.services.ratelimit import RateLimiter
from relay.services.receipts import ReceiptService
from relay.services.recorder import AnswerRecorder
from relay.stores.database import Database
from relay.stores.notifications import Notifications
from relay.upstreams.routing import ModelRouter

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
REDIS = web.AppKey("redis", Redis)
NOTIFICATIONS = web.AppKey("notifications", Notifications)
CLIENTS = web.AppKey("clients", ClientService)
CLIENT_CACHE = web.AppKey("client_cache", ClientCache)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
ROUTER = web.AppKey("router", ModelRouter)
UPSTREAM_SESSION = web.AppKey("upstream_session", aiohttp.ClientSession)
ANSWER_HOOKS = web.AppKey("answer_hooks", AnswerHooks)
ATTESTATION = web.AppKey("attestation", Attestation)
RECEIPTS = web.AppKey("receipts", ReceiptService)
ANSWER_RECORDER = web.AppKey("answer_recorder", AnswerRecorder)
HISTORY = web.AppKey("history", HistoryService)
HEALTH_PROBES = web.AppKey("health_probes", SharedProbes)

REQUEST_ID = web.RequestKey("request_id", str)
CALLER = web.RequestKey("caller", Caller)
STARTED_AT = web.RequestKey("started_at", float)
FIRST_BYTE_AT = web.RequestKey("first_byte_at", float)
# The response whose head went out, once one did (for a request whose client leaves).
PREPARED = web.RequestKey("prepared", web.StreamResponse)
# What the rate limiter said, for the x-ratelimit-* headers of any response.
RATE_LIMIT = web.RequestKey("rate_limit", Verdict)
