"""Managing API clients: creation (fields checked by relay.services.client_fields),
listing, changes, key rotation."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.errors import InvalidRequestError, NotFoundError, RelayError
from relay.services.apikeys import ApiKey, KeyHasher
from relay.services.client_fields import client_fields
from relay.services.cursors import decode_cursor, encode_cursor, not_a_cursor
from relay.stores.clients import Client, ClientStore, KeyIdTaken, canonical_client_id

# A listing cursor holds the sort key of the last client a page showed (created_at
# in microseconds since the epoch, and the id), so the next page starts from that
# position whether or not that client still exists.
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)

Position = tuple[datetime.datetime, str]

log = logging.getLogger(__name__)


def client_cursor(position: Position) -> str:
    created_at, client_id = position
    return encode_cursor({"t": (created_at - _EPOCH) // _MICROSECOND, "id": client_id})


def _cursor_position(text: str) -> Position:
    value = decode_cursor(text)
    try:
        micros, client_id = value["t"], value["id"]
        if type(micros) is not int or not isinstance(client_id, str):
            raise ValueError("not a position")
        checked = canonical_client_id(client_id)
        if checked is None:
            raise ValueError("not a client id")
        return _EPOCH + micros * _MICROSECOND, checked
    # Past year 9999: OverflowError.
    except (KeyError, ValueError, OverflowError):
        raise not_a_cursor() from None


@dataclass(frozen=True)
class ClientPage:
    clients: list[Client]
    has_more: bool
    next_cursor: str | None  # the last client's position, else the one asked from


async def client_or_404(store: ClientStore, client_id: str) -> Client:
    """The client `client_id` names; NotFoundError if there is none."""
    client = await store.get(client_id)
    if client is None:
        raise NotFoundError(f"No client {client_id!r}.")
    return client


class ClientService:
    def __init__(
        self,
        store: ClientStore,
        hasher: KeyHasher,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        # This instance's cache forgets a changed client before the call returns;
        # other instances (and this one, again) hear of it by NOTIFY, a moment later.
        self._on_change = on_change or (lambda client_id: None)

    async def create(self, data: dict[str, Any]) -> tuple[Client, ApiKey]:
        fields = client_fields(data, creating=True)
        for _ in range(3):
            key = ApiKey.new()
            try:
                client = await self.store.create(
                    key_id=key.key_id, key_hash=await self.hasher.hash(key.secret), **fields
                )
            except KeyIdTaken:
                continue
            return client, key
        raise RuntimeError("could not find a free key id")

    async def get(self, client_id: str) -> Client:
        return await client_or_404(self.store, client_id)

    async def list_page(self, *, limit: int, after: str | None) -> ClientPage:
        position = await self._position(after) if after else None
        clients, more = await self.store.list_page(limit=limit, after=position)
        if clients:
            position = (clients[-1].created_at, clients[-1].id)
        return ClientPage(clients, more, client_cursor(position) if position else None)

    async def _position(self, after: str) -> Position:
        legacy_id = canonical_client_id(after)
        if legacy_id is None:
            return _cursor_position(after)
        # Earlier versions paged by the last client's id (still `last_id`): such a cursor
        # is placed by its client, and one whose client is gone cannot be placed.
        client = await self.store.get(legacy_id)
        if client is None:
            raise InvalidRequestError(
                f"after={after!r} names no client (deleted?); list again from the start.",
                param="after",
            )
        return client.created_at, client.id

    async def update(self, client_id: str, data: dict[str, Any]) -> Client:
        client = await self.store.update(client_id, client_fields(data, creating=False))
        if client is None:
            raise NotFoundError(f"No client {client_id!r}.")
        self._on_change(client.id)
        return client

    async def regenerate_key(self, client_id: str) -> tuple[Client, ApiKey]:
        for _ in range(3):
            key = ApiKey.new()
            try:
                client = await self.store.replace_key(
                    client_id, key_id=key.key_id, key_hash=await self.hasher.hash(key.secret)
                )
            except KeyIdTaken:
                continue
            if client is None:
                raise NotFoundError(f"No client {client_id!r}.")
            self._on_change(client.id)
            return client, key
        raise RuntimeError("could not find a free key id")

    async def delete(self, client_id: str) -> str:
        """Delete the client; returns its id as stored (the cache's key for it)."""
        checked = canonical_client_id(client_id)
        if checked is None or not await self.store.delete(checked):
            raise NotFoundError(f"No client {client_id!r}.")
        self._on_change(checked)
        return checked

    async def authenticate_key(self, text: str) -> Client | None:
        """The active client owning this key, or None. A well-formed key always costs one
        bcrypt check, known or not; text that cannot be a key is refused without one
        (the format is public: refusing it sooner tells a guesser nothing)."""
        key = ApiKey.parse(text)
        if key is None:
            return None
        client = await self.store.get_by_key_id(key.key_id)
        matches = await self.hasher.check(key.secret, client.key_hash if client else None)
        if matches and client is not None and client.active:
            if self.hasher.outdated(client.key_hash):
                await self._rehash(client, key)
            return client
        return None

    async def _rehash(self, client: Client, key: ApiKey) -> None:
        """Keep the key's hash at the current cost, which unknown keys are checked at.
        Its version stays (its tokens stay good); a key replaced meanwhile stays."""
        key_hash = await self.hasher.hash(key.secret)
        try:
            await self.store.rehash_key(
                client.id, key_id=key.key_id, old_hash=client.key_hash, new_hash=key_hash
            )
        except RelayError as exc:  # tried again at the key's next exchange
            log.warning(
                "cannot store a key's hash at the current cost",
                extra={"client_id": client.id, "error": str(exc)},
            )
