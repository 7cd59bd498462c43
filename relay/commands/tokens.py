"""`relay token …`: issue a client an access token, or say what relay makes of one,
from the command line (scripts, smoke tests, an operator answering "why 401?")."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from relay.commands.clients import client_store, print_outcome
from relay.config import Settings
from relay.errors import AuthenticationError, PermissionDeniedError
from relay.services.auth import client_for_token
from relay.services.clients import client_or_404
from relay.services.tokens import Claims, TokenIssuer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    issue = actions.add_parser(
        "issue", help="print an access token for a client, as POST /auth/token answers"
    )
    issue.add_argument("client_id")
    issue.add_argument(
        "--ttl", type=_seconds, help="lifetime in seconds, at most RELAY_JWT_TTL (the default)"
    )
    actions.add_parser(
        "inspect",
        help="read a token on stdin and say whether relay accepts it, and whose it is",
        description="The token is read from stdin (a command line would show it to ps and "
        "keep it in shell history); a leading 'Bearer ' is dropped. It is never printed.",
    )


def _seconds(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number of seconds") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    label = f"token {args.action}"
    if args.action == "issue":
        if args.ttl is not None and args.ttl > settings.jwt_ttl:
            print(
                f"relay {label}: --ttl may be at most RELAY_JWT_TTL ({settings.jwt_ttl} s)",
                file=sys.stderr,
            )
            return 2
        return print_outcome(label, _issue(settings, args.client_id, args.ttl))
    token = sys.stdin.buffer.read().decode(errors="replace").strip()  # bad bytes: invalid
    scheme, _, rest = token.partition(" ")
    if scheme.lower() == "bearer":  # pasted from an Authorization header
        token = rest.strip()
    if not token:
        print(f'relay {label}: no token on stdin (echo "$TOKEN" | relay {label})', file=sys.stderr)
        return 2
    return print_outcome(
        label, _inspect(settings, token), status=lambda verdict: 0 if verdict["accepted"] else 1
    )


async def _issue(settings: Settings, client_id: str, ttl: int | None) -> object:
    async with client_store(settings) as store:
        client = await client_or_404(store, client_id)
    if not client.active:
        raise PermissionDeniedError(
            f"Client {client.id!r} is disabled; `relay clients enable {client.id}` first."
        )
    return TokenIssuer.for_settings(settings, ttl=ttl).issue(client).as_json()


async def _inspect(settings: Settings, token: str) -> dict[str, object]:
    """The verdict `relay serve` with these settings would give `token`, and its claims
    when it has any worth showing (valid, or valid but expired)."""
    tokens = TokenIssuer.for_settings(settings)
    claims: Claims | None = None
    try:
        claims = tokens.verify(token)
        async with client_store(settings) as store:
            client = await store.get(claims.client_id)
        client_for_token(client, claims)
    except AuthenticationError as refusal:
        if refusal.code == "token_expired":
            claims = tokens.expired_claims(token)
        return _verdict(claims, refusal)
    return _verdict(claims, None)


def _verdict(claims: Claims | None, refusal: AuthenticationError | None) -> dict[str, object]:
    verdict: dict[str, object] = {
        "accepted": refusal is None,
        "code": None if refusal is None else refusal.code,
        "reason": None if refusal is None else refusal.message,
    }
    if claims is not None:
        verdict |= {
            "client_id": claims.client_id,
            "key_version": claims.key_version,
            "scope": claims.scope,
            "token_id": claims.token_id,
            "expires_at": datetime.fromtimestamp(claims.expires_at, UTC).isoformat(),
        }
    return verdict
