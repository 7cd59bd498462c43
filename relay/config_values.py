"""How a raw `RELAY_*` string becomes a setting's value: parsers, bounds, errors."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any
from urllib.parse import unquote, urlsplit


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class WrongKindError(ValueError):
    """The raw text is not of the setting's kind; the message names the kind ("a whole
    number"), and parse_value says it in relay's words, not Python's."""


class Secret(str):
    """A string whose repr never shows its value, so settings can be logged safely."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"


MIN_SECRET_BYTES = 32


def text(raw: str) -> str:
    return raw


def not_empty(default: str) -> Callable[[str], str]:
    """Text that may not be empty (nor only whitespace): the setting's `default` is kept
    by leaving it unset, and an empty value would break relay without a word."""

    def parse(raw: str) -> str:
        if not raw:
            raise ValueError(f"must not be empty (remove the line to keep {default})")
        return raw

    return parse


# Empty is refused, not passed on: aiohttp would listen on every interface, past
# the proxy meant to stand in front of relay.
address = not_empty("127.0.0.1")


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
    # A redis:// URL's path is its database number; redis-py takes any other path (`/abc`,
    # a typo) for database 0 without a word. (unix:// names it in ?db=, which it checks.)
    parts = urlsplit(raw)
    if parts.scheme in ("redis", "rediss"):
        database = unquote(parts.path).replace("/", "")
        if database and not (database.isascii() and database.isdigit()):
            raise ValueError("its path must be a database number, such as /0")
    return raw


def integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise WrongKindError("a whole number") from None


def number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise WrongKindError("a number") from None
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
    value = integer(raw)
    if value < 1:
        raise ValueError("must be at least 1 (leave it unset to keep history forever)")
    return value


def words(raw: str) -> tuple[str, ...]:
    return tuple(part for part in raw.replace(",", " ").split() if part)


# What a browser sends in Origin: scheme://host[:port], the host in ASCII (an IDN as
# punycode) or an IPv6 address in brackets; a trailing slash and a scheme's default port
# are forgiven (relay.api.cors).
_ORIGIN = re.compile(
    r"[a-z][a-z0-9+.-]*://([a-z0-9_-]+(\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?/?"
)


def origins(raw: str) -> tuple[str, ...]:
    """Browser origins CORS allows, or `*`: anything else (no scheme, a path, a wildcard
    host) would never equal an Origin header, and CORS would stay off without a word."""
    found = words(raw)
    for word in found:
        if word != "*" and not _ORIGIN.fullmatch(word.lower()):
            raise ValueError(
                f"{word!r} is not an origin: scheme://host[:port], such as"
                " https://app.example.com, or * for any"
            )
    return found


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
    """Declare a field read from the environment variable `env`: `minimum` and `maximum`
    bound its value, `below` says why less than the minimum is refused, `choices` lists
    the values allowed, `file=True` lets `<env>_FILE` name a file holding it."""
    return field(default=default, metadata={"env": env, "parse": parse, **kwargs})


def parse_value(spec: dataclasses.Field[Any], raw: str) -> Any:
    name = spec.metadata["env"]
    # A setting that may come from a file is a secret, or a URL with a password in it.
    secret = spec.metadata.get("file", False)
    try:
        value = spec.metadata["parse"](raw.strip())
    except WrongKindError as exc:
        raise ConfigError(f"{name} must be {exc}" + ("" if secret else f", got {raw!r}")) from None
    except ValueError as exc:
        shown = name if secret else f"{name}={raw!r}"
        raise ConfigError(f"{shown} is invalid: {exc}") from None
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    if value is None:  # unset by an empty value (positive_or_none)
        return value
    if "minimum" in spec.metadata and value < spec.metadata["minimum"]:
        why = f" ({spec.metadata['below']})" if "below" in spec.metadata else ""
        raise ConfigError(f"{name} must be at least {spec.metadata['minimum']}{why}")
    if "maximum" in spec.metadata and value > spec.metadata["maximum"]:
        raise ConfigError(f"{name} must be at most {spec.metadata['maximum']}")
    return value
