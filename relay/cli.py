"""The `relay` command: serve, migrate, dev, clients, token, simulate, verify."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from relay import __version__
from relay.config import SECRETS, ConfigError, load_settings
from relay.logs import setup_logging
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
        with held.holding():
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
        held.print_plain()
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        held.print_plain()
        raise
    setup_logging(settings.log_level, settings.log_format)
    held.replay()
    if args.command == "serve":
        from relay.commands import serve

        try:
            return serve.run(settings)
        except start_refusals() as exc:
            return refused("serve", exc)
    if args.command == "migrate":
        from relay.errors import RelayError
        from relay.stores.migrations import MigrationError, migrate

        try:
            applied = asyncio.run(migrate(settings.database_url, timeout=settings.database_timeout))
        except (MigrationError, RelayError, ConfigError) as exc:
            return refused("migrate", exc)
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )
        return 0
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


def start_refusals() -> tuple[type[BaseException], ...]:
    """What relay's start-up refuses with (dstack agent unreachable, unusable key file,
    database down, a migration refused, the port taken, a setting found wrong only now:
    a port relay may not bind, a password Redis refuses): said in one line by
    `refused`, not a traceback."""
    from relay.errors import RelayError
    from relay.proofs.keyfile import KeyFileError
    from relay.stores.migrations import MigrationError

    return (RelayError, KeyFileError, MigrationError, ConfigError, OSError)


def refused(command: str, error: BaseException) -> int:
    """Say why `command` could not start, in one line; exit 2 if a setting or a file
    must change first (systemd's RestartPreventExitStatus=2 then stops retrying), else 1."""
    from relay.errors import operator_message
    from relay.proofs.keyfile import KeyFileError
    from relay.stores.database_failures import misconfigured
    from relay.stores.migrations import MigrationError

    # A ConfigError's message names the setting; a KeyFileError's, the signing key file
    # (its mode, owner or content) an operator must mend: no restart reads it otherwise;
    # so must a MigrationError's that says so (an applied migration edited, say).
    if isinstance(error, ConfigError | KeyFileError) or (
        isinstance(error, MigrationError) and error.must_mend
    ):
        print(f"relay {command}: {error}", file=sys.stderr)
        return 2
    if misconfigured(error):
        reason = getattr(error, "reason", "")
        print(f"relay {command}: RELAY_DATABASE_URL: {reason}", file=sys.stderr)
        return 2
    print(f"relay {command}: {operator_message(error)}", file=sys.stderr)
    return 1


class HeldLogs(logging.Handler):
    """What is logged while settings are read (relay.config's warnings: unknown
    variables, and any other a setting gives), before RELAY_LOG_FORMAT and
    RELAY_LOG_LEVEL are known: held, then replayed through the log setup_logging
    configured, so a JSON log is JSON from its first line."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Hold every record (RELAY_LOG_LEVEL is not known yet: replay decides), and
        the warnings Python would print, while the block runs."""
        root = logging.getLogger()
        level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            root.removeHandler(self)
            root.setLevel(level)

    def replay(self) -> None:
        """Each held record that relay's configured log level lets through, to its handlers."""
        records, self.records = self.records, []
        for record in records:
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)

    def print_plain(self) -> None:
        """Without relay's log (its settings refused): the warnings, as Python would have
        printed them."""
        records, self.records = self.records, []
        for record in records:
            if record.levelno >= logging.WARNING:
                print(record.getMessage(), file=sys.stderr)
