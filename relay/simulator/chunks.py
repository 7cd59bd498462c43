"""`chat.completion.chunk` SSE events, pre-encoded and assembled by concatenation.

Every event is byte-for-byte what `orjson.dumps` makes of the chunk object, framed
as `data: <json>\\n\\n`; only the per-stream head (id, created, model) is encoded
per request, and the per-token middles once at import.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay.simulator.ids import SYSTEM_FINGERPRINT
from relay.simulator.tokens import FIRST_WORD, WORDS

DONE = b"data: [DONE]\n\n"


def _token_choice(word: str) -> bytes:
    return (
        b'{"index":0,"delta":{"content":'
        + orjson.dumps(word)
        + b'},"logprobs":null,"finish_reason":null}'
    )


_ROLE_CHOICE = (
    b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
    b'"logprobs":null,"finish_reason":null}'
)
_FIRST_CHOICE = _token_choice(FIRST_WORD)
_CHOICES = tuple(_token_choice(word) for word in WORDS)


class ChunkEncoder:
    """The events of one stream, which share an id, a creation time and a model."""

    __slots__ = ("_head", "_tail")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            b'data: {"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,'
            b'"service_tier":"default","system_fingerprint":"%b","choices":['
            % (
                orjson.dumps(completion_id),
                created,
                orjson.dumps(model),
                SYSTEM_FINGERPRINT.encode(),
            )
        )
        # With include_usage OpenAI puts `"usage": null` on every chunk but the last.
        self._tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

    def role(self) -> bytes:
        return self._head + _ROLE_CHOICE + self._tail

    def token(self, index: int) -> bytes:
        choice = _FIRST_CHOICE if index == 0 else _CHOICES[index % len(_CHOICES)]
        return self._head + choice + self._tail

    def finish(self, reason: str) -> bytes:
        choice = b'{"index":0,"delta":{},"logprobs":null,"finish_reason":%b}' % orjson.dumps(reason)
        return self._head + choice + self._tail

    def usage(self, usage: dict[str, Any]) -> bytes:
        return self._head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"
