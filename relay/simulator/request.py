"""A chat request parsed and checked the way OpenAI checks it, with its messages."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import orjson

from relay.simulator.errors import OpenAIError, model_not_found
from relay.simulator.tokens import count_prompt_tokens

MAX_CHOICES = 128  # OpenAI's bound on `n`
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_ROLE_LIST = "'system', 'assistant', 'user', 'function', 'tool', and 'developer'"
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)"
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    include_obfuscation: bool
    max_tokens: int | None
    prompt_tokens: int
    choices: int = 1  # `n`


def parse_chat_request(body: bytes, models: Container[str]) -> ChatRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OpenAIError(400, _BAD_JSON) from None
    if not isinstance(data, dict):
        raise OpenAIError(400, _BAD_JSON)
    model = data.get("model")
    if model is None:
        raise OpenAIError(400, "you must provide a model parameter")
    _expect(model, str, "model")
    messages = _messages(data)
    stream = _optional(data, "stream", bool) or False
    options = _optional(data, "stream_options", dict)
    if options is not None and not stream:
        raise OpenAIError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    include_usage = bool(options and _optional(options, "include_usage", bool, "stream_options."))
    obfuscation = (
        _optional(options, "include_obfuscation", bool, "stream_options.") if options else None
    )
    include_obfuscation = obfuscation is not False  # on unless turned off, as at OpenAI
    # The newer name wins when a client sends both.
    max_tokens = _bounded(data, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _bounded(data, "max_tokens")
    choices = _bounded(data, "n", maximum=MAX_CHOICES) or 1
    if model not in models:
        raise model_not_found(model)
    return ChatRequest(
        model,
        stream,
        include_usage,
        include_obfuscation,
        max_tokens,
        count_prompt_tokens(messages),
        choices,
    )


def _messages(data: dict[str, Any]) -> list[Any]:
    messages = data.get("messages")
    if messages is None:
        raise OpenAIError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    _expect(messages, list, "messages")
    if not messages:
        raise OpenAIError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        name = f"messages[{index}]"
        _expect(message, dict, name)
        role = message.get("role")
        if role is None:
            raise OpenAIError(
                400,
                f"Missing required parameter: '{name}.role'.",
                param=f"{name}.role",
                code="missing_required_parameter",
            )
        if role not in _ROLES:
            raise OpenAIError(
                400,
                f"Invalid value: '{role}'. Supported values are: {_ROLE_LIST}.",
                param=f"{name}.role",
                code="invalid_value",
            )
    return messages


def _bounded(data: dict[str, Any], name: str, maximum: int | None = None) -> int | None:
    """An optional integer of at least 1 (and at most `maximum`), refused as OpenAI does."""
    value = _optional(data, name, int)
    if value is not None and value < 1:
        raise OpenAIError(
            400,
            f"Invalid '{name}': integer below minimum value. "
            f"Expected a value >= 1, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if value is not None and maximum is not None and value > maximum:
        raise OpenAIError(
            400,
            f"Invalid '{name}': integer above maximum value. "
            f"Expected a value <= {maximum}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def _optional(data: dict[str, Any], name: str, kind: type, parent: str = "") -> Any:
    """`data[name]` if present, of type `kind`; errors name it as `<parent><name>`."""
    value = data.get(name)
    if value is not None:
        _expect(value, kind, parent + name)
    return value


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a decimal",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _expect(value: Any, kind: type, name: str) -> None:
    # bool is an int in Python but not in JSON.
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return
    raise OpenAIError(
        400,
        f"Invalid type for '{name}': expected {_KIND_NAMES[kind]}, "
        f"but got {_KIND_NAMES.get(type(value), 'a value')} instead.",
        param=name,
        code="invalid_type",
    )
