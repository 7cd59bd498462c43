"""The OpenAPI description of POST /v1/chat, relay's own chat over stored conversations."""

from __future__ import annotations

from typing import Any

from relay.api.spec.components import CHAT_LIMIT_HEADERS, ref
from relay.api.spec.paths import AUTHENTICATED, JSON_BODY, JWT, operation

CONVERSATION_HEADER = {
    "Relay-Conversation-Id": {
        "description": "The conversation this answer was stored in.",
        "schema": {"type": "string", "format": "uuid"},
    }
}

CONVERSATION_PARAMETER = {
    "name": "Relay-Conversation-Id",
    "in": "header",
    "required": False,
    "description": (
        "Continue this conversation (yours), as `conversation_id` does; both, naming"
        " different conversations, are a 400, and so is an empty value."
    ),
    "schema": {"type": "string", "minLength": 1},
}

NATIVE_CHAT_SCHEMAS: dict[str, Any] = {}
NATIVE_CHAT_SCHEMAS["NativeChatRequest"] = {
    "type": "object",
    "required": ["message"],
    # Any other field is refused (400, `param` names it): /v1/chat takes no `store`,
    # `temperature` or the like, and says so rather than ignore it.
    "additionalProperties": False,
    "properties": {
        "message": {"type": "string", "minLength": 1},
        "conversation_id": {
            "type": ["string", "null"],
            "description": "Continue this conversation (yours); none starts a new one.",
        },
        "model": {
            "type": ["string", "null"],
            "description": (
                "Default: RELAY_DEFAULT_MODEL if this client may use it, else the first"
                " configured model it may use."
            ),
        },
        "system": {
            "type": ["string", "null"],
            "description": "Instead of the stored system message.",
        },
        "stream": {"type": ["boolean", "null"], "default": False},
    },
}
NATIVE_CHAT_SCHEMAS["NativeChatAnswer"] = {
    "type": "object",
    "required": ["conversation_id", "message", "usage"],
    "properties": {
        "conversation_id": {"type": "string", "format": "uuid"},
        "message": {
            "type": "object",
            "required": ["id", "role", "content", "created_at"],
            "properties": {
                "id": {"type": "integer"},
                "role": {"const": "assistant"},
                "content": {"type": "string"},
                "finish_reason": {
                    "type": ["string", "null"],
                    "description": "Why the provider ended the answer, as history keeps it"
                    " (`stop`, `length`: truncated, `content_filter`, …).",
                },
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
        "usage": {"type": ["object", "null"]},
    },
}

NATIVE_CHAT_PATHS: dict[str, Any] = {
    "/v1/chat": {
        "post": operation(
            "create_chat",
            "Chat in a conversation relay keeps",
            tag="history",
            security=JWT,
            body=ref("schemas", "NativeChatRequest"),
            parameters=(CONVERSATION_PARAMETER,),
            description=(
                "relay sends the provider the stored conversation (its latest messages within "
                "RELAY_CHAT_CONTEXT_CHARS) and your message, and stores both sides before "
                'answering. Streamed: `message.delta` events (`{"content", "obfuscation"}`: '
                "random characters that blur the event's size, as OpenAI pads its chunks), "
                "then `message.done` with the answer object once it is stored, or `error`."
            ),
            responses={
                "200": {
                    "description": "The stored answer, or its event stream.",
                    "headers": {
                        **CONVERSATION_HEADER,
                        "x-receipt-id": {
                            "description": "The signed receipt of this answer.",
                            "schema": {"type": "string"},
                        },
                        **CHAT_LIMIT_HEADERS,
                    },
                    "content": {
                        "application/json": {"schema": ref("schemas", "NativeChatAnswer")},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                }
            },
            errors=(*JSON_BODY, *AUTHENTICATED, 403, 404, 409, 502, 504),
        )
    },
}
