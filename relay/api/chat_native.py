"""POST /v1/chat: relay keeps the conversation; the client sends only its new message."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from aiohttp import web

from relay.api.answer_timing import elapsed_ms, note_stream_end
from relay.api.chat_events import HashedEventSource, delta_data, error_data, event_bytes
from relay.api.chat_native_request import new_native_answer
from relay.api.drain import answered_before_restart, key_holder
from relay.api.stream_start import began
from relay.appkeys import (
    ANSWER_HOOKS,
    HISTORY,
    IN_FLIGHT,
    SETTINGS,
    UPSTREAM_SESSION,
)
from relay.errors import (
    DependencyUnavailableError,
    RelayError,
    RestartingError,
    UpstreamError,
    error_json,
)
from relay.services.answers import Answer, AnswerHooks
from relay.services.native_chat import (
    answer_object,
)
from relay.services.recorder import not_saved
from relay.upstreams.deltas import DeltaObserver
from relay.upstreams.forwarder import open_provider_response
from relay.upstreams.provider_errors import provider_failure
from relay.upstreams.reply import ProviderReply, oversize_error, provider_stalled


async def create_chat(request: web.Request) -> web.StreamResponse:
    answer = await new_native_answer(request)
    hooks = request.app[ANSWER_HOOKS]
    opened = False
    try:
        with answered_before_restart(request, answer):
            async with open_provider_response(
                request.app[UPSTREAM_SESSION],
                answer.route,
                answer.forwarded_body,
                stream=True,
                longest=request.app[SETTINGS].max_answer_seconds,
            ) as provider:
                opened = True
                if answer.stream:
                    return await _stream(request, answer, provider, hooks)
                return await _whole(request, answer, provider, hooks)
    except RelayError as error:
        # The provider refused or was unreachable (nothing was read), or relay gave up
        # waiting for the answer as it stopped: the client gets this error, kept as failed.
        if not opened or isinstance(error, RestartingError):
            answer.status = "failed"
            _finish(request, answer, error_json(error))
            await hooks.commit_quietly(answer)
        answer.label(error)
        raise
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client's connection closes.
        hooks.client_left(answer, elapsed_ms(request))
        raise
    finally:
        hooks.run_after(answer)


async def _read(provider: ProviderReply, observer: DeltaObserver) -> str:
    """Feed the provider's stream to `observer` up to its `[DONE]`; complete, failed or
    cut. A provider that stops sending is, for a client still waiting for its first
    byte, a timeout (504), as on /v1/chat/completions: TimeoutError is raised."""
    try:
        while observer.reading and (chunk := await provider.chunk()):
            observer.feed(chunk)
            provider.follow(observer)
    except aiohttp.ClientError:
        return "cut"
    return _outcome(observer, provider)


def _outcome(observer: DeltaObserver, provider: ProviderReply) -> str:
    # The provider's body has ended cleanly, or relay stopped reading it ([DONE], too much).
    observer.close(body_ended=True)
    if observer.overflowed:
        provider.close()  # not worth reading on
    return observer.outcome


async def _whole(
    request: web.Request, answer: Answer, provider: ProviderReply, hooks: AnswerHooks
) -> web.Response:
    observer = DeltaObserver()
    try:
        answer.status = await _read(provider, observer)
        stalled = False
    except TimeoutError:
        answer.status, stalled = "failed", True
    finally:
        # Also for a client that left meanwhile: what the provider said so far
        # (an error event, say) tells how the answer ended (Answer.client_left).
        note_stream_end(request, answer, observer)
    if answer.status != "complete":
        error = (
            provider_stalled()
            if stalled
            else _why_incomplete(answer, observer, provider, stopped=None)
        )
        _finish(request, answer, error_json(error))
        await hooks.commit_quietly(answer)
        raise error
    try:
        # The body names the message row, so its id is taken first; then the
        # body is known, hashed for the receipt, committed, and only then sent.
        await _reserve_message(request, answer)
        body = orjson.dumps(answer_object(answer))
        _finish(request, answer, body)
        await hooks.run_commit(answer)
    except RelayError as refused:
        answer.status = "failed"
        _finish(request, answer, error_json(refused))
        await hooks.commit_quietly(answer)  # its receipt, where one can still be kept
        raise
    return web.Response(body=body, content_type="application/json", headers=answer.headers)


async def _stream(
    request: web.Request, answer: Answer, provider: ProviderReply, hooks: AnswerHooks
) -> web.StreamResponse:
    # Answered once the provider's headers came, before its first bytes (unlike
    # /v1/chat/completions): the event source's pings then keep proxies from closing a quiet
    # connection while a slow model thinks; a provider silent from the start ends the
    # stream with an error event, as one silent later does.
    response = HashedEventSource(headers=answer.headers)
    if not await began(response, request):
        hooks.client_left(answer, elapsed_ms(request))
        return response
    observer = DeltaObserver()
    # Past the drain timeout of a graceful stop, or once its client is revoked, relay
    # stops reading the provider.
    with request.app[IN_FLIGHT].track(provider.close, key_holder(request)) as stop:
        try:
            status = await _relay_deltas(response, provider, observer)
        finally:
            note_stream_end(request, answer, observer)
            # What the client has so far: all it gets if it has left (the handler
            # may be cancelled while waiting for the provider).
            answer.received(response)
    if status == "cancelled":
        answer.client_left()  # failed still, if its provider failed it first
        await hooks.commit_quietly(answer)
        return response
    answer.status = status
    response.stop_streaming()  # no ping may slip in between the hash and the last event
    if answer.status == "complete":
        try:
            await _reserve_message(request, answer)
        except RelayError as unsaved:  # as a commit that failed: the client is told so
            final = await hooks.end_stream_instead(answer, response, _error_event(unsaved))
        else:
            final = event_bytes("message.done", answer_object(answer))
            final = await hooks.commit_stream_end(answer, response, final, _error_event)
    else:
        why = _why_incomplete(answer, observer, provider, stopped=stop.error)
        final = _error_event(why)
        answer.received(response, final)
        await hooks.commit_quietly(answer)  # the client is told it did not complete
    await response.end(final)
    return response


def _error_event(error: RelayError) -> bytes:
    return event_bytes("error", error_data(error))


async def _relay_deltas(
    response: HashedEventSource, provider: ProviderReply, observer: DeltaObserver
) -> str:
    """Pass each text delta on as a `message.delta` event; complete, failed, cut or cancelled."""
    try:
        while observer.reading and (chunk := await provider.chunk()):
            observer.feed(chunk)
            provider.follow(observer)
            if not await _pass_deltas(response, observer):
                provider.close()
                return "cancelled"
        status = _outcome(observer, provider)
        # A last event the body's end ended (relay.upstreams.observer) may hold text too.
        if not await _pass_deltas(response, observer):
            return "cancelled"
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        provider.close()  # the client left: stop paying for tokens nobody reads
        return "cancelled"
    except (TimeoutError, aiohttp.ClientError):
        return "cut"
    return status


async def _pass_deltas(response: HashedEventSource, observer: DeltaObserver) -> bool:
    """Send the text deltas the observer holds; False if the client took nothing for a
    while (it is gone)."""
    for text in observer.take():
        try:
            await response.send_event("message.delta", delta_data(text))
        except TimeoutError:
            return False
    return True


def _why_incomplete(
    answer: Answer,
    observer: DeltaObserver,
    provider: ProviderReply,
    *,
    stopped: RelayError | None,
) -> RelayError:
    """Why an answer did not complete, as its client is told: the provider's own error,
    relay stopping it (`stopped`: restarting, its client revoked), the provider breaking
    off, or the answer running too long."""
    if answer.status == "failed":
        failure = provider_failure(observer.error, answer.route)
        return failure or UpstreamError("The provider failed.", code="upstream_error")
    if stopped is not None:
        return stopped
    if observer.overflowed:
        return oversize_error(observer.byte_count)
    return provider.cut_error()


async def _reserve_message(request: web.Request, answer: Answer) -> None:
    """Take the id and time of the answer's history row, which its final event names
    (and ids before it for its turn's rows). The rows are part of saving the answer:
    if the database cannot give them, the client is told so as for any answer that
    could not be saved."""
    turn = answer.turn or []
    try:
        ids, answer.message_created_at = await request.app[HISTORY].reserve_messages(len(turn) + 1)
    except DependencyUnavailableError as exc:
        unsaved = not_saved()
        request.app[ANSWER_HOOKS].not_committed(answer, unsaved)
        raise unsaved from exc
    *turn_ids, answer.message_id = ids
    answer.turn_ids = tuple(turn_ids)


def _finish(request: web.Request, answer: Answer, body: bytes) -> None:
    """Hash the whole body the client receives (a non-streamed answer or an error)."""
    answer.received_body(body)
    answer.latency_ms = elapsed_ms(request)
