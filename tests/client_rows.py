"""A client's row as relay reads it, for tests that need one without a database."""

from __future__ import annotations

import datetime

from relay.stores.clients import Client


def client_row(number: int = 1) -> Client:
    """An active client, told apart from others by `number`."""
    now = datetime.datetime.now(datetime.UTC)
    return Client(
        id=f"00000000-0000-0000-0000-{number:012d}",
        name=f"client {number}",
        key_id=f"k{number}",
        key_hash="h",
        key_version=1,
        scopes=(),
        status="active",
        limits={},
        store_history=True,
        metadata={},
        created_at=now,
        updated_at=now,
    )
