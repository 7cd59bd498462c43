"""Typed keys for everything the application and its requests carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from relay.drain import InFlight

if TYPE_CHECKING:

    pass

SETTINGS = web.AppKey("settings", "Settings")
DATABASE = web.AppKey("database", "Database")
REDIS = web.AppKey("redis", "Redis")
NOTIFICATIONS = web.AppKey("notifications", "Notifications")
CLIENTS = web.AppKey("clients", "ClientService")
CLIENT_CACHE = web.AppKey("client_cache", "ClientCache")
AUTHENTICATOR = web.AppKey("authenticator", "Authenticator")
IN_FLIGHT = web.AppKey("in_flight", InFlight)

REQUEST_ID = web.RequestKey("request_id", str)
CALLER = web.RequestKey("caller", "Caller")
STARTED_AT = web.RequestKey("started_at", float)
FIRST_BYTE_AT = web.RequestKey("first_byte_at", float)
