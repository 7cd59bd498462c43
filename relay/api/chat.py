"""POST /v1/chat/completions and GET /v1/models[/{model}]: OpenAI's API, relayed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from relay.api.answer_timing import elapsed_ms, note_stream_end
from relay.api.body import json_response, json_text, parse_json_object, read_json_body
from relay.api.conversation_header import bind_conversation
from relay.api.drain import answered_before_restart, key_holder
from relay.api.rate_limit import reservation_of, reserve_body
from relay.api.stream_start import began
from relay.appkeys import (
    ANSWER_HOOKS,
    CALLER,
    IN_FLIGHT,
    REQUEST_ID,
    ROUTER,
    SETTINGS,
    UPSTREAM_SESSION,
)
from relay.errors import (
    CUT_SHORT,
    RelayError,
    error_json,
)
from relay.services.answers import Answer, AnswerHooks
from relay.services.chat import check_chat_completion, forwarded_body
from relay.services.receipts import RECEIPT_HEADER
from relay.services.turns import check_turn_size, new_turn
from relay.upstreams.forwarder import open_provider_response
from relay.upstreams.observer import StreamObserver, summarize_completion
from relay.upstreams.pipe import SSE_HEADERS, end_stream, error_event, pipe_stream
from relay.upstreams.provider_json import json_media_type
from relay.upstreams.reply import ProviderReply
from relay.upstreams.rewording import reworded_body
from relay.upstreams.routing import ModelRouter, Route


async def list_models(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    routes = router.allowed(request[CALLER].client.scopes)
    return json_response({"object": "list", "data": [_model(route, router) for route in routes]})


async def get_model(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    route = router.visible(request.match_info["model"], request[CALLER].client.scopes)
    return json_response(_model(route, router))


def _model(route: Route, router: ModelRouter) -> dict[str, object]:
    """OpenAI's model object."""
    return {
        "id": route.model,
        "object": "model",
        "created": router.created,
        "owned_by": route.upstream.name,
    }


async def new_answer(request: web.Request, endpoint: str) -> Answer:
    """Read, check and route a chat completion request; nothing is sent yet."""
    caller = request[CALLER]
    body = await read_json_body(request)
    reserve_body(request, body)
    data = parse_json_object(body)
    chat = check_chat_completion(data)
    route = request.app[ROUTER].resolve(chat.model, caller.client.scopes)
    answer = Answer(
        request_id=request[REQUEST_ID],
        client=caller.client,
        endpoint=endpoint,
        route=route,
        stream=chat.stream,
        request=data,
        request_body=body,
        forwarded_body=forwarded_body(json_text(body), data, route),
        store=chat.store and caller.client.store_history,
        reservation=reservation_of(request),
    )
    if answer.store:
        # Taken once: checked here, counted and written by the group commit.
        answer.turn = new_turn(data.get("messages"))
        check_turn_size(answer.turn)
    await bind_conversation(request, answer)
    if request.app[SETTINGS].receipts:
        # Known before the provider is asked, so it is there from the first byte.
        answer.headers[RECEIPT_HEADER] = answer.receipt_id
    return answer


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    answer = await new_answer(request, "/v1/chat/completions")
    return await relay_answer(request, answer)


async def relay_answer(request: web.Request, answer: Answer) -> web.StreamResponse:
    """Forward the answer's request and relay the provider's reply to the client."""
    hooks = request.app[ANSWER_HOOKS]
    try:
        with answered_before_restart(request, answer):
            async with open_provider_response(
                request.app[UPSTREAM_SESSION],
                answer.route,
                answer.forwarded_body,
                stream=answer.stream,
                longest=request.app[SETTINGS].max_answer_seconds,
            ) as provider:
                if answer.stream:
                    return await _relay_stream(request, answer, provider, hooks)
                return await _relay_whole(request, answer, provider, hooks)
    except RelayError as error:
        answer.status = "cut" if isinstance(error, CUT_SHORT) else "failed"
        # The client receives the error body, so that is what the receipt hashes.
        answer.received_body(error_json(error))
        answer.label(error)
        answer.latency_ms = elapsed_ms(request)
        await hooks.commit_quietly(answer)
        raise
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client's connection closes.
        hooks.client_left(answer, elapsed_ms(request))
        raise
    finally:
        hooks.run_after(answer)


async def _relay_whole(
    request: web.Request, answer: Answer, provider: ProviderReply, hooks: AnswerHooks
) -> web.Response:
    body = await provider.whole()
    answer.summary = summarize_completion(body)
    if answer.summary.error is not None:
        # A JSON object carrying an error is passed on as sent (save what the provider's
        # message may not show the client), but is not an answer; anything else (an HTML
        # page, nothing, an event stream) no client could read as one: a 502.
        answer.status = "failed"
        body = reworded_body(body, answer.route)
    answer.received_body(body)
    answer.latency_ms = elapsed_ms(request)
    # Committed before the client gets a byte: an answer it saw is in history.
    await hooks.run_commit(answer)
    headers = {**answer.headers, "Content-Type": json_media_type(provider.headers)}
    return web.Response(body=body, headers=headers)


async def _relay_stream(
    request: web.Request, answer: Answer, provider: ProviderReply, hooks: AnswerHooks
) -> web.StreamResponse:
    # Answered only once the provider sent something: a silence or a hang-up before
    # that is a whole error (504, 502) rather than a 200 stream that breaks off.
    await provider.first()
    response = web.StreamResponse(headers={**SSE_HEADERS, **answer.headers})
    if not await began(response, request):
        hooks.client_left(answer, elapsed_ms(request))
        return response
    observer = StreamObserver.for_request(answer.request)
    # Past the drain timeout of a graceful stop, or once its client is revoked, relay
    # stops reading the provider.
    with request.app[IN_FLIGHT].track(provider.close, key_holder(request)) as stop:
        try:
            result = await pipe_stream(
                response, provider, observer, _abort_client(request), answer.route
            )
        finally:
            _summarise(request, answer, observer)
    if result.status == "cancelled":
        answer.client_left()  # failed still, if its provider failed it first
        await hooks.commit_quietly(answer)
        return response
    answer.status = result.status
    final = result.final
    if result.status == "cut":
        final = error_event(stop.error or result.error or provider.cut_error())
    final = await hooks.commit_stream_end(answer, observer, final, error_event)
    await end_stream(response, observer, final, _abort_client(request))
    return response


def _abort_client(request: web.Request) -> Callable[[], None]:
    """Drop the client's connection at once (it stopped taking bytes)."""

    def abort() -> None:
        if request.transport is not None:
            request.transport.abort()

    return abort


def _summarise(request: web.Request, answer: Answer, observer: StreamObserver) -> None:
    note_stream_end(request, answer, observer)
    answer.received(observer)
