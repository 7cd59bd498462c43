"""Reading request bodies and query parameters into checked values."""

from __future__ import annotations

import asyncio
import codecs
import re
from typing import Any

import orjson
from aiohttp import StreamReader, web

from relay.api.connection import RelayRequestHandler
from relay.api.expect import send_continue
from relay.appkeys import SETTINGS
from relay.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
    UnsupportedTransferCodingError,
)
from relay.json_pairs import refuse_repeated_fields
from relay.upstreams.provider_json import BOM, surrogate_json

# Time for a whole request body once its headers are in: 4 MB over a poor
# mobile link takes well under this.
BODY_SECONDS = 120.0


async def read_body(request: web.Request, limit: int | None = None) -> bytes:
    """The raw body, refused with 413 past `limit` bytes or past RELAY_MAX_BODY_BYTES
    (the app's client_max_size), whichever is less.

    A route whose body is small by nature names its own `limit`: a body is held whole
    while it arrives, for up to BODY_SECONDS, and under the app-wide limit an API key's
    exchange let anyone, keyless, hold megabytes per connection.

    A compressed body is refused (415): a receipt's `request_sha256` is over the exact
    bytes the client sent, and the provider is sent those same bytes. (relay's server
    leaves bodies undecoded: relay.api.server.)
    """
    if not _only_codings(request, "Content-Encoding", ("identity", "")):
        raise UnsupportedMediaTypeError(
            "relay accepts request bodies without Content-Encoding; send the body uncompressed.",
            headers={"Accept-Encoding": "identity"},  # RFC 7694
        )
    # aiohttp decodes chunked alone: under `gzip, chunked` it hands on the gzipped bytes.
    if not _only_codings(request, "Transfer-Encoding", ("chunked", "")):
        raise UnsupportedTransferCodingError()
    ceiling = request.app[SETTINGS].max_body_bytes
    limit = ceiling if limit is None else min(limit, ceiling)
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    await send_continue(request)  # every check the head allows has passed
    try:
        if request.content.is_eof():  # the whole body came with the head: no wait to bound
            return await _read_up_to(request.content, limit)
        # A body trickling in a byte at a time would hold its connection for ever.
        async with asyncio.timeout(BODY_SECONDS):
            return await _read_up_to(request.content, limit)
    except web.RequestPayloadError:
        # A chunk size that is not hex, chunk data longer than said: nothing of the
        # message is quoted back (the bytes may be a prompt).
        raise InvalidRequestError(
            "The request body is not valid HTTP/1.1 chunked framing.", code="malformed_request"
        ) from None
    except TimeoutError:
        error = RequestTimeoutError(f"The request body did not arrive within {BODY_SECONDS:.0f} s.")
        # The rest of the body is never read: the connection ends with the answer, and
        # says so, rather than after aiohttp's lingering (up to 10 s) to swallow it.
        if isinstance(request.protocol, RelayRequestHandler):
            request.protocol.end_after_answer()
            error.headers["Connection"] = "close"
        raise error from None


async def _read_up_to(content: StreamReader, limit: int) -> bytes:
    """The body, refused as soon as more than `limit` bytes of it arrived (a chunked
    body declares no length to refuse it by)."""
    content.set_read_chunk_size(limit)  # as aiohttp's request.read(): a large body in few reads
    body = bytearray()
    while chunk := await content.readany():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than {limit} bytes.")


def _only_codings(request: web.Request, header: str, allowed: tuple[str, ...]) -> bool:
    """Whether every coding the request names in `header` (in every such header, as
    aiohttp reads them all) is one of `allowed`."""
    return all(
        coding.strip().lower() in allowed
        for value in request.headers.getall(header, ())
        for coding in value.split(",")
    )


# JSON exchanged between systems is UTF-8 (RFC 8259 section 8.1); US-ASCII text is
# UTF-8 too, and "utf8" is a label for it (WHATWG Encoding) some clients send.
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})
# A charset named back to the client only if it looks like one (not a header's worth).
_CHARSET_NAME = re.compile(r"[A-Za-z0-9._:+-]{1,40}")


# A JSON text's first two characters are ASCII (RFC 4627 section 3): in UTF-16 or
# UTF-32 without a byte order mark, where its first four bytes hold NULs tells which.
# (Keyed by the first four bytes, each NUL as 0 and any other as 1.)
_NULS_OF = {
    b"\0\0\0\1": "UTF-32BE",
    b"\0\1\0\1": "UTF-16BE",
    b"\1\0\0\0": "UTF-32LE",
    b"\1\0\1\0": "UTF-16LE",
}
# UTF-32LE's mark begins with UTF-16LE's: it is looked for first.
_WIDE_MARKS = (
    (codecs.BOM_UTF32_BE, "UTF-32BE"),
    (codecs.BOM_UTF32_LE, "UTF-32LE"),
    (codecs.BOM_UTF16_BE, "UTF-16BE"),
    (codecs.BOM_UTF16_LE, "UTF-16LE"),
)


def _not_utf8(said: str) -> UnsupportedMediaTypeError:
    """The refusal of a JSON body in another encoding than UTF-8, `said` naming it."""
    return UnsupportedMediaTypeError(
        f"relay reads JSON request bodies in UTF-8 only (RFC 8259 section 8.1), not in"
        f" {said}: send the body in UTF-8, as 'Content-Type: application/json'."
    )


def _wide_encoding(body: bytes) -> str | None:
    """The UTF-16 or UTF-32 `body` is in, as its client is told, by its byte order mark or
    by the NULs in its first four bytes; None if it is in neither."""
    if len(body) < 4:
        return None
    for mark, name in _WIDE_MARKS:
        if body.startswith(mark):
            return f"{name} (the body begins with its byte order mark)"
    if (named := _NULS_OF.get(bytes(min(byte, 1) for byte in body[:4]))) is None:
        return None
    return f"{named} (the body's first bytes are {named}'s)"


async def read_json_body(request: web.Request, limit: int | None = None) -> bytes:
    """The raw body of a request that must be JSON (see read_body). Its type is checked
    from the head, before the body is read: a client that waits for "100 Continue" is
    refused with the 415 instead of being invited to send a body relay will not read.

    A charset other than UTF-8 is refused alike (415, as a type relay does not read):
    its bytes were refused as no JSON, without a word of why. So is a body in UTF-16 or
    UTF-32 with no charset said, once it fails to parse (parse_json_object)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaTypeError("Send the body as 'Content-Type: application/json'.")
    charset = request.charset
    if charset is not None and charset.lower() not in _UTF8_CHARSETS:
        raise _not_utf8(
            f"charset={charset}" if _CHARSET_NAME.fullmatch(charset) else "that charset"
        )
    return await read_body(request, limit)


def json_text(body: bytes) -> bytes:
    """The JSON text of a request body: past a UTF-8 byte order mark, which JSON parsers
    may ignore (RFC 8259 section 8.1) and .NET's, Python's and Windows editors' output
    carries. orjson refuses one; the bytes relay forwards leave it out, as JSON sent over
    a network must (ibid.), while receipts hash the body as received."""
    return body.removeprefix(BOM)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The object in a request body (a leading byte order mark ignored: json_text)."""
    body = json_text(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        # The body is refused for what it is, not as no JSON. Only a body orjson refused
        # is looked at: no JSON holds a NUL, and no UTF-8 a UTF-16 or UTF-32 mark.
        if (encoding := _wide_encoding(body)) is not None:
            raise _not_utf8(encoding) from None
        # JSON's grammar allows a surrogate escaped alone, but no UTF-8 text (history's)
        # can hold one.
        if surrogate_json(body) is not None:
            raise InvalidRequestError(
                "The request body escapes half of a UTF-16 surrogate pair without the other"
                ' (such as "\\ud83d"), which relay cannot store: send whole characters.'
            ) from None
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return data


async def read_json_object(request: web.Request, limit: int | None = None) -> dict[str, Any]:
    """A small JSON body read whole (the admin API's, /auth/token's): an object, no
    object in it naming a field twice."""
    body = await read_json_body(request, limit)
    data = parse_json_object(body)
    # orjson keeps the last of a repeated field without a word: `{"status": "active",
    # "status": "disabled"}` would be a guess (these bodies are at most 64 KiB; the chat
    # routes check their own).
    refuse_repeated_fields(json_text(body))
    return data


def query_value(request: web.Request, name: str) -> str | None:
    """The query parameter `name`, None when absent. Given twice it is refused: taking
    either silently would answer a question the client did not mean to ask."""
    values = request.query.getall(name, ())
    if len(values) > 1:
        raise InvalidRequestError(
            f"{name} was given {len(values)} times; give it once.", param=name
        )
    return values[0] if values else None


_DIGITS = re.compile(r"-?[0-9]+")
# Past 2**63 in size: out of every range relay reads (and int() refuses 4,300 digits).
_MOST_DIGITS = 19


def query_int(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = query_value(request, name)
    if raw is None or raw == "":
        return default
    # Digits as written in a URL: int() also reads "+5", "5_0", " 5" and other scripts'
    # digits (Arabic-Indic five), which a proxy or cache reading the query would not.
    if not _DIGITS.fullmatch(raw):
        raise InvalidRequestError(f"{name} must be a whole number.", param=name)
    value = int(raw) if len(raw.lstrip("-").lstrip("0")) <= _MOST_DIGITS else None
    if value is None or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}.", param=name)
    return value


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )
