"""POST /v1/chat's request: checked, its conversation and model found, its context
loaded, and the provider's request built (relay.api.chat_native relays the answer)."""

from __future__ import annotations

import dataclasses

import orjson
from aiohttp import web

from relay.api.body import json_text, parse_json_object, read_json_body
from relay.api.conversation_header import CONVERSATION_HEADER, named_conversation
from relay.api.rate_limit import reservation_of, reserve_body
from relay.appkeys import CALLER, HISTORY, REQUEST_ID, ROUTER, SETTINGS
from relay.errors import InvalidRequestError, PermissionDeniedError
from relay.services.answers import Answer
from relay.services.chat import quoted_keys, refuse_duplicate_keys
from relay.services.conversation_ids import conversation_id_or_404
from relay.services.native_chat import (
    NATIVE_FIELDS,
    NativeChat,
    chat_messages,
    check_native_chat,
    new_messages,
    provider_request,
)
from relay.services.receipts import RECEIPT_HEADER

ENDPOINT = "/v1/chat"


async def new_native_answer(request: web.Request) -> Answer:
    """Check the request, load the conversation's context, build the provider request."""
    caller, app = request[CALLER], request.app
    body = await read_json_body(request)
    reserve_body(request, body)
    data = parse_json_object(body)
    chat = check_native_chat(data)
    # A field named twice is refused, not read as its last value.
    refuse_duplicate_keys(json_text(body), quoted_keys(data, NATIVE_FIELDS))
    if not caller.client.store_history:
        raise PermissionDeniedError(
            "This client does not keep history, which /v1/chat needs;"
            " use /v1/chat/completions instead.",
            code="history_disabled",
        )
    router, settings = app[ROUTER], app[SETTINGS]
    chat = _named_conversation(request, chat)
    model = chat.model or router.default_model(settings.default_model, caller.client.scopes)
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
        store=True,
        conversation_id=conversation_id,
        continues_conversation=chat.conversation_id is not None,
        turn=new_messages(chat),
        reservation=reservation_of(request),
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
