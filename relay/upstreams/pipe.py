"""The streaming pipe: provider SSE bytes to the client as they arrive, observed, not re-encoded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from relay.errors import RelayError
from relay.metrics import UPSTREAM_ERRORS, labelled
from relay.upstreams.deadline import WaitDeadline
from relay.upstreams.observer import StreamObserver
from relay.upstreams.provider_json import lenient_json
from relay.upstreams.reply import ProviderReply, oversize_error, past_the_cap
from relay.upstreams.rewording import reworded_events
from relay.upstreams.routing import Route
from relay.upstreams.sse import (
    DONE_LINES,
    MAX_EVENT_BYTES,
    SSEDecoder,
    end_of_stream_at,
    last_event_end,
)

log = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}
# How long a client may take no bytes at all before relay gives up on it (the
# same as nginx's send_timeout): its stream and provider request are held meanwhile.
SEND_SECONDS = 60.0


def error_event(error: RelayError) -> bytes:
    """The final event of a stream that cannot end normally; OpenAI's SDK raises on it."""
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"


@dataclass
class PipeResult:
    """How the provider's stream went. `final` holds the bytes not yet sent:
    the `[DONE]` event of a complete stream, held back so that history and the
    receipt are committed before the client sees the end. `error` says why relay
    itself cut the stream (the provider sent more than it accepts), if it did."""

    # complete | cut | failed (the provider sent an error event) | cancelled (the client
    # left; relay.services.answers.Answer.client_left says how the answer ended)
    status: str
    observer: StreamObserver
    final: bytes = b""
    error: RelayError | None = None


async def pipe_stream(
    response: web.StreamResponse,
    provider: ProviderReply,
    observer: StreamObserver,
    abort_client: Callable[[], object],
    route: Route,
) -> PipeResult:
    """Copy the provider's event stream to `response` (already prepared) as it arrives.

    `observer` reads the provider's events and hashes exactly the bytes written, so
    the hash is of what the client received. Those are the provider's bytes, save an
    error event quoting what is not the client's (reworded_events, by the `route`).
    Reading stops at `data: [DONE]`: the answer is complete whether or not the
    provider has closed its body yet. A client that takes no bytes for
    SEND_SECONDS is cut off (`abort_client`), as if it had left.
    """
    pending = bytearray()  # an event not yet complete
    received = 0  # bytes read from the provider
    stalled = WaitDeadline(SEND_SECONDS, abort_client)
    try:
        while chunk := await provider.chunk():
            received += len(chunk)
            if pending:
                # Only the new bytes can end the event (with the last 3 old ones: an
                # end may straddle them), so a large event costs its size, not its square.
                start = max(0, len(pending) - 3)
                pending += chunk
                boundary = last_event_end(pending, start)
                whole = bytes(pending[:boundary])
                del pending[:boundary]
            elif chunk.endswith(b"\n\n"):  # the usual chunk: whole events, nothing after
                whole = chunk
            else:
                boundary = last_event_end(chunk)
                whole = chunk[:boundary]
                pending += chunk[boundary:]
            # (The search for the word first: a call for each chunk costs more than it.)
            if whole.find(b"[DONE]") >= 0 and (done_at := end_of_stream_at(whole)) >= 0:
                if (events := _observed(observer, whole[:done_at], route)) is None:
                    # An event too large: the answer, [DONE] read, is within the cap.
                    return _too_large(provider, observer, route, observer.byte_count)
                if events:
                    await _write(response, observer, stalled, events)
                # A provider may end with [DONE] after an error event (vLLM does): the
                # answer still failed, and the client has the error already.
                status = "complete" if observer.error is None else "failed"
                final = whole[done_at:]
                # The receipt hashes `final` before the observer reads it: an error event
                # sent after [DONE] in the same chunk is reworded here, not in _send.
                final = reworded_events(final, route)
                return PipeResult(status, observer, final)
            # This read holds no [DONE]: past the cap, none of it is passed on.
            if len(pending) > MAX_EVENT_BYTES or past_the_cap(received, ended=False):
                return _too_large(provider, observer, route, received)
            if (events := _observed(observer, whole, route)) is None:
                return _too_large(provider, observer, route, received)
            if events:
                # _write, inline: a coroutine fewer for every chunk.
                observer.count(events)
                stalled.begin()
                await response.write(events)  # waits only while the client's buffers are full
                stalled.end()
            if observer.all_finished:  # all that provider.follow looks at, till then
                provider.follow(observer)
        return await _body_ended(response, observer, stalled, bytes(pending), route)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        provider.close()  # the client left: stop paying for tokens nobody reads
        return PipeResult("cancelled", observer)
    except (TimeoutError, aiohttp.ClientError) as exc:
        if provider.stopped:  # relay's own doing: the drain's deadline, say
            log.info("stream stopped by relay", extra={"error": type(exc).__name__})
        else:
            upstream = route.upstream.name
            log.info(
                "provider broke off a stream",
                extra={"upstream": upstream, "error": type(exc).__name__},
            )
            kind = "stalled" if isinstance(exc, TimeoutError) else "cut"
            labelled(UPSTREAM_ERRORS, upstream, kind).inc()
        return PipeResult(_broken_off(observer), observer)
    finally:
        stalled.close()


async def _body_ended(
    response: web.StreamResponse,
    observer: StreamObserver,
    stalled: WaitDeadline,
    rest: bytes,
    route: Route,
) -> PipeResult:
    """The provider's body ended cleanly, with no `[DONE]` event, `rest` after its last
    whole event: a last event short of its blank line, or nothing.

    Ended without [DONE], the answer is complete if it said itself it was finished:
    every choice asked for has its finish_reason.
    """
    if not rest.strip():
        return PipeResult(_ended(observer, route), observer)
    # `data: [DONE]` short of its blank line: by the SSE rules that event never ended,
    # but the answer did. The client gets those bytes as sent.
    if rest.strip() in DONE_LINES:
        return PipeResult("complete", observer, rest)
    if not _whole_data(rest):
        labelled(UPSTREAM_ERRORS, route.upstream.name, "cut").inc()
        return PipeResult(_broken_off(observer), observer)  # it stopped within an event
    # A whole last event (a usage chunk, say): the body's end ends it. The observer reads
    # it so, and the client gets it with its blank line: SSE clients (OpenAI's SDKs too)
    # drop an event that never ended, its words, finish or error with it, and relay's
    # own error event (a cut, a failed commit) must not be glued to it.
    ended = rest + b"\n\n"
    seen = observer.error
    observer.read(ended)
    status = _ended(observer, route)
    if observer.error is not seen:
        ended = reworded_events(ended, route)
    await _write(response, observer, stalled, ended)
    return PipeResult(status, observer)


def _whole_data(event: bytes) -> bool:
    """Whether the data of `event` (its blank line still to come) is whole JSON; an event
    with no data (a comment) is whole too."""
    payloads: list[bytes] = []
    SSEDecoder(payloads.append).feed(event + b"\n\n")
    for payload in payloads:
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError:
            if lenient_json(payload) is None:  # as OpenAI's Python SDK reads it
                return False
    return True


def _too_large(
    provider: ProviderReply, observer: StreamObserver, route: Route, received: int
) -> PipeResult:
    """relay stops reading a provider that sent more than it accepts (`received` bytes so
    far): one event past MAX_EVENT_BYTES, or an answer past the cap (past_the_cap).
    The client is told so."""
    log.info("provider sent too much", extra={"upstream": route.upstream.name, "bytes": received})
    labelled(UPSTREAM_ERRORS, route.upstream.name, "too_large").inc()
    provider.close()
    return PipeResult("cut", observer, error=oversize_error(received))


def _observed(observer: StreamObserver, events: bytes, route: Route) -> bytes | None:
    """Whole `events`, read by the observer, as they are to be sent; None (nothing may be
    sent) if one of them is larger than the observer reads."""
    if events:
        seen = observer.error
        observer.read(events)
        if observer.overflowed:
            return None
        # Only when the observer met an error event are the events parsed again: every
        # other chunk goes out as the very bytes the provider sent.
        if observer.error is not seen:
            return reworded_events(events, route)
    return events


async def _write(
    response: web.StreamResponse, observer: StreamObserver, stalled: WaitDeadline, data: bytes
) -> None:
    observer.count(data)
    stalled.begin()
    await response.write(data)  # waits only while the client's buffers are full
    stalled.end()


def _ended(observer: StreamObserver, route: Route) -> str:
    """A stream that ended without [DONE]: complete if the answer said it was finished,
    in every choice (a choice still open was cut, if another one has ended). A usage
    chunk asked for and never sent is not missed: some providers never send it."""
    if (status := observer.outcome) == "cut":
        labelled(UPSTREAM_ERRORS, route.upstream.name, "cut").inc()
    return status


def _broken_off(observer: StreamObserver) -> str:
    """A stream that ends early: failed if the provider said why in an error event
    (the client has that event already), else cut."""
    return "failed" if observer.error is not None else "cut"


async def end_stream(
    response: web.StreamResponse,
    observer: StreamObserver,
    final: bytes,
    abort_client: Callable[[], object],
) -> bool:
    """Send the last bytes and close the stream; False if the client had already left.

    A client that takes nothing for SEND_SECONDS is cut off (`abort_client`) here
    too: the last write waits for the client's buffers like any other."""
    stalled = WaitDeadline(SEND_SECONDS, abort_client)
    stalled.begin()
    try:
        if final:
            observer.feed(final)
            await response.write(final)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        return False
    finally:
        stalled.close()
    if stalled.expired:
        return False
    observer.close()
    return True
