"""How an operation is described, and the endpoints of operations, auth and chat; operationId
is the route's name in routes.py. The other surfaces describe theirs beside it."""

from __future__ import annotations

from typing import Any

from relay.api.spec.components import (
    CHAT_LIMIT_HEADERS,
    ERROR_STATUSES,
    REQUEST_LIMIT_HEADERS,
    ref,
)

REQUEST_ID = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "description": "Your id for this request (1-128 of A-Za-z0-9._:-); echoed back.",
    "schema": {"type": "string"},
}
Security = list[dict[str, list[str]]]
JWT: Security = [{"bearerToken": []}]
ADMIN: Security = [{"adminToken": []}]
NONE: Security = [{}]
# Every JWT route can be refused by the token check, the rate limit or a dependency.
AUTHENTICATED = (401, 429, 503)
JSON_BODY = (400, 408, 413, 415)


def path_parameter(name: str, description: str = "") -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "path", "required": True}
    if description:
        parameter["description"] = description
    parameter["schema"] = {"type": "string"}
    return parameter


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def answer(
    description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": json_content(schema)}
    if headers:
        response["headers"] = headers
    return response


def operation(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    security: Security,
    responses: dict[str, Any],
    errors: tuple[int, ...] = (),
    parameters: tuple[dict[str, Any], ...] = (),
    body: dict[str, Any] | None = None,
    description: str = "",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": security,
        "parameters": [*parameters, REQUEST_ID],
        "responses": {
            **responses,
            **{
                str(status): ref("responses", ERROR_STATUSES[status][0])
                for status in sorted(set(errors))
            },
        },
    }
    if description:
        spec["description"] = description
    if body is not None:
        spec["requestBody"] = {"required": True, "content": json_content(body)}
    return spec


PATHS: dict[str, Any] = {
    "/health": {
        "get": operation(
            "get_health",
            "Liveness and each backend's status",
            tag="operations",
            security=NONE,
            description="503 when PostgreSQL is down, or `draining` while relay stops."
            " Redis or a provider being down makes it `degraded`, still 200.",
            responses={
                "200": answer(
                    "relay serves; `degraded` when Redis or a provider is not ok.",
                    ref("schemas", "Health"),
                ),
                "503": answer("A backend is down, or relay is draining.", ref("schemas", "Health")),
            },
        )
    },
    "/metrics": {
        "get": operation(
            "get_metrics",
            "Prometheus metrics",
            tag="operations",
            security=[{}, {"metricsToken": []}],
            description="Needs the metrics token when RELAY_METRICS_TOKEN is set.",
            responses={
                "200": {
                    "description": "Prometheus text exposition.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            errors=(401,),
        )
    },
    "/openapi.json": {
        "get": operation(
            "get_openapi",
            "This description",
            tag="operations",
            security=NONE,
            responses={"200": answer("OpenAPI 3.1.", {"type": "object"})},
        )
    },
    "/docs": {
        "get": operation(
            "get_docs",
            "This description, rendered",
            tag="operations",
            security=NONE,
            responses={
                "200": {
                    "description": "An HTML page.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        )
    },
    "/docs/{asset}": {
        "get": operation(
            "get_docs_asset",
            "The docs page's script and stylesheet",
            tag="operations",
            security=NONE,
            parameters=(
                {
                    "name": "asset",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": ["docs.js", "docs.css"]},
                },
            ),
            responses={
                "200": {
                    "description": "The asset.",
                    "content": {
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}},
                    },
                }
            },
            errors=(404,),
        )
    },
    "/auth/token": {
        "post": operation(
            "create_token",
            "Exchange an API key for a JWT",
            tag="auth",
            security=NONE,
            body=ref("schemas", "TokenRequest"),
            description=(
                "A wrong key, an unknown key and a disabled client get the same 401. When"
                " relay is checking as many keys as it can at once: 503 key_checks_busy,"
                " with Retry-After: 1."
            ),
            responses={"200": answer("A new access token.", ref("schemas", "Token"))},
            errors=(*JSON_BODY, 401, 429, 503),
        )
    },
    "/v1/me": {
        "get": operation(
            "get_me",
            "The caller's client and token expiry",
            tag="auth",
            security=JWT,
            responses={"200": answer("The caller.", ref("schemas", "Me"), REQUEST_LIMIT_HEADERS)},
            errors=AUTHENTICATED,
        )
    },
    "/v1/models": {
        "get": operation(
            "list_models",
            "Models this client may use",
            tag="chat",
            security=JWT,
            responses={
                "200": answer("The models.", ref("schemas", "ModelList"), REQUEST_LIMIT_HEADERS)
            },
            errors=AUTHENTICATED,
        )
    },
    "/v1/models/{model}": {
        "get": operation(
            "get_model",
            "One model this client may use",
            tag="chat",
            security=JWT,
            parameters=(path_parameter("model", "Its public id; it may hold slashes."),),
            responses={"200": answer("The model.", ref("schemas", "Model"), REQUEST_LIMIT_HEADERS)},
            errors=(*AUTHENTICATED, 404),
        )
    },
    "/v1/chat/completions": {
        "post": operation(
            "create_chat_completion",
            "Create a chat completion (OpenAI-compatible)",
            tag="chat",
            security=JWT,
            body=ref("schemas", "ChatCompletionRequest"),
            description=(
                "Relayed to the upstream serving `model`. With `stream: true` the answer is "
                "server-sent events exactly as the provider sent them, ending in "
                "`data: [DONE]`; a failure after the stream began is a final "
                '`data: {"error": …}` event. Recorded in history unless `store: false`.'
            ),
            responses={
                "200": {
                    "description": "The completion, or its stream.",
                    "headers": {
                        "x-receipt-id": {
                            "description": "The signed receipt of this answer.",
                            "schema": {"type": "string"},
                        },
                        **CHAT_LIMIT_HEADERS,
                    },
                    "content": {
                        **json_content(ref("schemas", "ChatCompletion")),
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                }
            },
            errors=(*JSON_BODY, *AUTHENTICATED, 403, 404, 409, 422, 502, 504),
        )
    },
}
