"""`create_app(settings)`: wires middlewares, routes and resource lifecycles; nothing more."""

from __future__ import annotations

from aiohttp import web

from relay.api.access_control import setup_access_control
from relay.api.access_log import setup_access_log
from relay.api.cors import setup_cors
from relay.api.drain import setup_drain
from relay.api.error_mapping import setup_error_mapping
from relay.api.request_id import setup_request_id
from relay.api.routes import setup_routes
from relay.api.security_headers import setup_security_headers
from relay.appkeys import SETTINGS
from relay.config import Settings
from relay.lifecycle import auth_context, database_context, notifications_context, redis_context


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    # Counted from the first middleware on, so a graceful stop waits for all of it.
    setup_drain(app)
    # Outermost first: the request id and access log see every answer, errors included.
    setup_request_id(app)
    setup_access_log(app)
    setup_error_mapping(app)
    setup_security_headers(app)
    # Before access control: a preflight carries no credentials.
    setup_cors(app)
    setup_access_control(app)
    setup_routes(app)
    app.cleanup_ctx.extend([database_context, redis_context, notifications_context, auth_context])
    return app
