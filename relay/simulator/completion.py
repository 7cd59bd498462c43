"""The non-streamed `chat.completion` body."""

from __future__ import annotations

from typing import Any

import orjson

from relay.simulator.ids import SYSTEM_FINGERPRINT


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    contents: list[str],
    finish_reason: str,
    usage: dict[str, Any],
) -> bytes:
    """One choice per text in `contents` (`n`)."""
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            for index, content in enumerate(contents)
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    # OpenAI sends non-streamed bodies pretty-printed with two spaces, not compact.
    return orjson.dumps(body, option=orjson.OPT_INDENT_2)
