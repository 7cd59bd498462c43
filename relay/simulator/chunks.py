"""`chat.completion.chunk` SSE events, pre-encoded and assembled by concatenation.

Every event is byte-for-byte what `orjson.dumps` makes of the chunk object, framed
as `data: <json>\\n\\n`; only the per-stream head (id, created, model) is encoded
per request, and the per-token middles and the padded tails once at import.

As OpenAI's do, delta chunks end with an `obfuscation` field of random characters
(1 to 16 here) that blurs their sizes, a guard against reading tokens off the
lengths of encrypted records, unless `stream_options.include_obfuscation` is false.
The usage chunk carries none.
"""

from __future__ import annotations

import random
import string
from typing import Any

import orjson

from relay.simulator.ids import SYSTEM_FINGERPRINT
from relay.simulator.tokens import FIRST_WORD, WORDS, word_index

DONE = b"data: [DONE]\n\n"


_INDEX_0 = b'{"index":0,'


def _token_choice(word: str) -> bytes:
    return (
        _INDEX_0
        + b'"delta":{"content":'
        + orjson.dumps(word)
        + b'},"logprobs":null,"finish_reason":null}'
    )


def _numbered(choice_bytes: bytes, choice: int) -> bytes:
    """A choice pre-encoded as choice 0, renumbered (`n` > 1)."""
    return choice_bytes if choice == 0 else b'{"index":%d,' % choice + choice_bytes[len(_INDEX_0) :]


_ROLE_CHOICE = (
    b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
    b'"logprobs":null,"finish_reason":null}'
)
_FIRST_CHOICE = _token_choice(FIRST_WORD)
_CHOICES = tuple(_token_choice(word) for word in WORDS)

_PADDING = random.Random(0x5EED)
_PADS = tuple(
    "".join(_PADDING.choices(string.ascii_letters + string.digits, k=_PADDING.randint(1, 16)))
    for _ in range(256)
)


def _tails(usage: bytes) -> tuple[bytes, ...]:
    """What may close a delta chunk: `usage` (`,"usage":null` or nothing) after each pad."""
    return tuple(b'],"obfuscation":"%b"%b}\n\n' % (pad.encode(), usage) for pad in _PADS)


_TAILS = {
    # (include_usage, include_obfuscation) → the tails to pick from.
    (False, True): _tails(b""),
    (True, True): _tails(b',"usage":null'),
    (False, False): (b"]}\n\n",),
    (True, False): (b'],"usage":null}\n\n',),
}


class ChunkEncoder:
    """The events of one stream, which share an id, a creation time and a model."""

    __slots__ = ("_head", "_tails")

    def __init__(
        self,
        completion_id: str,
        created: int,
        model: str,
        *,
        include_usage: bool,
        include_obfuscation: bool = True,
    ) -> None:
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
        self._tails = _TAILS[include_usage, include_obfuscation]

    def _tail(self) -> bytes:
        tails = self._tails
        return tails[random.randrange(len(tails))] if len(tails) > 1 else tails[0]

    def role(self, choice: int = 0) -> bytes:
        return self._head + _numbered(_ROLE_CHOICE, choice) + self._tail()

    def token(self, index: int, choice: int = 0) -> bytes:
        encoded = _FIRST_CHOICE if index == 0 else _CHOICES[word_index(index, choice)]
        return self._head + _numbered(encoded, choice) + self._tail()

    def finish(self, reason: str, choice: int = 0) -> bytes:
        encoded = _INDEX_0 + b'"delta":{},"logprobs":null,"finish_reason":%b}' % orjson.dumps(
            reason
        )
        return self._head + _numbered(encoded, choice) + self._tail()

    def usage(self, usage: dict[str, Any]) -> bytes:
        return self._head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"
