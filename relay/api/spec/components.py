"""Reusable parts of the OpenAPI description: schemas, error responses, security schemes."""

from __future__ import annotations

from typing import Any

from relay.upstreams.health import PROBE_INTERVAL_S

ERROR_STATUSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed or a parameter is invalid."),
    401: ("Unauthorized", "Credentials are missing, invalid, expired or revoked."),
    403: ("Forbidden", "The caller may not do this."),
    404: ("NotFound", "No such resource (or it belongs to another client)."),
    408: ("RequestTimeout", "The body did not arrive within 120 s of the headers."),
    409: ("Conflict", "The resource is in a state that does not allow this."),
    413: (
        "PayloadTooLarge",
        "The body is larger than the route accepts: 4 KiB for /auth/token, 64 KiB for the"
        " admin API, RELAY_MAX_BODY_BYTES elsewhere.",
    ),
    415: (
        "UnsupportedMediaType",
        "Send the body as application/json, in UTF-8 (no other charset), without Content-Encoding.",
    ),
    422: ("Unprocessable", "The body is well-formed but cannot be acted on."),
    429: ("TooManyRequests", "A rate limit refused the request; retry after Retry-After."),
    502: (
        "BadGateway",
        "The provider failed or answered with an error. Where asking again would meet"
        " the same answer (`upstream_auth`, `upstream_quota`, `upstream_not_found`,"
        " `upstream_not_streamed`, `upstream_undecodable`, `upstream_malformed`,"
        " `upstream_too_large`), the answer says `x-should-retry: false`; the others"
        " (`upstream_unreachable`, `upstream_closed`, `upstream_error`, `upstream_cut`)"
        " may succeed when asked again.",
    ),
    503: ("ServiceUnavailable", "A dependency (PostgreSQL, the TEE agent) is unavailable."),
    504: (
        "GatewayTimeout",
        "The provider did not answer in time (`upstream_timeout`: may succeed when asked"
        " again), or its answer ran longer than relay lets one run (`answer_too_long`,"
        " with `x-should-retry: false`).",
    ),
}


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _string_header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


HEADERS: dict[str, Any] = {
    "RequestId": _string_header("This request's id: the client's X-Request-Id, or a new one."),
    "WWWAuthenticate": {
        "description": "The scheme to authenticate with (RFC 9110 section 11.6.1), and,"
        " for a token that was sent and refused, RFC 6750's error attribute.",
        "required": True,
        "schema": {"type": "string"},
    },
    "RetryAfter": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "ShouldRetry": {
        "description": "`false` when asking again would meet the same answer: OpenAI's SDKs,"
        " which retry a 408, 409, 429 or 5xx, then do not.",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
}
for _kind in ("requests", "tokens"):
    for _part, _text in (
        ("limit", "The limit per window"),
        ("remaining", "What is left in this window"),
        ("reset", "When the window resets, as a duration (like 6m0s)"),
    ):
        HEADERS[f"RateLimit{_part.title()}{_kind.title()}"] = _string_header(
            f"{_text}, for {_kind}."
        )


def _limit_headers(*kinds: str) -> dict[str, Any]:
    return {
        f"x-ratelimit-{part}-{kind}": ref("headers", f"RateLimit{part.title()}{kind.title()}")
        for kind in kinds
        for part in ("limit", "remaining", "reset")
    }


# Every /v1 answer counts against the client's requests; only chats spend tokens.
REQUEST_LIMIT_HEADERS = _limit_headers("requests")
CHAT_LIMIT_HEADERS = _limit_headers("requests", "tokens")

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "examples": ["invalid_request_error"]},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "Check": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
            "latency_ms": {"type": "number"},
            "error": {"type": "string"},
        },
    },
    "UpstreamCheck": {
        "type": "object",
        "required": ["status", "age_s"],
        "properties": {
            "status": {
                "type": "string",
                "enum": ["ok", "degraded", "down"],
                "description": "`ok` when it answers (a 404 or 405 too: it lists no models);"
                " `degraded` when it rate limits relay (429); `down` when it refuses relay's"
                " key (401, 403), fails (5xx) or cannot be reached in time.",
            },
            "latency_ms": {"type": "number"},
            "error": {"type": "string"},
            "age_s": {"type": "number", "description": "Seconds since it was probed."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "down", "draining"]},
            "version": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": ref("schemas", "Check")},
            "upstreams": {
                "type": "object",
                "description": "Each provider by its operator label, from a `GET /models`"
                f" probed at most every {PROBE_INTERVAL_S:g} s per instance. A provider that"
                " is down makes the overall status `degraded`, never a 503.",
                "additionalProperties": ref("schemas", "UpstreamCheck"),
            },
            "attestation": {
                "type": "object",
                "description": "How receipts are signed; `warning` when no TEE vouches for it.",
                "properties": {
                    "tee_type": {"type": "string", "enum": ["tdx", "none"]},
                    "receipts": {"type": "boolean"},
                    "warning": {"type": "string"},
                },
            },
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["api_key"],
        "properties": {
            "api_key": {"type": "string", "minLength": 1, "examples": ["rk_abc123_secret"]}
        },
    },
    "Token": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in", "scope"],
        "properties": {
            "access_token": {"type": "string", "description": "A JWT; send it as a bearer token."},
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer", "description": "Seconds until it expires."},
            "scope": {"type": "string", "description": "The client's scopes, space separated."},
        },
    },
    "Me": {
        "type": "object",
        "required": ["object", "id", "name", "scopes", "token_expires_at", "token_expires_in"],
        "properties": {
            "object": {"const": "client"},
            "id": {"type": "string"},
            "name": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "token_expires_at": {"type": "integer", "description": "Unix time."},
            "token_expires_in": {"type": "integer", "description": "Seconds."},
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string", "description": "The upstream serving it."},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("schemas", "Model")},
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {
                "type": "string",
                "enum": ["system", "developer", "user", "assistant", "tool"],
            },
            "content": {
                "description": "Text, or OpenAI's list of content parts.",
                "oneOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}],
            },
            "name": {"type": "string"},
            "tool_calls": {"type": "array"},
            "tool_call_id": {"type": "string"},
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "description": "OpenAI's chat completion request; fields relay does not know pass through.",
        "required": ["model", "messages"],
        "examples": [{"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}],
        "properties": {
            "model": {"type": "string", "examples": ["sim-small"]},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": ref("schemas", "ChatMessage"),
            },
            "stream": {"type": "boolean", "default": False},
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "store": {
                "type": "boolean",
                "default": True,
                "description": "false keeps this exchange out of relay's history.",
            },
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number"},
            "top_p": {"type": "number"},
            "tools": {"type": "array"},
            "tool_choice": {},
            "user": {"type": "string"},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "description": "The provider's answer, relayed byte for byte.",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array"},
            "usage": {"type": ["object", "null"]},
        },
    },
}


def _error_response(status: int, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-Id": ref("headers", "RequestId")},
        "content": {"application/json": {"schema": ref("schemas", "Error")}},
    }
    if status in (429, 503):
        response["headers"]["Retry-After"] = ref("headers", "RetryAfter")
    if status in (408, 409, 429) or status >= 500:
        response["headers"]["x-should-retry"] = ref("headers", "ShouldRetry")
    if status == 401:
        response["headers"]["WWW-Authenticate"] = ref("headers", "WWWAuthenticate")
    return response


RESPONSES: dict[str, Any] = {
    name: _error_response(status, description)
    for status, (name, description) in ERROR_STATUSES.items()
}

COMPONENTS: dict[str, Any] = {
    "schemas": SCHEMAS,
    "responses": RESPONSES,
    "headers": HEADERS,
    "securitySchemes": {
        "bearerToken": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT from POST /auth/token.",
        },
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "RELAY_ADMIN_TOKEN.",
        },
        "metricsToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "RELAY_METRICS_TOKEN, when it is set.",
        },
    },
}
