"""Paging cursors: a small JSON object in URL-safe base64, opaque to callers.

relay hands them out and reads them back validated, never trusted; none is signed,
as a cursor only ever names a place in a listing its caller may read whole anyway.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from relay.errors import InvalidRequestError

# Far above any cursor relay makes; past it, a cursor is not read at all.
MAX_CURSOR_CHARS = 200


def encode_cursor(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


def decode_cursor(text: str, param: str = "after") -> dict[str, Any]:
    """The object `text` carries; InvalidRequestError (400, naming `param`) if it is not
    one relay could have made: too long, not base64url, not a JSON object."""
    try:
        if len(text) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise not_a_cursor(param) from None
    if not isinstance(value, dict):
        raise not_a_cursor(param)
    return value


def not_a_cursor(param: str = "after") -> InvalidRequestError:
    return InvalidRequestError(
        f"{param} is not a cursor relay gave out; list again from the start.", param=param
    )
