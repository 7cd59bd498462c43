"""When an answer ended, measured from when its request arrived (the access log's clock)."""

from __future__ import annotations

import time

from aiohttp import web

from relay.appkeys import STARTED_AT
from relay.services.answers import Answer
from relay.upstreams.observer import StreamObserver


def elapsed_ms(request: web.Request) -> float:
    return round((time.monotonic() - request[STARTED_AT]) * 1000, 2)


def note_stream_end(request: web.Request, answer: Answer, observer: StreamObserver) -> None:
    """The answer as the provider's stream told it: summary, latency, time to first token."""
    answer.summary = observer.summary()
    answer.latency_ms = elapsed_ms(request)
    if observer.first_content_at is not None:
        answer.first_token_ms = round((observer.first_content_at - request[STARTED_AT]) * 1000, 2)
