"""The rules of POST /v1/chat: what a request says, and the OpenAI request relay builds from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.errors import InvalidRequestError
from relay.services.answers import Answer
from relay.services.chat import optional_flag
from relay.services.turns import finish_reason_kept

MAX_MESSAGE_CHARS = 1_000_000


@dataclass(frozen=True)
class NativeChat:
    message: str
    conversation_id: str | None
    model: str | None
    system: str | None
    stream: bool


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{name} must be a non-empty string.", param=name)
    return value


NATIVE_FIELDS = ("message", "conversation_id", "model", "system", "stream")


def _refuse_unknown_fields(data: dict[str, Any]) -> None:
    """A field /v1/chat does not take is refused, not ignored: this is relay's own API,
    and a client sending one (`temperature`, `store`) should learn at once that it does
    nothing here."""
    unknown = set(data) - set(NATIVE_FIELDS)
    if "store" in unknown:
        raise InvalidRequestError(
            "/v1/chat takes no store field: it always stores the conversation. To chat"
            ' without storing it, use /v1/chat/completions with "store": false.',
            param="store",
        )
    if unknown:
        field = min(unknown)
        raise InvalidRequestError(
            f"Unknown field {field!r}; /v1/chat takes {', '.join(NATIVE_FIELDS)}.", param=field
        )


def check_native_chat(data: dict[str, Any]) -> NativeChat:
    _refuse_unknown_fields(data)
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise InvalidRequestError("message is required and must be text.", param="message")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InvalidRequestError(
            f"message must be at most {MAX_MESSAGE_CHARS} characters.", param="message"
        )
    return NativeChat(
        message=message,
        conversation_id=_optional_text(data, "conversation_id"),
        model=_optional_text(data, "model"),
        system=_optional_text(data, "system"),
        stream=optional_flag(data, "stream", default=False),
    )


def chat_messages(
    system: str | None, context: list[dict[str, Any]], message: str
) -> list[dict[str, Any]]:
    """System first, then the stored context oldest first, then the new user message,
    whole: the context's size budget is for what is stored (relay.stores.conversations).

    Turns alternate, user first, as some providers' chat templates insist: a message
    followed by another of its role (a question whose answer failed, then its retry)
    gives way to the later one, and an answer the budget cut from its question goes.
    """
    turns: list[dict[str, Any]] = []
    for row in [*context, {"role": "user", "content": message}]:
        if turns and turns[-1]["role"] == row["role"]:
            turns.pop()
        if turns or row["role"] == "user":
            turns.append(row)  # as the context has it: with its name, if stored
    return [{"role": "system", "content": system}, *turns] if system else turns


def new_messages(chat: NativeChat) -> list[dict[str, Any]]:
    """What one request adds to history: its message, and a new conversation's system message
    (a system message sent to an existing conversation is for this request only)."""
    added = [{"role": "user", "content": chat.message}]
    if chat.system and chat.conversation_id is None:
        added.insert(0, {"role": "system", "content": chat.system})
    return added


def provider_request(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    # Always streamed from the provider: deltas can be passed on, and usage comes at the end.
    return {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def answer_object(answer: Answer) -> dict[str, Any]:
    """What /v1/chat answers (and its `message.done` event carries)."""
    return {
        "conversation_id": answer.conversation_id,
        "message": {
            "id": answer.message_id,
            "role": "assistant",
            "content": answer.summary.reply,
            "finish_reason": finish_reason_kept(answer.summary.finish_reason),
            "created_at": answer.message_created_at,
        },
        "usage": answer.summary.usage,
    }
