"""Managing API clients: creation, validation of their fields, key rotation."""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.errors import InvalidRequestError, NotFoundError
from relay.services.apikeys import ApiKey, KeyHasher
from relay.services.cursors import decode_cursor, encode_cursor, not_a_cursor
from relay.stores.clients import Client, ClientStore, KeyIdTaken, canonical_client_id
from relay.upstreams.routing import MODEL_SCOPE

STATUSES = ("active", "disabled")
# Per-client overrides of the rate-limit defaults in settings.
LIMIT_NAMES = ("requests_per_minute", "chat_requests_per_minute", "tokens_per_minute")
# An override's ceiling: a billion requests or tokens a minute.
MAX_LIMIT = 10**9
_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:*/@+-]{0,127}")
_MAX_SCOPES = 64
# Characters that show nothing: a name of only these (zero-width spaces) names nothing.
_INVISIBLE = frozenset({"Zs", "Cf", "Cc", "Zl", "Zp", "Mn"})


def _name(value: Any) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not any(unicodedata.category(char) not in _INVISIBLE for char in name) or len(name) > 200:
        raise InvalidRequestError(
            "name must be a non-empty string of at most 200 characters.", param="name"
        )
    # Control characters (NUL, which PostgreSQL text cannot hold, line ends, terminal
    # escapes) would garble `relay clients list` and the logs of whoever prints it.
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise InvalidRequestError("name must not hold control characters.", param="name")
    return name


def _scopes(value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or len(value) > _MAX_SCOPES
        or not all(isinstance(scope, str) and _SCOPE.fullmatch(scope) for scope in value)
    ):
        raise InvalidRequestError(
            f"scopes must be a list of at most {_MAX_SCOPES} strings of letters, digits, _.:*/@+-.",
            param="scopes",
        )
    for scope in value:
        _check_model_scope(scope)
    return list(dict.fromkeys(value))


def _check_model_scope(scope: str) -> None:
    """A scope that looks meant to name models must name them as relay reads them: a
    client holding no `model:` scope may use every model, so `Model:x` or `models:x`
    would widen it to all instead of narrowing it to one, and `model:x*` (no pattern
    but `*` alone is read) would grant none."""
    if not scope.lower().startswith("model"):
        return  # another scope: relay gives it no meaning, the client's own apps may
    model = scope.removeprefix(MODEL_SCOPE)
    if model == scope or not model:
        raise InvalidRequestError(
            f"scope {scope!r} is not a model scope relay reads: write model:<id> (a public"
            " model id) or model:* for every model.",
            param="scopes",
        )
    if "*" in model and model != "*":
        raise InvalidRequestError(
            f"scope {scope!r} has a wildcard inside a model id: only model:* (every model)"
            " is one; name each model otherwise.",
            param="scopes",
        )


def _status(value: Any) -> str:
    if value not in STATUSES:
        raise InvalidRequestError("status must be 'active' or 'disabled'.", param="status")
    return str(value)


def _limits(value: Any) -> dict[str, int | None]:
    """Overrides by name; None (null) drops one, back to the default. A PATCH merges
    them into the client's (RFC 7396): the limits it does not name stay as they are."""
    if not isinstance(value, dict):
        raise InvalidRequestError("limits must be an object.", param="limits")
    limits: dict[str, int | None] = {}
    for name, limit in value.items():
        if name not in LIMIT_NAMES:
            raise InvalidRequestError(
                f"unknown limit {name!r}; known: {', '.join(LIMIT_NAMES)}.", param=f"limits.{name}"
            )
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_LIMIT
        ):
            raise InvalidRequestError(
                f"{name} must be a whole number from 0 to {MAX_LIMIT}, or null.",
                param=f"limits.{name}",
            )
        limits[name] = limit
    return limits


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError("store_history must be true or false.", param="store_history")
    return value


def _metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > 32:
        raise InvalidRequestError(
            "metadata must be an object with at most 32 keys.", param="metadata"
        )
    if not _storable(value):
        raise InvalidRequestError(
            f"metadata must hold no NUL characters, no numbers beyond 64 bits"
            f" and nest at most {_METADATA_DEPTH} levels deep.",
            param="metadata",
        )
    return value


# orjson reads JSON nested 1,024 deep but writes at most 254; metadata is for labels.
_METADATA_DEPTH = 16


def _storable(value: Any, depth: int = 0) -> bool:
    """False for what jsonb refuses (NUL), gives back unanswerable (|n| ≥ 2**63), or
    nests deeper than `_METADATA_DEPTH`.

    PostgreSQL stores 1e20 as the integer 100000000000000000000, which no
    64-bit JSON encoder can write back, so large floats are refused too.
    """
    if depth > _METADATA_DEPTH:
        return False
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int | float):
        return abs(value) < 2**63
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item, depth + 1) for key, item in value.items())
    if isinstance(value, list):
        return all(_storable(item, depth + 1) for item in value)
    return True


_FIELDS = {
    "name": _name,
    "scopes": _scopes,
    "status": _status,
    "limits": _limits,
    "store_history": _flag,
    "metadata": _metadata,
}


def client_fields(data: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Validate a create or patch body; unknown fields are an error, not ignored."""
    unknown = set(data) - set(_FIELDS)
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidRequestError(f"Unknown field {field!r}.", param=field)
    if creating and "name" not in data:
        raise InvalidRequestError("name is required.", param="name")
    if not creating and not data:
        raise InvalidRequestError("Nothing to change.")
    fields: dict[str, Any] = {field: _FIELDS[field](value) for field, value in data.items()}
    if creating and "limits" in fields:
        fields["limits"] = {name: n for name, n in fields["limits"].items() if n is not None}
    return fields


# A listing cursor holds the sort key of the last client a page showed (created_at
# in microseconds since the epoch, and the id), so the next page starts from that
# position whether or not that client still exists.
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)

Position = tuple[datetime.datetime, str]


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
        client = await self.store.get(client_id)
        if client is None:
            raise NotFoundError(f"No client {client_id!r}.")
        return client

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
            return client
        return None
