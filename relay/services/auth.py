"""Recognising callers: bearer JWT → an active client at the current key version."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from relay.errors import AuthenticationError
from relay.services.client_cache import ClientCache, token_revoked
from relay.services.clients import ClientService
from relay.services.tokens import Claims, IssuedToken, TokenIssuer
from relay.stores.clients import Client


@dataclass(frozen=True)
class Caller:
    client: Client
    claims: Claims


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "Send an access token as 'Authorization: Bearer <token>' (from POST /auth/token).",
            code="missing_token",
        )
    try:
        # aiohttp keeps bytes that are not UTF-8 as lone surrogates, which no
        # comparison or JWT library can encode: such a token is simply wrong.
        token.encode()
    except UnicodeEncodeError:
        raise AuthenticationError("The token is not valid text.", rejected=True) from None
    return token.strip()


def check_operator_token(authorization: str | None, expected: str, kind: str, setting: str) -> None:
    """The request's bearer token must be the operator's `expected` one (the admin or
    the metrics token); refusals name the setting, and an empty `expected` admits none."""
    code = f"invalid_{kind}_token"
    try:
        given = bearer_token(authorization).encode()
    except AuthenticationError:
        # bearer_token's message points at /auth/token, which is no help here.
        raise AuthenticationError(
            f"Send the {kind} token as 'Authorization: Bearer <{setting}>'.", code=code
        ) from None
    # compare_digest takes the same time wherever the first difference is.
    if not expected or not hmac.compare_digest(given, expected.encode()):
        # A token was sent and is wrong: RFC 6750 says so with error="invalid_token".
        raise AuthenticationError(f"Invalid {kind} token.", code=code, rejected=True)


class Authenticator:
    def __init__(self, tokens: TokenIssuer, clients: ClientService, cache: ClientCache) -> None:
        self.tokens = tokens
        self.clients = clients
        self.cache = cache

    async def exchange(self, api_key: str) -> tuple[Client, IssuedToken]:
        """Trade an API key for an access token. Every 401 looks the same, and takes the
        same time for every well-formed key; a 503 (KeyChecksBusyError) when relay has
        too many keys to check says nothing about the key."""
        client = await self.clients.authenticate_key(api_key)
        if client is None:
            raise AuthenticationError("Invalid API key.", code="invalid_api_key")
        return client, self.tokens.issue(client)

    async def authenticate(self, authorization: str | None) -> Caller:
        claims = self.tokens.verify(bearer_token(authorization))
        return Caller(client_for_token(await self.cache.get(claims.client_id), claims), claims)


def client_for_token(client: Client | None, claims: Claims) -> Client:
    """The client a token with valid `claims` speaks for: one that still exists, is
    active, and is at the key version the token was issued at; else token_revoked."""
    if client is None or not client.active or client.key_version != claims.key_version:
        raise token_revoked()
    return client
