"""The exceptions relay raises, each carrying its HTTP status and OpenAI error fields.

    RelayError                      500 server_error
    ├── InvalidRequestError         400 invalid_request_error
    │   ├── UnsupportedMediaTypeError   415
    │   ├── PayloadTooLargeError        413
    │   ├── RequestTimeoutError         408
    │   ├── UnprocessableError          422
    │   │   └── SearchTooCostlyError        422 search_too_costly (relay.stores.messages)
    │   ├── UnsupportedTransferCodingError  501 (not retried)
    │   └── ExpectationFailedError      417 (relay.api.expect)
    ├── AuthenticationError         401
    ├── PermissionDeniedError       403
    ├── NotFoundError               404
    │   └── ModelNotFoundError          404 model_not_found
    ├── MethodNotAllowedError       405
    ├── ConflictError               409
    │   └── ConversationDeletedError    409 conversation_deleted
    ├── RateLimitError              429 rate_limit_exceeded (+ Retry-After)
    │   ├── TooManyPollsError           429 too_many_polls (relay.services.history_watch)
    │   └── TooManySearchesError        429 too_many_searches (relay.services.search_slots)
    ├── ProviderRefusalError        the provider's 4xx (relay.upstreams.provider_errors)
    ├── UpstreamError               502
    │   ├── UpstreamCutError            502 upstream_cut
    │   └── UpstreamTimeoutError        504
    │       └── AnswerTooLongError          504 answer_too_long
    ├── DependencyUnavailableError  503 (PostgreSQL, Redis, dstack; + Retry-After)
    │   ├── WriteOutcomeUnknownError    503 outcome_unknown (not retried)
    │   ├── AttestationUnavailableError 503 attestation_unavailable (the dstack guest agent)
    │   └── UnconfirmedCommitError      a COMMIT sent, its outcome lost (relay.stores.database;
    │                                   its callers settle it)
    ├── BusyError                   503 (+ Retry-After)
    │   ├── SearchesBusyError           503 searches_busy (relay.services.search_slots)
    │   └── KeyChecksBusyError          503 key_checks_busy (relay.services.apikeys)
    └── RestartingError             503 shutting_down (+ Retry-After)

One middleware (`relay.api.error_mapping`) turns these into
`{"error": {"message", "type", "param", "code"}}`; nothing else shapes errors.
"""

from __future__ import annotations

from typing import Any

import orjson

# OpenAI's SDKs ask again after a 408, 409, 429 or 5xx unless the answer says this:
# for an error the same request would only meet again.
NOT_RETRIED = {"x-should-retry": "false"}


class RelayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequestError(RelayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnsupportedMediaTypeError(InvalidRequestError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class RequestTimeoutError(InvalidRequestError):
    status = 408
    code = "request_timeout"


class UnprocessableError(InvalidRequestError):
    status = 422
    code = "unprocessable_entity"


class UnsupportedTransferCodingError(InvalidRequestError):
    """A request body in a transfer coding relay does not decode (RFC 9112 section 6.1)."""

    status = 501
    code = "unsupported_transfer_coding"

    def __init__(self) -> None:
        # A 5xx, which OpenAI's SDKs retry: the same body would meet the same answer.
        super().__init__(
            "relay reads request bodies in the chunked transfer coding only;"
            " send the body without another Transfer-Encoding.",
            headers=dict(NOT_RETRIED),
        )


class AuthenticationError(RelayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_token"

    def __init__(self, message: str, *, rejected: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # RFC 9110: a 401 names the scheme the client should use; RFC 6750 §3: when
        # a token was sent and refused, it says so (none sent: no error attribute).
        challenge = (
            'Bearer realm="relay", error="invalid_token"' if rejected else 'Bearer realm="relay"'
        )
        self.headers.setdefault("WWW-Authenticate", challenge)


class PermissionDeniedError(RelayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(RelayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class MethodNotAllowedError(RelayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ConflictError(RelayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class ConversationDeletedError(ConflictError):
    """The answer's conversation was deleted while the answer was on its way."""

    code = "conversation_deleted"

    def __init__(self) -> None:
        # OpenAI's SDKs would ask again (409): only to meet the conversation's 404.
        super().__init__(
            "The conversation was deleted while this answer was on its way;"
            " the answer was not saved.",
            headers=dict(NOT_RETRIED),
        )


class RateLimitError(RelayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class UpstreamError(RelayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamCutError(UpstreamError):
    """The provider stopped in the middle of its answer."""

    code = "upstream_cut"

    def __init__(self) -> None:
        super().__init__("The provider broke off the answer.")


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"


class AnswerTooLongError(UpstreamTimeoutError):
    """The provider was still answering when the longest time relay reads one ran out."""

    code = "answer_too_long"

    def __init__(self) -> None:
        # OpenAI's SDKs would ask again (504): for as long, and as many tokens, again.
        super().__init__(
            "The answer ran longer than relay lets one run; it was cut.",
            headers=dict(NOT_RETRIED),
        )


# What ends an answer the provider began but did not end (it broke off, or ran past
# RELAY_MAX_ANSWER_SECONDS): the answer is kept as cut; any other error as failed.
CUT_SHORT = (UpstreamCutError, AnswerTooLongError)


class DependencyUnavailableError(RelayError):
    status = 503
    type = "service_unavailable"
    code = "dependency_unavailable"

    def __init__(self, message: str, *, reason: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # An outage of a dependency is mostly short: say when to try again (RFC 9110
        # §10.2.3). OpenAI's SDKs wait that long before their own retry.
        self.headers.setdefault("Retry-After", "1")
        # The driver's account of it, for operators (never in the client's answer).
        self.reason = reason


class AttestationUnavailableError(DependencyUnavailableError):
    # Here rather than in relay.proofs.agent: raising or catching it needs no dstack SDK.
    code = "attestation_unavailable"


class WriteOutcomeUnknownError(DependencyUnavailableError):
    """A change whose COMMIT PostgreSQL did not confirm, and which relay could not settle
    (the server still out of reach): it may yet be applied, so asking again blindly may
    make it twice (a second client, a second new key)."""

    code = "outcome_unknown"

    def __init__(self, lost: DependencyUnavailableError, look: str) -> None:
        super().__init__(
            f"The database did not confirm the change, which may yet be applied: {look}",
            reason=lost.reason,
            headers=dict(NOT_RETRIED),
        )
        del self.headers["Retry-After"]


def operator_message(error: BaseException) -> str:
    """An error as a one-line reason for an operator: with the dependency's own words
    when it gave any ("connection refused", "database does not exist")."""
    reason = getattr(error, "reason", "")
    return f"{error} ({reason})" if reason else str(error)


class BusyError(RelayError):
    """relay itself runs as much of some work as it can at once (searches, key checks):
    refused at once rather than queued without end. Not the caller's doing, unlike a
    429; short-lived: OpenAI's SDKs, urllib3 and load balancers retry it after
    Retry-After (RFC 9110 section 15.6.4)."""

    status = 503
    type = "service_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class RestartingError(RelayError):
    """relay stopped waiting for an answer: its drain's deadline passed (SIGTERM)."""

    status = 503
    type = "server_error"
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("relay is restarting; please retry.", headers={"Retry-After": "1"})


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object; the one shape every relay error takes on the wire."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_json(error: RelayError) -> bytes:
    return orjson.dumps(error.body())
