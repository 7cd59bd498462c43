"""The `Relay-Conversation-Id` header: which conversation a chat completion continues."""

from __future__ import annotations

from aiohttp import web

from relay.appkeys import HISTORY
from relay.errors import InvalidRequestError
from relay.services.answers import Answer
from relay.services.conversation_ids import canonical_conversation_id

CONVERSATION_HEADER = "Relay-Conversation-Id"


def named_conversation(request: web.Request) -> str:
    """The conversation the request's header names ("" when none). Given twice with
    different values it is refused: taking either would file the answer in a
    conversation the client may not have meant (a proxy that appends the header).
    Given empty it is refused too: a client that sends it meant to continue a
    conversation (an unset variable in a template, say), and a new one would split it."""
    values = [value.strip() for value in request.headers.getall(CONVERSATION_HEADER, ())]
    # Two spellings of one id (its letters' case, braces) name one conversation.
    if len(values) > 1 and len({canonical_conversation_id(v) or v for v in values}) > 1:
        raise InvalidRequestError(
            f"{CONVERSATION_HEADER} was given {len(values)} different values; give it once.",
            param=CONVERSATION_HEADER,
        )
    if values and not values[0]:
        raise InvalidRequestError(
            f"{CONVERSATION_HEADER} is empty; leave it out to start a new conversation.",
            param=CONVERSATION_HEADER,
        )
    return values[0] if values else ""


async def bind_conversation(request: web.Request, answer: Answer) -> None:
    """Continue the named conversation (404 unless it is the caller's) or start one.

    Checked before anything is forwarded; a new conversation (every answer that
    is stored has one) gets its row with its first answer, so a request that
    stores nothing creates nothing.
    """
    if given := named_conversation(request):
        history = request.app[HISTORY]
        answer.conversation_id = await history.require_conversation(answer.client.id, given)
        answer.continues_conversation = True
    if answer.conversation_id is not None:
        answer.headers[CONVERSATION_HEADER] = answer.conversation_id
