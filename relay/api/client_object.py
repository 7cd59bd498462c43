"""A client as the admin API and `relay clients` show it (the API key only when just made)."""

from __future__ import annotations

from typing import Any

from relay.services.apikeys import ApiKey
from relay.stores.clients import Client


def client_json(client: Client, key: ApiKey | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "object": "client",
        "id": client.id,
        "name": client.name,
        "key_id": client.key_id,
        "key_version": client.key_version,
        "scopes": list(client.scopes),
        "status": client.status,
        "limits": client.limits,
        "store_history": client.store_history,
        "metadata": client.metadata,
        "created_at": int(client.created_at.timestamp()),
        "updated_at": int(client.updated_at.timestamp()),
    }
    if key is not None:
        data["api_key"] = str(key)  # shown once; only its bcrypt hash is kept
    return data
