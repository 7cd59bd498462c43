"""POST /v1/chat: relay keeps the conversation; the client sends only its new message."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

import aiohttp
import orjson
from aiohttp import web

from relay.api.answer_timing import elapsed_ms, note_stream_end
from relay.api.body import parse_json_object, read_body
from relay.api.chat_events import HashedEventSource, delta_data, error_data, event_bytes
from relay.api.conversation_header import CONVERSATION_HEADER, named_conversation
from relay.api.drain import answered_before_restart
from relay.appkeys import (
    ANSWER_HOOKS,
    CALLER,
    HISTORY,
    IN_FLIGHT,
    REQUEST_ID,
    ROUTER,
    SETTINGS,
    UPSTREAM_SESSION,
)
from relay.errors import (
    DependencyUnavailableError,
    InvalidRequestError,
    PermissionDeniedError,
    RelayError,
    RestartingError,
    UpstreamError,
    error_json,
)
from relay.services.answers import Answer, AnswerHooks
from relay.services.history import conversation_id_or_404
from relay.services.native_chat import (
    NativeChat,
    answer_object,
    chat_messages,
    check_native_chat,
    new_messages,
    provider_request,
)
from relay.services.receipts import RECEIPT_HEADER
from relay.services.recorder import not_saved
from relay.upstreams.deltas import DeltaObserver
from relay.upstreams.forwarder import open_provider_response, provider_failure
from relay.upstreams.observer import oversize_error
from relay.upstreams.reply import ProviderReply, provider_stalled
from relay.upstreams.routing import ModelRouter, model_allowed

ENDPOINT = "/v1/chat"


async def create_chat(request: web.Request) -> web.StreamResponse:
    answer = await _new_answer(request)
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
            answer.status, answer.http_status = "failed", error.status
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


async def _new_answer(request: web.Request) -> Answer:
    """Check the request, load the conversation's context, build the provider request."""
    caller, app = request[CALLER], request.app
    body = await read_body(request)
    chat = check_native_chat(parse_json_object(body, request.content_type))
    if not caller.client.store_history:
        raise PermissionDeniedError(
            "This client does not keep history, which /v1/chat needs;"
            " use /v1/chat/completions instead.",
            code="history_disabled",
        )
    router, settings = app[ROUTER], app[SETTINGS]
    chat = _named_conversation(request, chat)
    model = chat.model or _default_model(router, settings.default_model, caller.client.scopes)
    route = router.resolve(model, caller.client.scopes)
    conversation_id, system, context = await app[HISTORY].context(
        caller.client.id, chat.conversation_id, settings.chat_context_chars, chat.system
    )
    sent = provider_request(route.model, chat_messages(system, context, chat.message))
    answer = Answer(
        request_id=request[REQUEST_ID],
        client=caller.client,
        endpoint=ENDPOINT,
        route=route,
        stream=chat.stream,
        request=sent,
        request_body=body,
        forwarded_body=orjson.dumps({**sent, "model": route.provider_model}),
        started_at=time.time(),
        store=True,
        conversation_id=conversation_id,
        continues_conversation=chat.conversation_id is not None,
        turn=new_messages(chat),
    )
    answer.headers[CONVERSATION_HEADER] = conversation_id
    if settings.receipts:
        answer.headers[RECEIPT_HEADER] = answer.receipt_id
    return answer


def _named_conversation(request: web.Request, chat: NativeChat) -> NativeChat:
    """The conversation is the body's `conversation_id` or the `Relay-Conversation-Id`
    header, as on /v1/chat/completions; both, naming different ones, are refused."""
    header = named_conversation(request)
    if not header:
        return chat
    if chat.conversation_id is None:
        return dataclasses.replace(chat, conversation_id=header)
    if conversation_id_or_404(header) != conversation_id_or_404(chat.conversation_id):
        raise InvalidRequestError(
            f"conversation_id and the {CONVERSATION_HEADER} header name different"
            " conversations; send one of them.",
            param="conversation_id",
        )
    return chat


def _default_model(router: ModelRouter, default: str, scopes: Sequence[str]) -> str:
    """The model of a request naming none: RELAY_DEFAULT_MODEL if this client may use it,
    else the first configured model it may use (else the default, refused as such)."""
    if default and model_allowed(scopes, default):
        return default
    allowed = router.allowed(scopes)
    if allowed:
        return allowed[0].model
    return default or next(iter(router.routes), "")


async def _read(provider: ProviderReply, observer: DeltaObserver) -> str:
    """Feed the provider's stream to `observer` up to its `[DONE]`; complete, failed or
    cut. A provider that stops sending is, for a client still waiting for its first
    byte, a timeout (504), as on /v1/chat/completions: TimeoutError is raised."""
    try:
        while observer.reading and (chunk := await provider.chunk()):
            observer.feed(chunk)
            if observer.finish_reason is not None:
                provider.finished()
    except aiohttp.ClientError:
        return "cut"
    return _outcome(observer, provider)


def _outcome(observer: DeltaObserver, provider: ProviderReply) -> str:
    # The provider's body has ended cleanly, or relay stopped reading it ([DONE], too much).
    observer.close(body_ended=True)
    if observer.overflowed:
        provider.close()  # not worth reading on
        return "cut"
    if observer.error is not None:
        return "failed"  # the provider said why, in an error event
    if observer.done or observer.finish_reason is not None:
        return "complete"
    return "cut"


async def _whole(
    request: web.Request, answer: Answer, provider: ProviderReply, hooks: AnswerHooks
) -> web.Response:
    observer = DeltaObserver()
    try:
        answer.status = await _read(provider, observer)
        stalled = False
    except TimeoutError:
        answer.status, stalled = "failed", True
    note_stream_end(request, answer, observer)
    if answer.status != "complete":
        error = (
            provider_stalled()
            if stalled
            else _broken_off(answer, observer, provider, shutting_down=False)
        )
        answer.http_status = error.status
        _finish(request, answer, error_json(error))
        await hooks.commit_quietly(answer)
        raise error
    # The body names the message row, so its id is taken first; then the
    # body is known, hashed for the receipt, committed, and only then sent.
    await _reserve_message(request, answer)
    body = orjson.dumps(answer_object(answer))
    _finish(request, answer, body)
    try:
        await hooks.run_commit(answer)
    except RelayError as refused:
        answer.status, answer.http_status = "failed", refused.status
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
    await response.prepare(request)
    observer = DeltaObserver()
    # Past the drain timeout of a graceful stop, relay stops reading the provider.
    with request.app[IN_FLIGHT].track(on_deadline=provider.close) as deadline:
        try:
            answer.status = await _relay_deltas(response, provider, observer)
        finally:
            note_stream_end(request, answer, observer)
            # What the client has so far: all it gets if it has left (the handler
            # may be cancelled while waiting for the provider).
            answer.received(response)
    if answer.status == "cancelled":
        await hooks.commit_quietly(answer)
        return response
    response.stop_streaming()  # no ping may slip in between the hash and the last event
    if answer.status == "complete":
        try:
            await _reserve_message(request, answer)
            final = event_bytes("message.done", answer_object(answer))
        except RelayError as unsaved:
            final = event_bytes("error", error_data(unsaved))  # nothing can be recorded
        else:
            answer.received(response, final)
            if (refused := await hooks.commit_end(answer)) is not None:
                # Never a silent loss: the client gets an error instead of message.done.
                final = event_bytes("error", error_data(refused))
                answer.status = "failed"
                answer.received(response, final)
                await hooks.commit_quietly(answer)  # its receipt, where one can still be kept
    else:
        why = _broken_off(answer, observer, provider, shutting_down=deadline.is_set())
        final = event_bytes("error", error_data(why))
        answer.received(response, final)
        await hooks.commit_quietly(answer)  # the client is told it did not complete
    await response.end(final)
    return response


async def _relay_deltas(
    response: HashedEventSource, provider: ProviderReply, observer: DeltaObserver
) -> str:
    """Pass each text delta on as a `message.delta` event; complete, failed, cut or cancelled."""
    try:
        while observer.reading and (chunk := await provider.chunk()):
            observer.feed(chunk)
            if observer.finish_reason is not None:
                provider.finished()
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


def _broken_off(
    answer: Answer, observer: DeltaObserver, provider: ProviderReply, *, shutting_down: bool
) -> RelayError:
    """Why an answer did not complete, as its client is told: the provider's own error,
    relay stopping, the provider breaking off, or the answer running too long."""
    if answer.status == "failed":
        failure = provider_failure(observer.error, answer.route)
        return failure or UpstreamError("The provider failed.", code="upstream_error")
    if shutting_down:
        return RestartingError()
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
        raise not_saved() from exc
    *turn_ids, answer.message_id = ids
    answer.turn_ids = tuple(turn_ids)


def _finish(request: web.Request, answer: Answer, body: bytes) -> None:
    """Hash the whole body the client receives (a non-streamed answer or an error)."""
    answer.received_body(body)
    answer.latency_ms = elapsed_ms(request)
