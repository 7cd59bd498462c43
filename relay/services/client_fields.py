"""An API client's fields as an operator gives them: each checked, none guessed."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from relay.errors import InvalidRequestError
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
