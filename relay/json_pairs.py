"""JSON that names a field twice in one object: orjson keeps the last value without a
word, while other parsers keep the first, so what such a document says is a guess."""

from __future__ import annotations

import json
from typing import Any

from relay.errors import InvalidRequestError


def repeats_a_field(text: bytes | str, *, top_level_only: bool = False) -> bool:
    """Whether some object in the JSON `text` (valid JSON) names a field twice, at any
    depth or, `top_level_only`, in the outermost object. ValueError for one nested
    deeper than the standard library's parser goes."""
    repeated = False
    outermost: list[tuple[str, Any]] = []

    def pairs(items: list[tuple[str, Any]]) -> None:
        nonlocal repeated, outermost
        repeated = repeated or len({key for key, _ in items}) != len(items)
        outermost = items  # objects close inner first, so the outermost one closes last

    try:
        json.loads(text, object_pairs_hook=pairs)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if top_level_only:
        return len({key for key, _ in outermost}) != len(outermost)
    return repeated


def refuse_repeated_fields(body: bytes, *, top_level_only: bool = False) -> None:
    """400 if the request `body` (valid JSON: orjson read it) names a field twice, as
    `repeats_a_field` looks for one."""
    try:
        repeated = repeats_a_field(body, top_level_only=top_level_only)
    except ValueError:  # nested deeper than this parser goes
        raise InvalidRequestError("The request body is nested too deeply.") from None
    if repeated:
        raise InvalidRequestError("The request body names the same field twice.")
