"""The `relay` command: serve, migrate, dev, clients, token, simulate, verify."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relay import __version__
from relay.commands.refusals import refused, start_refusals
from relay.config import SECRETS, ConfigError, load_settings
from relay.logs import HeldLogs
from relay.proofs import command as verify
from relay.simulator import command as simulate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gateway (settings from RELAY_* variables)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser(
        "dev", help="run relay locally with private PostgreSQL, Redis and simulator"
    )
    from relay.commands import clients, tokens

    clients.add_arguments(commands.add_parser("clients", help="manage API clients"))
    tokens.add_arguments(
        commands.add_parser("token", help="issue a client an access token, or inspect one")
    )
    simulate.add_arguments(
        commands.add_parser("simulate", help="serve an OpenAI-compatible simulator")
    )
    verify.add_arguments(commands.add_parser("verify", help="check receipts and a report offline"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        # Ctrl-C (`relay serve` drains on SIGINT instead, once it runs): the status a
        # shell gives SIGINT, and one line rather than Python's traceback.
        print(f"relay {args.command}: interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    if args.command == "simulate":
        return simulate.run(args)
    if args.command == "verify":
        return verify.run(args)
    if args.command == "dev":
        from relay.commands import dev

        return dev.run()
    serving = args.command == "serve"
    held = HeldLogs()
    try:
        with held.before_logging():
            # Of these, only serve forwards to providers and uses all relay's secrets
            # (JWTs, the admin token, rate-limit names, /metrics); token signs and checks
            # JWTs; migrate and clients (bcrypt hashes in PostgreSQL) need none. They run
            # in an operator's shell, which need not hold what only the service may read.
            # A JWT secret `relay token` made up now would match no relay's: it reads a kept one.
            settings = load_settings(
                provider_keys=serving,
                secrets=_secrets(args.command),
                generate=args.command != "token",
            )
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    held.start_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        from relay.commands import serve

        try:
            return serve.run(settings)
        except start_refusals() as exc:
            return refused("serve", exc)
    if args.command == "migrate":
        from relay.commands import migrate

        return migrate.run(settings)
    from relay.commands import clients, tokens

    try:
        return (tokens if args.command == "token" else clients).run(settings, args)
    except ConfigError as exc:  # the database refuses RELAY_DATABASE_URL's role or name
        return refused(f"{args.command} {args.action}", exc)


def _secrets(command: str) -> tuple[str, ...]:
    """The secret settings `command` reads (relay.config_secrets.SECRETS)."""
    if command == "serve":
        return SECRETS
    if command == "token":
        return ("jwt_secret", "jwt_previous_secret")
    return ()
