"""relay's OpenAPI 3.1 description, built from Python so errors and schemas are written once."""

from __future__ import annotations

from typing import Any

from relay import __version__
from relay.api.spec.admin import ADMIN_PATHS, ADMIN_SCHEMAS
from relay.api.spec.components import COMPONENTS
from relay.api.spec.history import HISTORY_PATHS, HISTORY_SCHEMAS
from relay.api.spec.paths import PATHS
from relay.api.spec.proofs import PROOF_PATHS, PROOF_SCHEMAS

DESCRIPTION = """\
relay is an authenticated gateway in front of LLM providers. Trade an API key
for a short-lived JWT at `POST /auth/token`, then call the OpenAI-compatible
endpoints under `/v1` with `Authorization: Bearer <token>`.

Every error has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
Every response carries `X-Request-Id` (kept from the request when given)."""


def build_spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "operations", "description": "Health, metrics and this description."},
            {"name": "auth", "description": "The API key → JWT exchange and the caller."},
            {"name": "chat", "description": "OpenAI-compatible chat, relayed to providers."},
            {"name": "admin", "description": "API clients, with the admin token."},
            {"name": "proofs", "description": "Attestation reports and signed receipts."},
            {"name": "history", "description": "Stored conversations: read, poll, search, erase."},
        ],
        "paths": {**PATHS, **ADMIN_PATHS, **PROOF_PATHS, **HISTORY_PATHS},
        "components": {
            **COMPONENTS,
            "schemas": {
                **COMPONENTS["schemas"],
                **ADMIN_SCHEMAS,
                **PROOF_SCHEMAS,
                **HISTORY_SCHEMAS,
            },
        },
    }
