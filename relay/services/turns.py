"""What of one answer goes into history: the new turn of the request and the assistant's reply."""

from __future__ import annotations

from typing import Any

from relay.errors import NOT_RETRIED, InvalidRequestError
from relay.services.answers import Answer
from relay.stores.history import NewMessage
from relay.upstreams.completion import ChoiceReply, CompletionSummary
from relay.upstreams.provider_json import usage_count

TITLE_CHARS = 120
# The most history rows one request's new turn may add. Each row costs the group
# commit its insert and its search index: a turn of a hundred thousand tiny messages
# held a batch past its timeout, failing every other client's answers in it.
MAX_TURN_MESSAGES = 1000
_ROLE_CHARS = 32
_NAME_CHARS = 256  # OpenAI allows 64; a longer one another provider took is kept up to this
# Providers' finish reasons are short words ("content_filter", Gemini's
# "MALFORMED_FUNCTION_CALL"); a longer one is kept up to this, as a role or a name is.
FINISH_REASON_CHARS = 64
_INT4_MAX = 2**31 - 1


def clean_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL; one such character must not fail a whole batch."""
    return text.replace("\x00", "") if "\x00" in text else text


def clean_json(value: Any) -> Any:
    """`value` with NUL taken out of every string in it (jsonb refuses \\u0000 too)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(key)): clean_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clean_json(item) for item in value]
    return value


def content_text(content: Any) -> str:
    """A message's text: a string as is, OpenAI content parts joined by their text parts."""
    if isinstance(content, str):
        return clean_text(content)
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") in ("text", "input_text")
            and isinstance(part.get("text"), str)
        ]
        return clean_text("\n".join(texts))
    return ""


def new_turn(messages: Any) -> list[dict[str, Any]]:
    """The request's messages after its last assistant message: what this request added.

    An assistant message that ends the request is a prefill (the start the answer is
    to continue), not an earlier answer: the turn is what came after the one before
    it, the prefill left out (the stored answer is what the provider sent)."""
    if not isinstance(messages, list):
        return []
    dicts = [message for message in messages if isinstance(message, dict)]
    if dicts and dicts[-1].get("role") == "assistant":
        dicts.pop()
    start = 0
    for index, message in enumerate(dicts):
        if message.get("role") == "assistant":
            start = index + 1
    return dicts[start:]


def finish_reason_kept(reason: str | None) -> str | None:
    """An answer's finish_reason (only a string that says something is taken in:
    CompletionAccumulator) as history keeps it: NUL taken out, cut to FINISH_REASON_CHARS."""
    return clean_text(reason)[:FINISH_REASON_CHARS] or None if reason else None


def _count(usage: dict[str, Any] | None, key: str) -> int | None:
    """A token count the integer column can hold; anything else from a provider is dropped."""
    value = usage_count(usage, key)
    return value if value is not None and value <= _INT4_MAX else None


def turn_messages(answer: Answer) -> list[NewMessage]:
    """The rows one answer adds to history, in order: the new turn, then the replies
    (one per choice, when several were asked for)."""
    rows = []
    for index, message in enumerate(answer_turn(answer)):
        role = message.get("role")
        tool_call_id = message.get("tool_call_id")
        name = message.get("name")
        rows.append(
            NewMessage(
                role=clean_text(role)[:_ROLE_CHARS] if isinstance(role, str) else "user",
                name=clean_text(name)[:_NAME_CHARS] if isinstance(name, str) and name else None,
                content=content_text(message.get("content")),
                tool_call_id=clean_text(tool_call_id) if isinstance(tool_call_id, str) else None,
                # Stamped with the answer when its time is taken early (/v1/chat names
                # it in the answer), else both get the commit's: never the answer first.
                created_at=answer.message_created_at,
                id=answer.turn_ids[index] if index < len(answer.turn_ids) else None,
            )
        )
    summary = answer.summary
    # With several answers asked for (`n`), the usage, the whole response's, goes with
    # the first, the one a conversation goes on from.
    rows.append(
        _reply_row(
            answer,
            summary,
            0 if summary.more_choices else None,
            usage=summary.usage,
            row_id=answer.message_id,
        )
    )
    rows.extend(_reply_row(answer, choice, choice.index) for choice in summary.more_choices)
    return rows


def _reply_row(
    answer: Answer,
    said: CompletionSummary | ChoiceReply,
    choice: int | None,
    *,
    usage: dict[str, Any] | None = None,
    row_id: int | None = None,
) -> NewMessage:
    """One of the answer's replies as its row. A refusal's words are its content, as
    they were before it was kept apart too (`refusal`): search and /v1/chat's context
    read them there, and so do instances of the version before (sql/011)."""
    return NewMessage(
        role="assistant",
        content=clean_text(said.reply),
        refusal=clean_text(said.refusal) or None,
        finish_reason=finish_reason_kept(said.finish_reason),
        status=answer.status,
        tool_calls=clean_json(said.tool_calls) or None,
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        latency_ms=answer.latency_ms,
        id=row_id,
        created_at=answer.message_created_at,
        choice=choice,
    )


def title_of(messages: list[NewMessage]) -> str:
    """A new conversation's title: its first user message, shortened."""
    for message in messages:
        if message.role == "user" and message.content.strip():
            return title_from(message.content)
    return ""


def title_from(content: str) -> str:
    """A title made of a user message: its words on one line, shortened."""
    text = " ".join(content.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"


def answer_turn(answer: Answer) -> list[dict[str, Any]]:
    """What `answer`'s request adds to its conversation: its `turn`, taken when the
    request came in, else the request's messages after its last assistant message."""
    return answer.turn if answer.turn is not None else new_turn(answer.request.get("messages"))


def rows_written(answer: Answer) -> int:
    """The rows recording `answer` writes: its receipt, and its turn and replies if kept."""
    if not answer.store:
        return 1
    return len(answer_turn(answer)) + 2 + len(answer.summary.more_choices)


# About what one receipt row adds to a batch's statements.
RECEIPT_BYTES = 1024


def bytes_written(answer: Answer) -> int:
    """About the bytes of statements recording `answer` sends, at most: its request as
    received and its answer as sent if kept (the turn is part of the one, the reply of
    the other), and its receipt."""
    kept = len(answer.request_body) + answer.response_bytes if answer.store else 0
    return kept + RECEIPT_BYTES


def check_turn_size(turn: list[dict[str, Any]]) -> None:
    """Refuse (400) a request whose `turn` would add more than MAX_TURN_MESSAGES rows."""
    added = len(turn)
    if added > MAX_TURN_MESSAGES:
        raise InvalidRequestError(
            f"relay keeps at most {MAX_TURN_MESSAGES} new messages of one request in history"
            f" (those after its last assistant message); this one has {added}. Send them in"
            ' parts, or with "store": false.',
            param="messages",
            code="too_many_messages",
            headers=dict(NOT_RETRIED),
        )
