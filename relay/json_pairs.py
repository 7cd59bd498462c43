"""JSON that names a field twice in one object: orjson keeps the last value without a
word, while other parsers keep the first, so what such a document says is a guess."""

from __future__ import annotations

import json
from typing import Any


def repeats_a_field(text: bytes | str) -> bool:
    """Whether some object in the JSON `text` (valid JSON) names a field twice, at any
    depth. ValueError for one nested deeper than the standard library's parser goes."""
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> None:
        nonlocal repeated
        repeated = repeated or len({key for key, _ in items}) != len(items)

    try:
        json.loads(text, object_pairs_hook=pairs)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return repeated
