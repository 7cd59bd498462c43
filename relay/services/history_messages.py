"""A stored history message as relay serves it: in the shape of OpenAI's messages."""

from __future__ import annotations

from typing import Any


def served_content(row: dict[str, Any]) -> str | None:
    """A stored message's content as OpenAI gives it: null for an answer of tool calls
    and no text (stored as "", the column's default) and for a refusal and no text
    (its words stored as its content too, relay.services.turns), "" for one with
    neither. A refusal stored by a relay from before sql/011 has no `refusal`, only
    its words as content: it reads as text, as it did."""
    if row["role"] != "assistant":
        return row["content"]
    if row["refusal"] is not None and row["content"] == row["refusal"]:
        return None
    if row["tool_calls"] and not row["content"]:
        return None
    return row["content"]


def public_message(row: dict[str, Any]) -> dict[str, Any]:
    usage = None
    if row["prompt_tokens"] is not None or row["completion_tokens"] is not None:
        usage = {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
        }
    return {
        "id": row["id"],
        "conversation_id": row["conversation_id"],
        "role": row["role"],
        "name": row["name"],
        "content": served_content(row),
        "refusal": row["refusal"],
        "tool_calls": row["tool_calls"],
        "tool_call_id": row["tool_call_id"],
        "choice": row["choice"],
        "model": row["model"],
        "status": row["status"],
        "finish_reason": row["finish_reason"],
        "usage": usage,
        "latency_ms": row["latency_ms"],
        "request_id": row["request_id"],
        "created_at": row["created_at"],
    }
