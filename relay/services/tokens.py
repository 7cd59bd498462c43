"""Access tokens: HS256 JWTs issued for a client and verified with pinned algorithms."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from relay.config import LONGEST_JWT_TTL, Settings
from relay.errors import AuthenticationError
from relay.lru import LruCache
from relay.stores.clients import Client, canonical_client_id

ALGORITHM = "HS256"
# A token and its claims take some 800 bytes: 16 MiB at most.
MAX_REMEMBERED = 20_000
# Instances' clocks differ a little: a token issued by one whose clock runs ahead
# must not be refused by another as issued in the future (PyJWT checks iat), nor
# expire earlier there than where it was issued.
CLOCK_SKEW_SECONDS = 30
_REQUIRED = ["sub", "iat", "exp", "jti", "iss", "aud", "key_version"]
# No token relay issues lives longer than RELAY_JWT_TTL's maximum (LONGEST_JWT_TTL);
# one claiming to (exp beyond 2**64 broke /v1/me's JSON) is refused like a forged one.
_DATES = ("iat", "exp", "nbf")


@dataclass(frozen=True)
class Claims:
    client_id: str
    key_version: int
    expires_at: int
    token_id: str
    scope: str


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    claims: Claims

    def as_json(self) -> dict[str, object]:
        """The token as RFC 6749 §5.1 answers it: `POST /v1/auth/token` and `relay token
        issue` print the same."""
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.claims.scope,
        }


class TokenIssuer:
    """Issues tokens signed with `secret`; accepts those signed with `secret` or, while
    it is being rotated (RELAY_JWT_PREVIOUS_SECRET), with `previous`."""

    def __init__(
        self, secret: str, *, ttl: int, issuer: str, audience: str, previous: str = ""
    ) -> None:
        self._secret = secret
        self._keys = [secret, previous] if previous and previous != secret else [secret]
        self.ttl = ttl
        self.issuer = issuer
        self.audience = audience
        self._verified: LruCache[str, Claims] = LruCache(MAX_REMEMBERED)

    @classmethod
    def for_settings(cls, settings: Settings, *, ttl: int | None = None) -> TokenIssuer:
        """The issuer the JWT settings describe; `ttl` shortens what it issues."""
        return cls(
            settings.jwt_secret,
            ttl=settings.jwt_ttl if ttl is None else ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            previous=settings.jwt_previous_secret,
        )

    def issue(self, client: Client, now: int | None = None) -> IssuedToken:
        issued_at = int(time.time()) if now is None else now
        payload: dict[str, Any] = {
            "sub": client.id,
            "iat": issued_at,
            "exp": issued_at + self.ttl,
            "jti": uuid.uuid4().hex,
            "scope": " ".join(client.scopes),
            "key_version": client.key_version,
            "iss": self.issuer,
            "aud": self.audience,
        }
        token = jwt.encode(payload, self._secret, algorithm=ALGORITHM)
        return IssuedToken(token, self.ttl, _claims(payload))

    def verify(self, token: str) -> Claims:
        """The token's claims, or AuthenticationError. A token's signature and claims
        never change, so a verified one is remembered and only its expiry rechecked."""
        claims = self._verified.get(token)
        if claims is not None:
            if claims.expires_at + CLOCK_SKEW_SECONDS > time.time():
                return claims
            self._verified.pop(token)
        claims = self._decode(token)
        self._verified.put(token, claims)
        return claims

    def expired_claims(self, token: str) -> Claims:
        """The claims of a token refused only for having expired (for `relay token
        inspect` to say whose it was); AuthenticationError for any other fault."""
        return self._decode(token, expiry=False)

    def _decode(self, token: str, *, expiry: bool = True) -> Claims:
        try:
            payload = self._signed_payload(token, expiry)
        except jwt.ExpiredSignatureError:
            raise AuthenticationError(
                "The access token has expired.", code="token_expired", rejected=True
            ) from None
        except jwt.PyJWTError:
            raise AuthenticationError("The access token is invalid.", rejected=True) from None
        try:
            return _claims(payload)
        except (TypeError, ValueError, KeyError):
            raise AuthenticationError("The access token is invalid.", rejected=True) from None

    def _signed_payload(self, token: str, expiry: bool) -> dict[str, Any]:
        *earlier, last = self._keys
        for key in earlier:
            try:
                return self._payload(token, key, expiry)
            except jwt.InvalidSignatureError:
                continue  # signed with the next key, perhaps
        return self._payload(token, last, expiry)

    def _payload(self, token: str, key: str, expiry: bool) -> dict[str, Any]:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=self.audience,
            issuer=self.issuer,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": _REQUIRED, "verify_exp": expiry},
        )
        return payload


def _claims(payload: dict[str, Any]) -> Claims:
    # The client id as relay writes it, in the one spelling its client cache and
    # revocation notices use: another (upper case, urn:uuid:, braces) named the same
    # client under a cache entry no revocation cleared.
    subject = payload["sub"]
    if not isinstance(subject, str) or canonical_client_id(subject) != subject:
        raise ValueError("sub")
    version = payload["key_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("key_version")
    # NumericDates are JSON numbers (RFC 7519 §2), which PyJWT does not insist on: it
    # reads "exp": "1790000000" or true as dates too.
    for name in _DATES:
        value = payload.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**63:
            raise ValueError(name)
    if payload["exp"] - payload["iat"] > LONGEST_JWT_TTL + CLOCK_SKEW_SECONDS:
        raise ValueError("exp")
    return Claims(
        client_id=subject,
        key_version=version,
        expires_at=int(payload["exp"]),
        token_id=str(payload["jti"]),
        scope=str(payload.get("scope", "")),
    )
