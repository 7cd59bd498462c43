"""The OpenAPI description of history: cursor pages, search, conversations and /v1/chat."""

from __future__ import annotations

from typing import Any

from relay.api.spec.components import REQUEST_LIMIT_HEADERS, RESPONSES, ref
from relay.api.spec.native_chat import NATIVE_CHAT_PATHS, NATIVE_CHAT_SCHEMAS
from relay.api.spec.paths import AUTHENTICATED, JWT, answer, operation, path_parameter

CONVERSATION_ID = path_parameter("conversation_id")
CONVERSATION_FILTER = {
    "name": "conversation_id",
    "in": "query",
    "required": False,
    "description": "Only this conversation (404 unless it is yours).",
    "schema": {"type": "string"},
}
NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_INTEGER = {"type": ["integer", "null"]}


def _limit(default: int, maximum: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
    }


def _after(description: str) -> dict[str, Any]:
    return {
        "name": "after",
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def _page(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data", "next_cursor", "has_more"],
        "properties": {
            "data": {"type": "array", "items": item},
            "next_cursor": {"type": "string", "description": "Pass as `after` for what follows."},
            "has_more": {"type": "boolean"},
        },
    }


_MESSAGE_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "conversation_id": {"type": "string", "format": "uuid"},
    "role": {"type": "string"},
    "name": NULLABLE_STRING,
    "content": {
        "type": ["string", "null"],
        "description": "null for an assistant message of tool calls or a refusal and no"
        ' text, as OpenAI gives it; otherwise the text (an answer with neither: "").',
    },
    "refusal": {
        "type": ["string", "null"],
        "description": "An assistant message's refusal (the model declined, as with OpenAI's"
        " structured outputs), as OpenAI gives it; null when none, and for a refusal"
        " stored before relay kept them apart, which reads as content.",
    },
    "tool_calls": {"type": ["array", "null"], "items": {"type": "object"}},
    "tool_call_id": NULLABLE_STRING,
    "choice": NULLABLE_INTEGER,
    "model": NULLABLE_STRING,
    "status": {"type": "string", "enum": ["complete", "cut", "cancelled", "failed"]},
    "finish_reason": {
        "type": ["string", "null"],
        "maxLength": 64,
        "description": "Why the provider ended an assistant message, as it said (`stop`,"
        " `length`, `content_filter`, `tool_calls`, or its own word), streamed or not; null"
        " on other messages, when the provider never said (a cut stream), and for answers"
        " stored before relay kept it.",
    },
    "usage": {
        "type": ["object", "null"],
        "properties": {"prompt_tokens": NULLABLE_INTEGER, "completion_tokens": NULLABLE_INTEGER},
    },
    "latency_ms": {"type": ["number", "null"]},
    "request_id": NULLABLE_STRING,
    "created_at": {"type": "string", "format": "date-time"},
}

HISTORY_SCHEMAS: dict[str, Any] = {
    **NATIVE_CHAT_SCHEMAS,
    "HistoryMessage": {
        "type": "object",
        "required": list(_MESSAGE_PROPERTIES),
        "properties": _MESSAGE_PROPERTIES,
    },
    "HistoryPage": _page(ref("schemas", "HistoryMessage")),
    "SearchResults": {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "has_more": {
                "type": "boolean",
                "description": "More matches were found than returned (past limit or 8 MiB"
                " of content).",
            },
            "data": {
                "type": "array",
                "items": {
                    "allOf": [
                        ref("schemas", "HistoryMessage"),
                        {
                            "type": "object",
                            "required": ["rank", "snippet"],
                            "properties": {
                                "rank": {"type": "number"},
                                "snippet": {
                                    "type": "string",
                                    "description": (
                                        "HTML: text escaped, query words in <mark>…</mark>."
                                    ),
                                },
                            },
                        },
                    ]
                },
            },
        },
    },
    "Conversation": {
        "type": "object",
        "required": ["id", "title", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "title": {"type": "string", "description": "The first user message, shortened."},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "ConversationList": _page(ref("schemas", "Conversation")),
    "ConversationWithMessages": {
        "allOf": [
            ref("schemas", "Conversation"),
            {
                "type": "object",
                "required": ["messages", "has_more"],
                "properties": {
                    "messages": {
                        "type": "array",
                        "description": (
                            "Oldest first; at most the latest 1000 and 8 MiB of content (the"
                            " newest whatever its size)."
                        ),
                        "items": ref("schemas", "HistoryMessage"),
                    },
                    "has_more": {
                        "type": "boolean",
                        "description": (
                            "Older messages were left out: GET /v1/history with"
                            " conversation_id pages through all of them."
                        ),
                    },
                },
            },
        ]
    },
}


def _refusal(name: str, description: str) -> dict[str, Any]:
    return {**RESPONSES[name], "description": description}


_SEARCH_REFUSALS = {
    "422": _refusal(
        "Unprocessable",
        "`search_too_costly`: the database stopped the search for the time it took."
        " Narrow `q` (fewer or rarer words) or pass `conversation_id`; the same search"
        " would cost the same again (`x-should-retry: false`).",
    ),
    "429": _refusal(
        "TooManyRequests",
        "A rate limit refused the request, or `too_many_searches`: you already run as"
        " many searches at once as one client may on this instance (a quarter of"
        " RELAY_DATABASE_POOL_SIZE, halved). Retry after Retry-After.",
    ),
    "503": _refusal(
        "ServiceUnavailable",
        "`dependency_unavailable`: PostgreSQL is unavailable; or `searches_busy`: this"
        " instance runs as many searches at once as it lets hold database connections"
        " (a quarter of RELAY_DATABASE_POOL_SIZE). Retry after Retry-After.",
    ),
}

HISTORY_PATHS: dict[str, Any] = {
    **NATIVE_CHAT_PATHS,
    "/v1/history": {
        "get": operation(
            "list_history",
            "Your messages after a cursor, oldest first",
            tag="history",
            security=JWT,
            description=(
                "Follow `next_cursor` to see every stored message exactly once, in commit "
                "order. With `wait`, an empty page is held until a message of yours is "
                "committed or the seconds are up; an instance holds at most 32 of your "
                "polls at once (429 `too_many_polls` past them)."
            ),
            parameters=(
                _after("`next_cursor` of the previous page; none starts at the beginning."),
                _limit(100, 500),
                CONVERSATION_FILTER,
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "Long-poll seconds.",
                    "schema": {"type": "number", "minimum": 0, "maximum": 30, "default": 0},
                },
            ),
            responses={
                "200": answer(
                    "A page of messages.", ref("schemas", "HistoryPage"), REQUEST_LIMIT_HEADERS
                )
            },
            errors=(400, *AUTHENTICATED, 404),
        )
    },
    "/v1/history/search": {
        "get": operation(
            "search_history",
            "Full-text search over your messages",
            tag="history",
            security=JWT,
            description=(
                "`q` takes web-search syntax: quotes, `or`, `-word`; at most 32 words."
                " Only your newest 500 matches are ranked: by how often the query's words"
                " occur in them, best first."
            ),
            parameters=(
                {
                    "name": "q",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 1000},
                },
                _limit(20, 100),
                CONVERSATION_FILTER,
            ),
            responses={
                "200": answer(
                    "Best matches first.", ref("schemas", "SearchResults"), REQUEST_LIMIT_HEADERS
                ),
                **_SEARCH_REFUSALS,
            },
            errors=(400, 401, 404),
        )
    },
    "/v1/conversations": {
        "get": operation(
            "list_conversations",
            "Your conversations, newest first",
            tag="history",
            security=JWT,
            parameters=(_after("`next_cursor` of the previous page."), _limit(20, 100)),
            responses={
                "200": answer("A page of conversations.", ref("schemas", "ConversationList"))
            },
            errors=(400, *AUTHENTICATED),
        )
    },
    "/v1/conversations/{conversation_id}": {
        "get": operation(
            "get_conversation",
            "One conversation with its messages",
            tag="history",
            security=JWT,
            parameters=(CONVERSATION_ID,),
            responses={
                "200": answer("The conversation.", ref("schemas", "ConversationWithMessages"))
            },
            errors=(*AUTHENTICATED, 404),
        ),
        "delete": operation(
            "delete_conversation",
            "Erase a conversation and its messages",
            tag="history",
            security=JWT,
            description=(
                "The rows are deleted, not flagged. A new conversation is stored when its"
                " first answer ends: erased before (its id read from the"
                " Relay-Conversation-Id response header while that answer streams), the"
                " DELETE answers 404, as nothing is stored yet, and the answer is not"
                " saved (it ends with a conversation_deleted error, 409 for a whole answer; its"
                " receipt, of that error, is kept)."
            ),
            parameters=(CONVERSATION_ID,),
            responses={"204": {"description": "Erased."}},
            errors=(*AUTHENTICATED, 404),
        ),
    },
}
