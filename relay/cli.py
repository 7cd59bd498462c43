"""The `relay` command: serve, migrate, dev, clients, token, simulate, verify."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

from relay import __version__
from relay.config_secrets import SECRETS


class Command(NamedTuple):
    module: str  # imported only when this command is chosen: its add_arguments and run
    help: str


# Each `relay` command loads what it uses and no more: `relay verify` no aiohttp,
# `relay simulate` no database driver, none of them the dstack SDK until it is needed.
COMMANDS = {
    "serve": Command("relay.commands.serve", "run the gateway (settings from RELAY_* variables)"),
    "migrate": Command("relay.commands.migrate", "apply pending database migrations and exit"),
    "dev": Command(
        "relay.commands.dev", "run relay locally with private PostgreSQL, Redis and simulator"
    ),
    "clients": Command("relay.commands.clients", "manage API clients"),
    "token": Command("relay.commands.tokens", "issue a client an access token, or inspect one"),
    "simulate": Command("relay.simulator.command", "serve an OpenAI-compatible simulator"),
    "verify": Command("relay.proofs.command", "check receipts and a report offline"),
}


def command_module(command: str) -> ModuleType:
    return importlib.import_module(COMMANDS[command].module)


class CommandParser(argparse.ArgumentParser):
    """A command's parser: its module adds the command's options once the command is
    chosen, so `relay --help` and every other command import none of it."""

    def __init__(self, *args: Any, command: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = command

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._pending is not None:
            add_arguments = getattr(command_module(self._pending), "add_arguments", None)
            self._pending = None
            if add_arguments is not None:
                add_arguments(self)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.help, command=name)
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
    command = command_module(args.command)
    if args.command in ("simulate", "verify"):
        return command.run(args)
    if args.command == "dev":
        return command.run()
    return _run_configured(command, args)


def _run_configured(command: ModuleType, args: argparse.Namespace) -> int:
    """serve, migrate, clients and token: settings read from RELAY_*, logging set up."""
    # Imported here: settings and logging load aiohttp, which verify never needs.
    from relay.commands.refusals import refused, start_refusals
    from relay.config import ConfigError, load_settings
    from relay.logs import HeldLogs

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
    if serving:
        try:
            return command.run(settings)
        except start_refusals() as exc:
            return refused("serve", exc)
    if args.command == "migrate":
        return command.run(settings)
    try:
        return command.run(settings, args)
    except ConfigError as exc:  # the database refuses RELAY_DATABASE_URL's role or name
        return refused(f"{args.command} {args.action}", exc)


def _secrets(command: str) -> tuple[str, ...]:
    """The secret settings `command` reads (relay.config_secrets.SECRETS)."""
    if command == "serve":
        return SECRETS
    if command == "token":
        return ("jwt_secret", "jwt_previous_secret")
    return ()
