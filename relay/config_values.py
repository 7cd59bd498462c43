"""How a raw `RELAY_*` string becomes a setting's value: parsers, bounds, errors."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Callable
from dataclasses import field
from typing import Any


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class Secret(str):
    """A string whose repr never shows its value, so settings can be logged safely."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"


MIN_SECRET_BYTES = 32


def text(raw: str) -> str:
    return raw


def address(raw: str) -> str:
    # Empty is refused, not passed on: aiohttp would listen on every interface, past
    # the proxy meant to stand in front of relay.
    if not raw:
        raise ValueError("must not be empty (remove the line to keep 127.0.0.1)")
    return raw


def readable_postgres_url(raw: str) -> str:
    from relay.stores.database_admin import dsn_problem  # the driver's own reading of it

    if problem := dsn_problem(raw):
        raise ValueError(problem)
    return raw


def readable_redis_url(raw: str) -> str:
    from redis.connection import parse_url  # the client's own reading of it

    try:
        parse_url(raw)
    except ValueError:  # its words may quote the URL, password and all
        raise ValueError("not a Redis URL (redis://, rediss:// or unix://)") from None
    return raw


def integer(raw: str) -> int:
    return int(raw)


def number(raw: str) -> float:
    value = float(raw)
    # float() accepts "nan" and "inf", which pass every minimum check.
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    # Empty is refused, not read as false: `RELAY_RECEIPTS=` would otherwise turn
    # receipts off silently, and the operator may have meant the default.
    raise ValueError("expected true or false (remove the line to keep the default)")


def positive_or_none(raw: str) -> int | None:
    if not raw.strip():
        return None
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1 (leave it unset to keep history forever)")
    return value


def words(raw: str) -> tuple[str, ...]:
    return tuple(part for part in raw.replace(",", " ").split() if part)


def networks(raw: str) -> tuple[str, ...]:
    networks = []
    for word in words(raw):
        if word == "unix":
            networks.append(word)
            continue
        try:
            networks.append(str(ipaddress.ip_network(word, strict=False)))
        except ValueError:
            raise ValueError(f"{word!r} is not a CIDR (like 10.0.0.0/8) or 'unix'") from None
    return tuple(networks)


def setting(
    env: str, default: Any, parse: Callable[[str], Any] | None = text, **kwargs: Any
) -> Any:
    """Declare a field read from the environment variable `env`."""
    return field(default=default, metadata={"env": env, "parse": parse, **kwargs})


def parse_value(spec: dataclasses.Field[Any], raw: str) -> Any:
    name = spec.metadata["env"]
    try:
        value = spec.metadata["parse"](raw.strip())
    except ValueError as exc:
        # A setting that may come from a file is a secret, or a URL with a password in it.
        shown = name if spec.metadata.get("file") else f"{name}={raw!r}"
        raise ConfigError(f"{shown} is invalid: {exc}") from None
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    if "minimum" in spec.metadata and value < spec.metadata["minimum"]:
        raise ConfigError(f"{name} must be at least {spec.metadata['minimum']}")
    if "maximum" in spec.metadata and value > spec.metadata["maximum"]:
        raise ConfigError(f"{name} must be at most {spec.metadata['maximum']}")
    return value
