"""What relay's connection handler answers itself, before a request reaches the app:
a head aiohttp could not parse, one too slow, one HTTP/1.1 tells a server to refuse.

Each is a RelayError in OpenAI's shape, with the status the RFCs give it: 414 for a
request target too long, 431 for a header too long or too many (RFC 6585), 501 for
a method token relay does not know (RFC 9110 section 9.1), 505 for an HTTP version
other than 1.x (section 15.6.6), 408 for a late head, 400 for the rest. Nothing of
the request's bytes is quoted back.
"""

from __future__ import annotations

import re

from aiohttp import hdrs
from aiohttp.http import HttpVersion10, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, InvalidHeader, LineTooLong

from relay.errors import (
    NOT_RETRIED,
    InvalidRequestError,
    RelayError,
    RequestTimeoutError,
    UpstreamTimeoutError,
)

# A request line (its target, mostly) may be this long: a search query of 10 kB
# reaches relay, to be refused in words (400, MAX_QUERY_CHARS) rather than by the
# parser. A header line may be 8190 bytes, aiohttp's default. The limits differ so
# that aiohttp's LineTooLong, which carries only the limit it hit, tells a long URL
# (414) from a long header (431).
REQUEST_LINE_BYTES = 16384

# aiohttp's words (its C parser's and its Python parser's alike) for a head past
# max_headers fields, and llhttp's for HTTP/2's connection preface ("PRI * HTTP/2.0").
_TOO_MANY_HEADERS = "Too many headers received"
_HTTP2_PREFACE = "Pause on PRI/Upgrade"
# llhttp knows the registered methods only; what it refuses is quoted in the error's
# message as the repr of the line. A request line that is well-formed around a method
# that is a token (RFC 9110: tchar) names a method relay does not implement; anything
# else (TLS bytes, a "(" in the method, no version) is no HTTP request.
_UNKNOWN_METHOD_LINE = re.compile(r"\n\n  b(['\"])[-!#$%&'*+.^_`|~0-9A-Za-z]+ \S+ HTTP/\d\.\d\1\n")


class HeadTimeoutError(Exception):
    """A request head that did not arrive within the connection's deadline."""


class UnsupportedVersionError(BadHttpMessage):
    """A request in an HTTP version whose major number is not 1 (HTTP/2.0, HTTP/0.9)."""


class FramingError(BadHttpMessage):
    """An HTTP/1.0 request with Transfer-Encoding: its body's end is ambiguous, the way
    requests are smuggled past a proxy (RFC 9112 section 6.1)."""


def refused_head(message: RawRequestMessage) -> BadHttpMessage | None:
    """Why a parsed head that is not HTTP/1.1 must be refused, if it must (call only
    for a version other than 1.1: the check costs a header lookup)."""
    version = message.version
    if version.major != 1:
        return UnsupportedVersionError("HTTP version not supported")
    if version == HttpVersion10 and hdrs.TRANSFER_ENCODING in message.headers:
        return FramingError("Transfer-Encoding in an HTTP/1.0 request")
    return None


def unparsed_error(status: int, exc: BaseException | None) -> RelayError:
    """What aiohttp's connection handler answers itself, as a RelayError: a request it
    could not parse or relay refused as parsed, or (never expected: the error
    middleware catches everything) a handler's exception or timeout."""
    if isinstance(exc, HeadTimeoutError):
        return RequestTimeoutError(str(exc))
    if status == 504:  # a handler's own timeout escaped it
        return UpstreamTimeoutError("The request timed out.", code="timeout")
    if status >= 500:
        return RelayError("Internal error.")
    if isinstance(exc, UnsupportedVersionError) or _says(exc, _HTTP2_PREFACE):
        return _refusal(
            505, "relay speaks HTTP/1.1 (and HTTP/1.0); send the request in HTTP/1.1.",
            "http_version_not_supported",
        )  # fmt: skip
    if isinstance(exc, BadHttpMethod) and _UNKNOWN_METHOD_LINE.search(exc.message):
        return _refusal(
            501, "relay does not implement the request's method.", "method_not_implemented"
        )
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (REQUEST_LINE_BYTES,):
            # RFC 9112 section 3: a target too long to parse MUST be a 414.
            why, status = "its request target (URL) is too long", 414
        else:
            why, status = "a header is too long", 431  # RFC 6585
    elif _says(exc, _TOO_MANY_HEADERS):
        why, status = "it has too many header fields", 431  # RFC 6585
    elif isinstance(exc, FramingError):
        why = "an HTTP/1.0 request cannot have Transfer-Encoding"
    elif isinstance(exc, BadHttpMethod):
        why = "it does not start with an HTTP method"
    elif isinstance(exc, InvalidHeader):
        why = "a header is malformed"
    else:
        why = "its head or framing is malformed"
    error = InvalidRequestError(
        f"The request is not valid HTTP/1.1: {why}.", code="malformed_request"
    )
    error.status = status
    return error


def _says(exc: BaseException | None, words: str) -> bool:
    return isinstance(exc, BadHttpMessage) and exc.message.startswith(words)


def _refusal(status: int, message: str, code: str) -> InvalidRequestError:
    # A 5xx, which OpenAI's SDKs retry: the same request would meet the same answer.
    error = InvalidRequestError(message, code=code, headers=dict(NOT_RETRIED))
    error.status = status
    return error
