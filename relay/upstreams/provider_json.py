"""Reading a provider's JSON as its clients' parsers read it: a UTF-8 BOM opening a
body, UTF-16 surrogates escaped alone, the error each shape of answer carries
(OpenAI's, Gemini's list, vLLM's bare object, llama.cpp's `error:` field), and the
usage each names its own way (Groq's `x_groq`, mlx-vlm's `input_tokens`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark

# A JSON escape of a UTF-16 surrogate, `\ud83d`.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Python's json.dumps writes these for floats JSON has no word for.
_CONSTANT = re.compile(rb"NaN|Infinity")
_JSON = TypeVar("_JSON")


def provider_json(body: bytes) -> object:
    """A provider's JSON body, parsed; None if it is none. A UTF-8 BOM opening it (some
    servers write one; orjson refuses it) is skipped, as JSON parsers may (RFC 8259).
    One with surrogate escapes or NaN is read too (lenient_json), its strings made whole."""
    data = memoryview(body)[len(BOM) :] if body.startswith(BOM) else body
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return well_formed(lenient_json(data))


def error_object(body: object) -> object:
    """The error a provider's JSON (a whole answer, a refusal or a stream's event) carries:
    OpenAI's `{"error": …}`, Gemini's `[{"error": …}]` (that one object in a list), or
    vLLM's bare `{"object": "error", "message": …}` (the object itself); None if it
    carries none. The one rule, wherever relay reads a provider's JSON."""
    if not isinstance(body, dict):
        listed = listed_error(body)
        return None if listed is None else listed["error"]
    if "error" in body:
        return body["error"]
    return body if body.get("object") == "error" else None


def listed_error(body: object) -> dict[str, Any] | None:
    """Gemini's error, `[{"error": …}]`: the one object the list holds; None for any
    other JSON."""
    if isinstance(body, list) and len(body) == 1:
        item = body[0]
        if isinstance(item, dict) and "error" in item:
            return item
    return None


def surrogate_json(data: bytes | memoryview) -> object:
    """JSON orjson refused, read by the standard library if it escapes a UTF-16 surrogate
    (`"\\ud83d"`); None if it is no JSON even so. RFC 8259's grammar allows a surrogate
    escaped alone, and the clients' parsers (Python's, JavaScript's) read it: a server
    cutting strings by UTF-16 length (a Node proxy, say) splits an emoji's pair across
    two chunks so. Its strings may hold surrogates, which no UTF-8 text (PostgreSQL's,
    orjson's) can: well_formed makes them whole. Only the escape sends a body here, so
    JSON orjson refuses for any other reason (NaN, nesting past 1024) stays refused."""
    if _SURROGATE_ESCAPE.search(data) is None:
        return None
    try:
        return json.loads(str(data, "utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def lenient_json(data: bytes | memoryview) -> object:
    """JSON orjson refused that Python's parser reads, as OpenAI's Python SDK does: its
    surrogate escapes (surrogate_json), and the NaN and ±Infinity that Python's
    json.dumps writes (a token's logprob of -Infinity), read as null. None if no JSON
    even so. A provider's answers and events are read so; a client's request is not."""
    if _CONSTANT.search(data) is None:
        return surrogate_json(data)
    try:
        return json.loads(str(data, "utf-8"), parse_constant=_as_null)
    except (ValueError, RecursionError):
        return None


def _as_null(name: str) -> None:
    return None


def well_formed(value: _JSON) -> _JSON:
    """`value` (a string, or JSON lists and objects at any depth) with every string as
    UTF-8 can hold it: surrogate pairs joined, a lone half replaced by U+FFFD, as the
    client's parser shows it. A copy: its other values are as they were."""
    root: list[Any] = [value]
    # A loop, not recursion: surrogate_json reads JSON as deep as the stack allows.
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        holder, key = stack.pop()
        item = holder[key]
        if isinstance(item, str):
            holder[key] = item.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        elif isinstance(item, dict):
            holder[key] = fields = {well_formed(str(name)): field for name, field in item.items()}
            stack.extend((fields, name) for name in fields)
        elif isinstance(item, list):
            holder[key] = items = list(item)
            stack.extend((items, index) for index in range(len(items)))
    return root[0]


def error_field_object(value: bytes) -> dict[str, Any]:
    """The error of llama.cpp's `error:` SSE field (its value: JSON, or words), as the
    object of OpenAI's `{"error": …}`."""
    error = provider_json(value)
    if isinstance(error, dict):
        return error
    words = value.decode(errors="replace").strip()
    return {"message": words or "The provider failed.", "type": "server_error"}


def json_media_type(provider_headers: Mapping[str, str]) -> str:
    """The Content-Type of a whole answer read as JSON: the provider's when it names
    JSON (a charset or a +json type kept), else application/json. Some providers label
    JSON text/plain or not at all, and OpenAI's Node SDK parses only a JSON type."""
    declared = provider_headers.get("Content-Type", "")
    media_type = declared.partition(";")[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return declared
    return "application/json"


def groq_usage(obj: dict[str, Any]) -> dict[str, Any] | None:
    """Groq's usage, in its own `x_groq` object on a stream's last chunk (OpenAI's
    `usage` chunk comes only when asked for): the same counts, believed alike."""
    groq = obj.get("x_groq")
    if isinstance(groq, dict) and isinstance(usage := groq.get("usage"), dict):
        return usage
    return None


# The names mlx-vlm and some other local servers give OpenAI's two counts.
_COUNT_ALIASES = {"prompt_tokens": "input_tokens", "completion_tokens": "output_tokens"}


def usage_count(usage: dict[str, Any] | None, key: str) -> int | None:
    """A count of a provider's `usage` (`total_tokens`, say) worth believing: a whole
    number, not negative; None for anything else, or none given. `prompt_tokens` and
    `completion_tokens` are read as `input_tokens` and `output_tokens` where a provider
    names them so and not OpenAI's way."""
    usage = usage or {}
    value = usage.get(key)
    if value is None and key in _COUNT_ALIASES:
        value = usage.get(_COUNT_ALIASES[key])
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
