"""The OpenAPI description of relay's admin API: API clients, managed with the admin token."""

from __future__ import annotations

from typing import Any

from relay.api.spec.components import ref
from relay.api.spec.paths import ADMIN, JSON_BODY, answer, operation, path_parameter
from relay.services.client_fields import LIMIT_NAMES, MAX_LIMIT

CLIENT_ID = path_parameter("client_id", "The client's id.")


def _limits(value: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": description,
        "properties": {name: value for name in LIMIT_NAMES},
    }


_LIMIT = {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT}

ADMIN_SCHEMAS: dict[str, Any] = {
    "Limits": _limits(_LIMIT, "Per-minute overrides of the rate-limit defaults; 0 blocks."),
    "LimitsChange": _limits(
        {"oneOf": [_LIMIT, {"type": "null"}]},
        "Overrides to set; null drops one. A PATCH merges these into the client's limits.",
    ),
    "ClientFields": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "scopes": {
                "type": "array",
                "maxItems": 64,
                "items": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:*/@+-]{0,127}$"},
            },
            "status": {"type": "string", "enum": ["active", "disabled"]},
            "limits": ref("schemas", "LimitsChange"),
            "store_history": {"type": "boolean"},
            "metadata": {"type": "object", "maxProperties": 32},
        },
    },
    "ClientCreate": {
        "allOf": [ref("schemas", "ClientFields"), {"type": "object", "required": ["name"]}]
    },
    "ClientUpdate": {"allOf": [ref("schemas", "ClientFields"), {"minProperties": 1}]},
    "Client": {
        "type": "object",
        "required": ["object", "id", "name", "key_id", "key_version", "scopes", "status"],
        "properties": {
            "object": {"const": "client"},
            "id": {"type": "string"},
            "name": {"type": "string"},
            "key_id": {"type": "string"},
            "key_version": {"type": "integer"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "status": {"type": "string", "enum": ["active", "disabled"]},
            "limits": ref("schemas", "Limits"),
            "store_history": {"type": "boolean"},
            "metadata": {"type": "object"},
            "created_at": {"type": "integer"},
            "updated_at": {"type": "integer"},
        },
    },
    "ClientWithKey": {
        "allOf": [
            ref("schemas", "Client"),
            {
                "type": "object",
                "required": ["api_key"],
                "properties": {
                    "api_key": {
                        "type": "string",
                        "description": "rk_<key id>_<secret>; shown only in this response.",
                    }
                },
            },
        ]
    },
    "ClientList": {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("schemas", "Client")},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
            "next_cursor": {
                "type": ["string", "null"],
                "description": (
                    "`after` for the next page: an opaque position, which holds even if "
                    "the client it came from is deleted. An empty page keeps the one it "
                    "was asked from; null only when nothing was listed from the start."
                ),
            },
        },
    },
    "ReceiptChainPage": {
        "type": "object",
        "required": ["object", "data", "last_seq", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": ref("schemas", "Receipt"),
                "description": "In chain order, each byte for byte as signed.",
            },
            "last_seq": {
                "type": "integer",
                "description": "The last receipt's position (`after` itself on an empty"
                " page): `after` for the next page.",
            },
            "has_more": {"type": "boolean"},
        },
    },
    "ClientDeleted": {
        "type": "object",
        "required": ["object", "id", "deleted"],
        "properties": {
            "object": {"const": "client.deleted"},
            "id": {"type": "string"},
            "deleted": {"const": True},
        },
    },
}

ADMIN_PATHS: dict[str, Any] = {
    "/admin/receipts": {
        "get": operation(
            "list_receipts",
            "Read the receipt chain, every client's, in order",
            tag="admin",
            security=ADMIN,
            parameters=(
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "description": "The previous page's `last_seq`; 0 starts the chain.",
                    "schema": {"type": "integer", "minimum": 0, "default": 0},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                },
            ),
            description=(
                "For auditing: `relay verify --receipt` checks each page's signatures and that "
                "each receipt names the one before it, so a deleted or altered receipt shows."
            ),
            responses={"200": answer("A page of the chain.", ref("schemas", "ReceiptChainPage"))},
            errors=(400, 401, 503),
        )
    },
    "/admin/clients": {
        "get": operation(
            "list_clients",
            "List API clients",
            tag="admin",
            security=ADMIN,
            parameters=(
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                },
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "description": (
                        "The previous page's `next_cursor`. A client id (`last_id`), as "
                        "earlier versions paged, is still read while that client exists."
                    ),
                    "schema": {"type": "string"},
                },
            ),
            responses={"200": answer("A page of clients.", ref("schemas", "ClientList"))},
            errors=(400, 401, 503),
        ),
        "post": operation(
            "create_client",
            "Create an API client (its key is shown once)",
            tag="admin",
            security=ADMIN,
            body=ref("schemas", "ClientCreate"),
            responses={
                "201": answer(
                    "The client and its key.",
                    ref("schemas", "ClientWithKey"),
                    headers={
                        "Location": {
                            "description": "The new client: /admin/clients/{client_id}.",
                            "schema": {"type": "string"},
                        }
                    },
                )
            },
            errors=(*JSON_BODY, 401, 503),
        ),
    },
    "/admin/clients/{client_id}": {
        "get": operation(
            "get_client",
            "Read an API client",
            tag="admin",
            security=ADMIN,
            parameters=(CLIENT_ID,),
            responses={"200": answer("The client.", ref("schemas", "Client"))},
            errors=(401, 404, 503),
        ),
        "patch": operation(
            "update_client",
            "Change a client's name, scopes, status, limits or history setting",
            tag="admin",
            security=ADMIN,
            parameters=(CLIENT_ID,),
            body=ref("schemas", "ClientUpdate"),
            description="Disabling a client refuses its tokens at once, on every instance.",
            responses={"200": answer("The changed client.", ref("schemas", "Client"))},
            errors=(*JSON_BODY, 401, 404, 503),
        ),
        "delete": operation(
            "delete_client",
            "Delete an API client",
            tag="admin",
            security=ADMIN,
            parameters=(CLIENT_ID,),
            responses={"200": answer("Deleted.", ref("schemas", "ClientDeleted"))},
            errors=(401, 404, 503),
        ),
    },
    "/admin/clients/{client_id}/regenerate-key": {
        "post": operation(
            "regenerate_client_key",
            "Issue a new API key; the old key and its tokens stop working",
            tag="admin",
            security=ADMIN,
            parameters=(CLIENT_ID,),
            responses={
                "200": answer("The client and its new key.", ref("schemas", "ClientWithKey"))
            },
            errors=(401, 404, 503),
        )
    },
}
