"""Rotating RELAY_JWT_SECRET: the previous secret's tokens are still accepted, never issued."""

from __future__ import annotations

import time

import jwt
import pytest

from relay.config import ConfigError, Settings, load_settings
from relay.config_values import Secret
from relay.errors import AuthenticationError
from relay.services.tokens import TokenIssuer
from tests.api_calls import bearer, client_with_token

OLD = "o" * 40
NEW = "n" * 40
CLAIMS = {"ttl": 3600, "issuer": "relay", "audience": "relay-api"}


async def test_a_token_of_the_previous_secret_is_accepted_while_it_is_given(
    make_client, make_settings
):
    before = await make_client(make_settings(jwt_secret=Secret(OLD)))
    _, token = await client_with_token(before)
    rotated = await make_client(
        make_settings(jwt_secret=Secret(NEW), jwt_previous_secret=Secret(OLD))
    )
    assert (await rotated.get("/v1/me", headers=bearer(token))).status == 200
    # What the rotated relay issues is signed with the new secret alone.
    _, fresh = await client_with_token(rotated)
    issuer = TokenIssuer(NEW, **CLAIMS)
    issuer.verify(fresh)
    with pytest.raises(AuthenticationError):
        TokenIssuer(OLD, **CLAIMS).verify(fresh)
    # Once the previous secret is gone, so are its tokens.
    after = await make_client(make_settings(jwt_secret=Secret(NEW)))
    assert (await after.get("/v1/me", headers=bearer(token))).status == 401
    assert (await after.get("/v1/me", headers=bearer(fresh))).status == 200


def signed_with(key: str) -> str:
    """A token as relay issues it, signed with `key`."""
    now = int(time.time())
    payload = {
        "sub": "0b6b8e9e-3b0e-4b8e-9d3e-000000000001",
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
        "key_version": 1,
        "iss": "relay",
        "aud": "relay-api",
    }
    return jwt.encode(payload, key, algorithm="HS256")


def test_a_token_of_neither_secret_is_refused():
    rotated = TokenIssuer(NEW, previous=OLD, **CLAIMS)
    assert rotated.verify(signed_with(NEW)).client_id.endswith("0001")
    assert rotated.verify(signed_with(OLD)).client_id.endswith("0001")
    with pytest.raises(AuthenticationError, match="invalid"):
        rotated.verify(signed_with("s" * 40))
    # Without a previous secret, the old one's tokens are simply invalid.
    with pytest.raises(AuthenticationError, match="invalid"):
        TokenIssuer(NEW, **CLAIMS).verify(signed_with(OLD))


@pytest.mark.parametrize("value", ["short", "change-me-" + "x" * 30])
def test_production_holds_a_given_previous_secret_to_the_same_rules(value):
    env = {
        "RELAY_ENV": "production",
        "RELAY_JWT_SECRET": NEW,
        "RELAY_ADMIN_TOKEN": "a" * 40,
        "RELAY_IDENTITY_HASH_KEY": "i" * 40,
        "RELAY_JWT_PREVIOUS_SECRET": value,
    }
    with pytest.raises(ConfigError, match="RELAY_JWT_PREVIOUS_SECRET"):
        load_settings(env)
    del env["RELAY_JWT_PREVIOUS_SECRET"]  # optional: production starts without it
    assert Settings.from_env(env).jwt_previous_secret == ""
