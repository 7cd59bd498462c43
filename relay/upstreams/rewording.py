"""What of a provider's error relay's client may read: its words without relay's
provider key, the provider's account ids and (when relay renames it) its model id, in
a whole answer, a refusal or a stream's error events. Everything else goes out as sent."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import orjson

from relay.errors import NOT_RETRIED, UpstreamError, error_body
from relay.upstreams.provider_json import (
    BOM,
    error_field_object,
    error_object,
    listed_error,
    provider_json,
)
from relay.upstreams.routing import Route
from relay.upstreams.sse import DONE_LINES, SSEDecoder

log = logging.getLogger(__name__)

# An event's end: a line ending, then an empty line (SSE's three line endings).
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")

# OpenAI names the account in some messages ("… in organization org-abc123 …",
# "Project `proj_abc123` does not have access …").
_ACCOUNT = re.compile(r"\b(org-|proj_)[A-Za-z0-9]{6,}")


def provider_words(message: str, route: Route) -> str:
    """A provider's message as relay's client may read it: the provider's own key
    (should it quote it), account id and model id (when relay renames it) are not
    the client's to see."""
    if (key := route.upstream.api_key) and key in message:
        message = _whole_key(key).sub("[redacted]", message)
    if route.provider_model != route.model and route.provider_model in message:
        model = route.model
        message = _model_id(route.provider_model).sub(lambda _: model, message)
    return _ACCOUNT.sub(r"\1[redacted]", message)


# A key this long is a secret wherever it appears; a shorter one is most often a
# placeholder a local server takes ("sim", "ollama", "EMPTY"), found only standing whole.
_SECRET_LENGTH = 20


@functools.lru_cache(maxsize=64)
def _whole_key(key: str) -> re.Pattern[str]:
    """The provider key wherever it appears if it is long, else where it stands whole,
    not inside a longer run of the characters keys are made of ("sim" in "simulated")."""
    if len(key) >= _SECRET_LENGTH:
        return re.compile(re.escape(key))
    return re.compile(r"(?<![\w\-])" + re.escape(key) + r"(?![\w\-])")


@functools.lru_cache(maxsize=256)
def _model_id(provider_model: str) -> re.Pattern[str]:
    """The provider's model id where it stands whole: not inside a word ("o" in "for"),
    an identifier or a longer id ("gpt-4o" in "gpt-4o-mini"). An id of letters only
    ("o", "model") is also left alone as a path's part ("docs/o") and followed by "'s"
    ("This model's maximum context length"); any other is renamed there too
    ("models/gemini-1.5-pro is not found", "o1's context length")."""
    plain = provider_model.isalpha()
    before = r"(?<![\w\-./:@\\])" if plain else r"(?<![\w\-.@\\])"
    after = r"(?![\w\-/@\\])" + (r"(?![.:'\u2019]\w)" if plain else r"(?![.:]\w)")
    return re.compile(before + re.escape(provider_model) + after)


def _reworded(value: object, route: Route) -> object:
    """`value` (a provider's error: a string, or JSON objects and lists at any depth) with
    every string in it, keys aside, in provider_words: the very same object when no
    string changed, else a copy of the same shape with every other value as it was."""
    root: list[Any] = [value]
    # A loop, not recursion: an error nested a thousand deep must not exhaust the stack.
    stack: list[tuple[Any, Any]] = [(root, 0)]
    changed = False
    while stack:
        holder, key = stack.pop()
        item = holder[key]
        if isinstance(item, str):
            if (words := provider_words(item, route)) != item:
                holder[key], changed = words, True
        elif isinstance(item, dict):
            holder[key] = fields = dict(item)
            stack.extend((fields, name) for name in fields)
        elif isinstance(item, list):
            holder[key] = items = list(item)
            stack.extend((items, index) for index in range(len(items)))
    return root[0] if changed else value


def reworded_json(obj: object, route: Route, *, event: bool = False) -> bytes | None:
    """`obj` (a whole answer, or a stream's `event`), serialised anew with its error
    (error_object) reworded throughout; None if it is no error, or one those words leave
    as it is (then its bytes go out as the provider sent them).

    An event in vLLM's bare shape (`{"object": "error", …}`) always goes out in
    OpenAI's, `{"error": {…}}`: OpenAI's SDKs raise only on that, and would hand the
    bare one to the application as if it were a chunk of the answer. So does Gemini's
    `[{"error": {…}}]`, event or whole answer: as the one object its list holds."""
    error = error_object(obj)
    if error is None:
        return None
    listed = listed_error(obj)
    if listed is not None:
        obj = listed
    words = _reworded(error, route)
    bare = error is obj
    if words is error and listed is None and not (event and bare):
        return None
    assert isinstance(obj, dict)  # error_object found an error in it
    if event and bare:
        assert isinstance(words, dict)  # the object itself, reworded
        obj = {"error": {key: value for key, value in words.items() if key != "object"}}
    else:
        obj = words if bare else {**obj, "error": words}
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: said plainly instead
        return orjson.dumps(
            error_body("The provider failed; its error was not passed on.", "upstream_error")
        )


def reworded_body(body: bytes, route: Route) -> bytes:
    """A whole answer that is an error, as relay's client may read it: `body` as sent
    unless a string in its error had to change (reworded_json).

    A body that is no JSON object at all (an HTML page, nothing, event stream bytes) nor
    Gemini's error list is no answer an SDK can read, nor an error it would raise on: a
    502 (UpstreamError)."""
    obj = provider_json(body)
    if not isinstance(obj, dict) and listed_error(obj) is None:
        log.info("provider answered with no JSON object", extra={"upstream": route.upstream.name})
        # Not asked again: an answer that is a page or event stream bytes (a base_url
        # pointing elsewhere, a provider streaming regardless) comes again, billed again.
        raise UpstreamError(
            "The provider's answer is not a JSON object.",
            code="upstream_malformed",
            headers=dict(NOT_RETRIED),
        )
    return reworded_json(obj, route) or body


def reworded_events(events: bytes, route: Route) -> bytes:
    """`events` (whole events) as relay's client may read them: an error event (either
    shape, error_object) quoting what is not the client's (provider_words) in any of its
    strings is re-serialised with those reworded and all else as sent; every other byte
    stays as it came."""
    if events.rstrip(b"\r\n") in DONE_LINES:  # a stream's usual end: no error to reword
        return events
    parts, start = [], 0
    for end in _EVENT_END.finditer(events):
        event = events[start : end.end()]
        parts.append(_reworded_event(event, route) or event)
        start = end.end()
    parts.append(events[start:])
    return b"".join(parts)


def _reworded_event(event: bytes, route: Route) -> bytes | None:
    """One whole event, reworded; None if it is no error or needs no new words.

    llama.cpp's `error:` field, which no SSE client reads (OpenAI's SDKs would hand the
    application a cut-short answer as if whole), becomes a `data:` error event."""
    payloads: list[bytes] = []
    errors: list[bytes] = []
    # A fresh decoder drops a BOM opening the event.
    SSEDecoder(payloads.append, errors.append).feed(event)
    if errors and not payloads:
        obj: object = {"error": error_field_object(errors[0])}
        reworded = reworded_json(obj, route, event=True) or orjson.dumps(obj)
    else:
        # Surrogate escapes read too: an error holding one still has its secrets taken out.
        obj = provider_json(payloads[0]) if len(payloads) == 1 else None
        if (found := reworded_json(obj, route, event=True)) is None:
            return None
        reworded = found
    bom = BOM if event.startswith(BOM) else b""
    # Its other fields (`event: error`, an id, comments) stay; its data is the new JSON.
    fields = b"".join(
        line + b"\n"
        for line in event.removeprefix(bom).splitlines()
        if line and line not in (b"data", b"error") and not line.startswith((b"data:", b"error:"))
    )
    return b"".join((bom, fields, b"data: ", reworded, b"\n\n"))
