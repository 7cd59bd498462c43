"""The rules of a chat completion request: what relay checks and what it changes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from relay.errors import InvalidRequestError
from relay.json_pairs import refuse_repeated_fields
from relay.upstreams.routing import Route


@dataclass(frozen=True)
class ChatCompletionRequest:
    model: str
    stream: bool
    store: bool  # false when the request says "store": false


def check_chat_completion(data: dict[str, Any]) -> ChatCompletionRequest:
    """Only what relay must know; every other field goes to the provider untouched."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model is required and must be a string.", param="model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list.", param="messages")
    # OpenAI's null is "the default": not streamed, stored (relay's default).
    stream = optional_flag(data, "stream", default=False)
    return ChatCompletionRequest(model, stream, optional_flag(data, "store", default=True))


def optional_flag(data: dict[str, Any], name: str, *, default: bool) -> bool:
    """A field that may be true, false, null or absent (`default`); 400 otherwise. A
    "false" in quotes is refused, not read as true: `"store": "false"` would keep the
    content of a client that meant to opt out."""
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be true or false.", param=name)
    return value


# The fields of a chat completion relay reads itself (its observer reads `n`).
_READ = ("model", "messages", "store", "stream", "n")


def quoted_keys(data: dict[str, Any], names: tuple[str, ...] = _READ) -> tuple[bytes, ...]:
    """Those of `names` that `data` holds, as their keys show in its JSON: each is a
    scan of the body, so a field the body does not name is not looked for."""
    return tuple(f'"{name}"'.encode() for name in names if name in data)


def refuse_duplicate_keys(body: bytes, read: tuple[bytes, ...]) -> None:
    """400 if the body's top-level object names a key twice (looked for when one of the
    keys relay `read`s, quoted, shows twice, or any escape might hide one).

    relay reads the last `model` of `{"model": "a", "model": "b"}` (as orjson
    does) and forwards the client's bytes; a provider reading the first would
    serve a model relay does not route, or the client's scopes leave out. So too
    for the other fields relay reads: `{"store": false, …, "store": true}` must not
    be a guess at whether to keep the content, nor `messages` twice a guess at
    which turn to record.
    """
    # Cheap first: a second key relay reads shows as such, or hides behind a \u escape.
    if b"\\u" not in body and all(body.count(key) < 2 for key in read):
        return
    # The standard library's parser can show every pair (a few µs a request).
    refuse_repeated_fields(body, top_level_only=True)


def forwarded_body(body: bytes, data: dict[str, Any], route: Route) -> bytes:
    """The bytes sent to the provider: the client's own (`data` as relay read them, if
    they name no key twice), with only the model id changed to the provider's when the
    two differ."""
    refuse_duplicate_keys(body, quoted_keys(data))
    if route.provider_model == route.model:
        return body
    try:
        return with_model(body, route.provider_model)
    except RecursionError:  # nested deeper than the standard library's scanner goes
        raise InvalidRequestError("The request body is nested too deeply.") from None


_DECODER = json.JSONDecoder()
_BLANK = re.compile(r"[ \t\n\r]*")


def with_model(body: bytes, model: str) -> bytes:
    """`body`, a JSON object that names `model` once, with that value alone replaced:
    every other byte as the client sent it. (Decoded and written again, a number past
    64 bits would come back a rounded float, and a body nested past 254 levels not at
    all.) The standard library's scanner finds where each top-level value ends."""
    text = body.decode()  # valid UTF-8 (orjson read it): encoding gives the same bytes
    at = _past_blanks(text, 0) + 1  # past the object's "{"
    while True:
        key, at = _DECODER.raw_decode(text, _past_blanks(text, at))
        at = _past_blanks(text, _past_blanks(text, at) + 1)  # past ":"
        _, end = _DECODER.raw_decode(text, at)
        if key == "model":
            return (text[:at] + orjson.dumps(model).decode() + text[end:]).encode()
        at = _past_blanks(text, end) + 1  # past ","


def _past_blanks(text: str, at: int) -> int:
    blanks = _BLANK.match(text, at)
    return blanks.end() if blanks else at
