"""`create_app(settings)`: wires middlewares, routes and resource lifecycles; nothing more."""

from __future__ import annotations

from aiohttp import web

from relay.api.access_control import setup_access_control
from relay.api.access_log import setup_access_log
from relay.api.cors import setup_cors
from relay.api.drain import setup_drain
from relay.api.error_mapping import setup_error_mapping
from relay.api.expect import setup_expect
from relay.api.health import setup_health
from relay.api.rate_limit import setup_rate_limit
from relay.api.request_id import setup_request_id
from relay.api.routes import setup_routes
from relay.api.security_headers import setup_security_headers
from relay.appkeys import ANSWER_HOOKS, ANSWER_RECORDER, SETTINGS
from relay.config import Settings
from relay.lifecycle import (
    auth_context,
    database_context,
    history_context,
    notifications_context,
    rate_limit_context,
    redis_context,
    start_up_notes_context,
    upstreams_context,
)
from relay.proofs_lifecycle import attestation_context, receipts_context
from relay.services.answer_metrics import count_answer
from relay.services.answers import AnswerHooks
from relay.services.recorder import AnswerRecorder


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
    setup_expect(app)
    setup_access_control(app)
    # After access control: a client's limits need the caller it identified.
    setup_rate_limit(app)
    setup_routes(app)
    setup_health(app)
    recorder = AnswerRecorder()
    app[ANSWER_RECORDER] = recorder
    app[ANSWER_HOOKS] = AnswerHooks(commit=[recorder.record], after=[count_answer])
    app.cleanup_ctx.extend(
        [
            # First: what the settings mean, before any resource logs its own warnings.
            start_up_notes_context,
            # Then: an unreachable dstack agent stops start-up before anything else opens.
            attestation_context,
            database_context,
            redis_context,
            notifications_context,
            auth_context,
            upstreams_context,
            rate_limit_context,  # after redis_context: it uses the client
            receipts_context,  # after database_context
            # Last, so it is cleaned up first: queued answers commit while the pool is open.
            history_context,
        ]
    )
    return app
